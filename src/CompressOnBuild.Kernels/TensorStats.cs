using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CompressOnBuild.Kernels;

/// <summary>Smallest and largest element; both are NaN when any element is NaN.</summary>
public readonly record struct MinMaxResult(float Min, float Max)
{
    /// <summary>True when the span held a NaN.</summary>
    public bool HasNaN => float.IsNaN(Min) || float.IsNaN(Max);
}

/// <summary>
/// Statistics over float spans used to pick quantization parameters. All are ours:
/// TensorPrimitives.MaxMagnitude returns the signed element and throws on empty input, and it has
/// no per-row/per-column forms or a finiteness check. Results are bit-identical for every
/// <see cref="KernelImplementation"/> (max/min/sum-of-zeros are order independent).
/// </summary>
public static class TensorStats
{
    /// <summary>Min and max with IEEE semantics (NaN propagates; -0 orders below +0).</summary>
    /// <exception cref="ArgumentException">The span is empty.</exception>
    public static MinMaxResult MinMax(ReadOnlySpan<float> values) => MinMax(values, KernelSelector.Current);

    /// <summary>max |x| over the span (0 for an empty span; NaN if any element is NaN).</summary>
    public static float MaxAbs(ReadOnlySpan<float> values) => MaxAbs(values, KernelSelector.Current);

    /// <summary>True when no element is NaN or ±infinity (true for an empty span).</summary>
    public static bool AllFinite(ReadOnlySpan<float> values) => AllFinite(values, KernelSelector.Current);

    /// <summary>For a row-major [rows, cols] matrix: destination[r] = max |matrix[r, *]|.</summary>
    public static void RowMaxAbs(ReadOnlySpan<float> matrix, int rows, int cols, Span<float> destination) =>
        RowMaxAbs(matrix, rows, cols, destination, KernelSelector.Current);

    /// <summary>For a row-major [rows, cols] matrix: destination[c] = max |matrix[*, c]|.</summary>
    public static void ColumnMaxAbs(ReadOnlySpan<float> matrix, int rows, int cols, Span<float> destination) =>
        ColumnMaxAbs(matrix, rows, cols, destination, KernelSelector.Current);

    /// <summary>
    /// For two rows a, b of equal length (rows 2i and 2i + 1 of a row-major matrix): acc[j] = max(acc[j], |a[j]| + |b[j]|)
    /// where a[j] and b[j] are both positive or both negative (a zero pairs with nothing). acc must start at 0 or above.
    /// </summary>
    public static void AccumulateSameSignPairMax(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> acc) =>
        AccumulateSameSignPairMax(a, b, acc, KernelSelector.Current);

    internal static void AccumulateSameSignPairMax(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> acc, KernelImplementation implementation)
    {
        if (b.Length < a.Length || acc.Length < a.Length)
        {
            throw new ArgumentException($"Rows of {a.Length} elements need a second row and an accumulator as long; got {b.Length} and {acc.Length}.");
        }
        ref float xa = ref MemoryMarshal.GetReference(a);
        ref float xb = ref MemoryMarshal.GetReference(b);
        ref float m = ref MemoryMarshal.GetReference(acc);
        int n = a.Length;
        int i = implementation switch
        {
            KernelImplementation.Vector512 => SameSignPairVectorized<W512, Vector512<float>>(ref xa, ref xb, ref m, n),
            KernelImplementation.Vector256 => SameSignPairVectorized<W256, Vector256<float>>(ref xa, ref xb, ref m, n),
            KernelImplementation.Vector128 => SameSignPairVectorized<W128, Vector128<float>>(ref xa, ref xb, ref m, n),
            _ => 0,
        };
        for (; i < n; i++)
        {
            Unsafe.Add(ref m, i) = ScalarReference.SameSignPairMax(Unsafe.Add(ref m, i), Unsafe.Add(ref xa, i), Unsafe.Add(ref xb, i));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int SameSignPairVectorized<TW, TF>(ref float xa, ref float xb, ref float m, int n)
        where TW : struct, IVectorWidth<TF>
        where TF : struct
    {
        TF zero = TW.Create(0f);
        int i = 0;
        for (; i <= n - TW.Count; i += TW.Count)
        {
            TF va = TW.Load(ref xa, (nuint)i);
            TF vb = TW.Load(ref xb, (nuint)i);
            TF same = TW.BitwiseOr(TW.BitwiseAnd(TW.GreaterThan(va, zero), TW.GreaterThan(vb, zero)),
                TW.BitwiseAnd(TW.LessThan(va, zero), TW.LessThan(vb, zero)));
            TF sum = TW.ConditionalSelect(same, TW.Add(TW.Abs(va), TW.Abs(vb)), zero);
            TW.Store(TW.Max(TW.Load(ref m, (nuint)i), sum), ref m, (nuint)i);
        }
        return i;
    }

    internal static MinMaxResult MinMax(ReadOnlySpan<float> values, KernelImplementation implementation)
    {
        if (values.IsEmpty)
        {
            throw new ArgumentException("MinMax needs at least one element.", nameof(values));
        }
        // One pass with both folds (two passes read a large tensor from memory twice); each fold has two
        // independent chains. Min/Max are associative and commutative bit for bit, so every width matches the reference.
        ref float start = ref MemoryMarshal.GetReference(values);
        int n = values.Length;
        int i = 0;
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        switch (implementation)
        {
            case KernelImplementation.Vector512 when n >= Vector512<float>.Count:
                MinMaxVectorized<W512, Vector512<float>>(ref start, n, ref i, ref min, ref max);
                break;
            case KernelImplementation.Vector256 when n >= Vector256<float>.Count:
                MinMaxVectorized<W256, Vector256<float>>(ref start, n, ref i, ref min, ref max);
                break;
            case KernelImplementation.Vector128 when n >= Vector128<float>.Count:
                MinMaxVectorized<W128, Vector128<float>>(ref start, n, ref i, ref min, ref max);
                break;
            default:
                break;
        }
        for (; i < n; i++)
        {
            float v = Unsafe.Add(ref start, i);
            min = MathF.Min(min, v);
            max = MathF.Max(max, v);
        }
        return new MinMaxResult(min, max);
    }

    /// <summary>The pairs of whole vectors from index 0, lanes folded into min/max; <paramref name="i"/> gets the first index not read.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MinMaxVectorized<TW, TF>(ref float start, int n, ref int i, ref float min, ref float max)
        where TW : struct, IVectorWidth<TF>
        where TF : struct
    {
        int w = TW.Count;
        int j = 0;
        TF lo0 = TW.Create(float.PositiveInfinity), lo1 = lo0;
        TF hi0 = TW.Create(float.NegativeInfinity), hi1 = hi0;
        for (; j <= n - 2 * w; j += 2 * w)
        {
            TF a = TW.Load(ref start, (nuint)j);
            TF b = TW.Load(ref start, (nuint)(j + w));
            lo0 = TW.Min(lo0, a);
            hi0 = TW.Max(hi0, a);
            lo1 = TW.Min(lo1, b);
            hi1 = TW.Max(hi1, b);
        }
        TF lo = TW.Min(lo0, lo1), hi = TW.Max(hi0, hi1);
        float mn = min, mx = max;
        for (int lane = 0; lane < w; lane++)
        {
            mn = MathF.Min(mn, TW.GetElement(lo, lane));
            mx = MathF.Max(mx, TW.GetElement(hi, lane));
        }
        i = j;
        min = mn;
        max = mx;
    }

    internal static float MaxAbs(ReadOnlySpan<float> values, KernelImplementation implementation) =>
        ReduceDriver.Run<MaxAbsOp>(values, implementation);

    internal static bool AllFinite(ReadOnlySpan<float> values, KernelImplementation implementation) =>
        ReduceDriver.Run<NonFiniteOp>(values, implementation) == 0f;

    internal static void RowMaxAbs(ReadOnlySpan<float> matrix, int rows, int cols, Span<float> destination, KernelImplementation implementation)
    {
        CheckMatrix(matrix.Length, rows, cols, destination.Length, rows);
        for (int r = 0; r < rows; r++)
        {
            destination[r] = ReduceDriver.Run<MaxAbsOp>(matrix.Slice(r * cols, cols), implementation);
        }
    }

    internal static void ColumnMaxAbs(ReadOnlySpan<float> matrix, int rows, int cols, Span<float> destination, KernelImplementation implementation)
    {
        CheckMatrix(matrix.Length, rows, cols, destination.Length, cols);
        Span<float> acc = destination[..cols];
        acc.Clear();
        for (int r = 0; r < rows; r++)
        {
            AccumulateMaxAbs(matrix.Slice(r * cols, cols), acc, implementation);
        }
    }

    /// <summary>acc[j] = max(acc[j], |x[j]|) (IEEE maximum).</summary>
    internal static void AccumulateMaxAbs(ReadOnlySpan<float> x, Span<float> acc, KernelImplementation implementation)
    {
        ref float xs = ref MemoryMarshal.GetReference(x);
        ref float a = ref MemoryMarshal.GetReference(acc);
        int n = x.Length;
        int i = 0;
        switch (implementation)
        {
            case KernelImplementation.Vector512:
                i = AccumulateMaxAbsVectorized<W512, Vector512<float>>(ref xs, ref a, n);
                break;
            case KernelImplementation.Vector256:
                i = AccumulateMaxAbsVectorized<W256, Vector256<float>>(ref xs, ref a, n);
                break;
            case KernelImplementation.Vector128:
                i = AccumulateMaxAbsVectorized<W128, Vector128<float>>(ref xs, ref a, n);
                break;
            default:
                break;
        }
        for (; i < n; i++)
        {
            Unsafe.Add(ref a, i) = MathF.Max(Unsafe.Add(ref a, i), MathF.Abs(Unsafe.Add(ref xs, i)));
        }
    }

    /// <summary>The whole vectors of <see cref="AccumulateMaxAbs"/>; returns the first index not done.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int AccumulateMaxAbsVectorized<TW, TF>(ref float xs, ref float a, int n)
        where TW : struct, IVectorWidth<TF>
        where TF : struct
    {
        int i = 0;
        for (; i <= n - TW.Count; i += TW.Count)
        {
            TW.Store(TW.Max(TW.Load(ref a, (nuint)i), TW.Abs(TW.Load(ref xs, (nuint)i))), ref a, (nuint)i);
        }
        return i;
    }

    internal static void CheckMatrix(int length, int rows, int cols, int destinationLength, int needed)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        if ((long)rows * cols != length)
        {
            throw new ArgumentException($"A [{rows}, {cols}] matrix needs {(long)rows * cols} elements, the span has {length}.");
        }
        if (destinationLength < needed)
        {
            throw new ArgumentException($"The destination needs {needed} elements, it has {destinationLength}.");
        }
    }
}

/// <summary>Plain scalar twins of the vector kernels: the behaviour every implementation must reproduce.</summary>
internal static partial class ScalarReference
{
    /// <summary>One element of <see cref="TensorStats.AccumulateSameSignPairMax(ReadOnlySpan{float}, ReadOnlySpan{float}, Span{float})"/>.</summary>
    public static float SameSignPairMax(float acc, float a, float b) =>
        (a > 0f && b > 0f) || (a < 0f && b < 0f) ? MathF.Max(acc, MathF.Abs(a) + MathF.Abs(b)) : acc;

    public static void AccumulateSameSignPairMax(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> acc)
    {
        for (int j = 0; j < a.Length; j++)
        {
            acc[j] = SameSignPairMax(acc[j], a[j], b[j]);
        }
    }

    public static MinMaxResult MinMax(ReadOnlySpan<float> values)
    {
        if (values.IsEmpty)
        {
            throw new ArgumentException("MinMax needs at least one element.", nameof(values));
        }
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        foreach (float v in values)
        {
            min = MathF.Min(min, v);
            max = MathF.Max(max, v);
        }
        return new MinMaxResult(min, max);
    }

    public static float MaxAbs(ReadOnlySpan<float> values)
    {
        float max = 0f;
        foreach (float v in values)
        {
            max = MathF.Max(max, MathF.Abs(v));
        }
        return max;
    }

    public static bool AllFinite(ReadOnlySpan<float> values)
    {
        foreach (float v in values)
        {
            if (!float.IsFinite(v))
            {
                return false;
            }
        }
        return true;
    }

    public static void RowMaxAbs(ReadOnlySpan<float> matrix, int rows, int cols, Span<float> destination)
    {
        for (int r = 0; r < rows; r++)
        {
            destination[r] = MaxAbs(matrix.Slice(r * cols, cols));
        }
    }

    public static void ColumnMaxAbs(ReadOnlySpan<float> matrix, int rows, int cols, Span<float> destination)
    {
        for (int c = 0; c < cols; c++)
        {
            float max = 0f;
            for (int r = 0; r < rows; r++)
            {
                max = MathF.Max(max, MathF.Abs(matrix[r * cols + c]));
            }
            destination[c] = max;
        }
    }
}
