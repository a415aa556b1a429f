using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CompressOnBuild.Kernels;

/// <summary>
/// A reduction: every element goes through <c>Map</c>, the results are folded with <c>Combine</c>
/// starting from <c>Identity</c>. Combine must be associative and commutative (bit for bit), so every
/// vector width gives exactly the scalar answer. The vector forms are written once over a width
/// (<see cref="IVectorWidth{TF}"/>); the JIT specializes them per width struct.
/// </summary>
internal interface IReduceOp
{
    static abstract float Identity { get; }

    static abstract float Map(float x);

    static abstract float Combine(float a, float b);

    static abstract TF Map<TW, TF>(TF x)
        where TW : struct, IVectorWidth<TF>
        where TF : struct;

    static abstract TF Combine<TW, TF>(TF a, TF b)
        where TW : struct, IVectorWidth<TF>
        where TF : struct;
}

/// <summary>max |x|; IEEE maximum, so a NaN anywhere gives NaN.</summary>
internal readonly struct MaxAbsOp : IReduceOp
{
    public static float Identity => 0f;

    public static float Map(float x) => MathF.Abs(x);

    public static float Combine(float a, float b) => MathF.Max(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TF Map<TW, TF>(TF x)
        where TW : struct, IVectorWidth<TF>
        where TF : struct => TW.Abs(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TF Combine<TW, TF>(TF a, TF b)
        where TW : struct, IVectorWidth<TF>
        where TF : struct => TW.Max(a, b);
}

/// <summary>IEEE maximum (NaN propagates, -0 &lt; +0).</summary>
internal readonly struct MaxOp : IReduceOp
{
    public static float Identity => float.NegativeInfinity;

    public static float Map(float x) => x;

    public static float Combine(float a, float b) => MathF.Max(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TF Map<TW, TF>(TF x)
        where TW : struct, IVectorWidth<TF>
        where TF : struct => x;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TF Combine<TW, TF>(TF a, TF b)
        where TW : struct, IVectorWidth<TF>
        where TF : struct => TW.Max(a, b);
}

/// <summary>Sum of (x - x): 0 while every element is finite, NaN as soon as one is NaN or infinite.</summary>
internal readonly struct NonFiniteOp : IReduceOp
{
    public static float Identity => 0f;

    public static float Map(float x) => x - x;

    public static float Combine(float a, float b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TF Map<TW, TF>(TF x)
        where TW : struct, IVectorWidth<TF>
        where TF : struct => TW.Subtract(x, x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TF Combine<TW, TF>(TF a, TF b)
        where TW : struct, IVectorWidth<TF>
        where TF : struct => TW.Add(a, b);
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
                result = Vectorized<TOp, W512, Vector512<float>>(ref start, length, out i);
                break;
            case KernelImplementation.Vector256 when length >= Vector256<float>.Count:
                result = Vectorized<TOp, W256, Vector256<float>>(ref start, length, out i);
                break;
            case KernelImplementation.Vector128 when length >= Vector128<float>.Count:
                result = Vectorized<TOp, W128, Vector128<float>>(ref start, length, out i);
                break;
            default:
                break;
        }
        for (; i < length; i++)
        {
            result = TOp.Combine(result, TOp.Map(Unsafe.Add(ref start, i)));
        }
        return result;
    }

    /// <summary>Folds the whole vectors from index 0 (length &gt;= one vector); <paramref name="end"/> gets the first index not read.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Vectorized<TOp, TW, TF>(ref float start, int length, out int end)
        where TOp : struct, IReduceOp
        where TW : struct, IVectorWidth<TF>
        where TF : struct
    {
        int w = TW.Count;
        int i = 0;
        TF acc = TW.Create(TOp.Identity);
        TF acc1 = acc, acc2 = acc, acc3 = acc;
        // four independent chains so the combine latency does not serialize the loop
        for (; i <= length - 4 * w; i += 4 * w)
        {
            acc = TOp.Combine<TW, TF>(acc, TOp.Map<TW, TF>(TW.Load(ref start, (nuint)i)));
            acc1 = TOp.Combine<TW, TF>(acc1, TOp.Map<TW, TF>(TW.Load(ref start, (nuint)(i + w))));
            acc2 = TOp.Combine<TW, TF>(acc2, TOp.Map<TW, TF>(TW.Load(ref start, (nuint)(i + 2 * w))));
            acc3 = TOp.Combine<TW, TF>(acc3, TOp.Map<TW, TF>(TW.Load(ref start, (nuint)(i + 3 * w))));
        }
        for (; i <= length - w; i += w)
        {
            acc = TOp.Combine<TW, TF>(acc, TOp.Map<TW, TF>(TW.Load(ref start, (nuint)i)));
        }
        end = i;
        acc = TOp.Combine<TW, TF>(TOp.Combine<TW, TF>(acc, acc1), TOp.Combine<TW, TF>(acc2, acc3));
        return TW.Fold<TOp>(TOp.Identity, acc);
    }
}
