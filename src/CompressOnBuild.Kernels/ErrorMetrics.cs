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
            {
                Vector512<double> vdot = default, vxx = default, vyy = default, vdd = default;
                Vector512<float> vmax = default;
                for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
                {
                    Vector512<float> x = Vector512.LoadUnsafe(ref xs, (nuint)i);
                    Vector512<float> y = Vector512.LoadUnsafe(ref ys, (nuint)i);
                    Vector512<float> diff = x - y;
                    vmax = Vector512.Max(vmax, Vector512.Abs(diff));
                    (Vector512<double> xl, Vector512<double> xu) = Vector512.Widen(x);
                    (Vector512<double> yl, Vector512<double> yu) = Vector512.Widen(y);
                    (Vector512<double> dl, Vector512<double> du) = Vector512.Widen(diff);
                    vdot += xl * yl + xu * yu;
                    vxx += xl * xl + xu * xu;
                    vyy += yl * yl + yu * yu;
                    vdd += dl * dl + du * du;
                }
                dot = Vector512.Sum(vdot);
                xx = Vector512.Sum(vxx);
                yy = Vector512.Sum(vyy);
                dd = Vector512.Sum(vdd);
                maxDiff = MaxLanes(vmax.GetLower().GetLower(), vmax.GetLower().GetUpper(), vmax.GetUpper().GetLower(), vmax.GetUpper().GetUpper());
                break;
            }
            case KernelImplementation.Vector256 when n >= Vector256<float>.Count:
            {
                Vector256<double> vdot = default, vxx = default, vyy = default, vdd = default;
                Vector256<float> vmax = default;
                for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
                {
                    Vector256<float> x = Vector256.LoadUnsafe(ref xs, (nuint)i);
                    Vector256<float> y = Vector256.LoadUnsafe(ref ys, (nuint)i);
                    Vector256<float> diff = x - y;
                    vmax = Vector256.Max(vmax, Vector256.Abs(diff));
                    (Vector256<double> xl, Vector256<double> xu) = Vector256.Widen(x);
                    (Vector256<double> yl, Vector256<double> yu) = Vector256.Widen(y);
                    (Vector256<double> dl, Vector256<double> du) = Vector256.Widen(diff);
                    vdot += xl * yl + xu * yu;
                    vxx += xl * xl + xu * xu;
                    vyy += yl * yl + yu * yu;
                    vdd += dl * dl + du * du;
                }
                dot = Vector256.Sum(vdot);
                xx = Vector256.Sum(vxx);
                yy = Vector256.Sum(vyy);
                dd = Vector256.Sum(vdd);
                maxDiff = MaxLanes(vmax.GetLower(), vmax.GetUpper(), Vector128<float>.Zero, Vector128<float>.Zero);
                break;
            }
            case KernelImplementation.Vector128 when n >= Vector128<float>.Count:
            {
                Vector128<double> vdot = default, vxx = default, vyy = default, vdd = default;
                Vector128<float> vmax = default;
                for (; i <= n - Vector128<float>.Count; i += Vector128<float>.Count)
                {
                    Vector128<float> x = Vector128.LoadUnsafe(ref xs, (nuint)i);
                    Vector128<float> y = Vector128.LoadUnsafe(ref ys, (nuint)i);
                    Vector128<float> diff = x - y;
                    vmax = Vector128.Max(vmax, Vector128.Abs(diff));
                    (Vector128<double> xl, Vector128<double> xu) = Vector128.Widen(x);
                    (Vector128<double> yl, Vector128<double> yu) = Vector128.Widen(y);
                    (Vector128<double> dl, Vector128<double> du) = Vector128.Widen(diff);
                    vdot += xl * yl + xu * yu;
                    vxx += xl * xl + xu * xu;
                    vyy += yl * yl + yu * yu;
                    vdd += dl * dl + du * du;
                }
                dot = Vector128.Sum(vdot);
                xx = Vector128.Sum(vxx);
                yy = Vector128.Sum(vyy);
                dd = Vector128.Sum(vdd);
                maxDiff = MaxLanes(vmax, Vector128<float>.Zero, Vector128<float>.Zero, Vector128<float>.Zero);
                break;
            }
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

    private static float MaxLanes(Vector128<float> a, Vector128<float> b, Vector128<float> c, Vector128<float> d)
    {
        Vector128<float> m = Vector128.Max(Vector128.Max(a, b), Vector128.Max(c, d));
        return MathF.Max(MathF.Max(m.GetElement(0), m.GetElement(1)), MathF.Max(m.GetElement(2), m.GetElement(3)));
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
