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
