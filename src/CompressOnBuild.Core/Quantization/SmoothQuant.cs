using CompressOnBuild.Core.Passes;
using CompressOnBuild.Kernels;

namespace CompressOnBuild.Core.Quantization;

/// <summary>
/// SmoothQuant-style activation smoothing for dynamic int8 (Xiao et al., 2023): a layer input X whose per-tensor
/// dynamic range is dominated by a few outlier channels is divided per channel by s (one Mul before the quantized
/// layers that read it) and the weights' input rows are multiplied by s, so X W is unchanged in float while the
/// quantized X loses less resolution. s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) over every quantized consumer of X.
/// <para>
/// Measured, not assumed: for every input, each alpha of <see cref="Alphas"/> and "no smoothing" are simulated on
/// calibration rows (ORT's DynamicQuantizeLinear on groups of <see cref="RowsPerCall"/> rows, the pass's own weight
/// encoding), and the one with the smallest summed output error ||X W - Q(X / s) Q(s W)||^2 over the consumers wins;
/// smoothing is kept only when it lowers that error by at least <see cref="MinimumGain"/>.
/// </para>
/// </summary>
internal static class SmoothQuant
{
    /// <summary>The migration strengths tried (0.5 is the paper's default).</summary>
    public static readonly float[] Alphas = [0.25f, 0.5f, 0.75f];

    /// <summary>Rows quantized with one range, standing in for one ORT call (one sample) of a batch-1 model.</summary>
    public const int RowsPerCall = 128;

    /// <summary>Calibration rows the errors are measured on (evenly spaced over all collected rows).</summary>
    public const int MeasuredRows = 512;

    /// <summary>Smallest relative error reduction for which smoothing is kept (else the input stays as it is).</summary>
    public const double MinimumGain = 0.05;

    /// <summary>A consumer of the smoothed input: its weight as channel-major [N, K] floats (alpha and transB applied).</summary>
    internal sealed record Consumer(float[] ChannelMajor, int N);

    /// <summary>What was decided for one input: the factors (null: not smoothed), the alpha, the errors measured.</summary>
    internal sealed record Decision(float[]? Factors, float Alpha, double ErrorWithout, double ErrorWith);

    /// <summary>
    /// Chooses the smoothing of one layer input: <paramref name="x"/> holds calibration rows of K values
    /// (<paramref name="rows"/> x <paramref name="k"/>, row-major), <paramref name="consumers"/> the quantized layers
    /// reading it. The same as <see cref="Decide(ActivationRows, IReadOnlyList{Consumer}, EncodingLevels)"/> on the
    /// statistics of those rows.
    /// </summary>
    public static Decision Decide(ReadOnlySpan<float> x, int rows, int k, IReadOnlyList<Consumer> consumers, EncodingLevels levels)
    {
        var sampler = new ActivationRowSampler(MeasuredRows);
        long[] shape = [rows, k];
        sampler.Count(x[..(rows * k)], shape);
        if (sampler.NeedsSecondPass)
        {
            sampler.Take(x[..(rows * k)], shape);
        }
        return sampler.Result() is { } r ? Decide(r, consumers, levels) : new Decision(null, 0f, 0, 0);
    }

    /// <summary>
    /// Chooses the smoothing of one layer input from its statistics (<paramref name="x"/>: the channel maxima over
    /// every calibration row and at most <see cref="MeasuredRows"/> evenly spaced rows, which the errors are measured
    /// on); <paramref name="consumers"/> are the quantized layers reading it.
    /// </summary>
    /// <param name="scratch">Working arrays to reuse across calls (one per thread); null: made for this call.</param>
    public static Decision Decide(ActivationRows x, IReadOnlyList<Consumer> consumers, EncodingLevels levels, Scratch? scratch = null)
    {
        ArgumentNullException.ThrowIfNull(x);
        int k = x.Width;
        float[] activationMax = x.ColumnMaxAbs;
        var weightMax = new float[k];
        foreach (Consumer c in consumers)
        {
            var colMax = new float[k];
            TensorStats.ColumnMaxAbs(c.ChannelMajor, c.N, k, colMax);
            for (int j = 0; j < k; j++)
            {
                weightMax[j] = MathF.Max(weightMax[j], colMax[j]);
            }
        }

        // The measured rows, evenly spaced; their float products are the reference.
        int m = Math.Min(x.Count, MeasuredRows);
        float[] sample = x.Rows.Length == m * k ? x.Rows : x.Rows[..(m * k)];
        scratch ??= new Scratch();
        scratch.Fit(m, k, consumers.Count == 0 ? 0 : consumers.Max(c => c.N));
        var reference = consumers.Select(c =>
        {
            var y = new float[m * c.N];
            Span<float> transposed = scratch.Transposed.AsSpan(0, c.N * k);
            PassGraph.Transpose<float>(c.ChannelMajor, c.N, k, transposed);
            Kernels.Gemm.Multiply(sample, transposed, y, m, c.N, k);
            return y;
        }).ToArray();

        double without = Error(sample, m, k, null, consumers, reference, levels, scratch);
        Decision best = new(null, 0f, without, without);
        foreach (float alpha in Alphas)
        {
            float[] s = Factors(activationMax, weightMax, alpha);
            double e = Error(sample, m, k, s, consumers, reference, levels, scratch);
            if (e < best.ErrorWith)
            {
                best = new Decision(s, alpha, without, e);
            }
        }
        return best.Factors != null && best.ErrorWith <= without * (1 - MinimumGain) ? best : new Decision(null, 0f, without, without);
    }

    /// <summary>s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), 1 where either is zero, kept within [1e-4, 1e4].</summary>
    public static float[] Factors(ReadOnlySpan<float> activationMax, ReadOnlySpan<float> weightMax, float alpha)
    {
        var s = new float[activationMax.Length];
        for (int j = 0; j < s.Length; j++)
        {
            float a = activationMax[j], w = weightMax[j];
            float v = a > 0f && w > 0f ? MathF.Pow(a, alpha) / MathF.Pow(w, 1f - alpha) : 1f;
            s[j] = float.IsFinite(v) ? Math.Clamp(v, 1e-4f, 1e4f) : 1f;
        }
        return s;
    }

    /// <summary>Weight rows (input channel j of a channel-major [N, K] matrix) multiplied by s_j, in place.</summary>
    public static void ScaleInputChannels(Span<float> channelMajor, int n, int k, ReadOnlySpan<float> s)
    {
        for (int r = 0; r < n; r++)
        {
            System.Numerics.Tensors.TensorPrimitives.Multiply(channelMajor.Slice(r * k, k), s, channelMajor.Slice(r * k, k));
        }
    }

    /// <summary>
    /// The arrays one measurement works in (the quantized rows, a consumer's scaled, dequantized and transposed weight,
    /// its product), kept across the alphas and inputs so that measuring every input of a model leaves no garbage of
    /// that size per evaluation behind; grown to the largest input and consumer measured.
    /// </summary>
    internal sealed class Scratch
    {
        public float[] Rows { get; private set; } = [];

        public float[] Weight { get; private set; } = [];

        public float[] Dequantized { get; private set; } = [];

        public float[] Transposed { get; private set; } = [];

        public float[] Product { get; private set; } = [];

        /// <summary>Makes room for <paramref name="m"/> rows of <paramref name="k"/> and consumers of up to <paramref name="n"/> channels.</summary>
        public void Fit(int m, int k, int n)
        {
            static float[] Grow(float[] a, long length) => a.Length >= length ? a : new float[length];
            Rows = Grow(Rows, (long)m * k);
            Weight = Grow(Weight, (long)n * k);
            Dequantized = Grow(Dequantized, (long)n * k);
            Transposed = Grow(Transposed, (long)n * k);
            Product = Grow(Product, (long)m * n);
        }
    }

    /// <summary>Summed squared error of the simulated int8 products against <paramref name="reference"/>.</summary>
    private static double Error(float[] sample, int m, int k, float[]? s, IReadOnlyList<Consumer> consumers, float[][] reference, EncodingLevels levels, Scratch scratch)
    {
        Span<float> xq = scratch.Rows.AsSpan(0, m * k);
        sample.AsSpan(0, m * k).CopyTo(xq);
        if (s != null)
        {
            for (int i = 0; i < m; i++)
            {
                System.Numerics.Tensors.TensorPrimitives.Divide(xq.Slice(i * k, k), s, xq.Slice(i * k, k));
            }
        }
        for (int start = 0; start < m; start += RowsPerCall)
        {
            FakeQuantizeDynamic(xq.Slice(start * k, Math.Min(RowsPerCall, m - start) * k));
        }
        double total = 0;
        for (int c = 0; c < consumers.Count; c++)
        {
            Consumer consumer = consumers[c];
            int n = consumer.N;
            Span<float> w = scratch.Weight.AsSpan(0, n * k);
            consumer.ChannelMajor.AsSpan(0, n * k).CopyTo(w);
            if (s != null)
            {
                ScaleInputChannels(w, n, k, s);
            }
            Span<float> wq = scratch.Dequantized.AsSpan(0, n * k);
            Int8Weights.Dequantized(w, n, k, levels, wq);
            Span<float> transposed = scratch.Transposed.AsSpan(0, n * k);
            PassGraph.Transpose<float>(wq, n, k, transposed);
            Span<float> y = scratch.Product.AsSpan(0, m * n);
            Kernels.Gemm.Multiply(xq, transposed, y, m, n, k);
            float[] expected = reference[c];
            for (int i = 0; i < y.Length; i++)
            {
                double d = y[i] - expected[i];
                total += d * d;
            }
        }
        return total;
    }

    /// <summary>ONNX DynamicQuantizeLinear then dequantize, in place: uint8, range widened to include 0, one scale.</summary>
    internal static void FakeQuantizeDynamic(Span<float> v)
    {
        float min = MathF.Min(0f, System.Numerics.Tensors.TensorPrimitives.Min(v));
        float max = MathF.Max(0f, System.Numerics.Tensors.TensorPrimitives.Max(v));
        float scale = (max - min) / 255f;
        if (scale == 0f)
        {
            return;
        }
        float zero = Math.Clamp(MathF.Round(-min / scale, MidpointRounding.ToEven), 0f, 255f);
        for (int i = 0; i < v.Length; i++)
        {
            float q = Math.Clamp(MathF.Round(v[i] / scale, MidpointRounding.ToEven) + zero, 0f, 255f);
            v[i] = (q - zero) * scale;
        }
    }
}
