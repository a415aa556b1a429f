using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CompressOnBuild.Kernels;

/// <summary>
/// Magnitude-pruning helpers. Ours: TensorPrimitives has no counting, masking or selection kernels.
/// Magnitudes are compared as the bit patterns of |x| (sign bit cleared), which order exactly like the
/// floats for every non-NaN value, put -0 with +0, and order NaN above +∞; so selection is exact,
/// deterministic and bit-identical for every <see cref="KernelImplementation"/>.
/// </summary>
public static class Sparsity
{
    /// <summary>How many elements are ±0 (NaN is not zero).</summary>
    public static int CountZeros(ReadOnlySpan<float> values) => CountZeros(values, KernelSelector.Current);

    /// <summary>
    /// destination[i] = |values[i]| &lt; threshold ? +0 : values[i] (NaN is kept); returns how many elements were zeroed
    /// (including ones that already were ±0 below a positive threshold). The spans may be the same (in place).
    /// </summary>
    public static int ApplyMagnitudeThreshold(ReadOnlySpan<float> values, float threshold, Span<float> destination) =>
        ApplyMagnitudeThreshold(values, threshold, destination, KernelSelector.Current);

    /// <summary>In place: zero every element with |x| &lt; threshold; returns how many were zeroed.</summary>
    public static int ApplyMagnitudeThreshold(Span<float> values, float threshold) =>
        ApplyMagnitudeThreshold(values, threshold, values, KernelSelector.Current);

    /// <summary>
    /// The <paramref name="k"/>-th largest magnitude |x| (k = 1: the largest) by selection (expected O(n), no full sort).
    /// Zeroing every |x| below it keeps at least k elements (more on ties). NaN counts as the largest magnitude.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">k is not in 1..values.Length.</exception>
    public static float KthLargestMagnitude(ReadOnlySpan<float> values, int k) => KthLargestMagnitude(values, k, KernelSelector.Current);

    internal static int CountZeros(ReadOnlySpan<float> values, KernelImplementation implementation)
    {
        ref float xs = ref MemoryMarshal.GetReference(values);
        int n = values.Length;
        int i = 0;
        int count = 0;
        switch (implementation)
        {
            // Equals gives -1 per zero lane; subtracting accumulates counts per lane. A lane takes at most
            // n / width counts, far below int overflow.
            case KernelImplementation.Vector512:
            {
                Vector512<int> acc = default, acc1 = default;
                int w = Vector512<float>.Count;
                for (; i <= n - 2 * w; i += 2 * w)
                {
                    acc -= Vector512.Equals(Vector512.LoadUnsafe(ref xs, (nuint)i), Vector512<float>.Zero).AsInt32();
                    acc1 -= Vector512.Equals(Vector512.LoadUnsafe(ref xs, (nuint)(i + w)), Vector512<float>.Zero).AsInt32();
                }
                count = Vector512.Sum(acc + acc1);
                break;
            }
            case KernelImplementation.Vector256:
            {
                Vector256<int> acc = default, acc1 = default;
                int w = Vector256<float>.Count;
                for (; i <= n - 2 * w; i += 2 * w)
                {
                    acc -= Vector256.Equals(Vector256.LoadUnsafe(ref xs, (nuint)i), Vector256<float>.Zero).AsInt32();
                    acc1 -= Vector256.Equals(Vector256.LoadUnsafe(ref xs, (nuint)(i + w)), Vector256<float>.Zero).AsInt32();
                }
                count = Vector256.Sum(acc + acc1);
                break;
            }
            case KernelImplementation.Vector128:
            {
                Vector128<int> acc = default, acc1 = default;
                int w = Vector128<float>.Count;
                for (; i <= n - 2 * w; i += 2 * w)
                {
                    acc -= Vector128.Equals(Vector128.LoadUnsafe(ref xs, (nuint)i), Vector128<float>.Zero).AsInt32();
                    acc1 -= Vector128.Equals(Vector128.LoadUnsafe(ref xs, (nuint)(i + w)), Vector128<float>.Zero).AsInt32();
                }
                count = Vector128.Sum(acc + acc1);
                break;
            }
            default:
                break;
        }
        for (; i < n; i++)
        {
            count += Unsafe.Add(ref xs, i) == 0f ? 1 : 0;
        }
        return count;
    }

    internal static int ApplyMagnitudeThreshold(ReadOnlySpan<float> values, float threshold, Span<float> destination,
        KernelImplementation implementation)
    {
        if (destination.Length < values.Length)
        {
            throw new ArgumentException($"The destination holds {destination.Length} elements; {values.Length} are needed.");
        }
        ref float xs = ref MemoryMarshal.GetReference(values);
        ref float d = ref MemoryMarshal.GetReference(destination);
        int n = values.Length;
        int i = 0;
        int count = 0;
        switch (implementation)
        {
            case KernelImplementation.Vector512:
            {
                var t = Vector512.Create(threshold);
                Vector512<int> acc = default;
                for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
                {
                    Vector512<float> x = Vector512.LoadUnsafe(ref xs, (nuint)i);
                    Vector512<float> below = Vector512.LessThan(Vector512.Abs(x), t);
                    acc -= below.AsInt32();
                    Vector512.AndNot(x, below).StoreUnsafe(ref d, (nuint)i);
                }
                count = Vector512.Sum(acc);
                break;
            }
            case KernelImplementation.Vector256:
            {
                var t = Vector256.Create(threshold);
                Vector256<int> acc = default;
                for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
                {
                    Vector256<float> x = Vector256.LoadUnsafe(ref xs, (nuint)i);
                    Vector256<float> below = Vector256.LessThan(Vector256.Abs(x), t);
                    acc -= below.AsInt32();
                    Vector256.AndNot(x, below).StoreUnsafe(ref d, (nuint)i);
                }
                count = Vector256.Sum(acc);
                break;
            }
            case KernelImplementation.Vector128:
            {
                var t = Vector128.Create(threshold);
                Vector128<int> acc = default;
                for (; i <= n - Vector128<float>.Count; i += Vector128<float>.Count)
                {
                    Vector128<float> x = Vector128.LoadUnsafe(ref xs, (nuint)i);
                    Vector128<float> below = Vector128.LessThan(Vector128.Abs(x), t);
                    acc -= below.AsInt32();
                    Vector128.AndNot(x, below).StoreUnsafe(ref d, (nuint)i);
                }
                count = Vector128.Sum(acc);
                break;
            }
            default:
                break;
        }
        for (; i < n; i++)
        {
            float x = Unsafe.Add(ref xs, i);
            bool below = MathF.Abs(x) < threshold;
            count += below ? 1 : 0;
            Unsafe.Add(ref d, i) = below ? 0f : x;
        }
        return count;
    }

    internal static float KthLargestMagnitude(ReadOnlySpan<float> values, int k, KernelImplementation implementation)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(k, values.Length);
        int n = values.Length;
        int[] rented = ArrayPool<int>.Shared.Rent(n);
        try
        {
            Span<int> bits = rented.AsSpan(0, n);
            AbsBits(values, bits, implementation);
            // k-th largest = element n - k in ascending order
            int bitsOfResult = Select(bits, n - k);
            return BitConverter.Int32BitsToSingle(bitsOfResult);
        }
        finally
        {
            ArrayPool<int>.Shared.Return(rented);
        }
    }

    /// <summary>bits[i] = bit pattern of |values[i]| (sign cleared).</summary>
    internal static void AbsBits(ReadOnlySpan<float> values, Span<int> bits, KernelImplementation implementation)
    {
        ref int xs = ref Unsafe.As<float, int>(ref MemoryMarshal.GetReference(values));
        ref int d = ref MemoryMarshal.GetReference(bits);
        int n = values.Length;
        int i = 0;
        const int Mask = 0x7FFF_FFFF;
        switch (implementation)
        {
            case KernelImplementation.Vector512:
                for (; i <= n - Vector512<int>.Count; i += Vector512<int>.Count)
                {
                    (Vector512.LoadUnsafe(ref xs, (nuint)i) & Vector512.Create(Mask)).StoreUnsafe(ref d, (nuint)i);
                }
                break;
            case KernelImplementation.Vector256:
                for (; i <= n - Vector256<int>.Count; i += Vector256<int>.Count)
                {
                    (Vector256.LoadUnsafe(ref xs, (nuint)i) & Vector256.Create(Mask)).StoreUnsafe(ref d, (nuint)i);
                }
                break;
            case KernelImplementation.Vector128:
                for (; i <= n - Vector128<int>.Count; i += Vector128<int>.Count)
                {
                    (Vector128.LoadUnsafe(ref xs, (nuint)i) & Vector128.Create(Mask)).StoreUnsafe(ref d, (nuint)i);
                }
                break;
            default:
                break;
        }
        for (; i < n; i++)
        {
            Unsafe.Add(ref d, i) = Unsafe.Add(ref xs, i) & Mask;
        }
    }

    /// <summary>
    /// nth_element: returns the value that would be at index <paramref name="nth"/> if <paramref name="a"/> were
    /// sorted ascending, reordering <paramref name="a"/>. Hoare partitioning around a median of three; a range that
    /// keeps shrinking slowly (adversarial input) falls back to sorting just that range, so the worst case is O(n log n).
    /// </summary>
    internal static int Select(Span<int> a, int nth)
    {
        int lo = 0, hi = a.Length - 1;
        int budget = 2 * (System.Numerics.BitOperations.Log2((uint)a.Length) + 1);
        while (hi - lo > 16)
        {
            if (--budget < 0)
            {
                a[lo..(hi + 1)].Sort();
                return a[nth];
            }
            int mid = lo + ((hi - lo) >> 1);
            // median of three into a[mid]
            if (a[mid] < a[lo]) { (a[mid], a[lo]) = (a[lo], a[mid]); }
            if (a[hi] < a[lo]) { (a[hi], a[lo]) = (a[lo], a[hi]); }
            if (a[hi] < a[mid]) { (a[hi], a[mid]) = (a[mid], a[hi]); }
            int pivot = a[mid];
            int i = lo - 1, j = hi + 1;
            while (true)
            {
                do { i++; } while (a[i] < pivot);
                do { j--; } while (a[j] > pivot);
                if (i >= j)
                {
                    break;
                }
                (a[i], a[j]) = (a[j], a[i]);
            }
            // now a[lo..j] <= pivot <= a[j+1..hi]
            if (nth <= j)
            {
                hi = j;
            }
            else
            {
                lo = j + 1;
            }
        }
        a[lo..(hi + 1)].Sort();
        return a[nth];
    }
}

internal static partial class ScalarReference
{
    public static int CountZeros(ReadOnlySpan<float> values)
    {
        int count = 0;
        foreach (float x in values)
        {
            if (x == 0f)
            {
                count++;
            }
        }
        return count;
    }

    public static int ApplyMagnitudeThreshold(ReadOnlySpan<float> values, float threshold, Span<float> destination)
    {
        int count = 0;
        for (int i = 0; i < values.Length; i++)
        {
            float x = values[i];
            if (MathF.Abs(x) < threshold)
            {
                destination[i] = 0f;
                count++;
            }
            else
            {
                destination[i] = x;
            }
        }
        return count;
    }

    /// <summary>Full sort of the magnitudes (the reference the selection is checked against).</summary>
    public static float KthLargestMagnitude(ReadOnlySpan<float> values, int k)
    {
        int[] bits = new int[values.Length];
        for (int i = 0; i < bits.Length; i++)
        {
            bits[i] = BitConverter.SingleToInt32Bits(values[i]) & 0x7FFF_FFFF;
        }
        Array.Sort(bits);
        return BitConverter.Int32BitsToSingle(bits[^k]);
    }
}
