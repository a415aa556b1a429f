using System.Buffers.Binary;

namespace CompressOnBuild.Samples.Shapes;

/// <summary>MNIST-style IDX files: idx3 uint8 images [count, rows, cols] and idx1 uint8 labels [count].</summary>
public static class Idx
{
    public static void WriteImages(string path, byte[] pixels, int count, int rows, int cols)
    {
        var header = new byte[16];
        BinaryPrimitives.WriteInt32BigEndian(header, 0x00000803);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), count);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(8), rows);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(12), cols);
        using FileStream stream = File.Create(path);
        stream.Write(header);
        stream.Write(pixels, 0, count * rows * cols);
    }

    public static void WriteLabels(string path, int[] labels)
    {
        var header = new byte[8];
        BinaryPrimitives.WriteInt32BigEndian(header, 0x00000801);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), labels.Length);
        using FileStream stream = File.Create(path);
        stream.Write(header);
        foreach (int label in labels)
        {
            stream.WriteByte(checked((byte)label));
        }
    }

    /// <summary>Reads an idx3 image file: (pixels, count, rows, cols).</summary>
    public static (byte[] Pixels, int Count, int Rows, int Cols) ReadImages(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        if (bytes.Length < 16 || BinaryPrimitives.ReadInt32BigEndian(bytes) != 0x00000803)
        {
            throw new InvalidDataException($"'{path}' is not an idx3 uint8 image file");
        }
        int count = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(4));
        int rows = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(8));
        int cols = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(12));
        return (bytes[16..], count, rows, cols);
    }

    public static int[] ReadLabels(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        if (bytes.Length < 8 || BinaryPrimitives.ReadInt32BigEndian(bytes) != 0x00000801)
        {
            throw new InvalidDataException($"'{path}' is not an idx1 uint8 label file");
        }
        return bytes[8..].Select(b => (int)b).ToArray();
    }
}
