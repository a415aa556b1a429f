using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CompressOnBuild.Kernels;

/// <summary>
/// A reduction: every element goes through <c>Map</c>, the results are folded with <c>Combine</c>
/// starting from <c>Identity</c>. Combine must be associative and commutative (bit for bit), so every
/// vector width gives exactly the scalar answer.
/// </summary>
internal interface IReduceOp
{
    static abstract float Identity { get; }

    static abstract float Map(float x);

    static abstract float Combine(float a, float b);

    static abstract Vector128<float> Map(Vector128<float> x);

    static abstract Vector128<float> Combine(Vector128<float> a, Vector128<float> b);

    static abstract Vector256<float> Map(Vector256<float> x);

    static abstract Vector256<float> Combine(Vector256<float> a, Vector256<float> b);

    static abstract Vector512<float> Map(Vector512<float> x);

    static abstract Vector512<float> Combine(Vector512<float> a, Vector512<float> b);
}

/// <summary>max |x|; IEEE maximum, so a NaN anywhere gives NaN.</summary>
internal readonly struct MaxAbsOp : IReduceOp
{
    public static float Identity => 0f;

    public static float Map(float x) => MathF.Abs(x);

    public static float Combine(float a, float b) => MathF.Max(a, b);

    public static Vector128<float> Map(Vector128<float> x) => Vector128.Abs(x);

    public static Vector128<float> Combine(Vector128<float> a, Vector128<float> b) => Vector128.Max(a, b);

    public static Vector256<float> Map(Vector256<float> x) => Vector256.Abs(x);

    public static Vector256<float> Combine(Vector256<float> a, Vector256<float> b) => Vector256.Max(a, b);

    public static Vector512<float> Map(Vector512<float> x) => Vector512.Abs(x);

    public static Vector512<float> Combine(Vector512<float> a, Vector512<float> b) => Vector512.Max(a, b);
}

/// <summary>IEEE minimum (NaN propagates, -0 &lt; +0).</summary>
internal readonly struct MinOp : IReduceOp
{
    public static float Identity => float.PositiveInfinity;

    public static float Map(float x) => x;

    public static float Combine(float a, float b) => MathF.Min(a, b);

    public static Vector128<float> Map(Vector128<float> x) => x;

    public static Vector128<float> Combine(Vector128<float> a, Vector128<float> b) => Vector128.Min(a, b);

    public static Vector256<float> Map(Vector256<float> x) => x;

    public static Vector256<float> Combine(Vector256<float> a, Vector256<float> b) => Vector256.Min(a, b);

    public static Vector512<float> Map(Vector512<float> x) => x;

    public static Vector512<float> Combine(Vector512<float> a, Vector512<float> b) => Vector512.Min(a, b);
}

/// <summary>IEEE maximum (NaN propagates, -0 &lt; +0).</summary>
internal readonly struct MaxOp : IReduceOp
{
    public static float Identity => float.NegativeInfinity;

    public static float Map(float x) => x;

    public static float Combine(float a, float b) => MathF.Max(a, b);

    public static Vector128<float> Map(Vector128<float> x) => x;

    public static Vector128<float> Combine(Vector128<float> a, Vector128<float> b) => Vector128.Max(a, b);

    public static Vector256<float> Map(Vector256<float> x) => x;

    public static Vector256<float> Combine(Vector256<float> a, Vector256<float> b) => Vector256.Max(a, b);

    public static Vector512<float> Map(Vector512<float> x) => x;

    public static Vector512<float> Combine(Vector512<float> a, Vector512<float> b) => Vector512.Max(a, b);
}

/// <summary>Sum of (x - x): 0 while every element is finite, NaN as soon as one is NaN or infinite.</summary>
internal readonly struct NonFiniteOp : IReduceOp
{
    public static float Identity => 0f;

    public static float Map(float x) => x - x;

    public static float Combine(float a, float b) => a + b;

    public static Vector128<float> Map(Vector128<float> x) => x - x;

    public static Vector128<float> Combine(Vector128<float> a, Vector128<float> b) => a + b;

    public static Vector256<float> Map(Vector256<float> x) => x - x;

    public static Vector256<float> Combine(Vector256<float> a, Vector256<float> b) => a + b;

    public static Vector512<float> Map(Vector512<float> x) => x - x;

    public static Vector512<float> Combine(Vector512<float> a, Vector512<float> b) => a + b;
}

internal static class ReduceDriver
{
    /// <summary>The scalar reference: a plain left fold.</summary>
    public static float Scalar<TOp>(ReadOnlySpan<float> x)
        where TOp : struct, IReduceOp
    {
        float result = TOp.Identity;
        foreach (float v in x)
        {
            result = TOp.Combine(result, TOp.Map(v));
        }
        return result;
    }

    public static float Run<TOp>(ReadOnlySpan<float> x, KernelImplementation implementation)
        where TOp : struct, IReduceOp
    {
        ref float start = ref MemoryMarshal.GetReference(x);
        int length = x.Length;
        int i = 0;
        float result = TOp.Identity;
        switch (implementation)
        {
            case KernelImplementation.Vector512 when length >= Vector512<float>.Count:
            {
                int w = Vector512<float>.Count;
                Vector512<float> acc = Vector512.Create(TOp.Identity);
                Vector512<float> acc1 = acc, acc2 = acc, acc3 = acc;
                // four independent chains so the combine latency does not serialize the loop
                for (; i <= length - 4 * w; i += 4 * w)
                {
                    acc = TOp.Combine(acc, TOp.Map(Vector512.LoadUnsafe(ref start, (nuint)i)));
                    acc1 = TOp.Combine(acc1, TOp.Map(Vector512.LoadUnsafe(ref start, (nuint)(i + w))));
                    acc2 = TOp.Combine(acc2, TOp.Map(Vector512.LoadUnsafe(ref start, (nuint)(i + 2 * w))));
                    acc3 = TOp.Combine(acc3, TOp.Map(Vector512.LoadUnsafe(ref start, (nuint)(i + 3 * w))));
                }
                for (; i <= length - w; i += w)
                {
                    acc = TOp.Combine(acc, TOp.Map(Vector512.LoadUnsafe(ref start, (nuint)i)));
                }
                acc = TOp.Combine(TOp.Combine(acc, acc1), TOp.Combine(acc2, acc3));
                Vector256<float> half = TOp.Combine(acc.GetLower(), acc.GetUpper());
                result = Fold<TOp>(result, TOp.Combine(half.GetLower(), half.GetUpper()));
                break;
            }
            case KernelImplementation.Vector256 when length >= Vector256<float>.Count:
            {
                int w = Vector256<float>.Count;
                Vector256<float> acc = Vector256.Create(TOp.Identity);
                Vector256<float> acc1 = acc, acc2 = acc, acc3 = acc;
                // four independent chains so the combine latency does not serialize the loop
                for (; i <= length - 4 * w; i += 4 * w)
                {
                    acc = TOp.Combine(acc, TOp.Map(Vector256.LoadUnsafe(ref start, (nuint)i)));
                    acc1 = TOp.Combine(acc1, TOp.Map(Vector256.LoadUnsafe(ref start, (nuint)(i + w))));
                    acc2 = TOp.Combine(acc2, TOp.Map(Vector256.LoadUnsafe(ref start, (nuint)(i + 2 * w))));
                    acc3 = TOp.Combine(acc3, TOp.Map(Vector256.LoadUnsafe(ref start, (nuint)(i + 3 * w))));
                }
                for (; i <= length - w; i += w)
                {
                    acc = TOp.Combine(acc, TOp.Map(Vector256.LoadUnsafe(ref start, (nuint)i)));
                }
                acc = TOp.Combine(TOp.Combine(acc, acc1), TOp.Combine(acc2, acc3));
                result = Fold<TOp>(result, TOp.Combine(acc.GetLower(), acc.GetUpper()));
                break;
            }
            case KernelImplementation.Vector128 when length >= Vector128<float>.Count:
            {
                int w = Vector128<float>.Count;
                Vector128<float> acc = Vector128.Create(TOp.Identity);
                Vector128<float> acc1 = acc, acc2 = acc, acc3 = acc;
                // four independent chains so the combine latency does not serialize the loop
                for (; i <= length - 4 * w; i += 4 * w)
                {
                    acc = TOp.Combine(acc, TOp.Map(Vector128.LoadUnsafe(ref start, (nuint)i)));
                    acc1 = TOp.Combine(acc1, TOp.Map(Vector128.LoadUnsafe(ref start, (nuint)(i + w))));
                    acc2 = TOp.Combine(acc2, TOp.Map(Vector128.LoadUnsafe(ref start, (nuint)(i + 2 * w))));
                    acc3 = TOp.Combine(acc3, TOp.Map(Vector128.LoadUnsafe(ref start, (nuint)(i + 3 * w))));
                }
                for (; i <= length - w; i += w)
                {
                    acc = TOp.Combine(acc, TOp.Map(Vector128.LoadUnsafe(ref start, (nuint)i)));
                }
                acc = TOp.Combine(TOp.Combine(acc, acc1), TOp.Combine(acc2, acc3));
                result = Fold<TOp>(result, acc);
                break;
            }
            default:
                break;
        }
        for (; i < length; i++)
        {
            result = TOp.Combine(result, TOp.Map(Unsafe.Add(ref start, i)));
        }
        return result;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Fold<TOp>(float result, Vector128<float> v)
        where TOp : struct, IReduceOp
    {
        for (int lane = 0; lane < Vector128<float>.Count; lane++)
        {
            result = TOp.Combine(result, v.GetElement(lane));
        }
        return result;
    }
}
