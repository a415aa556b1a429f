using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using CompressOnBuild.Core;

namespace CompressOnBuild.Validation;

/// <summary>A decoded .npy array: values as float, shape, and whether the source was uint8.</summary>
internal sealed record NpyArray(float[] Data, long[] Shape, string Descr)
{
    public bool IsUInt8 => Descr is "|u1" or "<u1" or "u1";

    public bool IsInteger => Descr.EndsWith("u1", StringComparison.Ordinal) || Descr.Contains('i', StringComparison.Ordinal);
}

/// <summary>Reads NumPy .npy files (format 1.0-3.0): little-endian float32/float64/uint8/int8/int32/int64, C order.</summary>
internal static partial class NpyReader
{
    private static ReadOnlySpan<byte> Magic => [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];

    public static NpyArray Read(byte[] bytes, string file)
    {
        if (bytes.Length < 10 || !bytes.AsSpan(0, 6).SequenceEqual(Magic))
        {
            throw Unreadable(file, "not a .npy file (magic \\x93NUMPY missing)");
        }
        int major = bytes[6];
        int headerLength;
        int offset;
        if (major == 1)
        {
            headerLength = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(8));
            offset = 10;
        }
        else if (major is 2 or 3)
        {
            if (bytes.Length < 12)
            {
                throw Unreadable(file, "truncated header");
            }
            headerLength = checked((int)BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(8)));
            offset = 12;
        }
        else
        {
            throw Unreadable(file, $"unsupported .npy format version {major}");
        }
        if (offset + headerLength > bytes.Length)
        {
            throw Unreadable(file, "truncated header");
        }
        string header = Encoding.Latin1.GetString(bytes, offset, headerLength);
        int dataStart = offset + headerLength;

        Match descr = DescrRegex().Match(header);
        Match fortran = FortranRegex().Match(header);
        Match shapeMatch = ShapeRegex().Match(header);
        if (!descr.Success || !fortran.Success || !shapeMatch.Success)
        {
            throw Unreadable(file, "header has no descr, fortran_order or shape: " + header.Trim());
        }
        if (fortran.Groups[1].Value == "True")
        {
            throw Unreadable(file, "Fortran-order arrays are not supported; save with C order");
        }
        long[] shape = [.. shapeMatch.Groups[1].Value
            .Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => long.Parse(s, NumberStyles.None, CultureInfo.InvariantCulture))];
        long count = shape.Aggregate(1L, (a, d) => a * d);
        string d = descr.Groups[1].Value;
        int size = d switch
        {
            "<f4" => 4,
            "<f8" => 8,
            "|u1" or "<u1" or "|i1" or "<i1" => 1,
            "<i4" => 4,
            "<i8" => 8,
            _ => throw Unreadable(file, $"dtype '{d}' is not supported (little-endian float32, float64, uint8, int8, int32, int64)"),
        };
        if (count > int.MaxValue || dataStart + count * size > bytes.Length)
        {
            throw Unreadable(file, $"holds {bytes.Length - dataStart} data bytes but shape ({string.Join(",", shape)}) of '{d}' needs {count * size}");
        }
        float[] data = new float[count];
        ReadOnlySpan<byte> src = bytes.AsSpan(dataStart);
        switch (d)
        {
            case "<f4":
                for (int i = 0; i < data.Length; i++) data[i] = BinaryPrimitives.ReadSingleLittleEndian(src[(i * 4)..]);
                break;
            case "<f8":
                for (int i = 0; i < data.Length; i++) data[i] = (float)BinaryPrimitives.ReadDoubleLittleEndian(src[(i * 8)..]);
                break;
            case "|u1" or "<u1":
                for (int i = 0; i < data.Length; i++) data[i] = src[i];
                break;
            case "|i1" or "<i1":
                for (int i = 0; i < data.Length; i++) data[i] = (sbyte)src[i];
                break;
            case "<i4":
                for (int i = 0; i < data.Length; i++) data[i] = BinaryPrimitives.ReadInt32LittleEndian(src[(i * 4)..]);
                break;
            default:
                for (int i = 0; i < data.Length; i++) data[i] = BinaryPrimitives.ReadInt64LittleEndian(src[(i * 8)..]);
                break;
        }
        return new NpyArray(data, shape, d);
    }

    private static CompressException Unreadable(string file, string why) =>
        new(DiagnosticCodes.DataUnreadable, file, why) { File = file };

    [GeneratedRegex(@"'descr'\s*:\s*'([^']*)'")]
    private static partial Regex DescrRegex();

    [GeneratedRegex(@"'fortran_order'\s*:\s*(True|False)")]
    private static partial Regex FortranRegex();

    [GeneratedRegex(@"'shape'\s*:\s*\(([^)]*)\)")]
    private static partial Regex ShapeRegex();
}
