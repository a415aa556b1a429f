namespace CompressOnBuild.Kernels.Tests;

internal static class TestData
{
    public static readonly KernelImplementation[] All =
        [KernelImplementation.Scalar, KernelImplementation.Vector128, KernelImplementation.Vector256, KernelImplementation.Vector512];

    /// <summary>Lengths 0..257 plus a few large ones (not multiples of any vector width).</summary>
    public static IEnumerable<int> Lengths()
    {
        for (int n = 0; n <= 257; n++)
        {
            yield return n;
        }
        yield return 1000;
        yield return 4099;
        yield return 65_537;
    }

    public static float[] Random(int length, int seed, float range = 10f)
    {
        var rng = new Random(seed);
        var a = new float[length];
        for (int i = 0; i < a.Length; i++)
        {
            a[i] = (float)((rng.NextDouble() * 2 - 1) * range);
        }
        return a;
    }

    /// <summary>Same length, with some -0.0, denormals and huge values mixed in (all finite).</summary>
    public static float[] Awkward(int length, int seed)
    {
        float[] a = Random(length, seed);
        var rng = new Random(seed + 1);
        float[] specials = [-0f, 0f, float.Epsilon, -float.Epsilon, 1e-40f, -3e-39f, float.MaxValue, float.MinValue, 1e30f];
        for (int i = 0; i < a.Length; i += 1 + rng.Next(5))
        {
            a[i] = specials[rng.Next(specials.Length)];
        }
        return a;
    }

    /// <summary>A span of <paramref name="values"/> starting at byte offset 4*offset inside a larger array (unaligned).</summary>
    public static ReadOnlySpan<float> Unaligned(float[] values, int offset)
    {
        var buffer = new float[values.Length + offset];
        values.CopyTo(buffer, offset);
        return buffer.AsSpan(offset, values.Length);
    }

    public static void AreSame(float expected, float actual, string what)
    {
        if (float.IsNaN(expected))
        {
            Assert.IsTrue(float.IsNaN(actual), $"{what}: expected NaN, got {actual}");
            return;
        }
        Assert.AreEqual(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(actual),
            $"{what}: expected {expected:R}, got {actual:R}");
    }
}
