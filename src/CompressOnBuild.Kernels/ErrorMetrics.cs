using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CompressOnBuild.Kernels;

/// <summary>How far <c>actual</c> is from <c>expected</c> (sums accumulated in double).</summary>
/// <param name="Length">Number of element pairs.</param>
/// <param name="Dot">Σ expected·actual.</param>
/// <param name="ExpectedNorm">‖expected‖₂.</param>
/// <param name="ActualNorm">‖actual‖₂.</param>
/// <param name="L2Difference">‖expected − actual‖₂ (differences taken in float, squares summed in double).</param>
/// <param name="MaxAbsDifference">max |expected − actual| (NaN if any element is NaN).</param>
public readonly record struct ErrorMetricsResult(int Length, double Dot, double ExpectedNorm, double ActualNorm, double L2Difference, float MaxAbsDifference)
{
    /// <summary>Cosine similarity; 1 when both vectors are all zero, 0 when exactly one is.</summary>
    public double CosineSimilarity =>
        ExpectedNorm == 0 && ActualNorm == 0 ? 1.0
        : ExpectedNorm == 0 || ActualNorm == 0 ? 0.0
        : Dot / (ExpectedNorm * ActualNorm);

    /// <summary>‖expected − actual‖ / ‖expected‖ (0 when both are zero, +∞ when only expected is).</summary>
    public double RelativeL2 =>
        ExpectedNorm != 0 ? L2Difference / ExpectedNorm : L2Difference == 0 ? 0.0 : double.PositiveInfinity;
}

/// <summary>
/// Error metrics between two float spans in one pass. Ours rather than TensorPrimitives.Dot/Distance/
/// CosineSimilarity, which accumulate in float and need three passes; model outputs can have millions of
/// elements. Vector paths sum in a different order than the scalar reference, so sums agree to rounding,
/// and the max difference agrees exactly.
/// </summary>
public static class ErrorMetrics
{
    /// <summary>All metrics at once.</summary>
    public static ErrorMetricsResult Compare(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual) =>
        Compare(expected, actual, KernelSelector.Current);

    /// <summary>Σ x·y in double.</summary>
    public static double Dot(ReadOnlySpan<float> x, ReadOnlySpan<float> y) => Compare(x, y).Dot;

    /// <summary>Cosine similarity (see <see cref="ErrorMetricsResult.CosineSimilarity"/>).</summary>
    public static double CosineSimilarity(ReadOnlySpan<float> x, ReadOnlySpan<float> y) => Compare(x, y).CosineSimilarity;

    /// <summary>‖x − y‖₂.</summary>
    public static double L2Difference(ReadOnlySpan<float> x, ReadOnlySpan<float> y) => Compare(x, y).L2Difference;

    /// <summary>max |x − y|.</summary>
    public static float MaxAbsDifference(ReadOnlySpan<float> x, ReadOnlySpan<float> y) => Compare(x, y).MaxAbsDifference;

    internal static ErrorMetricsResult Compare(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, KernelImplementation implementation)
    {
        if (expected.Length != actual.Length)
        {
            throw new ArgumentException($"The spans differ in length ({expected.Length} vs {actual.Length}).", nameof(actual));
        }
        ref float xs = ref MemoryMarshal.GetReference(expected);
        ref float ys = ref MemoryMarshal.GetReference(actual);
        int n = expected.Length;
        int i = 0;
        double dot = 0, xx = 0, yy = 0, dd = 0;
        float maxDiff = 0f;
        switch (implementation)
        {
            case KernelImplementation.Vector512 when n >= Vector512<float>.Count:
                i = Vectorized<W512, Vector512<float>, Vector512<double>, Vector512<int>>(ref xs, ref ys, n, out dot, out xx, out yy, out dd, out maxDiff);
                break;
            case KernelImplementation.Vector256 when n >= Vector256<float>.Count:
                i = Vectorized<W256, Vector256<float>, Vector256<double>, Vector256<int>>(ref xs, ref ys, n, out dot, out xx, out yy, out dd, out maxDiff);
                break;
            case KernelImplementation.Vector128 when n >= Vector128<float>.Count:
                i = Vectorized<W128, Vector128<float>, Vector128<double>, Vector128<int>>(ref xs, ref ys, n, out dot, out xx, out yy, out dd, out maxDiff);
                break;
            default:
                break;
        }
        for (; i < n; i++)
        {
            float x = Unsafe.Add(ref xs, i);
            float y = Unsafe.Add(ref ys, i);
            float diff = x - y;
            maxDiff = MathF.Max(maxDiff, MathF.Abs(diff));
            dot += (double)x * y;
            xx += (double)x * x;
            yy += (double)y * y;
            dd += (double)diff * diff;
        }
        return new ErrorMetricsResult(n, dot, Math.Sqrt(xx), Math.Sqrt(yy), Math.Sqrt(dd), maxDiff);
    }

    /// <summary>
    /// The whole vectors from index 0: sums per lane in double (each width's own Sum order), max |diff| folded
    /// over the lanes (the same value in any order: the lanes are +0 or more, or NaN); returns the first index not read.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Vectorized<TW, TF, TD, TI>(ref float xs, ref float ys, int n,
        out double dot, out double xx, out double yy, out double dd, out float maxDiff)
        where TW : struct, IVectorWidth<TF, TD, TI>
        where TF : struct
        where TD : struct
        where TI : struct
    {
        TD vdot = default, vxx = default, vyy = default, vdd = default;
        TF vmax = default;
        int i = 0;
        for (; i <= n - TW.Count; i += TW.Count)
        {
            TF x = TW.Load(ref xs, (nuint)i);
            TF y = TW.Load(ref ys, (nuint)i);
            TF diff = TW.Subtract(x, y);
            vmax = TW.Max(vmax, TW.Abs(diff));
            (TD xl, TD xu) = TW.Widen(x);
            (TD yl, TD yu) = TW.Widen(y);
            (TD dl, TD du) = TW.Widen(diff);
            vdot = TW.Add(vdot, TW.Add(TW.Multiply(xl, yl), TW.Multiply(xu, yu)));
            vxx = TW.Add(vxx, TW.Add(TW.Multiply(xl, xl), TW.Multiply(xu, xu)));
            vyy = TW.Add(vyy, TW.Add(TW.Multiply(yl, yl), TW.Multiply(yu, yu)));
            vdd = TW.Add(vdd, TW.Add(TW.Multiply(dl, dl), TW.Multiply(du, du)));
        }
        dot = TW.Sum(vdot);
        xx = TW.Sum(vxx);
        yy = TW.Sum(vyy);
        dd = TW.Sum(vdd);
        maxDiff = TW.Fold<MaxOp>(0f, vmax);
        return i;
    }
}

internal static partial class ScalarReference
{
    public static ErrorMetricsResult Compare(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        double dot = 0, xx = 0, yy = 0, dd = 0;
        float maxDiff = 0f;
        for (int i = 0; i < expected.Length; i++)
        {
            float x = expected[i], y = actual[i];
            float diff = x - y;
            maxDiff = MathF.Max(maxDiff, MathF.Abs(diff));
            dot += (double)x * y;
            xx += (double)x * x;
            yy += (double)y * y;
            dd += (double)diff * diff;
        }
        return new ErrorMetricsResult(expected.Length, dot, Math.Sqrt(xx), Math.Sqrt(yy), Math.Sqrt(dd), maxDiff);
    }
}
