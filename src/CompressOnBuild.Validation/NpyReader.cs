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

/// <summary>
/// Reads NumPy .npy files (format 1.0-3.0): little-endian float32/float64/uint8/int8/int32/int64, C order. The header
/// is checked before any data is read: every dimension a non-negative integer, the element count and byte count
/// without overflow and small enough for one array, and (when the stream's length is known) no more bytes than the
/// stream holds. The values are then decoded in chunks straight into the float array, so a .npy inside an .npz is
/// never buffered as bytes first and a header that lies about its size costs nothing.
/// </summary>
internal static partial class NpyReader
{
    /// <summary>Longest header accepted (NumPy writes under 100 bytes; format 2.0 allows 4 GiB).</summary>
    private const int MaxHeaderBytes = 1 << 20;

    private static ReadOnlySpan<byte> Magic => [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];

    public static NpyArray Read(byte[] bytes, string file)
    {
        ArgumentNullException.ThrowIfNull(bytes);
        using var ms = new MemoryStream(bytes, writable: false);
        return Read(ms, bytes.Length, file);
    }

    /// <summary>Reads one array from <paramref name="stream"/>; <paramref name="streamLength"/> is its length when known, else -1.</summary>
    public static NpyArray Read(Stream stream, long streamLength, string file)
    {
        ArgumentNullException.ThrowIfNull(stream);
        byte[] prefix = new byte[10];
        if (ReadUpTo(stream, prefix, file) < 10 || !prefix.AsSpan(0, 6).SequenceEqual(Magic))
        {
            throw Unreadable(file, "not a .npy file (magic \\x93NUMPY missing)");
        }
        int major = prefix[6];
        long headerLength;
        long offset;
        if (major == 1)
        {
            headerLength = BinaryPrimitives.ReadUInt16LittleEndian(prefix.AsSpan(8));
            offset = 10;
        }
        else if (major is 2 or 3)
        {
            byte[] rest = new byte[2];
            if (ReadUpTo(stream, rest, file) < 2)
            {
                throw Unreadable(file, "truncated header");
            }
            headerLength = BinaryPrimitives.ReadUInt32LittleEndian([prefix[8], prefix[9], rest[0], rest[1]]);
            offset = 12;
        }
        else
        {
            throw Unreadable(file, $"unsupported .npy format version {major}");
        }
        if (headerLength > MaxHeaderBytes || (streamLength >= 0 && offset + headerLength > streamLength))
        {
            throw Unreadable(file, $"the header claims {headerLength} bytes ({(headerLength > MaxHeaderBytes ? "more than the 1 MiB accepted" : "more than the file holds")})");
        }
        byte[] headerBytes = new byte[headerLength];
        if (ReadUpTo(stream, headerBytes, file) < headerLength)
        {
            throw Unreadable(file, "truncated header");
        }
        string header = Encoding.Latin1.GetString(headerBytes);
        long dataStart = offset + headerLength;

        Match descr = DescrRegex().Match(header);
        Match fortran = FortranRegex().Match(header);
        Match shapeMatch = ShapeRegex().Match(header);
        if (!descr.Success || !fortran.Success || !shapeMatch.Success)
        {
            throw Unreadable(file, "header has no descr, fortran_order or shape: " + Shorten(header.Trim()));
        }
        if (fortran.Groups[1].Value == "True")
        {
            throw Unreadable(file, "Fortran-order arrays are not supported; save with C order");
        }
        string[] dimTexts = shapeMatch.Groups[1].Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        long[] shape = new long[dimTexts.Length];
        long count = 1;
        for (int i = 0; i < dimTexts.Length; i++)
        {
            if (!long.TryParse(dimTexts[i], NumberStyles.None, CultureInfo.InvariantCulture, out shape[i]))
            {
                throw Unreadable(file, $"shape entry '{Shorten(dimTexts[i])}' is not a non-negative integer that fits 64 bits");
            }
            count = shape[i] == 0 || count == 0 ? 0 : count <= long.MaxValue / shape[i] ? count * shape[i] : -1;
            if (count < 0)
            {
                throw Unreadable(file, $"shape ({Shorten(string.Join(",", dimTexts))}) has more elements than fit 64 bits");
            }
        }
        string d = descr.Groups[1].Value;
        int size = d switch
        {
            "<f4" => 4,
            "<f8" => 8,
            "|u1" or "<u1" or "|i1" or "<i1" => 1,
            "<i4" => 4,
            "<i8" => 8,
            _ => throw Unreadable(file, $"dtype '{Shorten(d)}' is not supported (little-endian float32, float64, uint8, int8, int32, int64)"),
        };
        if (count > Array.MaxLength || count > long.MaxValue / size)
        {
            throw Unreadable(file, $"shape ({string.Join(",", shape)}) holds {count} elements, more than one array can hold ({Array.MaxLength})");
        }
        long needed = count * size;
        if (streamLength >= 0 && needed > streamLength - dataStart)
        {
            throw Unreadable(file, $"holds {streamLength - dataStart} data bytes but shape ({string.Join(",", shape)}) of '{d}' needs {needed}");
        }
        float[] data = new float[count];
        byte[] chunk = new byte[(int)Math.Min(needed, 1 << 20) / size * size];
        long done = 0;
        while (done < count)
        {
            int elements = (int)Math.Min(chunk.Length / size, count - done);
            Span<byte> bytes = chunk.AsSpan(0, elements * size);
            if (ReadUpTo(stream, bytes, file) < bytes.Length)
            {
                throw Unreadable(file, $"the data ends early: shape ({string.Join(",", shape)}) of '{d}' needs {needed} bytes");
            }
            Decode(d, bytes, data.AsSpan((int)done, elements));
            done += elements;
        }
        return new NpyArray(data, shape, d);
    }

    private static void Decode(string d, ReadOnlySpan<byte> src, Span<float> data)
    {
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
    }

    /// <summary>Fills <paramref name="buffer"/> as far as the stream goes; I/O and decompression errors become CMPR0302.</summary>
    private static int ReadUpTo(Stream stream, Span<byte> buffer, string file)
    {
        try
        {
            return stream.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            throw CompressException.ForFile(file, e, DiagnosticCodes.DataUnreadable, file, e.Message);
        }
    }

    private static string Shorten(string s) => s.Length > 80 ? s[..80] + "..." : s;

    private static CompressException Unreadable(string file, string why) =>
        new(DiagnosticCodes.DataUnreadable, file, why) { File = file };

    [GeneratedRegex(@"'descr'\s*:\s*'([^']*)'")]
    private static partial Regex DescrRegex();

    [GeneratedRegex(@"'fortran_order'\s*:\s*(True|False)")]
    private static partial Regex FortranRegex();

    [GeneratedRegex(@"'shape'\s*:\s*\(([^)]*)\)")]
    private static partial Regex ShapeRegex();
}
