using System.Numerics.Tensors;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// One-shot reconstruction pruning in the family of Optimal Brain Compression / SparseGPT (Frantar and Alistarh,
/// 2022-2023). For every layer, H = 2/m X^T X of its input X on the calibration data (Conv: of the im2col patches),
/// dampened and inverted once, and U the upper Cholesky factor of H^-1 (the machinery <see cref="Int4Gptq"/> uses). The
/// reduction positions are then visited in order, in blocks: at the start of a block (unstructured) or of an N:M group,
/// the weights whose removal costs the least output error, w^2 / U_jj^2, are chosen for removal; each removed weight's
/// error (w / U_jj) is pushed onto the later positions of the same output through row j of U, so the weights that
/// survive absorb it and the layer's output on the calibration inputs stays close to the original. Output channels share
/// H and are independent. Weights that are zero on input stay zero. Rows of an activation with a
/// <see cref="Activation.RowMask"/> (token rows of text data) count only where the mask is not zero: padding positions
/// do not shape H. H is built by <see cref="HessianAccumulator"/>.
/// </summary>
/// <remarks>
/// Layers are solved in graph order, each on its input in the model whose earlier layers are already pruned (the
/// activation source is asked for one tensor at a time, on the model being pruned), as SparseGPT does: later layers
/// see and absorb the earlier layers' error. A shared (cached) activation source of the original model also works
/// (then every layer is solved independently, as in Optimal Brain Compression). Cost per layer: O(K^3) for the factorization, O(N K^2) for the
/// error feedback, O(m K^2) for H. Conv positions are visited kernel position by kernel position, channel by channel,
/// so N:M groups run along the input channels at each kernel position, as <see cref="SparsityMasks.KeepNofM"/> does.
/// </remarks>
internal static class SparseGpt
{
    /// <summary>Positions per block of lazily applied error feedback (unstructured masks are chosen per block).</summary>
    private const int BlockSize = 128;

    /// <summary>At most this many im2col rows (evenly spaced over samples x positions) go into a Conv's H.</summary>
    private const int MaxConvRows = 65_536;

    /// <summary>Prunes every layer of <paramref name="layers"/> (<see cref="PrunableLayer.Data"/>, written back to the graph as it goes).</summary>
    public static void Run(PassGraph g, List<PrunableLayer> layers, PruningOptions options, ActivationSource source, string displayName, List<string> notes, List<string> reconstructed)
    {
        var fallback = layers.Where(l => (l.Node.OpType == "Gemm" && PassGraph.IntAttr(l.Node, "transA", 0) != 0) || (l.Node.OpType == "Conv" && GroupCount(l) > 1)).ToList();
        foreach (PrunableLayer l in fallback)
        {
            // A transposed input has its features on the first axis, a grouped Conv one H per group; both are ranked by
            // |w| instead.
            if (options.IsNofM)
            {
                SparsityMasks.KeepNofM(l, options.N, options.M);
            }
            else
            {
                SparsityMasks.ZeroSmallest([l.Data], (long)Math.Round(options.Sparsity * l.Data.Length));
            }
            notes.Add($"'{l.Label}' ({(l.Node.OpType == "Conv" ? "grouped Conv" : "Gemm with transA")}) was pruned by magnitude, without reconstruction");
        }
        // Graph order: each layer is solved on the inputs of the model with every earlier layer already pruned (as
        // SparseGPT does), one input tensor at a time, so only one layer input is in memory.
        var position = new Dictionary<NodeProto, int>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < g.Graph.Node.Count; i++)
        {
            position[g.Graph.Node[i]] = i;
        }
        List<PrunableLayer> usable = layers.Except(fallback).OrderBy(l => position[l.Node]).ToList();
        List<string> names = usable.Select(l => l.Node.Input[0]).Distinct(StringComparer.Ordinal).ToList();
        foreach (string name in names)
        {
            IReadOnlyDictionary<string, Activation> values = source(g.Model, [name]);
            if (!values.TryGetValue(name, out Activation? a))
            {
                throw CompressException.ForFile(displayName, DiagnosticCodes.DataShape, "calibration activations", name, "the activation source returned no values for it");
            }
            double[]? shared = null;
            foreach (PrunableLayer l in usable.Where(l => l.Node.Input[0] == name))
            {
                // Layers reading the same input (attention Q/K/V) share H.
                double[] h = l.Node.OpType == "Conv" ? ConvHessian(l, a, name, displayName) : shared ??= MatMulHessian(l, a, name, displayName);
                if (PruneLayer(l, h, options))
                {
                    reconstructed.Add(l.Label);
                }
                else
                {
                    SparsityMasks.ZeroSmallest([l.Data], (long)Math.Round(options.Sparsity * l.Data.Length));
                    notes.Add($"'{l.Label}': the input Hessian could not be factorized; pruned by magnitude, without reconstruction");
                }
                PrunableLayers.SetConstant(g, l.WeightName, l.Data);
            }
        }
    }

    private static void CheckFinite(Activation a, string name, string displayName)
    {
        if (!TensorStats.AllFinite(a.Data))
        {
            throw CompressException.ForFile(displayName, DiagnosticCodes.NonFiniteOutputs, displayName, name, "one of the calibration samples (SparseGPT)");
        }
    }

    private static double[] MatMulHessian(PrunableLayer l, Activation a, string name, string displayName)
    {
        int k = l.Reduction;
        if (a.Shape.Length < 2 || a.Shape[^1] != k || a.Data.Length == 0 || a.Data.Length % k != 0)
        {
            throw CompressException.ForFile(displayName, DiagnosticCodes.DataShape, "calibration activations", name,
                $"SparseGPT needs this layer input as [..., {k}] values; got [{string.Join(",", a.Shape)}]");
        }
        CheckFinite(a, name, displayName);
        // Token rows of padding positions (attention mask 0) are left out: the output error that counts is on real tokens.
        return HessianAccumulator.Of(a.Data, k, a.RowMask is { } mask && mask.Length == a.Data.Length / k ? mask : null);
    }

    /// <summary>H = 2/m P^T P over the im2col patches P (reduction order c x KernelSize + s), built in chunks.</summary>
    private static double[] ConvHessian(PrunableLayer l, Activation a, string name, string displayName)
    {
        int channels = l.Reduction / l.KernelSize;
        if (a.Shape.Length != l.Dims.Length || a.Shape[1] != channels || a.Data.Length == 0)
        {
            throw CompressException.ForFile(displayName, DiagnosticCodes.DataShape, "calibration activations", name,
                $"shape [{string.Join(",", a.Shape)}] does not fit Conv '{l.Label}' with weight [{string.Join(",", l.Dims)}]");
        }
        CheckFinite(a, name, displayName);
        int chunk = HessianAccumulator.ChunkRows(l.Reduction);
        var accumulator = new HessianAccumulator(l.Reduction);
        for (int first = 0; ; first += chunk)
        {
            (float[] x, int rows) = ChannelPruner.Im2Col(a, l, MaxConvRows, first, chunk);
            if (rows == 0)
            {
                break;
            }
            accumulator.Add(x, rows);
        }
        return accumulator.Hessian();
    }

    private static int GroupCount(PrunableLayer l) => (int)Math.Max(1, PassGraph.IntAttr(l.Node, "group", 1));

    /// <summary>
    /// Prunes one layer against <paramref name="hessian"/> (reduction order of the layer). False when H cannot be
    /// factorized even with more dampening (the layer is left unchanged).
    /// </summary>
    internal static bool PruneLayer(PrunableLayer l, double[] hessian, PruningOptions options)
    {
        int n = l.Outputs, k = l.Reduction;
        int channels = k / l.KernelSize;
        // Visiting order p -> reduction index: kernel position major, channel minor.
        var order = new int[k];
        for (int s = 0, p = 0; s < l.KernelSize; s++)
        {
            for (int c = 0; c < channels; c++, p++)
            {
                order[p] = c * l.KernelSize + s;
            }
        }
        var h = new double[(long)k * k];
        for (int p = 0; p < k; p++)
        {
            for (int q = 0; q < k; q++)
            {
                h[(long)p * k + q] = hessian[(long)order[p] * k + order[q]];
            }
        }
        var w = new float[(long)n * k];
        for (int o = 0; o < n; o++)
        {
            for (int p = 0; p < k; p++)
            {
                w[(long)o * k + p] = l.Data[l.Index(o, order[p])];
            }
        }
        var wasZero = new bool[w.Length];
        for (long i = 0; i < w.Length; i++)
        {
            wasZero[i] = w[i] == 0f;
        }
        double meanDiagonal = 0;
        for (int i = 0; i < k; i++)
        {
            meanDiagonal += h[(long)i * k + i];
        }
        meanDiagonal = meanDiagonal > 0 ? meanDiagonal / k : 1;
        for (int i = 0; i < k; i++)
        {
            if (h[(long)i * k + i] <= 0)
            {
                // An input that is zero on every calibration sample: its weights never contribute; remove them.
                h[(long)i * k + i] = 1;
                for (int r = 0; r < n; r++)
                {
                    w[(long)r * k + i] = 0f;
                    wasZero[(long)r * k + i] = true;
                }
            }
        }
        double[]? u = Int4Gptq.DampedUpperFactorOfInverse(h, k, options.Dampening, meanDiagonal);
        if (u == null)
        {
            return false;
        }

        bool nm = options.IsNofM;
        int GroupStart(int p) => p / channels * channels + p % channels / options.M * options.M;
        int GroupEnd(int p) => Math.Min(p / channels * channels + channels, GroupStart(p) + options.M);
        var remove = new bool[w.Length];
        var errors = new float[(long)n * (BlockSize + 64)];
        var uRow = new float[BlockSize + 64];
        for (int i1 = 0; i1 < k;)
        {
            int i2 = Math.Min(k, i1 + BlockSize);
            while (nm && i2 < k && GroupStart(i2) != i2)
            {
                i2++;
            }
            int width = i2 - i1;
            if (!nm)
            {
                ChooseBlockMask(w, wasZero, remove, u, n, k, i1, i2, options.Sparsity);
            }
            for (int j = i1; j < i2; j++)
            {
                if (nm && GroupStart(j) == j)
                {
                    ChooseGroupMask(w, wasZero, remove, u, n, k, j, GroupEnd(j), options.N);
                }
                double d = u[(long)j * k + j];
                Span<float> row = uRow.AsSpan(0, i2 - j - 1);
                for (int c = j + 1; c < i2; c++)
                {
                    row[c - j - 1] = (float)u[(long)j * k + c];
                }
                for (int r = 0; r < n; r++)
                {
                    long at = (long)r * k + j;
                    float e = 0f;
                    if (remove[at] || wasZero[at])
                    {
                        e = (float)(w[at] / d);
                        w[at] = 0f;
                        if (e != 0f)
                        {
                            Span<float> later = w.AsSpan((int)(at + 1), i2 - j - 1);
                            TensorPrimitives.MultiplyAdd(row, -e, later, later);
                        }
                    }
                    errors[(long)r * width + (j - i1)] = e;
                }
            }
            // W[:, i2:] -= E x U[i1:i2, i2:].
            Int4Gptq.PropagateBlockError(w, n, k, errors, width, u, i1, i2);
            i1 = i2;
        }
        if (!TensorStats.AllFinite(w))
        {
            return false;
        }
        for (int o = 0; o < n; o++)
        {
            for (int p = 0; p < k; p++)
            {
                l.Data[l.Index(o, order[p])] = w[(long)o * k + p];
            }
        }
        return true;
    }

    /// <summary>
    /// Unstructured: marks for removal the round(sparsity x n x width) weights of block [i1, i2) (all outputs together)
    /// with the smallest w^2 / U_jj^2, counting weights that are already zero first.
    /// </summary>
    private static void ChooseBlockMask(float[] w, bool[] wasZero, bool[] remove, double[] u, int n, int k, int i1, int i2, double sparsity)
    {
        int width = i2 - i1;
        int count = (int)Math.Round(sparsity * n * width);
        var scores = new double[n * width];
        var index = new int[n * width];
        for (int r = 0; r < n; r++)
        {
            for (int j = i1; j < i2; j++)
            {
                long at = (long)r * k + j;
                double d = u[(long)j * k + j];
                int i = r * width + (j - i1);
                scores[i] = wasZero[at] ? -1 : (double)w[at] * w[at] / (d * d);
                index[i] = i;
            }
        }
        Array.Sort(scores, index);
        for (int i = 0; i < count; i++)
        {
            int r = index[i] / width, j = i1 + index[i] % width;
            remove[(long)r * k + j] = true;
        }
    }

    /// <summary>N:M: in group [j, end) of every output, marks all but the <paramref name="keep"/> weights with the largest w^2 / U_jj^2.</summary>
    private static void ChooseGroupMask(float[] w, bool[] wasZero, bool[] remove, double[] u, int n, int k, int j, int end, int keep)
    {
        int len = end - j;
        Span<double> scores = stackalloc double[len];
        Span<int> rank = stackalloc int[len];
        for (int r = 0; r < n; r++)
        {
            for (int c = 0; c < len; c++)
            {
                long at = (long)r * k + j + c;
                double d = u[(long)(j + c) * k + j + c];
                scores[c] = wasZero[at] ? -1 : (double)w[at] * w[at] / (d * d);
                rank[c] = c;
            }
            // Insertion sort descending; the earlier position wins a tie.
            for (int a = 1; a < len; a++)
            {
                int idx = rank[a];
                int b = a - 1;
                while (b >= 0 && scores[rank[b]] < scores[idx])
                {
                    rank[b + 1] = rank[b];
                    b--;
                }
                rank[b + 1] = idx;
            }
            for (int c = keep; c < len; c++)
            {
                remove[(long)r * k + j + rank[c]] = true;
            }
        }
    }
}
