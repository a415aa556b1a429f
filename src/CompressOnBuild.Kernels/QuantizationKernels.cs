using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CompressOnBuild.Kernels;

/// <summary>
/// Linear (de)quantization as ONNX QuantizeLinear/DequantizeLinear define it:
/// q = saturate(round_half_to_even(x / scale) + zero_point), x = (q - zero_point) * scale.
/// The quantize kernels clamp to [min, max] (default the full type range; pass -127..127 for symmetric
/// int8, or a narrower range for reduced-range weights). NaN inputs become 0 (callers check
/// <see cref="TensorStats.AllFinite(ReadOnlySpan{float})"/> first). Scales must be positive and finite
/// (ArgumentOutOfRangeException otherwise). All of these are ours: TensorPrimitives has no quantize/dequantize
/// (its Min checks the per-channel scales). Every implementation is bit-identical to the scalar reference.
/// </summary>
public static class QuantizationKernels
{
    /// <summary>Per-tensor float -> int8.</summary>
    public static void Quantize(ReadOnlySpan<float> values, float scale, sbyte zeroPoint, Span<sbyte> destination,
        sbyte min = sbyte.MinValue, sbyte max = sbyte.MaxValue) =>
        QuantizeCore(values, scale, zeroPoint, min, max, AsBytes(destination), KernelSelector.Current);

    /// <summary>Per-tensor float -> uint8.</summary>
    public static void Quantize(ReadOnlySpan<float> values, float scale, byte zeroPoint, Span<byte> destination,
        byte min = byte.MinValue, byte max = byte.MaxValue) =>
        QuantizeCore(values, scale, zeroPoint, min, max, destination, KernelSelector.Current);

    /// <summary>Row-major [rows, cols] float -> int8 with one scale and zero point per row.</summary>
    public static void QuantizePerRow(ReadOnlySpan<float> matrix, int rows, int cols, ReadOnlySpan<float> scales,
        ReadOnlySpan<sbyte> zeroPoints, Span<sbyte> destination, sbyte min = sbyte.MinValue, sbyte max = sbyte.MaxValue)
    {
        CheckChannels(matrix.Length, rows, cols, scales.Length, zeroPoints.Length, destination.Length, rows);
        CheckScales(scales[..rows]);
        for (int r = 0; r < rows; r++)
        {
            QuantizeCore(matrix.Slice(r * cols, cols), scales[r], zeroPoints[r], min, max,
                AsBytes(destination.Slice(r * cols, cols)), KernelSelector.Current);
        }
    }

    /// <summary>Row-major [rows, cols] float -> uint8 with one scale and zero point per row.</summary>
    public static void QuantizePerRow(ReadOnlySpan<float> matrix, int rows, int cols, ReadOnlySpan<float> scales,
        ReadOnlySpan<byte> zeroPoints, Span<byte> destination, byte min = byte.MinValue, byte max = byte.MaxValue)
    {
        CheckChannels(matrix.Length, rows, cols, scales.Length, zeroPoints.Length, destination.Length, rows);
        CheckScales(scales[..rows]);
        for (int r = 0; r < rows; r++)
        {
            QuantizeCore(matrix.Slice(r * cols, cols), scales[r], zeroPoints[r], min, max,
                destination.Slice(r * cols, cols), KernelSelector.Current);
        }
    }

    /// <summary>Row-major [rows, cols] float -> int8 with one scale and zero point per column.</summary>
    public static void QuantizePerColumn(ReadOnlySpan<float> matrix, int rows, int cols, ReadOnlySpan<float> scales,
        ReadOnlySpan<sbyte> zeroPoints, Span<sbyte> destination, sbyte min = sbyte.MinValue, sbyte max = sbyte.MaxValue)
    {
        CheckChannels(matrix.Length, rows, cols, scales.Length, zeroPoints.Length, destination.Length, cols);
        CheckScales(scales[..cols]);
        float[] zp = new float[cols];
        for (int c = 0; c < cols; c++)
        {
            zp[c] = zeroPoints[c];
        }
        QuantizePerColumnCore(matrix, rows, cols, scales, zp, min, max, AsBytes(destination), KernelSelector.Current);
    }

    /// <summary>Row-major [rows, cols] float -> uint8 with one scale and zero point per column.</summary>
    public static void QuantizePerColumn(ReadOnlySpan<float> matrix, int rows, int cols, ReadOnlySpan<float> scales,
        ReadOnlySpan<byte> zeroPoints, Span<byte> destination, byte min = byte.MinValue, byte max = byte.MaxValue)
    {
        CheckChannels(matrix.Length, rows, cols, scales.Length, zeroPoints.Length, destination.Length, cols);
        CheckScales(scales[..cols]);
        float[] zp = new float[cols];
        for (int c = 0; c < cols; c++)
        {
            zp[c] = zeroPoints[c];
        }
        QuantizePerColumnCore(matrix, rows, cols, scales, zp, min, max, destination, KernelSelector.Current);
    }

    /// <summary>
    /// The largest round-trip error of a per-column quantized row-major [rows, cols] matrix:
    /// max |matrix[r, c] - (codes[r, c] - zeroPoints[c]) * scales[c]| (codes read as uint8 when <paramref name="unsigned"/>,
    /// else int8; 0 for an empty matrix). Bit-identical to the scalar loop for finite inputs.
    /// </summary>
    public static float MaxAbsErrorPerColumn(ReadOnlySpan<float> matrix, int rows, int cols, ReadOnlySpan<float> scales,
        ReadOnlySpan<float> zeroPoints, ReadOnlySpan<byte> codes, bool unsigned) =>
        MaxAbsErrorPerColumnCore(matrix, rows, cols, scales, zeroPoints, codes, unsigned, KernelSelector.Current);

    /// <summary>
    /// True when some position j has int8 codes a[j], b[j] of the same sign with |a[j]| + |b[j]| over <paramref name="limit"/>
    /// (0..254); used to find the rare adjacent pairs a pair-bounded encoding must give a level back.
    /// </summary>
    public static bool AnySameSignPairOver(ReadOnlySpan<sbyte> a, ReadOnlySpan<sbyte> b, int limit) =>
        AnySameSignPairOverCore(a, b, limit, KernelSelector.Current);

    internal static bool AnySameSignPairOverCore(ReadOnlySpan<sbyte> a, ReadOnlySpan<sbyte> b, int limit, KernelImplementation implementation)
    {
        if (b.Length < a.Length)
        {
            throw new ArgumentException($"The second row holds {b.Length} codes; {a.Length} are needed.");
        }
        ArgumentOutOfRangeException.ThrowIfNegative(limit);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(limit, 254);
        ref sbyte xa = ref MemoryMarshal.GetReference(a);
        ref sbyte xb = ref MemoryMarshal.GetReference(b);
        int n = a.Length;
        int i = 0;
        // In 16-bit lanes |a| + |b| cannot overflow; both codes widen exactly.
        switch (implementation)
        {
            case KernelImplementation.Vector512:
            {
                var lim = Vector512.Create((short)limit);
                for (; i <= n - Vector512<sbyte>.Count; i += Vector512<sbyte>.Count)
                {
                    (Vector512<short> al, Vector512<short> au) = Vector512.Widen(Vector512.LoadUnsafe(ref xa, (nuint)i));
                    (Vector512<short> bl, Vector512<short> bu) = Vector512.Widen(Vector512.LoadUnsafe(ref xb, (nuint)i));
                    if (Over512(al, bl, lim) || Over512(au, bu, lim))
                    {
                        return true;
                    }
                }
                break;
            }
            case KernelImplementation.Vector256:
            {
                var lim = Vector256.Create((short)limit);
                for (; i <= n - Vector256<sbyte>.Count; i += Vector256<sbyte>.Count)
                {
                    (Vector256<short> al, Vector256<short> au) = Vector256.Widen(Vector256.LoadUnsafe(ref xa, (nuint)i));
                    (Vector256<short> bl, Vector256<short> bu) = Vector256.Widen(Vector256.LoadUnsafe(ref xb, (nuint)i));
                    if (Over256(al, bl, lim) || Over256(au, bu, lim))
                    {
                        return true;
                    }
                }
                break;
            }
            case KernelImplementation.Vector128:
            {
                var lim = Vector128.Create((short)limit);
                for (; i <= n - Vector128<sbyte>.Count; i += Vector128<sbyte>.Count)
                {
                    (Vector128<short> al, Vector128<short> au) = Vector128.Widen(Vector128.LoadUnsafe(ref xa, (nuint)i));
                    (Vector128<short> bl, Vector128<short> bu) = Vector128.Widen(Vector128.LoadUnsafe(ref xb, (nuint)i));
                    if (Over128(al, bl, lim) || Over128(au, bu, lim))
                    {
                        return true;
                    }
                }
                break;
            }
            default:
                break;
        }
        for (; i < n; i++)
        {
            if (ScalarReference.SameSignPairOver(Unsafe.Add(ref xa, i), Unsafe.Add(ref xb, i), limit))
            {
                return true;
            }
        }
        return false;
    }

    // (a, b) same sign (both > 0 or both < 0, so a * b > 0 without overflow in 16 bits) and |a| + |b| > limit.
    private static bool Over512(Vector512<short> a, Vector512<short> b, Vector512<short> limit) =>
        (Vector512.GreaterThan(a * b, Vector512<short>.Zero) & Vector512.GreaterThan(Vector512.Abs(a) + Vector512.Abs(b), limit)) != Vector512<short>.Zero;

    private static bool Over256(Vector256<short> a, Vector256<short> b, Vector256<short> limit) =>
        (Vector256.GreaterThan(a * b, Vector256<short>.Zero) & Vector256.GreaterThan(Vector256.Abs(a) + Vector256.Abs(b), limit)) != Vector256<short>.Zero;

    private static bool Over128(Vector128<short> a, Vector128<short> b, Vector128<short> limit) =>
        (Vector128.GreaterThan(a * b, Vector128<short>.Zero) & Vector128.GreaterThan(Vector128.Abs(a) + Vector128.Abs(b), limit)) != Vector128<short>.Zero;

    internal static float MaxAbsErrorPerColumnCore(ReadOnlySpan<float> matrix, int rows, int cols, ReadOnlySpan<float> scales,
        ReadOnlySpan<float> zeroPoints, ReadOnlySpan<byte> codes, bool unsigned, KernelImplementation implementation)
    {
        TensorStats.CheckMatrix(matrix.Length, rows, cols, codes.Length, matrix.Length);
        if (scales.Length < cols || zeroPoints.Length < cols)
        {
            throw new ArgumentException($"{cols} scales and zero points are needed; got {scales.Length} and {zeroPoints.Length}.");
        }
        float max = 0f;
        for (int r = 0; r < rows; r++)
        {
            max = MathF.Max(max, ErrorDriver.Run(matrix.Slice(r * cols, cols), codes.Slice(r * cols, cols), scales[..cols], zeroPoints[..cols], unsigned, implementation));
        }
        return max;
    }

    /// <summary>int8 -> float: (q - zeroPoint) * scale.</summary>
    public static void Dequantize(ReadOnlySpan<sbyte> values, float scale, sbyte zeroPoint, Span<float> destination) =>
        DequantizeCore(MemoryMarshal.AsBytes(values), unsigned: false, scale, zeroPoint, destination, KernelSelector.Current);

    /// <summary>uint8 -> float: (q - zeroPoint) * scale.</summary>
    public static void Dequantize(ReadOnlySpan<byte> values, float scale, byte zeroPoint, Span<float> destination) =>
        DequantizeCore(values, unsigned: true, scale, zeroPoint, destination, KernelSelector.Current);

    internal static Span<byte> AsBytes(Span<sbyte> span) => MemoryMarshal.AsBytes(span);

    internal static void QuantizeCore(ReadOnlySpan<float> values, float scale, float zeroPoint, float min, float max,
        Span<byte> destination, KernelImplementation implementation)
    {
        CheckDestination(values.Length, destination.Length);
        if (!(scale > 0f) || !float.IsFinite(scale))
        {
            throw new ArgumentOutOfRangeException(nameof(scale), scale, "The scale must be a positive finite number.");
        }
        if (!(min <= max))
        {
            throw new ArgumentException($"The clamp range [{min}, {max}] is empty.");
        }
        QuantizeDriver.Run(values, new BroadcastScale(scale, zeroPoint), min, max, destination, implementation);
    }

    internal static void QuantizePerColumnCore(ReadOnlySpan<float> matrix, int rows, int cols, ReadOnlySpan<float> scales,
        ReadOnlySpan<float> zeroPoints, float min, float max, Span<byte> destination, KernelImplementation implementation)
    {
        var source = new ElementwiseScale(scales[..cols], zeroPoints[..cols]);
        for (int r = 0; r < rows; r++)
        {
            QuantizeDriver.Run(matrix.Slice(r * cols, cols), source, min, max, destination.Slice(r * cols, cols), implementation);
        }
    }

    internal static void DequantizeCore(ReadOnlySpan<byte> values, bool unsigned, float scale, float zeroPoint,
        Span<float> destination, KernelImplementation implementation)
    {
        CheckDestination(values.Length, destination.Length);
        DequantizeDriver.Run(values, unsigned, scale, zeroPoint, destination, implementation);
    }

    private static void CheckDestination(int length, int destinationLength)
    {
        if (destinationLength < length)
        {
            throw new ArgumentException($"The destination holds {destinationLength} elements; {length} are needed.");
        }
    }

    private static void CheckScales(ReadOnlySpan<float> scales)
    {
        if (!scales.IsEmpty && (!TensorStats.AllFinite(scales) || !(TensorPrimitives.Min(scales) > 0f)))
        {
            throw new ArgumentOutOfRangeException(nameof(scales), "Every scale must be a positive finite number.");
        }
    }

    private static void CheckChannels(int length, int rows, int cols, int scales, int zeroPoints, int destination, int channels)
    {
        TensorStats.CheckMatrix(length, rows, cols, destination, length);
        if (scales < channels || zeroPoints < channels)
        {
            throw new ArgumentException($"{channels} scales and zero points are needed; got {scales} and {zeroPoints}.");
        }
    }
}

/// <summary>Where a quantize loop gets scale and zero point for element i.</summary>
internal interface IScaleSource
{
    float Scale(int i);

    float ZeroPoint(int i);

    Vector128<float> Scale128(int i);

    Vector128<float> ZeroPoint128(int i);

    Vector256<float> Scale256(int i);

    Vector256<float> ZeroPoint256(int i);

    Vector512<float> Scale512(int i);

    Vector512<float> ZeroPoint512(int i);
}

internal readonly struct BroadcastScale(float scale, float zeroPoint) : IScaleSource
{
    public float Scale(int i) => scale;

    public float ZeroPoint(int i) => zeroPoint;

    public Vector128<float> Scale128(int i) => Vector128.Create(scale);

    public Vector128<float> ZeroPoint128(int i) => Vector128.Create(zeroPoint);

    public Vector256<float> Scale256(int i) => Vector256.Create(scale);

    public Vector256<float> ZeroPoint256(int i) => Vector256.Create(zeroPoint);

    public Vector512<float> Scale512(int i) => Vector512.Create(scale);

    public Vector512<float> ZeroPoint512(int i) => Vector512.Create(zeroPoint);
}

internal readonly ref struct ElementwiseScale : IScaleSource
{
    // refs, not spans: the vector loads below are on the hot path of per-column quantize and must not bounds-check
    // (QuantizePerColumnCore slices both to exactly cols elements, and the driver only asks for i < cols).
    private readonly ref float _scales;
    private readonly ref float _zeroPoints;

    public ElementwiseScale(ReadOnlySpan<float> scales, ReadOnlySpan<float> zeroPoints)
    {
        _scales = ref MemoryMarshal.GetReference(scales);
        _zeroPoints = ref MemoryMarshal.GetReference(zeroPoints);
    }

    public float Scale(int i) => Unsafe.Add(ref _scales, i);

    public float ZeroPoint(int i) => Unsafe.Add(ref _zeroPoints, i);

    public Vector128<float> Scale128(int i) => Vector128.LoadUnsafe(ref _scales, (nuint)i);

    public Vector128<float> ZeroPoint128(int i) => Vector128.LoadUnsafe(ref _zeroPoints, (nuint)i);

    public Vector256<float> Scale256(int i) => Vector256.LoadUnsafe(ref _scales, (nuint)i);

    public Vector256<float> ZeroPoint256(int i) => Vector256.LoadUnsafe(ref _zeroPoints, (nuint)i);

    public Vector512<float> Scale512(int i) => Vector512.LoadUnsafe(ref _scales, (nuint)i);

    public Vector512<float> ZeroPoint512(int i) => Vector512.LoadUnsafe(ref _zeroPoints, (nuint)i);
}

internal static class QuantizeDriver
{
    // Each vector step converts four float vectors to one byte vector: int32 -> int16 -> int8 by
    // truncating narrows, exact because the values were clamped into the target range first. The
    // low byte of an int in [-128, 255] is the int8 or uint8 bit pattern alike.
    public static void Run<TScale>(ReadOnlySpan<float> x, TScale source, float min, float max, Span<byte> destination,
        KernelImplementation implementation)
        where TScale : IScaleSource, allows ref struct
    {
        ref float xs = ref MemoryMarshal.GetReference(x);
        ref byte d = ref MemoryMarshal.GetReference(destination);
        int n = x.Length;
        int i = 0;
        switch (implementation)
        {
            case KernelImplementation.Vector512:
            {
                var lo = Vector512.Create(min);
                var hi = Vector512.Create(max);
                int w = Vector512<float>.Count;
                for (; i <= n - 4 * w; i += 4 * w)
                {
                    Vector512<int> a = Step(Vector512.LoadUnsafe(ref xs, (nuint)i), source.Scale512(i), source.ZeroPoint512(i), lo, hi);
                    Vector512<int> b = Step(Vector512.LoadUnsafe(ref xs, (nuint)(i + w)), source.Scale512(i + w), source.ZeroPoint512(i + w), lo, hi);
                    Vector512<int> c = Step(Vector512.LoadUnsafe(ref xs, (nuint)(i + 2 * w)), source.Scale512(i + 2 * w), source.ZeroPoint512(i + 2 * w), lo, hi);
                    Vector512<int> e = Step(Vector512.LoadUnsafe(ref xs, (nuint)(i + 3 * w)), source.Scale512(i + 3 * w), source.ZeroPoint512(i + 3 * w), lo, hi);
                    Vector512.Narrow(Vector512.Narrow(a, b), Vector512.Narrow(c, e)).AsByte().StoreUnsafe(ref d, (nuint)i);
                }
                break;
            }
            case KernelImplementation.Vector256:
            {
                var lo = Vector256.Create(min);
                var hi = Vector256.Create(max);
                int w = Vector256<float>.Count;
                for (; i <= n - 4 * w; i += 4 * w)
                {
                    Vector256<int> a = Step(Vector256.LoadUnsafe(ref xs, (nuint)i), source.Scale256(i), source.ZeroPoint256(i), lo, hi);
                    Vector256<int> b = Step(Vector256.LoadUnsafe(ref xs, (nuint)(i + w)), source.Scale256(i + w), source.ZeroPoint256(i + w), lo, hi);
                    Vector256<int> c = Step(Vector256.LoadUnsafe(ref xs, (nuint)(i + 2 * w)), source.Scale256(i + 2 * w), source.ZeroPoint256(i + 2 * w), lo, hi);
                    Vector256<int> e = Step(Vector256.LoadUnsafe(ref xs, (nuint)(i + 3 * w)), source.Scale256(i + 3 * w), source.ZeroPoint256(i + 3 * w), lo, hi);
                    Vector256.Narrow(Vector256.Narrow(a, b), Vector256.Narrow(c, e)).AsByte().StoreUnsafe(ref d, (nuint)i);
                }
                break;
            }
            case KernelImplementation.Vector128:
            {
                var lo = Vector128.Create(min);
                var hi = Vector128.Create(max);
                int w = Vector128<float>.Count;
                for (; i <= n - 4 * w; i += 4 * w)
                {
                    Vector128<int> a = Step(Vector128.LoadUnsafe(ref xs, (nuint)i), source.Scale128(i), source.ZeroPoint128(i), lo, hi);
                    Vector128<int> b = Step(Vector128.LoadUnsafe(ref xs, (nuint)(i + w)), source.Scale128(i + w), source.ZeroPoint128(i + w), lo, hi);
                    Vector128<int> c = Step(Vector128.LoadUnsafe(ref xs, (nuint)(i + 2 * w)), source.Scale128(i + 2 * w), source.ZeroPoint128(i + 2 * w), lo, hi);
                    Vector128<int> e = Step(Vector128.LoadUnsafe(ref xs, (nuint)(i + 3 * w)), source.Scale128(i + 3 * w), source.ZeroPoint128(i + 3 * w), lo, hi);
                    Vector128.Narrow(Vector128.Narrow(a, b), Vector128.Narrow(c, e)).AsByte().StoreUnsafe(ref d, (nuint)i);
                }
                break;
            }
            default:
                break;
        }
        for (; i < n; i++)
        {
            Unsafe.Add(ref d, i) = ScalarReference.QuantizeOne(Unsafe.Add(ref xs, i), source.Scale(i), source.ZeroPoint(i), min, max);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<int> Step(Vector128<float> x, Vector128<float> scale, Vector128<float> zeroPoint, Vector128<float> lo, Vector128<float> hi) =>
        Vector128.ConvertToInt32(Vector128.Min(Vector128.Max(Vector128.Round(x / scale) + zeroPoint, lo), hi));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Step(Vector256<float> x, Vector256<float> scale, Vector256<float> zeroPoint, Vector256<float> lo, Vector256<float> hi) =>
        Vector256.ConvertToInt32(Vector256.Min(Vector256.Max(Vector256.Round(x / scale) + zeroPoint, lo), hi));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> Step(Vector512<float> x, Vector512<float> scale, Vector512<float> zeroPoint, Vector512<float> lo, Vector512<float> hi) =>
        Vector512.ConvertToInt32(Vector512.Min(Vector512.Max(Vector512.Round(x / scale) + zeroPoint, lo), hi));
}

internal static class DequantizeDriver
{
    // uint8 goes through the int8 path: q ^ 0x80 reinterpreted as int8 is q - 128, and the zero point
    // shifts by the same 128, so (q - zp) is unchanged and exact in float.
    public static void Run(ReadOnlySpan<byte> q, bool unsigned, float scale, float zeroPoint, Span<float> destination,
        KernelImplementation implementation)
    {
        ref byte qs = ref MemoryMarshal.GetReference(q);
        ref float d = ref MemoryMarshal.GetReference(destination);
        int n = q.Length;
        int i = 0;
        float zp = unsigned ? zeroPoint - 128f : zeroPoint;
        byte flip = unsigned ? (byte)0x80 : (byte)0;
        switch (implementation)
        {
            case KernelImplementation.Vector512:
            {
                var s = Vector512.Create(scale);
                var z = Vector512.Create(zp);
                var f = Vector512.Create(flip);
                int w = Vector512<float>.Count;
                for (; i <= n - 4 * w; i += 4 * w)
                {
                    Vector512<sbyte> v = (Vector512.LoadUnsafe(ref qs, (nuint)i) ^ f).AsSByte();
                    (Vector512<short> l, Vector512<short> u) = Vector512.Widen(v);
                    (Vector512<int> a, Vector512<int> b) = Vector512.Widen(l);
                    (Vector512<int> c, Vector512<int> e) = Vector512.Widen(u);
                    ((Vector512.ConvertToSingle(a) - z) * s).StoreUnsafe(ref d, (nuint)i);
                    ((Vector512.ConvertToSingle(b) - z) * s).StoreUnsafe(ref d, (nuint)(i + w));
                    ((Vector512.ConvertToSingle(c) - z) * s).StoreUnsafe(ref d, (nuint)(i + 2 * w));
                    ((Vector512.ConvertToSingle(e) - z) * s).StoreUnsafe(ref d, (nuint)(i + 3 * w));
                }
                break;
            }
            case KernelImplementation.Vector256:
            {
                var s = Vector256.Create(scale);
                var z = Vector256.Create(zp);
                var f = Vector256.Create(flip);
                int w = Vector256<float>.Count;
                for (; i <= n - 4 * w; i += 4 * w)
                {
                    Vector256<sbyte> v = (Vector256.LoadUnsafe(ref qs, (nuint)i) ^ f).AsSByte();
                    (Vector256<short> l, Vector256<short> u) = Vector256.Widen(v);
                    (Vector256<int> a, Vector256<int> b) = Vector256.Widen(l);
                    (Vector256<int> c, Vector256<int> e) = Vector256.Widen(u);
                    ((Vector256.ConvertToSingle(a) - z) * s).StoreUnsafe(ref d, (nuint)i);
                    ((Vector256.ConvertToSingle(b) - z) * s).StoreUnsafe(ref d, (nuint)(i + w));
                    ((Vector256.ConvertToSingle(c) - z) * s).StoreUnsafe(ref d, (nuint)(i + 2 * w));
                    ((Vector256.ConvertToSingle(e) - z) * s).StoreUnsafe(ref d, (nuint)(i + 3 * w));
                }
                break;
            }
            case KernelImplementation.Vector128:
            {
                var s = Vector128.Create(scale);
                var z = Vector128.Create(zp);
                var f = Vector128.Create(flip);
                int w = Vector128<float>.Count;
                for (; i <= n - 4 * w; i += 4 * w)
                {
                    Vector128<sbyte> v = (Vector128.LoadUnsafe(ref qs, (nuint)i) ^ f).AsSByte();
                    (Vector128<short> l, Vector128<short> u) = Vector128.Widen(v);
                    (Vector128<int> a, Vector128<int> b) = Vector128.Widen(l);
                    (Vector128<int> c, Vector128<int> e) = Vector128.Widen(u);
                    ((Vector128.ConvertToSingle(a) - z) * s).StoreUnsafe(ref d, (nuint)i);
                    ((Vector128.ConvertToSingle(b) - z) * s).StoreUnsafe(ref d, (nuint)(i + w));
                    ((Vector128.ConvertToSingle(c) - z) * s).StoreUnsafe(ref d, (nuint)(i + 2 * w));
                    ((Vector128.ConvertToSingle(e) - z) * s).StoreUnsafe(ref d, (nuint)(i + 3 * w));
                }
                break;
            }
            default:
                break;
        }
        for (; i < n; i++)
        {
            Unsafe.Add(ref d, i) = ScalarReference.DequantizeOne(Unsafe.Add(ref qs, i), unsigned, scale, zeroPoint);
        }
    }
}

internal static class ErrorDriver
{
    // Dequantizes like DequantizeDriver (uint8 through the int8 path with the zero point shifted by 128: exact) with a
    // per-element scale, then folds |x - dequantized| into a running maximum; max is associative and commutative on
    // finite values, so the lane order does not change the result.
    public static float Run(ReadOnlySpan<float> x, ReadOnlySpan<byte> q, ReadOnlySpan<float> scales, ReadOnlySpan<float> zeroPoints, bool unsigned,
        KernelImplementation implementation)
    {
        ref float xs = ref MemoryMarshal.GetReference(x);
        ref byte qs = ref MemoryMarshal.GetReference(q);
        ref float ss = ref MemoryMarshal.GetReference(scales);
        ref float zs = ref MemoryMarshal.GetReference(zeroPoints);
        int n = x.Length;
        int i = 0;
        float shift = unsigned ? 128f : 0f;
        byte flip = unsigned ? (byte)0x80 : (byte)0;
        float max = 0f;
        switch (implementation)
        {
            case KernelImplementation.Vector512:
            {
                var h = Vector512.Create(shift);
                var f = Vector512.Create(flip);
                Vector512<float> m = Vector512<float>.Zero;
                int w = Vector512<float>.Count;
                for (; i <= n - 4 * w; i += 4 * w)
                {
                    Vector512<sbyte> v = (Vector512.LoadUnsafe(ref qs, (nuint)i) ^ f).AsSByte();
                    (Vector512<short> l, Vector512<short> u) = Vector512.Widen(v);
                    (Vector512<int> a, Vector512<int> b) = Vector512.Widen(l);
                    (Vector512<int> c, Vector512<int> e) = Vector512.Widen(u);
                    m = Vector512.Max(m, Vector512.Abs(Vector512.LoadUnsafe(ref xs, (nuint)i) - (Vector512.ConvertToSingle(a) - (Vector512.LoadUnsafe(ref zs, (nuint)i) - h)) * Vector512.LoadUnsafe(ref ss, (nuint)i)));
                    m = Vector512.Max(m, Vector512.Abs(Vector512.LoadUnsafe(ref xs, (nuint)(i + w)) - (Vector512.ConvertToSingle(b) - (Vector512.LoadUnsafe(ref zs, (nuint)(i + w)) - h)) * Vector512.LoadUnsafe(ref ss, (nuint)(i + w))));
                    m = Vector512.Max(m, Vector512.Abs(Vector512.LoadUnsafe(ref xs, (nuint)(i + 2 * w)) - (Vector512.ConvertToSingle(c) - (Vector512.LoadUnsafe(ref zs, (nuint)(i + 2 * w)) - h)) * Vector512.LoadUnsafe(ref ss, (nuint)(i + 2 * w))));
                    m = Vector512.Max(m, Vector512.Abs(Vector512.LoadUnsafe(ref xs, (nuint)(i + 3 * w)) - (Vector512.ConvertToSingle(e) - (Vector512.LoadUnsafe(ref zs, (nuint)(i + 3 * w)) - h)) * Vector512.LoadUnsafe(ref ss, (nuint)(i + 3 * w))));
                }
                for (int k = 0; k < w; k++)
                {
                    max = MathF.Max(max, m.GetElement(k));
                }
                break;
            }
            case KernelImplementation.Vector256:
            {
                var h = Vector256.Create(shift);
                var f = Vector256.Create(flip);
                Vector256<float> m = Vector256<float>.Zero;
                int w = Vector256<float>.Count;
                for (; i <= n - 4 * w; i += 4 * w)
                {
                    Vector256<sbyte> v = (Vector256.LoadUnsafe(ref qs, (nuint)i) ^ f).AsSByte();
                    (Vector256<short> l, Vector256<short> u) = Vector256.Widen(v);
                    (Vector256<int> a, Vector256<int> b) = Vector256.Widen(l);
                    (Vector256<int> c, Vector256<int> e) = Vector256.Widen(u);
                    m = Vector256.Max(m, Vector256.Abs(Vector256.LoadUnsafe(ref xs, (nuint)i) - (Vector256.ConvertToSingle(a) - (Vector256.LoadUnsafe(ref zs, (nuint)i) - h)) * Vector256.LoadUnsafe(ref ss, (nuint)i)));
                    m = Vector256.Max(m, Vector256.Abs(Vector256.LoadUnsafe(ref xs, (nuint)(i + w)) - (Vector256.ConvertToSingle(b) - (Vector256.LoadUnsafe(ref zs, (nuint)(i + w)) - h)) * Vector256.LoadUnsafe(ref ss, (nuint)(i + w))));
                    m = Vector256.Max(m, Vector256.Abs(Vector256.LoadUnsafe(ref xs, (nuint)(i + 2 * w)) - (Vector256.ConvertToSingle(c) - (Vector256.LoadUnsafe(ref zs, (nuint)(i + 2 * w)) - h)) * Vector256.LoadUnsafe(ref ss, (nuint)(i + 2 * w))));
                    m = Vector256.Max(m, Vector256.Abs(Vector256.LoadUnsafe(ref xs, (nuint)(i + 3 * w)) - (Vector256.ConvertToSingle(e) - (Vector256.LoadUnsafe(ref zs, (nuint)(i + 3 * w)) - h)) * Vector256.LoadUnsafe(ref ss, (nuint)(i + 3 * w))));
                }
                for (int k = 0; k < w; k++)
                {
                    max = MathF.Max(max, m.GetElement(k));
                }
                break;
            }
            case KernelImplementation.Vector128:
            {
                var h = Vector128.Create(shift);
                var f = Vector128.Create(flip);
                Vector128<float> m = Vector128<float>.Zero;
                int w = Vector128<float>.Count;
                for (; i <= n - 4 * w; i += 4 * w)
                {
                    Vector128<sbyte> v = (Vector128.LoadUnsafe(ref qs, (nuint)i) ^ f).AsSByte();
                    (Vector128<short> l, Vector128<short> u) = Vector128.Widen(v);
                    (Vector128<int> a, Vector128<int> b) = Vector128.Widen(l);
                    (Vector128<int> c, Vector128<int> e) = Vector128.Widen(u);
                    m = Vector128.Max(m, Vector128.Abs(Vector128.LoadUnsafe(ref xs, (nuint)i) - (Vector128.ConvertToSingle(a) - (Vector128.LoadUnsafe(ref zs, (nuint)i) - h)) * Vector128.LoadUnsafe(ref ss, (nuint)i)));
                    m = Vector128.Max(m, Vector128.Abs(Vector128.LoadUnsafe(ref xs, (nuint)(i + w)) - (Vector128.ConvertToSingle(b) - (Vector128.LoadUnsafe(ref zs, (nuint)(i + w)) - h)) * Vector128.LoadUnsafe(ref ss, (nuint)(i + w))));
                    m = Vector128.Max(m, Vector128.Abs(Vector128.LoadUnsafe(ref xs, (nuint)(i + 2 * w)) - (Vector128.ConvertToSingle(c) - (Vector128.LoadUnsafe(ref zs, (nuint)(i + 2 * w)) - h)) * Vector128.LoadUnsafe(ref ss, (nuint)(i + 2 * w))));
                    m = Vector128.Max(m, Vector128.Abs(Vector128.LoadUnsafe(ref xs, (nuint)(i + 3 * w)) - (Vector128.ConvertToSingle(e) - (Vector128.LoadUnsafe(ref zs, (nuint)(i + 3 * w)) - h)) * Vector128.LoadUnsafe(ref ss, (nuint)(i + 3 * w))));
                }
                for (int k = 0; k < w; k++)
                {
                    max = MathF.Max(max, m.GetElement(k));
                }
                break;
            }
            default:
                break;
        }
        for (; i < n; i++)
        {
            max = MathF.Max(max, MathF.Abs(Unsafe.Add(ref xs, i) - ScalarReference.DequantizeOne(Unsafe.Add(ref qs, i), unsigned, Unsafe.Add(ref ss, i), Unsafe.Add(ref zs, i))));
        }
        return max;
    }
}

internal static partial class ScalarReference
{
    /// <summary>One element of QuantizeLinear; the byte is the int8 or uint8 bit pattern.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte QuantizeOne(float x, float scale, float zeroPoint, float min, float max)
    {
        float v = MathF.Round(x / scale, MidpointRounding.ToEven) + zeroPoint;
        v = MathF.Min(MathF.Max(v, min), max);
        return unchecked((byte)(int)v);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float DequantizeOne(byte q, bool unsigned, float scale, float zeroPoint) =>
        ((unsigned ? q : (float)unchecked((sbyte)q)) - zeroPoint) * scale;

    public static void Quantize(ReadOnlySpan<float> x, float scale, float zeroPoint, float min, float max, Span<byte> destination)
    {
        for (int i = 0; i < x.Length; i++)
        {
            destination[i] = QuantizeOne(x[i], scale, zeroPoint, min, max);
        }
    }

    public static void QuantizePerColumn(ReadOnlySpan<float> matrix, int rows, int cols, ReadOnlySpan<float> scales,
        ReadOnlySpan<float> zeroPoints, float min, float max, Span<byte> destination)
    {
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                destination[r * cols + c] = QuantizeOne(matrix[r * cols + c], scales[c], zeroPoints[c], min, max);
            }
        }
    }

    public static bool SameSignPairOver(sbyte a, sbyte b, int limit) =>
        ((a > 0 && b > 0) || (a < 0 && b < 0)) && Math.Abs(a) + Math.Abs(b) > limit;

    public static float MaxAbsErrorPerColumn(ReadOnlySpan<float> matrix, int rows, int cols, ReadOnlySpan<float> scales,
        ReadOnlySpan<float> zeroPoints, ReadOnlySpan<byte> codes, bool unsigned)
    {
        float max = 0f;
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                max = MathF.Max(max, MathF.Abs(matrix[r * cols + c] - DequantizeOne(codes[r * cols + c], unsigned, scales[c], zeroPoints[c])));
            }
        }
        return max;
    }

    public static void Dequantize(ReadOnlySpan<byte> q, bool unsigned, float scale, float zeroPoint, Span<float> destination)
    {
        for (int i = 0; i < q.Length; i++)
        {
            destination[i] = DequantizeOne(q[i], unsigned, scale, zeroPoint);
        }
    }
}
