using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CompressOnBuild.Kernels;

/// <summary>
/// float32 -> IEEE half conversion for weights. Finite values beyond the half range (|x| &gt; 65504) are clamped
/// to +-65504 instead of becoming infinity, and counted; infinities and NaN keep their meaning; everything else
/// rounds to nearest even (the conversion .NET's <see cref="Half"/> defines). Every implementation is
/// bit-identical to the scalar reference.
/// </summary>
public static class Float16Kernels
{
    /// <summary>The largest finite half value.</summary>
    public const float MaxHalf = 65504f;

    /// <summary>Converts <paramref name="values"/> to half, clamping finite out-of-range values; returns how many were clamped.</summary>
    public static int ConvertSaturating(ReadOnlySpan<float> values, Span<Half> destination) =>
        ConvertSaturatingCore(values, destination, KernelSelector.Current);

    /// <summary>How many values are finite but beyond the half range.</summary>
    public static int CountOutOfRange(ReadOnlySpan<float> values) => CountCore(values, KernelSelector.Current);

    internal static int ConvertSaturatingCore(ReadOnlySpan<float> values, Span<Half> destination, KernelImplementation implementation)
    {
        if (destination.Length < values.Length)
        {
            throw new ArgumentException($"The destination holds {destination.Length} elements; {values.Length} are needed.");
        }
        if (implementation == KernelImplementation.Scalar)
        {
            return ScalarReference.ConvertToHalfSaturating(values, destination);
        }
        // Clamp in chunks into a stack buffer, then let TensorPrimitives convert (it is vectorized and rounds
        // to nearest even exactly like the Half cast).
        const int Chunk = 256;
        Span<float> clamped = stackalloc float[Chunk];
        int count = 0;
        for (int start = 0; start < values.Length; start += Chunk)
        {
            int n = Math.Min(Chunk, values.Length - start);
            count += Clamp(values.Slice(start, n), clamped[..n], implementation);
            TensorPrimitives.ConvertToHalf(clamped[..n], destination.Slice(start, n));
        }
        return count;
    }

    internal static int CountCore(ReadOnlySpan<float> values, KernelImplementation implementation)
    {
        const int Chunk = 256;
        Span<float> scratch = stackalloc float[Chunk];
        int count = 0;
        for (int start = 0; start < values.Length; start += Chunk)
        {
            int n = Math.Min(Chunk, values.Length - start);
            count += Clamp(values.Slice(start, n), scratch[..n], implementation);
        }
        return count;
    }

    /// <summary>Writes x clamped to +-65504 when finite and out of range, else x; returns the number clamped.</summary>
    private static int Clamp(ReadOnlySpan<float> x, Span<float> destination, KernelImplementation implementation)
    {
        ref float xs = ref MemoryMarshal.GetReference(x);
        ref float d = ref MemoryMarshal.GetReference(destination);
        int n = x.Length;
        int i = 0;
        int count = 0;
        switch (implementation)
        {
            case KernelImplementation.Vector512:
                i = ClampVectorized<W512, Vector512<float>>(ref xs, ref d, n, ref count);
                break;
            case KernelImplementation.Vector256:
                i = ClampVectorized<W256, Vector256<float>>(ref xs, ref d, n, ref count);
                break;
            case KernelImplementation.Vector128:
                i = ClampVectorized<W128, Vector128<float>>(ref xs, ref d, n, ref count);
                break;
            default:
                break;
        }
        for (; i < n; i++)
        {
            float v = Unsafe.Add(ref xs, i);
            bool over = ScalarReference.IsBeyondHalf(v);
            count += over ? 1 : 0;
            Unsafe.Add(ref d, i) = over ? MathF.CopySign(MaxHalf, v) : v;
        }
        return count;
    }

    /// <summary>The whole vectors of <see cref="Clamp"/>; adds the clamped count to <paramref name="count"/>, returns the first index not done.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int ClampVectorized<TW, TF>(ref float xs, ref float d, int n, ref int count)
        where TW : struct, IVectorWidth<TF>
        where TF : struct
    {
        TF max = TW.Create(MaxHalf);
        TF inf = TW.Create(float.PositiveInfinity);
        TF sign = TW.Create(-0f);
        int i = 0;
        int c = count;
        for (; i <= n - TW.Count; i += TW.Count)
        {
            nuint at = (nuint)i;
            TF v = TW.Load(ref xs, at);
            TF abs = TW.Abs(v);
            TF over = TW.BitwiseAnd(TW.GreaterThan(abs, max), TW.LessThan(abs, inf));
            c += BitCount(TW.ExtractMostSignificantBits(over));
            TW.Store(TW.ConditionalSelect(over, TW.BitwiseOr(TW.BitwiseAnd(v, sign), max), v), ref d, at);
        }
        count = c;
        return i;
    }

    private static int BitCount(ulong bits) => System.Numerics.BitOperations.PopCount(bits);
}

internal static partial class ScalarReference
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool IsBeyondHalf(float x) => float.IsFinite(x) && MathF.Abs(x) > Float16Kernels.MaxHalf;

    public static int ConvertToHalfSaturating(ReadOnlySpan<float> x, Span<Half> destination)
    {
        int count = 0;
        for (int i = 0; i < x.Length; i++)
        {
            float v = x[i];
            if (IsBeyondHalf(v))
            {
                v = MathF.CopySign(Float16Kernels.MaxHalf, v);
                count++;
            }
            destination[i] = (Half)v;
        }
        return count;
    }
}
