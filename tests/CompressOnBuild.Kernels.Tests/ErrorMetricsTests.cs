namespace CompressOnBuild.Kernels.Tests;

[TestClass]
public sealed class ErrorMetricsTests
{
    [TestMethod]
    public void Compare_matches_the_reference_for_every_length_offset_and_implementation()
    {
        foreach (int n in TestData.Lengths())
        {
            float[] x = TestData.Random(n, n);
            float[] y = x.Select((v, i) => v + (i % 3 - 1) * 0.01f * (i % 11)).ToArray();
            ErrorMetricsResult expected = ScalarReference.Compare(x, y);
            foreach (KernelImplementation impl in TestData.All)
            {
                for (int offset = 0; offset <= 3; offset++)
                {
                    ErrorMetricsResult got = ErrorMetrics.Compare(TestData.Unaligned(x, offset), TestData.Unaligned(y, 3 - offset), impl);
                    string what = $"{impl} n={n} offset={offset}";
                    Assert.AreEqual(n, got.Length);
                    Assert.AreEqual(expected.Dot, got.Dot, 1e-12 * (1 + expected.ExpectedNorm * expected.ActualNorm), what);
                    Assert.AreEqual(expected.ExpectedNorm, got.ExpectedNorm, 1e-12 * (1 + expected.ExpectedNorm), what);
                    Assert.AreEqual(expected.ActualNorm, got.ActualNorm, 1e-12 * (1 + expected.ActualNorm), what);
                    Assert.AreEqual(expected.L2Difference, got.L2Difference, 1e-12 * (1 + expected.L2Difference), what);
                    TestData.AreSame(expected.MaxAbsDifference, got.MaxAbsDifference, what);
                }
            }
        }
    }

    [TestMethod]
    public void Hand_computed_metrics()
    {
        float[] x = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17];
        float[] y = x.Select(v => v * 2).ToArray();
        y[16] = -30; // |x - y| is x elsewhere (max 16) but 47 here
        foreach (KernelImplementation impl in TestData.All)
        {
            ErrorMetricsResult r = ErrorMetrics.Compare(x, y, impl);
            double dot = x.Zip(y).Sum(p => (double)p.First * p.Second);
            Assert.AreEqual(dot, r.Dot, 1e-9, impl.ToString());
            Assert.AreEqual(47f, r.MaxAbsDifference, impl.ToString());
            Assert.AreEqual(Math.Sqrt(x.Zip(y).Sum(p => (double)(p.First - p.Second) * (p.First - p.Second))), r.L2Difference, 1e-9);
        }
    }

    [TestMethod]
    public void Identical_orthogonal_and_zero_vectors()
    {
        float[] a = TestData.Random(100, 1);
        foreach (KernelImplementation impl in TestData.All)
        {
            ErrorMetricsResult same = ErrorMetrics.Compare(a, a, impl);
            Assert.AreEqual(1.0, same.CosineSimilarity, 1e-12);
            Assert.AreEqual(0.0, same.L2Difference);
            Assert.AreEqual(0f, same.MaxAbsDifference);
            Assert.AreEqual(0.0, same.RelativeL2);
            float[] e1 = new float[40], e2 = new float[40];
            e1[3] = 2;
            e2[33] = -5;
            ErrorMetricsResult orth = ErrorMetrics.Compare(e1, e2, impl);
            Assert.AreEqual(0.0, orth.CosineSimilarity);
            Assert.AreEqual(Math.Sqrt(29), orth.L2Difference, 1e-12);
            Assert.AreEqual(5f, orth.MaxAbsDifference);
            Assert.AreEqual(1.0, ErrorMetrics.Compare(new float[20], new float[20], impl).CosineSimilarity);
            Assert.AreEqual(0.0, ErrorMetrics.Compare(new float[20], e1.AsSpan(0, 20), impl).CosineSimilarity);
            float[] withNaN = (float[])a.Clone();
            withNaN[57] = float.NaN;
            Assert.IsTrue(float.IsNaN(ErrorMetrics.Compare(a, withNaN, impl).MaxAbsDifference), impl.ToString());
        }
        Assert.ThrowsExactly<ArgumentException>(() => ErrorMetrics.Compare(new float[3], new float[4]));
        Assert.AreEqual(-1.0, ErrorMetrics.CosineSimilarity(a, a.Select(v => -v).ToArray()), 1e-12);
    }
}
