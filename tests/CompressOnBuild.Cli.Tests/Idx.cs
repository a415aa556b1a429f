using System.Buffers.Binary;

namespace CompressOnBuild.Cli.Tests;

/// <summary>Writes MNIST-style IDX files for tests.</summary>
internal static class Idx
{
    public static void WriteImages(string path, byte[] pixels, int count, int rows, int cols)
    {
        var header = new byte[16];
        BinaryPrimitives.WriteInt32BigEndian(header, 0x00000803);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), count);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(8), rows);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(12), cols);
        File.WriteAllBytes(path, [.. header, .. pixels]);
    }

    public static void WriteLabels(string path, byte[] labels)
    {
        var header = new byte[8];
        BinaryPrimitives.WriteInt32BigEndian(header, 0x00000801);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), labels.Length);
        File.WriteAllBytes(path, [.. header, .. labels]);
    }
}
