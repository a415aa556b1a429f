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
    /// <param name="layerSparsity">Unstructured: each layer's own sparsity (from <see cref="Allocate"/>); null: <see cref="PruningOptions.Sparsity"/> for all.</param>
    public static void Run(PassGraph g, List<PrunableLayer> layers, PruningOptions options, ActivationSource source, string displayName, List<string> notes, List<string> reconstructed,
        IReadOnlyDictionary<PrunableLayer, double>? layerSparsity = null)
    {
        double SparsityOf(PrunableLayer l) => layerSparsity != null && layerSparsity.TryGetValue(l, out double s) ? s : options.Sparsity;
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
                SparsityMasks.ZeroSmallest([l.Data], (long)Math.Round(SparsityOf(l) * l.Data.Length));
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
                double sparsity = SparsityOf(l);
                if (!options.IsNofM && (long)Math.Round(sparsity * l.Data.Length) <= l.Data.Length - PrunableLayers.CountNonzeros(l.Data))
                {
                    continue; // the allocation left this layer as it is
                }
                // Layers reading the same input (attention Q/K/V) share H.
                double[] h = l.Node.OpType == "Conv" ? ConvHessian(l, a, name, displayName) : shared ??= MatMulHessian(l, a, name, displayName);
                if (Prepare(l, h, options.Dampening) is { } prepared && Prune(l, prepared, options, sparsity, l.Data, OutputScale(g, l, displayName)))
                {
                    reconstructed.Add(l.Label);
                }
                else
                {
                    SparsityMasks.ZeroSmallest([l.Data], (long)Math.Round(sparsity * l.Data.Length));
                    notes.Add($"'{l.Label}': the input Hessian could not be factorized; pruned by magnitude, without reconstruction");
                }
                PrunableLayers.SetConstant(g, l.WeightName, l.Data);
            }
        }
    }

    /// <summary>
    /// SparseGPT's sensitivity allocation (<see cref="SensitivityPruner.ChooseSparsities"/>): each layer is probed as
    /// SparseGPT prunes it (masks chosen and survivors updated through H^-1, not bare magnitude masks, so the measured harm
    /// is the harm of what is applied), alone, on the unchanged model, its H built from the layer input on the harm
    /// measure's own bounded samples (<see cref="HarmMeasure.Activations"/>, else <paramref name="source"/>). H is
    /// factored once per layer and reused for every grid point. Grouped Conv / transA Gemm layers (pruned by magnitude
    /// in <see cref="Run"/>) are probed with magnitude masks. Returns the analysis; the chosen counts are applied by
    /// <see cref="Run"/> with the per-layer sparsities.
    /// </summary>
    public static SensitivityAnalysis Allocate(PassGraph g, List<PrunableLayer> layers, PruningOptions options, HarmMeasure harm, ActivationSource source, string displayName)
    {
        var position = new Dictionary<NodeProto, int>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < g.Graph.Node.Count; i++)
        {
            position[g.Graph.Node[i]] = i;
        }
        // Graph order, so layers reading the same input come together and their H is built once.
        List<PrunableLayer> ordered = layers.OrderBy(l => position[l.Node]).ToList();
        var magnitudeOnly = new HashSet<PrunableLayer>(ordered.Where(l => (l.Node.OpType == "Gemm" && PassGraph.IntAttr(l.Node, "transA", 0) != 0) || (l.Node.OpType == "Conv" && GroupCount(l) > 1)));
        List<string> names = ordered.Where(l => !magnitudeOnly.Contains(l)).Select(l => l.Node.Input[0]).Distinct(StringComparer.Ordinal).ToList();
        // Bounded samples: every input at once. The full calibration source: one input at a time.
        IReadOnlyDictionary<string, Activation>? all = harm.Activations != null && names.Count > 0 ? harm.Activations(g.Model, names) : null;
        string? currentName = null;
        double[]? currentMatMulH = null;
        Activation? current = null;
        PrunableLayer? preparedFor = null;
        Prepared? prepared = null;
        long[] start = SensitivityPruner.ExistingZeros(ordered);
        SensitivityAnalysis analysis = SensitivityPruner.ChooseSparsities(ordered, ordered.Select(l => (long)l.Data.Length).ToArray(), start, options.Sparsity, options.SensitivityGrid, harm, (i, zeros) =>
        {
            PrunableLayer l = ordered[i];
            float[] trial = (float[])l.Data.Clone();
            if (!ReferenceEquals(preparedFor, l))
            {
                preparedFor = l;
                prepared = null;
                if (!magnitudeOnly.Contains(l))
                {
                    string name = l.Node.Input[0];
                    if (name != currentName)
                    {
                        currentName = name;
                        currentMatMulH = null;
                        current = null;
                        IReadOnlyDictionary<string, Activation> values = all ?? source(g.Model, [name]);
                        if (!values.TryGetValue(name, out current))
                        {
                            throw CompressException.ForFile(displayName, DiagnosticCodes.DataShape, "calibration activations", name, "the activation source returned no values for it");
                        }
                    }
                    double[] h = l.Node.OpType == "Conv" ? ConvHessian(l, current!, name, displayName) : currentMatMulH ??= MatMulHessian(l, current!, name, displayName);
                    prepared = Prepare(l, h, options.Dampening);
                }
            }
            if (prepared == null || !Prune(l, prepared, options, (double)zeros / l.Data.Length, trial, OutputScale(g, l, displayName)))
            {
                trial = (float[])l.Data.Clone();
                SparsityMasks.ZeroSmallest([trial], zeros);
            }
            return SensitivityPruner.MeasureWith(g, l, trial, harm);
        }, string.Create(System.Globalization.CultureInfo.InvariantCulture, $"sparsegpt:{options.Dampening}"));
        // Back in the caller's layer order.
        var byLayer = ordered.Select((l, i) => (l, i)).ToDictionary(p => p.l, p => analysis.Layers[p.i]);
        return new SensitivityAnalysis
        {
            Measure = analysis.Measure, Samples = analysis.Samples, TargetSparsity = analysis.TargetSparsity, Elements = analysis.Elements,
            TargetZeros = analysis.TargetZeros, ChosenZeros = analysis.ChosenZeros, PredictedHarm = analysis.PredictedHarm,
            UniformPredictedHarm = analysis.UniformPredictedHarm, Probes = analysis.Probes, ReusedProbes = analysis.ReusedProbes, Seconds = analysis.Seconds,
            Layers = layers.Select(l => byLayer[l]).ToList(),
        };
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

    /// <summary>
    /// |scale / sqrt(var + epsilon)| per output of the BatchNormalization (constant scale and variance) that is the only
    /// reader of a Conv / MatMul / Gemm output, i.e. how much each output channel's error is scaled before the rest of
    /// the model sees it (what folding the BatchNormalization into the layer would give the weights); null when the
    /// output is read by anything else or is a graph output.
    /// </summary>
    internal static double[]? OutputScale(PassGraph g, PrunableLayer l, string displayName)
    {
        string t = l.Node.Output[0];
        if (g.Outer.Contains(t) || g.Consumers(t) is not [NodeProto u] || u.OpType != "BatchNormalization" || u.Input.Count != 5 || u.Input[0] != t
            || !g.IsConstantInitializer(u.Input[1]) || !g.IsConstantInitializer(u.Input[4]))
        {
            return null;
        }
        float[] scale = g.FloatsOf(g.Initializers[u.Input[1]], displayName), variance = g.FloatsOf(g.Initializers[u.Input[4]], displayName);
        if (scale.Length != l.Outputs || variance.Length != l.Outputs)
        {
            return null;
        }
        double eps = PassGraph.FloatAttr(u, "epsilon", 1e-5f);
        double[] s = [.. scale.Select((x, i) => Math.Abs(x) / Math.Sqrt(Math.Max(0, variance[i]) + eps))];
        return s.All(double.IsFinite) ? s : null;
    }

    private static int GroupCount(PrunableLayer l) => (int)Math.Max(1, PassGraph.IntAttr(l.Node, "group", 1));

    /// <summary>A layer's H^-1 factor in visiting order, computed once and reused for every sparsity the layer is pruned at.</summary>
    internal sealed record Prepared(int[] Order, double[] U, bool[] DeadInputs);

    /// <summary>
    /// Reorders <paramref name="hessian"/> (reduction order of the layer) into visiting order and factors its dampened
    /// inverse; null when H cannot be factorized even with more dampening.
    /// </summary>
    internal static Prepared? Prepare(PrunableLayer l, double[] hessian, double dampening)
    {
        int k = l.Reduction;
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
        // An input that is zero on every calibration sample: its weights never contribute; they are removed.
        var dead = new bool[k];
        double[]? u = Int4Gptq.FactorDecouplingDeadInputs(h, k, dampening, i => dead[i] = true);
        return u == null ? null : new Prepared(order, u, dead);
    }

    /// <summary>
    /// Prunes one layer (unstructured at <paramref name="sparsity"/>, exactly round(sparsity x elements) zeros when the
    /// layer has no more zeros than that already; or N:M) from <see cref="PrunableLayer.Data"/> into
    /// <paramref name="into"/> (which may be the layer's own data). False when the result is not finite (nothing written).
    /// </summary>
    /// <param name="rowScale">Per output: the factor its output is multiplied by before anything else reads it (the
    /// BatchNormalization that alone consumes a Conv's output, <see cref="OutputScale"/>); the unstructured masks rank all
    /// outputs of a block together, so the error that counts is the one after that factor. Null: 1 for every output.</param>
    internal static bool Prune(PrunableLayer l, Prepared prepared, PruningOptions options, double sparsity, float[] into, double[]? rowScale = null)
    {
        int n = l.Outputs, k = l.Reduction;
        int channels = k / l.KernelSize;
        int[] order = prepared.Order;
        double[] u = prepared.U;
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
        for (int i = 0; i < k; i++)
        {
            if (prepared.DeadInputs[i])
            {
                for (int r = 0; r < n; r++)
                {
                    w[(long)r * k + i] = 0f;
                    wasZero[(long)r * k + i] = true;
                }
            }
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
                // Counts rounded cumulatively, so the blocks together remove exactly round(sparsity x n x k).
                int count = (int)(Math.Round(sparsity * n * (double)i2) - Math.Round(sparsity * n * (double)i1));
                ChooseBlockMask(w, wasZero, remove, u, n, k, i1, i2, count, rowScale);
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
        if (!ReferenceEquals(into, l.Data))
        {
            Array.Copy(l.Data, into, into.Length);
        }
        for (int o = 0; o < n; o++)
        {
            for (int p = 0; p < k; p++)
            {
                into[l.Index(o, order[p])] = w[(long)o * k + p];
            }
        }
        return true;
    }

    /// <summary>
    /// Unstructured: marks for removal the <paramref name="count"/> weights of block [i1, i2) (all outputs together)
    /// with the smallest (s_r w)^2 / U_jj^2 (s_r: <paramref name="rowScale"/> of output r, else 1), counting weights that
    /// are already zero first.
    /// </summary>
    private static void ChooseBlockMask(float[] w, bool[] wasZero, bool[] remove, double[] u, int n, int k, int i1, int i2, int count, double[]? rowScale)
    {
        int width = i2 - i1;
        var scores = new double[n * width];
        var index = new int[n * width];
        for (int r = 0; r < n; r++)
        {
            for (int j = i1; j < i2; j++)
            {
                long at = (long)r * k + j;
                double d = u[(long)j * k + j];
                int i = r * width + (j - i1);
                double sw = rowScale == null ? w[at] : rowScale[r] * w[at];
                scores[i] = wasZero[at] ? -1 : sw * sw / (d * d);
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
