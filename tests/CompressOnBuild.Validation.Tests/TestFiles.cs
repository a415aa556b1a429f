using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;
using System.Text;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using Google.Protobuf;

namespace CompressOnBuild.Validation.Tests;

/// <summary>Writers for small test data files (PNG, BMP, IDX, .npy, TensorProto) in a per-test temp folder.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "cob-valid-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string relative)
    {
        string full = System.IO.Path.Combine(Path, relative);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(full)!);
        return full;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, true);
        }
        catch (IOException)
        {
        }
    }
}

internal static class TestFiles
{
    /// <summary>A minimal PNG encoder: 8-bit gray (channels 1) or RGB (channels 3), filter 0, zlib via ZLibStream.</summary>
    public static byte[] Png(int width, int height, int channels, byte[] pixels)
    {
        using MemoryStream png = new();
        png.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        byte[] ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, width);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), height);
        ihdr[8] = 8;
        ihdr[9] = (byte)(channels == 3 ? 2 : 0);
        Chunk(png, "IHDR", ihdr);
        using MemoryStream raw = new();
        using (ZLibStream z = new(raw, CompressionLevel.Optimal, leaveOpen: true))
        {
            for (int y = 0; y < height; y++)
            {
                z.WriteByte(0);
                z.Write(pixels, y * width * channels, width * channels);
            }
        }
        Chunk(png, "IDAT", raw.ToArray());
        Chunk(png, "IEND", []);
        return png.ToArray();
    }

    private static void Chunk(Stream s, string type, byte[] data)
    {
        Span<byte> len = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(len, data.Length);
        s.Write(len);
        byte[] typeAndData = [.. Encoding.ASCII.GetBytes(type), .. data];
        s.Write(typeAndData);
        BinaryPrimitives.WriteUInt32BigEndian(len, Crc32(typeAndData));
        s.Write(len);
    }

    /// <summary>CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) as PNG needs it.</summary>
    public static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++)
            {
                crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB88320 : crc >> 1;
            }
        }
        return ~crc;
    }

    /// <summary>24-bit bottom-up BMP from RGB pixels.</summary>
    public static byte[] Bmp(int width, int height, byte[] rgb)
    {
        int stride = (width * 3 + 3) & ~3;
        byte[] file = new byte[54 + stride * height];
        file[0] = (byte)'B';
        file[1] = (byte)'M';
        BinaryPrimitives.WriteInt32LittleEndian(file.AsSpan(2), file.Length);
        BinaryPrimitives.WriteInt32LittleEndian(file.AsSpan(10), 54);
        BinaryPrimitives.WriteInt32LittleEndian(file.AsSpan(14), 40);
        BinaryPrimitives.WriteInt32LittleEndian(file.AsSpan(18), width);
        BinaryPrimitives.WriteInt32LittleEndian(file.AsSpan(22), height);
        BinaryPrimitives.WriteInt16LittleEndian(file.AsSpan(26), 1);
        BinaryPrimitives.WriteInt16LittleEndian(file.AsSpan(28), 24);
        BinaryPrimitives.WriteInt32LittleEndian(file.AsSpan(34), stride * height);
        for (int y = 0; y < height; y++)
        {
            int row = 54 + (height - 1 - y) * stride;
            for (int x = 0; x < width; x++)
            {
                int src = (y * width + x) * 3;
                file[row + x * 3] = rgb[src + 2];
                file[row + x * 3 + 1] = rgb[src + 1];
                file[row + x * 3 + 2] = rgb[src];
            }
        }
        return file;
    }

    public static byte[] IdxImages(int count, int height, int width, byte[] pixels)
    {
        byte[] file = new byte[16 + pixels.Length];
        file[2] = 0x08;
        file[3] = 3;
        BinaryPrimitives.WriteInt32BigEndian(file.AsSpan(4), count);
        BinaryPrimitives.WriteInt32BigEndian(file.AsSpan(8), height);
        BinaryPrimitives.WriteInt32BigEndian(file.AsSpan(12), width);
        pixels.CopyTo(file, 16);
        return file;
    }

    public static byte[] IdxLabels(params byte[] labels)
    {
        byte[] file = new byte[8 + labels.Length];
        file[2] = 0x08;
        file[3] = 1;
        BinaryPrimitives.WriteInt32BigEndian(file.AsSpan(4), labels.Length);
        labels.CopyTo(file, 8);
        return file;
    }

    /// <summary>A version 1.0 .npy file; <paramref name="descr"/> like "&lt;f4", data already encoded.</summary>
    public static byte[] Npy(string descr, long[] shape, byte[] data, bool fortran = false)
    {
        string shapeText = shape.Length == 1 ? $"({shape[0]},)" : "(" + string.Join(", ", shape.Select(s => s.ToString(CultureInfo.InvariantCulture))) + ")";
        string header = $"{{'descr': '{descr}', 'fortran_order': {(fortran ? "True" : "False")}, 'shape': {shapeText}, }}";
        int total = 10 + header.Length + 1;
        int pad = (64 - total % 64) % 64;
        header = header + new string(' ', pad) + "\n";
        byte[] file = new byte[10 + header.Length + data.Length];
        file[0] = 0x93;
        Encoding.ASCII.GetBytes("NUMPY").CopyTo(file, 1);
        file[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(8), (ushort)header.Length);
        Encoding.ASCII.GetBytes(header).CopyTo(file, 10);
        data.CopyTo(file, 10 + header.Length);
        return file;
    }

    public static byte[] NpyFloat(long[] shape, params float[] values)
    {
        byte[] data = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++)
        {
            BinaryPrimitives.WriteSingleLittleEndian(data.AsSpan(i * 4), values[i]);
        }
        return Npy("<f4", shape, data);
    }

    public static byte[] NpyInt64(long[] shape, params long[] values)
    {
        byte[] data = new byte[values.Length * 8];
        for (int i = 0; i < values.Length; i++)
        {
            BinaryPrimitives.WriteInt64LittleEndian(data.AsSpan(i * 8), values[i]);
        }
        return Npy("<i8", shape, data);
    }

    public static byte[] NpyDouble(long[] shape, params double[] values)
    {
        byte[] data = new byte[values.Length * 8];
        for (int i = 0; i < values.Length; i++)
        {
            BinaryPrimitives.WriteDoubleLittleEndian(data.AsSpan(i * 8), values[i]);
        }
        return Npy("<f8", shape, data);
    }

    public static void WriteTensor(string path, string name, float[] values, params long[] dims) =>
        System.IO.File.WriteAllBytes(path, TensorUtil.FromFloats(name, values, dims).ToByteArray());

    public static void Zip(string path, params (string Name, byte[] Bytes)[] entries)
    {
        using FileStream fs = System.IO.File.Create(path);
        using ZipArchive zip = new(fs, ZipArchiveMode.Create);
        foreach ((string name, byte[] bytes) in entries)
        {
            using Stream s = zip.CreateEntry(name).Open();
            s.Write(bytes);
        }
    }

    public static ModelInputs Inputs(string name, params long[] shape) =>
        new([new TensorInfo(name, TensorElementType.Float, shape)]);

    public static void AssertClose(float[] expected, float[] actual, float tolerance = 1e-6f, string? message = null)
    {
        Assert.HasCount(expected.Length, actual, message);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.AreEqual(expected[i], actual[i], tolerance, $"{message} element {i}");
        }
    }

    public static void Save(ModelProto model, string path) => System.IO.File.WriteAllBytes(path, model.ToByteArray());
}
