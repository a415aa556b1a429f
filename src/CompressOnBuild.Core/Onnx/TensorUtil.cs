using System.Buffers.Binary;
using System.Runtime.InteropServices;
using CompressOnBuild.Onnx;
using Google.Protobuf;

namespace CompressOnBuild.Core.Onnx;

/// <summary>Reading and writing the element data of <see cref="TensorProto"/> values.</summary>
public static class TensorUtil
{
    /// <summary>Highest TensorProto.DataType value this build knows.</summary>
    public const int MaxKnownDataType = (int)TensorProto.Types.DataType.Int2;

    public static bool IsKnownDataType(int dataType) => dataType > 0 && dataType <= MaxKnownDataType;

    /// <summary>Bits per element, or 0 for STRING / unknown types.</summary>
    public static int BitsPerElement(int dataType) => (TensorProto.Types.DataType)dataType switch
    {
        TensorProto.Types.DataType.Float or TensorProto.Types.DataType.Int32 or TensorProto.Types.DataType.Uint32 => 32,
        TensorProto.Types.DataType.Uint8 or TensorProto.Types.DataType.Int8 or TensorProto.Types.DataType.Bool => 8,
        TensorProto.Types.DataType.Float8E4M3Fn or TensorProto.Types.DataType.Float8E4M3Fnuz => 8,
        TensorProto.Types.DataType.Float8E5M2 or TensorProto.Types.DataType.Float8E5M2Fnuz or TensorProto.Types.DataType.Float8E8M0 => 8,
        TensorProto.Types.DataType.Uint16 or TensorProto.Types.DataType.Int16 => 16,
        TensorProto.Types.DataType.Float16 or TensorProto.Types.DataType.Bfloat16 => 16,
        TensorProto.Types.DataType.Int64 or TensorProto.Types.DataType.Uint64 or TensorProto.Types.DataType.Double => 64,
        TensorProto.Types.DataType.Complex64 => 64,
        TensorProto.Types.DataType.Complex128 => 128,
        TensorProto.Types.DataType.Uint4 or TensorProto.Types.DataType.Int4 or TensorProto.Types.DataType.Float4E2M1 => 4,
        TensorProto.Types.DataType.Uint2 or TensorProto.Types.DataType.Int2 => 2,
        _ => 0,
    };

    public static string DataTypeName(int dataType) =>
        IsKnownDataType(dataType) || dataType == 0 ? ((TensorProto.Types.DataType)dataType).ToString().ToUpperInvariant() : $"UNKNOWN({dataType})";

    /// <summary>Number of elements; throws <see cref="OverflowException"/> or <see cref="InvalidDataException"/> on negative or overflowing dims.</summary>
    public static long ElementCount(IEnumerable<long> dims)
    {
        long count = 1;
        foreach (long d in dims)
        {
            if (d < 0)
            {
                throw new InvalidDataException($"negative dimension {d}");
            }
            count = checked(count * d);
        }
        return count;
    }

    public static long ElementCount(TensorProto tensor) => ElementCount(tensor.Dims);

    /// <summary>Bytes the elements take in raw_data form (4-bit and 2-bit types packed), or -1 for STRING / unknown.</summary>
    public static long ExpectedRawByteLength(TensorProto tensor)
    {
        int bits = BitsPerElement(tensor.DataType);
        if (bits == 0)
        {
            return -1;
        }
        long count = ElementCount(tensor);
        return checked((count * bits + 7) / 8);
    }

    public static bool IsExternal(TensorProto tensor) => tensor.DataLocation == TensorProto.Types.DataLocation.External;

    /// <summary>
    /// Checks that the stored element data agrees with dims and data_type. Returns null when consistent,
    /// else the reason. External tensors are checked once their data is loaded.
    /// </summary>
    public static string? CheckDataConsistency(TensorProto tensor)
    {
        if (!IsKnownDataType(tensor.DataType))
        {
            return $"unknown data type {tensor.DataType}";
        }
        long count;
        long expectedRaw;
        try
        {
            count = ElementCount(tensor);
            // count * bits can overflow even when count itself fits (fuzz: dims [2^61] of FLOAT).
            expectedRaw = ExpectedRawByteLength(tensor);
        }
        catch (Exception e) when (e is OverflowException or InvalidDataException)
        {
            return "invalid dims: " + e.Message;
        }
        if (IsExternal(tensor))
        {
            return null;
        }
        var type = (TensorProto.Types.DataType)tensor.DataType;
        if (type == TensorProto.Types.DataType.String)
        {
            return tensor.StringData.Count == count ? null : $"holds {tensor.StringData.Count} strings but its dims say {count}";
        }
        if (tensor.HasRawData)
        {
            long expected = expectedRaw;
            return tensor.RawData.Length == expected ? null : $"raw_data has {tensor.RawData.Length} bytes but dims [{string.Join(",", tensor.Dims)}] of {DataTypeName(tensor.DataType)} need {expected}";
        }
        long stored = TypedFieldCount(tensor);
        long expectedStored = type switch
        {
            TensorProto.Types.DataType.Complex64 or TensorProto.Types.DataType.Complex128 => count > long.MaxValue / 2 ? -1 : count * 2,
            TensorProto.Types.DataType.Uint4 or TensorProto.Types.DataType.Int4 or TensorProto.Types.DataType.Float4E2M1 => (count + 1) / 2,
            TensorProto.Types.DataType.Uint2 or TensorProto.Types.DataType.Int2 => (count + 3) / 4,
            _ => count,
        };
        if (stored == expectedStored)
        {
            return null;
        }
        // Some exporters store 4-bit values one per int32 element; accept that too.
        if (stored == count && BitsPerElement(tensor.DataType) < 8)
        {
            return null;
        }
        return $"holds {stored} values but dims [{string.Join(",", tensor.Dims)}] need {expectedStored}";
    }

    private static long TypedFieldCount(TensorProto t) => (TensorProto.Types.DataType)t.DataType switch
    {
        TensorProto.Types.DataType.Float or TensorProto.Types.DataType.Complex64 => t.FloatData.Count,
        TensorProto.Types.DataType.Double or TensorProto.Types.DataType.Complex128 => t.DoubleData.Count,
        TensorProto.Types.DataType.Int64 => t.Int64Data.Count,
        TensorProto.Types.DataType.Uint32 or TensorProto.Types.DataType.Uint64 => t.Uint64Data.Count,
        _ => t.Int32Data.Count,
    };

    /// <summary>
    /// The elements of a float32 tensor stored in raw_data, read in place (no copy; valid while the tensor keeps that
    /// raw_data); false for any other storage (float_data, external data, another type, a big-endian host) or raw_data
    /// that does not hold exactly the dims' element count: <see cref="ToFloatArray"/> then reads or rejects it.
    /// </summary>
    public static bool TryGetRawFloats(TensorProto tensor, out ReadOnlySpan<float> values)
    {
        values = default;
        if (!BitConverter.IsLittleEndian || tensor.DataType != (int)TensorProto.Types.DataType.Float || !tensor.HasRawData || IsExternal(tensor)
            || tensor.Dims.Any(d => d < 0))
        {
            return false;
        }
        long count = 1;
        foreach (long d in tensor.Dims)
        {
            if (d != 0 && count > long.MaxValue / 4 / d)
            {
                return false;
            }
            count *= d;
        }
        if (tensor.RawData.Length != count * 4)
        {
            return false;
        }
        values = MemoryMarshal.Cast<byte, float>(tensor.RawData.Span);
        return true;
    }

    /// <summary>The elements of a floating-point tensor (FLOAT, FLOAT16, BFLOAT16, DOUBLE) as float32.</summary>
    public static float[] ToFloatArray(TensorProto tensor)
    {
        EnsureLoaded(tensor);
        long count = ElementCount(tensor);
        // Check the stored length before allocating: dims are untrusted and may claim billions of elements.
        RequireStoredLength(tensor, count);
        var result = new float[count];
        var type = (TensorProto.Types.DataType)tensor.DataType;
        ReadOnlySpan<byte> raw = tensor.HasRawData ? tensor.RawData.Span : default;
        switch (type)
        {
            case TensorProto.Types.DataType.Float:
                if (tensor.HasRawData)
                {
                    RequireLength(tensor, raw.Length, count * 4);
                    MemoryMarshal.Cast<byte, float>(raw).CopyTo(result);
                    if (!BitConverter.IsLittleEndian)
                    {
                        for (int i = 0; i < result.Length; i++)
                        {
                            result[i] = BinaryPrimitives.ReadSingleLittleEndian(raw.Slice(i * 4));
                        }
                    }
                }
                else
                {
                    RequireLength(tensor, tensor.FloatData.Count, count);
                    tensor.FloatData.CopyTo(result, 0);
                }
                break;
            case TensorProto.Types.DataType.Float16:
            case TensorProto.Types.DataType.Bfloat16:
                bool bf = type == TensorProto.Types.DataType.Bfloat16;
                if (tensor.HasRawData)
                {
                    RequireLength(tensor, raw.Length, count * 2);
                    for (int i = 0; i < result.Length; i++)
                    {
                        ushort bits = BinaryPrimitives.ReadUInt16LittleEndian(raw.Slice(i * 2));
                        result[i] = bf ? BFloat16ToSingle(bits) : (float)BitConverter.UInt16BitsToHalf(bits);
                    }
                }
                else
                {
                    RequireLength(tensor, tensor.Int32Data.Count, count);
                    for (int i = 0; i < result.Length; i++)
                    {
                        ushort bits = (ushort)tensor.Int32Data[i];
                        result[i] = bf ? BFloat16ToSingle(bits) : (float)BitConverter.UInt16BitsToHalf(bits);
                    }
                }
                break;
            case TensorProto.Types.DataType.Double:
                if (tensor.HasRawData)
                {
                    RequireLength(tensor, raw.Length, count * 8);
                    for (int i = 0; i < result.Length; i++)
                    {
                        result[i] = (float)BinaryPrimitives.ReadDoubleLittleEndian(raw.Slice(i * 8));
                    }
                }
                else
                {
                    RequireLength(tensor, tensor.DoubleData.Count, count);
                    for (int i = 0; i < result.Length; i++)
                    {
                        result[i] = (float)tensor.DoubleData[i];
                    }
                }
                break;
            default:
                throw new InvalidDataException($"tensor '{tensor.Name}' is {DataTypeName(tensor.DataType)}, not a floating-point type");
        }
        return result;
    }

    /// <summary>The elements of an integer tensor (INT8/16/32/64, UINT8/16/32/64, BOOL) as int64.</summary>
    public static long[] ToInt64Array(TensorProto tensor)
    {
        EnsureLoaded(tensor);
        long count = ElementCount(tensor);
        RequireStoredLength(tensor, count);
        var result = new long[count];
        var type = (TensorProto.Types.DataType)tensor.DataType;
        if (tensor.HasRawData)
        {
            ReadOnlySpan<byte> raw = tensor.RawData.Span;
            int size = BitsPerElement(tensor.DataType) / 8;
            RequireLength(tensor, raw.Length, count * size);
            for (int i = 0; i < result.Length; i++)
            {
                ReadOnlySpan<byte> e = raw.Slice(i * size);
                result[i] = type switch
                {
                    TensorProto.Types.DataType.Int8 => (sbyte)e[0],
                    TensorProto.Types.DataType.Uint8 or TensorProto.Types.DataType.Bool => e[0],
                    TensorProto.Types.DataType.Int16 => BinaryPrimitives.ReadInt16LittleEndian(e),
                    TensorProto.Types.DataType.Uint16 => BinaryPrimitives.ReadUInt16LittleEndian(e),
                    TensorProto.Types.DataType.Int32 => BinaryPrimitives.ReadInt32LittleEndian(e),
                    TensorProto.Types.DataType.Uint32 => BinaryPrimitives.ReadUInt32LittleEndian(e),
                    TensorProto.Types.DataType.Int64 => BinaryPrimitives.ReadInt64LittleEndian(e),
                    TensorProto.Types.DataType.Uint64 => (long)BinaryPrimitives.ReadUInt64LittleEndian(e),
                    _ => throw new InvalidDataException($"tensor '{tensor.Name}' is {DataTypeName(tensor.DataType)}, not an integer type"),
                };
            }
            return result;
        }
        switch (type)
        {
            case TensorProto.Types.DataType.Int64:
                RequireLength(tensor, tensor.Int64Data.Count, count);
                tensor.Int64Data.CopyTo(result, 0);
                break;
            case TensorProto.Types.DataType.Uint32:
            case TensorProto.Types.DataType.Uint64:
                RequireLength(tensor, tensor.Uint64Data.Count, count);
                for (int i = 0; i < result.Length; i++)
                {
                    result[i] = (long)tensor.Uint64Data[i];
                }
                break;
            case TensorProto.Types.DataType.Int8:
            case TensorProto.Types.DataType.Uint8:
            case TensorProto.Types.DataType.Int16:
            case TensorProto.Types.DataType.Uint16:
            case TensorProto.Types.DataType.Int32:
            case TensorProto.Types.DataType.Bool:
                RequireLength(tensor, tensor.Int32Data.Count, count);
                for (int i = 0; i < result.Length; i++)
                {
                    result[i] = tensor.Int32Data[i];
                }
                break;
            default:
                throw new InvalidDataException($"tensor '{tensor.Name}' is {DataTypeName(tensor.DataType)}, not an integer type");
        }
        return result;
    }

    /// <summary>The element bytes in raw_data layout (converting typed fields when needed).</summary>
    public static byte[] ToRawBytes(TensorProto tensor)
    {
        EnsureLoaded(tensor);
        if (tensor.HasRawData)
        {
            return tensor.RawData.ToByteArray();
        }
        var type = (TensorProto.Types.DataType)tensor.DataType;
        long count = ElementCount(tensor);
        RequireStoredLength(tensor, count);
        switch (type)
        {
            case TensorProto.Types.DataType.Float:
                return MemoryMarshal.AsBytes(ToFloatArray(tensor).AsSpan()).ToArray();
            case TensorProto.Types.DataType.Double:
                return MemoryMarshal.AsBytes(tensor.DoubleData.ToArray().AsSpan()).ToArray();
            case TensorProto.Types.DataType.Int64:
                return MemoryMarshal.AsBytes(tensor.Int64Data.ToArray().AsSpan()).ToArray();
            case TensorProto.Types.DataType.Int32:
                return MemoryMarshal.AsBytes(tensor.Int32Data.ToArray().AsSpan()).ToArray();
            case TensorProto.Types.DataType.Int8:
            case TensorProto.Types.DataType.Uint8:
            case TensorProto.Types.DataType.Bool:
                return tensor.Int32Data.Select(v => (byte)v).ToArray();
            case TensorProto.Types.DataType.Int16:
            case TensorProto.Types.DataType.Uint16:
            case TensorProto.Types.DataType.Float16:
            case TensorProto.Types.DataType.Bfloat16:
            {
                var bytes = new byte[count * 2];
                for (int i = 0; i < count; i++)
                {
                    BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(i * 2), (ushort)tensor.Int32Data[i]);
                }
                return bytes;
            }
            default:
                throw new InvalidDataException($"tensor '{tensor.Name}' of type {DataTypeName(tensor.DataType)} has no raw form here");
        }
    }

    public static TensorProto FromFloats(string name, ReadOnlySpan<float> data, params long[] dims) =>
        FromRaw(name, TensorProto.Types.DataType.Float, MemoryMarshal.AsBytes(data), dims);

    public static TensorProto FromInt8(string name, ReadOnlySpan<sbyte> data, params long[] dims) =>
        FromRaw(name, TensorProto.Types.DataType.Int8, MemoryMarshal.AsBytes(data), dims);

    public static TensorProto FromUInt8(string name, ReadOnlySpan<byte> data, params long[] dims) =>
        FromRaw(name, TensorProto.Types.DataType.Uint8, data, dims);

    public static TensorProto FromInt32(string name, ReadOnlySpan<int> data, params long[] dims) =>
        FromRaw(name, TensorProto.Types.DataType.Int32, MemoryMarshal.AsBytes(data), dims);

    public static TensorProto FromInt64(string name, ReadOnlySpan<long> data, params long[] dims) =>
        FromRaw(name, TensorProto.Types.DataType.Int64, MemoryMarshal.AsBytes(data), dims);

    public static TensorProto FromRaw(string name, TensorProto.Types.DataType type, ReadOnlySpan<byte> bytes, params long[] dims)
    {
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("big-endian hosts are not supported");
        }
        var t = new TensorProto { Name = name, DataType = (int)type, RawData = ByteString.CopyFrom(bytes) };
        t.Dims.AddRange(dims);
        long expected = ExpectedRawByteLength(t);
        if (expected != bytes.Length)
        {
            throw new ArgumentException($"tensor '{name}': {bytes.Length} bytes do not match dims [{string.Join(",", dims)}] of {type}");
        }
        return t;
    }

    private static float BFloat16ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    private static void EnsureLoaded(TensorProto tensor)
    {
        if (IsExternal(tensor))
        {
            throw new InvalidOperationException($"tensor '{tensor.Name}' still refers to external data; load the model with ModelIO.Load");
        }
    }

    /// <summary>Throws <see cref="InvalidDataException"/> unless the stored data holds <paramref name="count"/> elements (before anything is allocated).</summary>
    private static void RequireStoredLength(TensorProto tensor, long count)
    {
        int bits = BitsPerElement(tensor.DataType);
        if (tensor.HasRawData)
        {
            if (bits >= 8 && (count > long.MaxValue / (bits / 8) || tensor.RawData.Length != count * (bits / 8)))
            {
                RequireLength(tensor, tensor.RawData.Length, count > long.MaxValue / 8 ? long.MaxValue : count * (bits / 8));
            }
            return;
        }
        if (bits >= 8 && (TensorProto.Types.DataType)tensor.DataType != TensorProto.Types.DataType.String)
        {
            RequireLength(tensor, TypedFieldCount(tensor), count);
        }
    }

    private static void RequireLength(TensorProto tensor, long actual, long expected)
    {
        if (actual != expected)
        {
            throw new InvalidDataException($"tensor '{tensor.Name}' holds {actual} values/bytes, expected {expected} for dims [{string.Join(",", tensor.Dims)}]");
        }
    }
}
