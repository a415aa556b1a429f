using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CompressOnBuild.Kernels;

/// <summary>
/// 4-bit packing as ONNX INT4/UINT4 tensors and ORT's MatMulNBits store it: element 2i in the low nibble of byte
/// i, element 2i+1 in the high nibble; an odd count leaves the last high nibble 0. Values are the 4-bit codes
/// (0..15; for signed data the two's-complement nibble). Only the low nibble of each input byte is used.
/// Every implementation is bit-identical to the scalar reference.
/// </summary>
public static class Int4Kernels
{
    /// <summary>Bytes needed for <paramref name="count"/> 4-bit values.</summary>
    public static int PackedLength(int count) => (count + 1) / 2;

    /// <summary>Packs 4-bit codes two per byte.</summary>
    public static void Pack(ReadOnlySpan<byte> values, Span<byte> packed) => PackCore(values, packed, KernelSelector.Current);

    /// <summary>Unpacks <paramref name="values"/>.Length codes (0..15) from <paramref name="packed"/>.</summary>
    public static void Unpack(ReadOnlySpan<byte> packed, Span<byte> values) => UnpackCore(packed, values, KernelSelector.Current);

    /// <summary>
    /// Scale and zero point of one 4-bit block per column of a row-major [rows, cols] matrix, the block running down
    /// the rows (rows = the block's length; a shorter last block counts as padded with zeros). Symmetric: the value of
    /// largest magnitude (IEEE maximumMagnitude: the first, or the positive one of equal magnitudes) / -8, zero point 8.
    /// Asymmetric: min and max widened to include 0, scale (max - min) / 15, zero point round-half-even(-min / scale)
    /// clamped to 0..15 (0 for a zero or non-finite scale). A scale under 1e-30 in magnitude or not finite becomes 1.
    /// <paramref name="scratch"/> holds cols floats. Inputs must be finite.
    /// </summary>
    public static void ColumnBlockParameters(ReadOnlySpan<float> matrix, int rows, int cols, bool symmetric, Span<float> scales,
        Span<float> zeroPoints, Span<float> scratch) =>
        ColumnBlockParametersCore(matrix, rows, cols, symmetric, scales, zeroPoints, scratch, KernelSelector.Current);

    internal static void ColumnBlockParametersCore(ReadOnlySpan<float> matrix, int rows, int cols, bool symmetric, Span<float> scales,
        Span<float> zeroPoints, Span<float> scratch, KernelImplementation implementation)
    {
        TensorStats.CheckMatrix(matrix.Length, rows, cols, scales.Length, cols);
        if (zeroPoints.Length < cols || scratch.Length < cols)
        {
            throw new ArgumentException($"{cols} zero points and scratch floats are needed; got {zeroPoints.Length} and {scratch.Length}.");
        }
        // symmetric: a = best value, b = its magnitude; asymmetric: a = min, b = max (both start at 0 = widened to 0).
        Span<float> a = scales[..cols];
        Span<float> b = scratch[..cols];
        a.Clear();
        b.Clear();
        for (int r = 0; r < rows; r++)
        {
            ReadOnlySpan<float> x = matrix.Slice(r * cols, cols);
            ref float xs = ref MemoryMarshal.GetReference(x);
            ref float ar = ref MemoryMarshal.GetReference(a);
            ref float br = ref MemoryMarshal.GetReference(b);
            int i = implementation switch
            {
                KernelImplementation.Vector512 => BlockRowVectorized<W512, Vector512<float>>(ref xs, ref ar, ref br, cols, symmetric),
                KernelImplementation.Vector256 => BlockRowVectorized<W256, Vector256<float>>(ref xs, ref ar, ref br, cols, symmetric),
                KernelImplementation.Vector128 => BlockRowVectorized<W128, Vector128<float>>(ref xs, ref ar, ref br, cols, symmetric),
                _ => 0,
            };
            for (; i < cols; i++)
            {
                ScalarReference.BlockStep(x[i], ref a[i], ref b[i], symmetric);
            }
        }
        for (int c = 0; c < cols; c++)
        {
            (scales[c], zeroPoints[c]) = ScalarReference.BlockFinish(a[c], b[c], symmetric);
        }
    }

    /// <summary>
    /// One 4-bit block per column of a row-major [rows, cols] matrix (see <see cref="ColumnBlockParameters"/>), quantized:
    /// codes[r, c] = clamp(round-half-even(x / scale) + zero, 0, 15) (a negative symmetric scale divides as is, the same
    /// as -x / |scale|); returns the block's max |x - (code - zero) * scale|.
    /// </summary>
    public static float QuantizeColumnBlock(ReadOnlySpan<float> matrix, int rows, int cols, bool symmetric, Span<float> scales,
        Span<float> zeroPoints, Span<byte> codes, Span<float> scratch) =>
        QuantizeColumnBlockCore(matrix, rows, cols, symmetric, scales, zeroPoints, codes, scratch, KernelSelector.Current);

    internal static float QuantizeColumnBlockCore(ReadOnlySpan<float> matrix, int rows, int cols, bool symmetric, Span<float> scales,
        Span<float> zeroPoints, Span<byte> codes, Span<float> scratch, KernelImplementation implementation)
    {
        ColumnBlockParametersCore(matrix, rows, cols, symmetric, scales, zeroPoints, scratch, implementation);
        TensorStats.CheckMatrix(matrix.Length, rows, cols, codes.Length, matrix.Length);
        var source = new ElementwiseScale(scales[..cols], zeroPoints[..cols]);
        float max = 0f;
        for (int r = 0; r < rows; r++)
        {
            ReadOnlySpan<float> x = matrix.Slice(r * cols, cols);
            Span<byte> q = codes.Slice(r * cols, cols);
            QuantizeDriver.Run(x, source, 0f, 15f, q, implementation);
            max = MathF.Max(max, ErrorDriver.Run(x, q, scales[..cols], zeroPoints[..cols], unsigned: true, implementation));
        }
        return max;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int BlockRowVectorized<TW, TF>(ref float xs, ref float a, ref float b, int n, bool symmetric)
        where TW : struct, IVectorWidth<TF>
        where TF : struct
    {
        TF zero = TW.Create(0f);
        int i = 0;
        for (; i <= n - TW.Count; i += TW.Count)
        {
            TF x = TW.Load(ref xs, (nuint)i);
            TF va = TW.Load(ref a, (nuint)i);
            TF vb = TW.Load(ref b, (nuint)i);
            if (symmetric)
            {
                TF ax = TW.Abs(x);
                // Take x when |x| > |best|, or when equal with best negative and x positive (maximumMagnitude).
                TF tie = TW.ConditionalSelect(TW.LessThan(ax, vb), zero, TW.BitwiseAnd(TW.LessThan(va, zero), TW.GreaterThan(x, zero)));
                TF take = TW.BitwiseOr(TW.GreaterThan(ax, vb), tie);
                TW.Store(TW.ConditionalSelect(take, x, va), ref a, (nuint)i);
                TW.Store(TW.ConditionalSelect(take, ax, vb), ref b, (nuint)i);
            }
            else
            {
                TW.Store(TW.Min(va, x), ref a, (nuint)i);
                TW.Store(TW.Max(vb, x), ref b, (nuint)i);
            }
        }
        return i;
    }

    internal static void PackCore(ReadOnlySpan<byte> values, Span<byte> packed, KernelImplementation implementation)
    {
        int bytes = PackedLength(values.Length);
        if (packed.Length < bytes)
        {
            throw new ArgumentException($"The destination holds {packed.Length} bytes; {bytes} are needed.");
        }
        ref byte v = ref MemoryMarshal.GetReference(values);
        ref byte d = ref MemoryMarshal.GetReference(packed);
        int pairs = values.Length / 2;
        int i = 0; // output byte index
        // Two input bytes read as one little-endian ushort u = even | odd << 8; the packed byte is
        // (u & 0x0F) | ((u >> 4) & 0xF0); narrowing ushort -> byte keeps exactly that low byte.
        switch (implementation)
        {
            case KernelImplementation.Vector512:
            {
                var lo = Vector512.Create((ushort)0x0F);
                var hi = Vector512.Create((ushort)0xF0);
                int w = Vector512<ushort>.Count;
                for (; i <= pairs - 2 * w; i += 2 * w)
                {
                    Vector512<ushort> a = Vector512.LoadUnsafe(ref v, (nuint)(2 * i)).AsUInt16();
                    Vector512<ushort> b = Vector512.LoadUnsafe(ref v, (nuint)(2 * i + 2 * w)).AsUInt16();
                    Vector512.Narrow((a & lo) | ((a >> 4) & hi), (b & lo) | ((b >> 4) & hi)).StoreUnsafe(ref d, (nuint)i);
                }
                break;
            }
            case KernelImplementation.Vector256:
            {
                var lo = Vector256.Create((ushort)0x0F);
                var hi = Vector256.Create((ushort)0xF0);
                int w = Vector256<ushort>.Count;
                for (; i <= pairs - 2 * w; i += 2 * w)
                {
                    Vector256<ushort> a = Vector256.LoadUnsafe(ref v, (nuint)(2 * i)).AsUInt16();
                    Vector256<ushort> b = Vector256.LoadUnsafe(ref v, (nuint)(2 * i + 2 * w)).AsUInt16();
                    Vector256.Narrow((a & lo) | ((a >> 4) & hi), (b & lo) | ((b >> 4) & hi)).StoreUnsafe(ref d, (nuint)i);
                }
                break;
            }
            case KernelImplementation.Vector128:
            {
                var lo = Vector128.Create((ushort)0x0F);
                var hi = Vector128.Create((ushort)0xF0);
                int w = Vector128<ushort>.Count;
                for (; i <= pairs - 2 * w; i += 2 * w)
                {
                    Vector128<ushort> a = Vector128.LoadUnsafe(ref v, (nuint)(2 * i)).AsUInt16();
                    Vector128<ushort> b = Vector128.LoadUnsafe(ref v, (nuint)(2 * i + 2 * w)).AsUInt16();
                    Vector128.Narrow((a & lo) | ((a >> 4) & hi), (b & lo) | ((b >> 4) & hi)).StoreUnsafe(ref d, (nuint)i);
                }
                break;
            }
            default:
                break;
        }
        for (; i < pairs; i++)
        {
            Unsafe.Add(ref d, i) = ScalarReference.PackTwo(Unsafe.Add(ref v, 2 * i), Unsafe.Add(ref v, 2 * i + 1));
        }
        if ((values.Length & 1) != 0)
        {
            packed[pairs] = ScalarReference.PackTwo(values[^1], 0);
        }
    }

    /// <summary>
    /// Packs one block of 4-bit codes that runs down the rows of a row-major [rows, cols] matrix (rows even, codes
    /// 0..15) into each column's run of rows / 2 bytes: column c's run starts at packed[c * stride], its byte i holds
    /// codes[2i, c] in the low nibble and codes[2i + 1, c] in the high one (the layout of MatMulNBits' [N, blocks,
    /// block / 2] weights when <paramref name="packed"/> starts at the block's offset and stride = blocks * block / 2).
    /// <paramref name="scratch"/> holds rows / 2 * cols bytes.
    /// </summary>
    public static void PackColumnBlock(ReadOnlySpan<byte> codes, int rows, int cols, Span<byte> packed, int stride, Span<byte> scratch) =>
        PackColumnBlockCore(codes, rows, cols, packed, stride, scratch, KernelSelector.Current);

    internal static void PackColumnBlockCore(ReadOnlySpan<byte> codes, int rows, int cols, Span<byte> packed, int stride, Span<byte> scratch,
        KernelImplementation implementation)
    {
        int pairs = rows / 2;
        if (rows < 0 || rows % 2 != 0 || cols < 0 || stride < pairs)
        {
            throw new ArgumentException($"a column block needs an even row count and a stride of at least rows / 2; got rows {rows}, cols {cols}, stride {stride}.");
        }
        if (codes.Length < (long)rows * cols || scratch.Length < (long)pairs * cols || (cols > 0 && pairs > 0 && packed.Length < (long)(cols - 1) * stride + pairs))
        {
            throw new ArgumentException($"[{rows}, {cols}] codes with stride {stride} need {(long)rows * cols} code, {(long)pairs * cols} scratch and {(cols > 0 && pairs > 0 ? (long)(cols - 1) * stride + pairs : 0)} packed bytes; got {codes.Length}, {scratch.Length} and {packed.Length}.");
        }
        if (implementation == KernelImplementation.Scalar)
        {
            for (int c = 0; c < cols; c++)
            {
                for (int i = 0; i < pairs; i++)
                {
                    packed[c * stride + i] = ScalarReference.PackTwo(codes[2 * i * cols + c], codes[(2 * i + 1) * cols + c]);
                }
            }
            return;
        }
        // Row pairs packed along the rows (vectors), then the [pairs, cols] bytes transposed into the columns' runs.
        for (int i = 0; i < pairs; i++)
        {
            PackRowPair(codes.Slice(2 * i * cols, cols), codes.Slice((2 * i + 1) * cols, cols), scratch.Slice(i * cols, cols), implementation);
        }
        ref byte t = ref MemoryMarshal.GetReference(scratch);
        ref byte d = ref MemoryMarshal.GetReference(packed);
        for (int c = 0; c < cols; c++)
        {
            ref byte run = ref Unsafe.Add(ref d, c * stride);
            for (int i = 0; i < pairs; i++)
            {
                Unsafe.Add(ref run, i) = Unsafe.Add(ref t, i * cols + c);
            }
        }
    }

    /// <summary>dest[j] = even[j] in the low nibble, odd[j] in the high one.</summary>
    private static void PackRowPair(ReadOnlySpan<byte> even, ReadOnlySpan<byte> odd, Span<byte> dest, KernelImplementation implementation)
    {
        ref byte e = ref MemoryMarshal.GetReference(even);
        ref byte o = ref MemoryMarshal.GetReference(odd);
        ref byte d = ref MemoryMarshal.GetReference(dest);
        int n = dest.Length, j = 0;
        switch (implementation)
        {
            case KernelImplementation.Vector512:
            {
                var low = Vector512.Create((byte)0x0F);
                for (; j <= n - Vector512<byte>.Count; j += Vector512<byte>.Count)
                {
                    ((Vector512.LoadUnsafe(ref e, (nuint)j) & low) | (Vector512.LoadUnsafe(ref o, (nuint)j) << 4)).StoreUnsafe(ref d, (nuint)j);
                }
                break;
            }
            case KernelImplementation.Vector256:
            {
                var low = Vector256.Create((byte)0x0F);
                for (; j <= n - Vector256<byte>.Count; j += Vector256<byte>.Count)
                {
                    ((Vector256.LoadUnsafe(ref e, (nuint)j) & low) | (Vector256.LoadUnsafe(ref o, (nuint)j) << 4)).StoreUnsafe(ref d, (nuint)j);
                }
                break;
            }
            case KernelImplementation.Vector128:
            {
                var low = Vector128.Create((byte)0x0F);
                for (; j <= n - Vector128<byte>.Count; j += Vector128<byte>.Count)
                {
                    ((Vector128.LoadUnsafe(ref e, (nuint)j) & low) | (Vector128.LoadUnsafe(ref o, (nuint)j) << 4)).StoreUnsafe(ref d, (nuint)j);
                }
                break;
            }
            default:
                break;
        }
        for (; j < n; j++)
        {
            Unsafe.Add(ref d, j) = ScalarReference.PackTwo(Unsafe.Add(ref e, j), Unsafe.Add(ref o, j));
        }
    }

    internal static void UnpackCore(ReadOnlySpan<byte> packed, Span<byte> values, KernelImplementation implementation)
    {
        int bytes = PackedLength(values.Length);
        if (packed.Length < bytes)
        {
            throw new ArgumentException($"{values.Length} values need {bytes} packed bytes; got {packed.Length}.");
        }
        ref byte p = ref MemoryMarshal.GetReference(packed);
        ref byte d = ref MemoryMarshal.GetReference(values);
        int pairs = values.Length / 2;
        int i = 0;
        // Each packed byte widened to a ushort w gives (w & 0x0F) | ((w & 0xF0) << 4): low byte = even code,
        // high byte = odd code, i.e. the two output bytes in little-endian order.
        switch (implementation)
        {
            case KernelImplementation.Vector512:
            {
                var lo = Vector512.Create((ushort)0x0F);
                var hi = Vector512.Create((ushort)0xF0);
                int w = Vector512<byte>.Count;
                for (; i <= pairs - w; i += w)
                {
                    (Vector512<ushort> a, Vector512<ushort> b) = Vector512.Widen(Vector512.LoadUnsafe(ref p, (nuint)i));
                    ((a & lo) | ((a & hi) << 4)).AsByte().StoreUnsafe(ref d, (nuint)(2 * i));
                    ((b & lo) | ((b & hi) << 4)).AsByte().StoreUnsafe(ref d, (nuint)(2 * i + w));
                }
                break;
            }
            case KernelImplementation.Vector256:
            {
                var lo = Vector256.Create((ushort)0x0F);
                var hi = Vector256.Create((ushort)0xF0);
                int w = Vector256<byte>.Count;
                for (; i <= pairs - w; i += w)
                {
                    (Vector256<ushort> a, Vector256<ushort> b) = Vector256.Widen(Vector256.LoadUnsafe(ref p, (nuint)i));
                    ((a & lo) | ((a & hi) << 4)).AsByte().StoreUnsafe(ref d, (nuint)(2 * i));
                    ((b & lo) | ((b & hi) << 4)).AsByte().StoreUnsafe(ref d, (nuint)(2 * i + w));
                }
                break;
            }
            case KernelImplementation.Vector128:
            {
                var lo = Vector128.Create((ushort)0x0F);
                var hi = Vector128.Create((ushort)0xF0);
                int w = Vector128<byte>.Count;
                for (; i <= pairs - w; i += w)
                {
                    (Vector128<ushort> a, Vector128<ushort> b) = Vector128.Widen(Vector128.LoadUnsafe(ref p, (nuint)i));
                    ((a & lo) | ((a & hi) << 4)).AsByte().StoreUnsafe(ref d, (nuint)(2 * i));
                    ((b & lo) | ((b & hi) << 4)).AsByte().StoreUnsafe(ref d, (nuint)(2 * i + w));
                }
                break;
            }
            default:
                break;
        }
        for (; i < pairs; i++)
        {
            byte b = Unsafe.Add(ref p, i);
            Unsafe.Add(ref d, 2 * i) = ScalarReference.LowNibble(b);
            Unsafe.Add(ref d, 2 * i + 1) = ScalarReference.HighNibble(b);
        }
        if ((values.Length & 1) != 0)
        {
            values[^1] = ScalarReference.LowNibble(packed[pairs]);
        }
    }
}

internal static partial class ScalarReference
{
    /// <summary>One element of <see cref="Int4Kernels.ColumnBlockParameters"/>'s scan (see there for a and b).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void BlockStep(float x, ref float a, ref float b, bool symmetric)
    {
        if (symmetric)
        {
            float ax = MathF.Abs(x);
            if (ax > b || (ax == b && a < 0f && x > 0f))
            {
                a = x;
                b = ax;
            }
        }
        else
        {
            a = MathF.Min(a, x);
            b = MathF.Max(b, x);
        }
    }

    /// <summary>Scale and zero point from a column's scan.</summary>
    public static (float Scale, float Zero) BlockFinish(float a, float b, bool symmetric)
    {
        float scale, zero;
        if (symmetric)
        {
            scale = a / -8f;
            zero = 8f;
        }
        else
        {
            scale = (b - a) / 15f;
            zero = scale > 0f && float.IsFinite(scale) ? Math.Clamp(MathF.Round(-a / scale, MidpointRounding.ToEven), 0f, 15f) : 0f;
        }
        if (!(MathF.Abs(scale) >= 1e-30f) || !float.IsFinite(scale))
        {
            scale = 1f;
        }
        return (scale, zero);
    }

    public static void ColumnBlockParameters(ReadOnlySpan<float> matrix, int rows, int cols, bool symmetric, Span<float> scales, Span<float> zeroPoints)
    {
        var a = new float[cols];
        var b = new float[cols];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                BlockStep(matrix[r * cols + c], ref a[c], ref b[c], symmetric);
            }
        }
        for (int c = 0; c < cols; c++)
        {
            (scales[c], zeroPoints[c]) = BlockFinish(a[c], b[c], symmetric);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte PackTwo(byte even, byte odd) => (byte)((even & 0x0F) | ((odd & 0x0F) << 4));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte LowNibble(byte b) => (byte)(b & 0x0F);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte HighNibble(byte b) => (byte)(b >> 4);

    public static void Pack4(ReadOnlySpan<byte> values, Span<byte> packed)
    {
        for (int i = 0; i < values.Length; i += 2)
        {
            packed[i / 2] = PackTwo(values[i], i + 1 < values.Length ? values[i + 1] : (byte)0);
        }
    }

    public static void Unpack4(ReadOnlySpan<byte> packed, Span<byte> values)
    {
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (i & 1) == 0 ? LowNibble(packed[i / 2]) : HighNibble(packed[i / 2]);
        }
    }
}
