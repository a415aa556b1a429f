using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CompressOnBuild.Kernels;

/// <summary>
/// Fixed-width histograms over float spans (calibration ranges, percentiles). Bin of x:
/// <c>(int)clamp((x - min) * (bins / (max - min)), 0, bins - 1)</c> computed in float, so values below
/// <c>min</c> (and -∞) land in bin 0 and values above <c>max</c> (and +∞) in the last bin. NaN is not binned,
/// only counted. Ours: TensorPrimitives has no histogram. The vector paths compute bin indices a vector at a
/// time (same float operations as the scalar reference, so the same bins) and scatter into four interleaved
/// count tables to break store-to-load dependencies on repeated bins.
/// </summary>
public static class Histogram
{
    /// <summary>The default number of bins (as ORT's and TensorRT's entropy/percentile calibrators use).</summary>
    public const int DefaultBins = 2048;

    /// <summary>
    /// Adds the bin counts of <paramref name="values"/> to <paramref name="counts"/> (one bin per element of
    /// <paramref name="counts"/>) over [<paramref name="min"/>, <paramref name="max"/>]; returns how many values were NaN.
    /// </summary>
    /// <exception cref="ArgumentException">No bins, or min/max are not finite with min &lt; max.</exception>
    public static long Accumulate(ReadOnlySpan<float> values, float min, float max, Span<long> counts) =>
        Accumulate(values, min, max, counts, KernelSelector.Current);

    /// <summary>A new histogram of <paramref name="bins"/> bins; <paramref name="nanCount"/> gets the NaN count.</summary>
    public static long[] Compute(ReadOnlySpan<float> values, float min, float max, out long nanCount, int bins = DefaultBins)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bins, 1);
        var counts = new long[bins];
        nanCount = Accumulate(values, min, max, counts);
        return counts;
    }

    internal static void Check(float min, float max, int bins)
    {
        if (bins < 1)
        {
            throw new ArgumentException("A histogram needs at least one bin.", nameof(bins));
        }
        if (!float.IsFinite(min) || !float.IsFinite(max) || !(min < max))
        {
            throw new ArgumentException($"The histogram range [{min}, {max}] must be finite and non-empty.");
        }
    }

    /// <summary>bins / (max - min) in float (0 if the width overflows: everything then lands in bin 0).</summary>
    internal static float Scale(float min, float max, int bins) => bins / (max - min);

    /// <summary>The bin <see cref="Accumulate"/> puts the non-NaN value <paramref name="x"/> in (values outside the range land in the edge bins).</summary>
    public static int BinOf(float x, float min, float max, int bins)
    {
        Check(min, max, bins);
        return ScalarReference.HistogramBin(x, min, Scale(min, max, bins), bins - 1);
    }

    internal static long Accumulate(ReadOnlySpan<float> values, float min, float max, Span<long> counts, KernelImplementation implementation)
    {
        int bins = counts.Length;
        Check(min, max, bins);
        // Below ~2 elements per bin, clearing and folding a table costs more than the scatter it speeds up.
        if (implementation == KernelImplementation.Scalar || values.Length < Math.Max(4 * Vector512<float>.Count, 2 * bins))
        {
            return ScalarReference.Histogram(values, min, max, counts);
        }
        // Small inputs scatter straight into the caller's counts; large ones into four int tables
        // (lane j -> table j % 4) that are folded in at the end. Each table gets at most n/4 + 1 counts per bin.
        bool tables = values.Length >= 8 * bins;
        int stride = bins + 1; // slot `bins` of each table absorbs NaN lanes
        int[]? rented = null;
        long nan;
        if (tables)
        {
            rented = ArrayPool<int>.Shared.Rent(4 * stride);
            Span<int> t = rented.AsSpan(0, 4 * stride);
            t.Clear();
            nan = Scatter(values, min, max, bins, ref MemoryMarshal.GetReference(t), stride, implementation);
            for (int b = 0; b < bins; b++)
            {
                counts[b] += (long)t[b] + t[stride + b] + t[2 * stride + b] + t[3 * stride + b];
            }
            ArrayPool<int>.Shared.Return(rented);
        }
        else
        {
            rented = ArrayPool<int>.Shared.Rent(stride);
            Span<int> t = rented.AsSpan(0, stride);
            t.Clear();
            nan = Scatter(values, min, max, bins, ref MemoryMarshal.GetReference(t), 0, implementation);
            for (int b = 0; b < bins; b++)
            {
                counts[b] += t[b];
            }
            ArrayPool<int>.Shared.Return(rented);
        }
        return nan;
    }

    /// <summary>Vector index computation + scalar scatter. Table j (of 4) starts at j * stride (stride 0: one table).</summary>
    private static long Scatter(ReadOnlySpan<float> values, float min, float max, int bins, ref int table, int stride,
        KernelImplementation implementation)
    {
        ref float xs = ref MemoryMarshal.GetReference(values);
        int n = values.Length;
        float scale = Scale(min, max, bins);
        float top = bins - 1;
        int i = 0;
        ref int t1 = ref Unsafe.Add(ref table, stride);
        ref int t2 = ref Unsafe.Add(ref table, 2 * stride);
        ref int t3 = ref Unsafe.Add(ref table, 3 * stride);
        switch (implementation)
        {
            case KernelImplementation.Vector512:
                i = ScatterVectorized<W512, Vector512<float>, Vector512<double>, Vector512<int>>(ref xs, n, min, scale, top, bins, ref table, stride);
                break;
            case KernelImplementation.Vector256:
                i = ScatterVectorized<W256, Vector256<float>, Vector256<double>, Vector256<int>>(ref xs, n, min, scale, top, bins, ref table, stride);
                break;
            case KernelImplementation.Vector128:
                i = ScatterVectorized<W128, Vector128<float>, Vector128<double>, Vector128<int>>(ref xs, n, min, scale, top, bins, ref table, stride);
                break;
            default:
                break;
        }
        for (; i < n; i++)
        {
            float x = Unsafe.Add(ref xs, i);
            Unsafe.Add(ref table, float.IsNaN(x) ? bins : ScalarReference.HistogramBin(x, min, scale, top))++;
        }
        long nan = Unsafe.Add(ref table, bins);
        if (stride != 0)
        {
            nan += (long)Unsafe.Add(ref t1, bins) + Unsafe.Add(ref t2, bins) + Unsafe.Add(ref t3, bins);
        }
        return nan;
    }

    /// <summary>The whole vectors of <see cref="Scatter"/> (lane j into table j % 4); returns the first index not done.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int ScatterVectorized<TW, TF, TD, TI>(ref float xs, int n, float min, float scale, float top, int bins, ref int table, int stride)
        where TW : struct, IVectorWidth<TF, TD, TI>
        where TF : struct
        where TD : struct
        where TI : struct
    {
        ref int t1 = ref Unsafe.Add(ref table, stride);
        ref int t2 = ref Unsafe.Add(ref table, 2 * stride);
        ref int t3 = ref Unsafe.Add(ref table, 3 * stride);
        TF vmin = TW.Create(min);
        TF vscale = TW.Create(scale);
        TF vtop = TW.Create(top);
        TI vnan = TW.Create(bins);
        Unsafe.SkipInit(out TI idx);
        ref int k = ref Unsafe.As<TI, int>(ref idx);
        int i = 0;
        for (; i <= n - TW.Count; i += TW.Count)
        {
            idx = TW.HistogramBins(TW.Load(ref xs, (nuint)i), vmin, vscale, vtop, vnan);
            for (int j = 0; j < TW.Count; j += 4)
            {
                Unsafe.Add(ref table, Unsafe.Add(ref k, j))++;
                Unsafe.Add(ref t1, Unsafe.Add(ref k, j + 1))++;
                Unsafe.Add(ref t2, Unsafe.Add(ref k, j + 2))++;
                Unsafe.Add(ref t3, Unsafe.Add(ref k, j + 3))++;
            }
        }
        return i;
    }
}

internal static partial class ScalarReference
{
    /// <summary>The bin of a non-NaN value.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int HistogramBin(float x, float min, float scale, float top) =>
        (int)MathF.Min(MathF.Max((x - min) * scale, 0f), top);

    public static long Histogram(ReadOnlySpan<float> values, float min, float max, Span<long> counts)
    {
        int bins = counts.Length;
        float scale = Kernels.Histogram.Scale(min, max, bins);
        float top = bins - 1;
        long nan = 0;
        foreach (float x in values)
        {
            if (float.IsNaN(x))
            {
                nan++;
            }
            else
            {
                counts[HistogramBin(x, min, scale, top)]++;
            }
        }
        return nan;
    }
}
