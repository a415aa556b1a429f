namespace CompressOnBuild.Kernels.Tests;

[TestClass]
public sealed class GemmTests
{
    /// <summary>Checks every element against the reference within a bound scaled by Σ|a||b| (+|c|).</summary>
    private static void AssertClose(float[] a, float[] b, float[] c0, float[] expected, float[] got, int m, int n, int k, bool accumulate, string what)
    {
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double mag = accumulate ? Math.Abs(c0[i * n + j]) : 0;
                for (int p = 0; p < k; p++)
                {
                    mag += Math.Abs((double)a[i * k + p] * b[p * n + j]);
                }
                double tol = 4 * (k + 2) * 6e-8 * mag + 1e-30;
                float e = expected[i * n + j], g = got[i * n + j];
                if (float.IsNaN(e) || float.IsInfinity(e))
                {
                    Assert.AreEqual(e, g, $"{what} [{i},{j}]");
                    continue;
                }
                Assert.IsLessThanOrEqualTo(tol, Math.Abs((double)e - g), $"{what} [{i},{j}] expected {e} got {g}");
            }
        }
    }

    [TestMethod]
    public void Matches_the_naive_reference_for_many_shapes_and_every_implementation()
    {
        (int M, int N, int K)[] shapes =
        [
            (1, 1, 1), (1, 7, 3), (5, 1, 9), (6, 16, 4), (6, 32, 1), (7, 17, 5), (13, 33, 31), (12, 48, 257),
            (97, 65, 300), (100, 1030, 3), (6, 2050, 2), (130, 70, 520),
        ];
        foreach ((int m, int n, int k) in shapes)
        {
            float[] a = TestData.Random(m * k, m + k, 2f);
            float[] b = TestData.Random(k * n, n + k, 2f);
            float[] c0 = TestData.Random(m * n, m * n, 3f);
            foreach (bool accumulate in new[] { false, true })
            {
                float[] expected = (float[])c0.Clone();
                ScalarReference.Gemm(a, b, expected, m, n, k, accumulate);
                foreach (KernelImplementation impl in TestData.All)
                {
                    var buffer = new float[m * n + 3];
                    c0.CopyTo(buffer, 1);
                    buffer[^1] = 99f;
                    Gemm.Multiply(TestData.Unaligned(a, 3), TestData.Unaligned(b, 1), buffer.AsSpan(1, m * n), m, n, k, accumulate, impl);
                    Assert.AreEqual(99f, buffer[^1], "wrote past the end");
                    AssertClose(a, b, c0, expected, buffer.AsSpan(1, m * n).ToArray(), m, n, k, accumulate, $"{impl} {m}x{n}x{k} acc={accumulate}");
                }
            }
        }
    }

    [TestMethod]
    public void Exact_small_integers_and_special_values()
    {
        // integer products sum exactly in float whatever the order
        int m = 9, n = 37, k = 300;
        float[] a = Enumerable.Range(0, m * k).Select(i => (float)(i % 7 - 3)).ToArray();
        float[] b = Enumerable.Range(0, k * n).Select(i => (float)(i % 5 - 2)).ToArray();
        var expected = new float[m * n];
        ScalarReference.Gemm(a, b, expected, m, n, k, false);
        foreach (KernelImplementation impl in TestData.All)
        {
            var got = new float[m * n];
            Array.Fill(got, float.NaN); // overwritten, not accumulated
            Gemm.Multiply(a, b, got, m, n, k, false, impl);
            CollectionAssert.AreEqual(expected, got, impl.ToString());

            float[] withNaN = (float[])a.Clone();
            withNaN[2 * k + 5] = float.NaN; // row 2
            float[] withInf = (float[])b.Clone();
            withInf[4 * n + 3] = float.PositiveInfinity; // column 3
            var r = new float[m * n];
            Gemm.Multiply(withNaN, withInf, r, m, n, k, false, impl);
            for (int j = 0; j < n; j++)
            {
                Assert.IsTrue(float.IsNaN(r[2 * n + j]), $"{impl} NaN row col {j}");
            }
            Assert.IsTrue(float.IsInfinity(r[3]) || float.IsNaN(r[3]), $"{impl} inf column");
        }
        // k = 0: C = 0, or unchanged when accumulating
        float[] c = [1f, 2f];
        Gemm.Multiply([], [], c, 1, 2, 0, accumulate: true);
        CollectionAssert.AreEqual(new[] { 1f, 2f }, c);
        Gemm.Multiply([], [], c, 1, 2, 0);
        CollectionAssert.AreEqual(new[] { 0f, 0f }, c);
        Gemm.Multiply([1f, 2f], [3f, 4f], c, 1, 1, 2);
        Assert.AreEqual(11f, c[0]);
        Assert.ThrowsExactly<ArgumentException>(() => Gemm.Multiply(new float[5], new float[6], new float[4], 2, 2, 3));
    }
}
