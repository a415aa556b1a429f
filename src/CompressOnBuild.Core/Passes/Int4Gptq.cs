using System.Numerics.Tensors;
using CompressOnBuild.Kernels;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Data-aware 4-bit weight quantization by second-order error feedback (the GPTQ method of Frantar et al., 2022):
/// the input dimension K is quantized one position at a time, and the rounding error of each position is pushed
/// onto the positions not yet quantized through the inverse of the layer's input Hessian H = 2/m X^T X, so the
/// layer's output on the calibration inputs (not the weights) stays as close as the 4-bit grid allows. Output
/// channels are independent and share H. The block layout, scales and zero points are exactly those of
/// <see cref="Int4WeightQuantizer.QuantizeBlocks"/> (MatMulNBits); each block's scale and zero point are chosen from
/// the error-corrected weights when the block is reached. Weights that are exactly zero on input (pruned) stay
/// exactly zero, so GPTQ after pruning keeps the sparsity pattern (unstructured or N:M) and corrects around it.
/// </summary>
/// <remarks>
/// Cost per layer: O(K^3) for the Cholesky factorization and triangular inversion and O(N K^2) for the error feedback, the part past
/// each 128-position batch done by <see cref="Gemm"/>. Inputs that are zero on every calibration sample get zero
/// weights (they never contribute). If H is not positive definite even after raising the dampening, the caller
/// falls back to round-to-nearest.
/// </remarks>
internal static class Int4Gptq
{
    /// <summary>Positions per lazy error-feedback batch (a multiple of every block size).</summary>
    private const int Batch = 128;

    /// <summary>
    /// H = 2/m X^T X for activations laid out [m, k] (row-major), in double; with <paramref name="rowMask"/> (one value
    /// per row), over the rows whose mask is not zero (see <see cref="Activation.RowMask"/>).
    /// </summary>
    public static double[] Hessian(float[] x, int m, int k, float[]? rowMask = null) =>
        HessianAccumulator.Of(x.Length == (long)m * k ? x : x[..(m * k)], k, rowMask);

    /// <summary>
    /// Quantizes the channel-major [n, k] weights against the Hessian <paramref name="hessian"/> (k x k). Returns
    /// null when the Hessian cannot be factorized; otherwise the same outputs as
    /// <see cref="Int4WeightQuantizer.QuantizeBlocks"/>, MaxError measured against the original weights.
    /// </summary>
    public static (byte[] Packed, float[] Scales, byte[]? ZeroPoints, float MaxError)? Quantize(
        ReadOnlySpan<float> channelMajor, int n, int k, double[] hessian, int blockSize, bool symmetric, double dampening = 0.01, bool mseScales = false,
        bool actOrder = false)
    {
        if (hessian.Length != (long)k * k || Batch % blockSize != 0)
        {
            throw new ArgumentException("Hessian size or block size does not fit.");
        }
        if (actOrder)
        {
            return QuantizeInActivationOrder(channelMajor, n, k, hessian, blockSize, symmetric, dampening, mseScales);
        }
        float[] w = channelMajor.ToArray();
        // A dead input: its weights never matter. Zero them.
        double[]? u = FactorDecouplingDeadInputs((double[])hessian.Clone(), k, dampening, i =>
        {
            for (int r = 0; r < n; r++)
            {
                w[(long)r * k + i] = 0f;
            }
        });
        if (u == null)
        {
            return null;
        }

        int blocks = (k + blockSize - 1) / blockSize;
        int zpBytesPerRow = (blocks + 1) / 2;
        var codes = new byte[(long)n * blocks * blockSize];
        var scales = new float[n * blocks];
        var zeros = new byte[n * blocks];
        var errors = new float[(long)n * Batch];
        var padded = new float[blockSize];
        var uBatchRow = new float[Batch];
        for (int start = 0; start < k; start += Batch)
        {
            int end = Math.Min(k, start + Batch);
            for (int i = start; i < end; i++)
            {
                if (i % blockSize == 0)
                {
                    int b = i / blockSize;
                    int len = Math.Min(blockSize, k - i);
                    for (int r = 0; r < n; r++)
                    {
                        padded.AsSpan().Clear();
                        w.AsSpan((int)((long)r * k + i), len).CopyTo(padded);
                        (scales[r * blocks + b], zeros[r * blocks + b]) = Int4WeightQuantizer.BlockParameters(padded, symmetric, mseScales);
                    }
                }
                int block = i / blockSize;
                double d = u[(long)i * k + i];
                // Row i of U past i inside this batch, in float for the vectorized update below.
                Span<float> uRow = uBatchRow.AsSpan(0, end - i - 1);
                for (int j = i + 1; j < end; j++)
                {
                    uRow[j - i - 1] = (float)u[(long)i * k + j];
                }
                for (int r = 0; r < n; r++)
                {
                    long at = (long)r * k + i;
                    float scale = scales[r * blocks + block];
                    byte zero = zeros[r * blocks + block];
                    // A weight that was exactly zero (pruned, or a dead input) stays exactly zero: the zero point.
                    // Its corrected value still counts as error and is pushed onto the later positions.
                    int code = channelMajor[(int)at] == 0f ? zero
                        : (int)Math.Clamp(MathF.Round(w[at] / scale, MidpointRounding.ToEven) + zero, 0f, 15f);
                    codes[((long)r * blocks + block) * blockSize + i % blockSize] = (byte)code;
                    float q = (code - zero) * scale;
                    float e = (float)((w[at] - q) / d);
                    errors[(long)r * Batch + (i - start)] = e;
                    // Feedback inside the batch right away; past it, once per batch below.
                    Span<float> later = w.AsSpan((int)(at + 1), end - i - 1);
                    TensorPrimitives.MultiplyAdd(uRow, -e, later, later);
                    w[at] = q;
                }
            }
            PropagateBlockError(w, n, k, errors, Batch, u, start, end);
        }

        // Padding positions of a partial last block hold the zero point (value 0), as QuantizeBlocks writes them.
        for (int r = 0; r < n; r++)
        {
            for (int i = k; i < blocks * blockSize; i++)
            {
                codes[((long)r * blocks + i / blockSize) * blockSize + i % blockSize] = zeros[r * blocks + i / blockSize];
            }
        }
        var packed = new byte[(long)n * blocks * blockSize / 2];
        Int4Kernels.Pack(codes, packed);
        byte[]? zeroPoints = null;
        if (!symmetric)
        {
            zeroPoints = new byte[n * zpBytesPerRow];
            for (int r = 0; r < n; r++)
            {
                Int4Kernels.Pack(zeros.AsSpan(r * blocks, blocks), zeroPoints.AsSpan(r * zpBytesPerRow, zpBytesPerRow));
            }
        }
        float maxError = 0f;
        for (long i = 0; i < w.Length; i++)
        {
            maxError = MathF.Max(maxError, MathF.Abs(channelMajor[(int)i] - w[i]));
        }
        return (packed, scales, zeroPoints, maxError);
    }

    /// <summary>
    /// GPTQ in activation order with static groups: each block's scale and zero point are fixed first from the
    /// original weights (so the stored layout stays MatMulNBits' plain blocks, no g_idx), then the input positions are
    /// quantized from the largest Hessian diagonal (the inputs with the most energy) to the smallest, so the error of
    /// the important inputs is pushed onto the unimportant ones rather than the other way round.
    /// </summary>
    private static (byte[] Packed, float[] Scales, byte[]? ZeroPoints, float MaxError)? QuantizeInActivationOrder(
        ReadOnlySpan<float> channelMajor, int n, int k, double[] hessian, int blockSize, bool symmetric, double dampening, bool mseScales)
    {
        int blocks = (k + blockSize - 1) / blockSize;
        var scales = new float[n * blocks];
        var zeros = new byte[n * blocks];
        var padded = new float[blockSize];
        for (int r = 0; r < n; r++)
        {
            for (int b = 0; b < blocks; b++)
            {
                int len = Math.Min(blockSize, k - b * blockSize);
                padded.AsSpan().Clear();
                channelMajor.Slice(r * k + b * blockSize, len).CopyTo(padded);
                (scales[r * blocks + b], zeros[r * blocks + b]) = Int4WeightQuantizer.BlockParameters(padded, symmetric, mseScales);
            }
        }
        // Largest diagonal first; ties keep the input order (a stable sort).
        int[] order = Enumerable.Range(0, k).OrderByDescending(i => hessian[(long)i * k + i]).ThenBy(i => i).ToArray();
        var permutedH = new double[(long)k * k];
        for (int i = 0; i < k; i++)
        {
            for (int j = 0; j < k; j++)
            {
                permutedH[(long)i * k + j] = hessian[(long)order[i] * k + order[j]];
            }
        }
        var permutedW = new float[(long)n * k];
        for (int r = 0; r < n; r++)
        {
            for (int i = 0; i < k; i++)
            {
                permutedW[(long)r * k + i] = channelMajor[(int)((long)r * k + order[i])];
            }
        }
        // Position i of the permuted layer uses the fixed block parameters of original input order[i].
        float[]? dequantized = Feedback(permutedW, n, k, permutedH, dampening, (r, i) => (scales[r * blocks + order[i] / blockSize], zeros[r * blocks + order[i] / blockSize]));
        if (dequantized == null)
        {
            return null;
        }
        var codes = new byte[(long)n * blocks * blockSize];
        float maxError = 0f;
        for (int r = 0; r < n; r++)
        {
            for (int b = 0; b < blocks; b++)
            {
                codes.AsSpan((int)(((long)r * blocks + b) * blockSize), blockSize).Fill(zeros[r * blocks + b]); // padding = the zero point
            }
            for (int i = 0; i < k; i++)
            {
                int c = order[i];
                float q = dequantized[(long)r * k + i];
                float scale = scales[r * blocks + c / blockSize];
                byte zero = zeros[r * blocks + c / blockSize];
                codes[((long)r * blocks + c / blockSize) * blockSize + c % blockSize] = (byte)Math.Clamp(MathF.Round(q / scale, MidpointRounding.ToEven) + zero, 0f, 15f);
                maxError = MathF.Max(maxError, MathF.Abs(channelMajor[(int)((long)r * k + c)] - q));
            }
        }
        var packed = new byte[(long)n * blocks * blockSize / 2];
        Int4Kernels.Pack(codes, packed);
        byte[]? zeroPoints = null;
        if (!symmetric)
        {
            int zpBytesPerRow = (blocks + 1) / 2;
            zeroPoints = new byte[n * zpBytesPerRow];
            for (int r = 0; r < n; r++)
            {
                Int4Kernels.Pack(zeros.AsSpan(r * blocks, blocks), zeroPoints.AsSpan(r * zpBytesPerRow, zpBytesPerRow));
            }
        }
        return (packed, scales, zeroPoints, maxError);
    }

    /// <summary>
    /// The error-feedback loop over the channel-major [n, k] weights <paramref name="w"/> (modified: on return each
    /// weight holds its dequantized value) with fixed per-position grid parameters <paramref name="grid"/>(row, position);
    /// weights that are exactly zero on entry stay zero. Null when H would not factorize.
    /// </summary>
    private static float[]? Feedback(float[] w, int n, int k, double[] hessian, double dampening, Func<int, int, (float Scale, byte Zero)> grid)
    {
        float[] original = (float[])w.Clone();
        double[]? u = FactorDecouplingDeadInputs((double[])hessian.Clone(), k, dampening, i =>
        {
            for (int r = 0; r < n; r++)
            {
                w[(long)r * k + i] = 0f;
                original[(long)r * k + i] = 0f;
            }
        });
        if (u == null)
        {
            return null;
        }
        var errors = new float[(long)n * Batch];
        var uBatchRow = new float[Batch];
        for (int start = 0; start < k; start += Batch)
        {
            int end = Math.Min(k, start + Batch);
            for (int i = start; i < end; i++)
            {
                double d = u[(long)i * k + i];
                Span<float> uRow = uBatchRow.AsSpan(0, end - i - 1);
                for (int j = i + 1; j < end; j++)
                {
                    uRow[j - i - 1] = (float)u[(long)i * k + j];
                }
                for (int r = 0; r < n; r++)
                {
                    long at = (long)r * k + i;
                    (float scale, byte zero) = grid(r, i);
                    int code = original[at] == 0f ? zero
                        : (int)Math.Clamp(MathF.Round(w[at] / scale, MidpointRounding.ToEven) + zero, 0f, 15f);
                    float q = (code - zero) * scale;
                    float e = (float)((w[at] - q) / d);
                    errors[(long)r * Batch + (i - start)] = e;
                    Span<float> later = w.AsSpan((int)(at + 1), end - i - 1);
                    TensorPrimitives.MultiplyAdd(uRow, -e, later, later);
                    w[at] = q;
                }
            }
            PropagateBlockError(w, n, k, errors, Batch, u, start, end);
        }
        return w;
    }

    /// <summary>
    /// The damped upper factor of H^-1 (<see cref="DampedUpperFactorOfInverse"/>, dampening relative to H's mean diagonal,
    /// or to 1 where that is not positive) after every dead input of <paramref name="h"/> (a diagonal entry that is not
    /// positive: the input is zero on every calibration sample, so its weights never contribute) has been decoupled by a
    /// unit diagonal and handed to <paramref name="onDead"/>. <paramref name="h"/> is modified. Null when H would not factorize.
    /// </summary>
    internal static double[]? FactorDecouplingDeadInputs(double[] h, int k, double dampening, Action<int> onDead)
    {
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
                h[(long)i * k + i] = 1;
                onDead(i);
            }
        }
        return DampedUpperFactorOfInverse(h, k, dampening, meanDiagonal);
    }

    /// <summary>
    /// <see cref="UpperFactorOfInverse"/> with dampening <paramref name="dampening"/> x <paramref name="meanDiagonal"/>,
    /// retried with 10x, 100x and 1000x that when H is not positive definite; null if all fail.
    /// </summary>
    internal static double[]? DampedUpperFactorOfInverse(double[] hessian, int k, double dampening, double meanDiagonal)
    {
        double[]? u = null;
        for (int attempt = 0; attempt < 4 && u == null; attempt++)
        {
            u = UpperFactorOfInverse(hessian, k, dampening * Math.Pow(10, attempt) * meanDiagonal);
        }
        return u;
    }

    /// <summary>
    /// The lazy batch update of the channel-major [n, k] weights <paramref name="w"/>: W[:, end:] -= E x U[start:end, end:],
    /// where E[r, c] = <paramref name="errors"/>[r * <paramref name="errorStride"/> + c] for c &lt; end - start, through
    /// contiguous copies for the GEMM.
    /// </summary>
    internal static void PropagateBlockError(float[] w, int n, int k, float[] errors, int errorStride, double[] u, int start, int end)
    {
        int rest = k - end;
        if (rest <= 0)
        {
            return;
        }
        int width = end - start;
        var negE = new float[(long)n * width];
        for (int r = 0; r < n; r++)
        {
            for (int c = 0; c < width; c++)
            {
                negE[(long)r * width + c] = -errors[(long)r * errorStride + c];
            }
        }
        var uBlock = new float[(long)width * rest];
        for (int c = 0; c < width; c++)
        {
            for (int j = 0; j < rest; j++)
            {
                uBlock[(long)c * rest + j] = (float)u[(long)(start + c) * k + end + j];
            }
        }
        var tail = new float[(long)n * rest];
        for (int r = 0; r < n; r++)
        {
            w.AsSpan((int)((long)r * k + end), rest).CopyTo(tail.AsSpan((int)((long)r * rest), rest));
        }
        Gemm.Multiply(negE, uBlock, tail, n, rest, width, accumulate: true);
        for (int r = 0; r < n; r++)
        {
            tail.AsSpan((int)((long)r * rest), rest).CopyTo(w.AsSpan((int)((long)r * k + end), rest));
        }
    }

    /// <summary>Rows (or columns) handled together by the blocked factorization loops: their data stays in cache while the others stream past.</summary>
    private const int FactorBlock = 32;

    /// <summary>
    /// U, upper triangular with U^T U = (H + damp I)^-1, or null if H + damp I is not positive definite. With J the
    /// order reversal, J (H + damp I) J = L L^T (lower Cholesky), so H + damp I = R R^T with R = J L J upper, and
    /// (H + damp I)^-1 = R^-T R^-1: U = R^-1 = J L^-1 J, the (unique) upper Cholesky factor of the inverse, from one
    /// factorization and one triangular inversion (2/3 k^3 flops) instead of inverting H and factorizing again. Both
    /// steps are blocked so that <see cref="FactorBlock"/> rows are reused from cache while the long rows stream past,
    /// every inner loop a contiguous dot product (TensorPrimitives, vectorized), rows split over the processors.
    /// </summary>
    internal static double[]? UpperFactorOfInverse(double[] hessian, int k, double damp)
    {
        var a = new double[(long)k * k];
        for (int i = 0; i < k; i++)
        {
            for (int j = 0; j <= i; j++)
            {
                a[(long)i * k + j] = hessian[(long)(k - 1 - i) * k + (k - 1 - j)];
            }
            a[(long)i * k + i] += damp;
        }
        if (!CholeskyLower(a, k))
        {
            return null;
        }
        double[] invT = LowerInverseTransposed(a, k);
        // U[p, q] = (L^-1)[k-1-p, k-1-q] = invT[k-1-q, k-1-p].
        var upper = new double[(long)k * k];
        for (int p = 0; p < k; p++)
        {
            for (int q = p; q < k; q++)
            {
                upper[(long)p * k + q] = invT[(long)(k - 1 - q) * k + (k - 1 - p)];
            }
        }
        return upper;
    }

    /// <summary>
    /// In-place lower Cholesky factor (the upper triangle is not read; it is left as is); false if not positive
    /// definite. Left-looking by blocks of <see cref="FactorBlock"/> columns: first every row below takes the block
    /// columns' update from all earlier columns (one long dot product per entry, the block's rows reused from cache,
    /// rows in parallel), then the block is finished with the short updates from inside the block.
    /// </summary>
    internal static bool CholeskyLower(double[] a, int k)
    {
        for (int start = 0; start < k; start += FactorBlock)
        {
            int end = Math.Min(k, start + FactorBlock);
            if (start > 0)
            {
                Parallel.For(0, Chunks(k - start), chunk =>
                {
                    (int from, int to) = Chunk(start, k, chunk);
                    for (int i = from; i < to; i++)
                    {
                        ReadOnlySpan<double> rowI = a.AsSpan((int)((long)i * k), start);
                        for (int j = start; j < Math.Min(end, i + 1); j++)
                        {
                            a[(long)i * k + j] -= TensorPrimitives.Dot<double>(rowI, a.AsSpan((int)((long)j * k), start));
                        }
                    }
                });
            }
            // The diagonal block, then the rows below it (in parallel), each from the finished block rows.
            for (int j = start; j < end; j++)
            {
                ReadOnlySpan<double> rowJ = a.AsSpan((int)((long)j * k + start), j - start);
                double diagonal = a[(long)j * k + j] - TensorPrimitives.Dot<double>(rowJ, rowJ);
                if (!(diagonal > 0) || !double.IsFinite(diagonal))
                {
                    return false;
                }
                double root = Math.Sqrt(diagonal);
                a[(long)j * k + j] = root;
                for (int i = j + 1; i < end; i++)
                {
                    a[(long)i * k + j] = (a[(long)i * k + j] - TensorPrimitives.Dot<double>(a.AsSpan((int)((long)i * k + start), j - start), rowJ)) / root;
                }
            }
            if (end < k)
            {
                Parallel.For(0, Chunks(k - end), chunk =>
                {
                    (int from, int to) = Chunk(end, k, chunk);
                    for (int i = from; i < to; i++)
                    {
                        for (int j = start; j < end; j++)
                        {
                            double dot = TensorPrimitives.Dot<double>(a.AsSpan((int)((long)i * k + start), j - start), a.AsSpan((int)((long)j * k + start), j - start));
                            a[(long)i * k + j] = (a[(long)i * k + j] - dot) / a[(long)j * k + j];
                        }
                    }
                });
            }
        }
        return true;
    }

    /// <summary>
    /// The inverse of the lower triangular <paramref name="l"/> (its lower triangle with the diagonal), transposed:
    /// row i holds column i of L^-1 (nonzero from position i on). Forward substitution,
    /// (L^-1)[j, i] = -(sum over p in [i, j) of L[j, p] (L^-1)[p, i]) / L[j, j], for <see cref="FactorBlock"/> columns
    /// at once so each row of L is read once per block; blocks are independent and run in parallel.
    /// </summary>
    internal static double[] LowerInverseTransposed(double[] l, int k)
    {
        var invT = new double[(long)k * k];
        Parallel.For(0, (k + FactorBlock - 1) / FactorBlock, block =>
        {
            int first = block * FactorBlock, last = Math.Min(k, first + FactorBlock);
            for (int j = first; j < k; j++)
            {
                ReadOnlySpan<double> rowJ = l.AsSpan((int)((long)j * k + first), j - first);
                double diagonal = l[(long)j * k + j];
                for (int i = first; i < Math.Min(last, j + 1); i++)
                {
                    Span<double> column = invT.AsSpan((int)((long)i * k), k);
                    // column[first..i) is zero, so the dot product may start at 'first' for every column of the block.
                    column[j] = i == j ? 1.0 / diagonal : -TensorPrimitives.Dot<double>(rowJ, column.Slice(first, j - first)) / diagonal;
                }
            }
        });
        return invT;
    }

    /// <summary>Row ranges of about 64 rows for <see cref="Parallel.For(int, int, Action{int})"/> over [start, k).</summary>
    private static int Chunks(int rows) => (rows + 63) / 64;

    private static (int From, int To) Chunk(int start, int k, int chunk) => (start + chunk * 64, Math.Min(k, start + (chunk + 1) * 64));
}
