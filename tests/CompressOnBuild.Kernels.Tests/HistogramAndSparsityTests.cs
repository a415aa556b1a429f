namespace CompressOnBuild.Kernels.Tests;

[TestClass]
public sealed class HistogramAndSparsityTests
{
    private static float[] WithSpecials(int n, int seed)
    {
        float[] x = TestData.Awkward(n, seed);
        float[] specials = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, -0f, 0f, 1e-45f, -1e-40f];
        var rng = new Random(seed + 5);
        for (int i = 0; i < n; i += 3 + rng.Next(7))
        {
            x[i] = specials[rng.Next(specials.Length)];
        }
        return x;
    }

    [TestMethod]
    public void BinOf_names_the_bin_Accumulate_counts_a_value_in()
    {
        foreach ((float min, float max, int bins) in new[] { (-1f, 3f, 2048), (0f, 1f, 7), (-40f, 50f, 4080), (-1e-3f, 2e-3f, 255) })
        {
            foreach (float x in new[] { min, max, 0f, -0f, (min + max) / 2, min - 1, max + 1, MathF.BitDecrement(max), min + (max - min) / bins })
            {
                var counts = new long[bins];
                Histogram.Accumulate([x], min, max, counts);
                Assert.AreEqual(1, counts[Histogram.BinOf(x, min, max, bins)], $"x={x} in [{min}, {max}] over {bins} bins");
            }
        }
        Assert.ThrowsExactly<ArgumentException>(() => Histogram.BinOf(0f, 1f, 1f, 16));
    }

    [TestMethod]
    public void Histogram_matches_the_reference_for_every_length_offset_and_implementation()
    {
        (float Min, float Max, int Bins)[] ranges = [(-10f, 10f, 2048), (-3f, 7f, 100), (0f, 1f, 1), (-1e-30f, 1e-30f, 2048), (-5f, 5f, 7)];
        foreach (int n in TestData.Lengths())
        {
            float[] values = WithSpecials(n, n * 5 + 3);
            foreach ((float min, float max, int bins) in ranges)
            {
                var expected = new long[bins];
                long expectedNaN = ScalarReference.Histogram(values, min, max, expected);
                Assert.AreEqual(expectedNaN, (long)values.Count(float.IsNaN));
                Assert.AreEqual(n - expectedNaN, expected.Sum());
                foreach (KernelImplementation impl in TestData.All)
                {
                    int offset = n % 4;
                    var got = new long[bins];
                    got[0] = 5; // accumulates into the caller's counts
                    long nan = Histogram.Accumulate(TestData.Unaligned(values, offset), min, max, got, impl);
                    got[0] -= 5;
                    Assert.AreEqual(expectedNaN, nan, $"{impl} n={n} [{min},{max}]x{bins}");
                    CollectionAssert.AreEqual(expected, got, $"{impl} n={n} [{min},{max}]x{bins}");
                }
            }
        }
    }

    [TestMethod]
    public void Histogram_edges_clamp_and_bin_boundaries_are_exact()
    {
        // 4 bins over [0, 4): bin = floor(x); boundaries are exact in float
        float[] x = [-1f, 0f, -0f, 0.999f, 1f, 2.5f, 3.999f, 4f, 100f, float.PositiveInfinity, float.NegativeInfinity, float.NaN, 1e-45f];
        long[] expected = [6, 1, 1, 4];
        float[] big = Enumerable.Repeat(x, 50).SelectMany(v => v).ToArray();
        foreach (KernelImplementation impl in TestData.All)
        {
            var counts = new long[4];
            long nan = Histogram.Accumulate(big, 0f, 4f, counts, impl);
            Assert.AreEqual(50, nan, impl.ToString());
            CollectionAssert.AreEqual(expected.Select(c => c * 50).ToArray(), counts, impl.ToString());
        }
        long[] h = Histogram.Compute(x, 0f, 4f, out long nans, 4);
        CollectionAssert.AreEqual(expected, h);
        Assert.AreEqual(1, nans);
        Assert.HasCount(Histogram.DefaultBins, Histogram.Compute(x, -1f, 1f, out _));
        Assert.ThrowsExactly<ArgumentException>(() => Histogram.Accumulate(x, 1f, 1f, new long[4]));
        Assert.ThrowsExactly<ArgumentException>(() => Histogram.Accumulate(x, 0f, float.NaN, new long[4]));
        Assert.ThrowsExactly<ArgumentException>(() => Histogram.Accumulate(x, 0f, 1f, Span<long>.Empty));
    }

    [TestMethod]
    public void Histogram_large_input_uses_the_interleaved_tables()
    {
        float[] values = WithSpecials(2048 * 8 * 3 + 13, 99);
        var expected = new long[2048];
        long expectedNaN = ScalarReference.Histogram(values, -10f, 10f, expected);
        foreach (KernelImplementation impl in TestData.All)
        {
            var got = new long[2048];
            Assert.AreEqual(expectedNaN, Histogram.Accumulate(values, -10f, 10f, got, impl));
            CollectionAssert.AreEqual(expected, got, impl.ToString());
        }
        // all in one bin: repeated increments of the same slot
        float[] same = Enumerable.Repeat(0.5f, 100_003).ToArray();
        foreach (KernelImplementation impl in TestData.All)
        {
            var got = new long[2048];
            Histogram.Accumulate(same, 0f, 1f, got, impl);
            Assert.AreEqual(100_003, got[1024], impl.ToString());
        }
    }

    [TestMethod]
    public void CountZeros_and_threshold_match_the_reference()
    {
        foreach (int n in TestData.Lengths())
        {
            float[] values = WithSpecials(n, n + 11);
            for (int i = 0; i < n; i += 4)
            {
                values[i] = i % 8 == 0 ? 0f : -0f;
            }
            int zeros = ScalarReference.CountZeros(values);
            foreach (float t in new[] { 0f, 1e-40f, 2.5f, float.PositiveInfinity })
            {
                var expected = new float[n];
                int expectedCount = ScalarReference.ApplyMagnitudeThreshold(values, t, expected);
                foreach (KernelImplementation impl in TestData.All)
                {
                    int offset = (n + 1) % 4;
                    ReadOnlySpan<float> x = TestData.Unaligned(values, offset);
                    Assert.AreEqual(zeros, Sparsity.CountZeros(x, impl), $"{impl} n={n}");
                    var got = new float[n + 1];
                    got[^1] = 42f;
                    Assert.AreEqual(expectedCount, Sparsity.ApplyMagnitudeThreshold(x, t, got.AsSpan(0, n), impl), $"{impl} n={n} t={t}");
                    for (int i = 0; i < n; i++)
                    {
                        TestData.AreSame(expected[i], got[i], $"{impl} n={n} t={t} i={i}");
                    }
                    Assert.AreEqual(42f, got[^1], "wrote past the end");
                    // in place
                    float[] copy = (float[])values.Clone();
                    Assert.AreEqual(expectedCount, Sparsity.ApplyMagnitudeThreshold(copy, t, copy, impl));
                    for (int i = 0; i < n; i++)
                    {
                        TestData.AreSame(expected[i], copy[i], $"in place {impl} n={n} t={t} i={i}");
                    }
                }
            }
        }
    }

    [TestMethod]
    public void Threshold_keeps_NaN_and_zeroes_denormals_below_it()
    {
        float[] x = [float.NaN, -0.5f, 0.5f, -1e-40f, 2f, float.NegativeInfinity, -0f];
        Span<float> d = new float[x.Length];
        int count = Sparsity.ApplyMagnitudeThreshold(x, 1f, d);
        Assert.AreEqual(4, count);
        Assert.IsTrue(float.IsNaN(d[0]));
        CollectionAssert.AreEqual(new[] { 0f, 0f, 0f, 2f, float.NegativeInfinity, 0f }, d[1..].ToArray());
        Assert.IsFalse(float.IsNegative(d[1]), "zeroed elements are +0");
        float[] inPlace = [3f, -0.1f];
        Assert.AreEqual(1, Sparsity.ApplyMagnitudeThreshold(inPlace, 0.2f));
        Assert.AreEqual(2, Sparsity.CountZeros([0f, -0f, float.NaN, 1e-45f]));
    }

    [TestMethod]
    public void KthLargestMagnitude_matches_a_full_sort()
    {
        foreach (int n in TestData.Lengths().Where(l => l > 0))
        {
            float[] values = WithSpecials(n, n * 13);
            // many duplicates too
            float[] dups = TestData.Random(n, n).Select(v => MathF.Round(v)).ToArray();
            foreach (float[] v in new[] { values, dups })
            {
                foreach (int k in new[] { 1, 2, n / 3 + 1, n / 2 + 1, n - 1, n }.Where(k => k >= 1 && k <= n).Distinct())
                {
                    float expected = ScalarReference.KthLargestMagnitude(v, k);
                    foreach (KernelImplementation impl in TestData.All)
                    {
                        TestData.AreSame(expected, Sparsity.KthLargestMagnitude(TestData.Unaligned(v, k % 4), k, impl), $"{impl} n={n} k={k}");
                    }
                }
            }
        }
    }

    [TestMethod]
    public void KthLargestMagnitude_on_adversarial_orders()
    {
        int n = 100_001;
        float[] ascending = Enumerable.Range(0, n).Select(i => (float)i).ToArray();
        float[] descending = ascending.Reverse().ToArray();
        float[] organPipe = Enumerable.Range(0, n).Select(i => (float)Math.Min(i, n - i)).ToArray();
        float[] constant = Enumerable.Repeat(-3f, n).ToArray();
        foreach (float[] v in new[] { ascending, descending, organPipe, constant })
        {
            foreach (int k in new[] { 1, 17, n / 2, n })
            {
                Assert.AreEqual(ScalarReference.KthLargestMagnitude(v, k), Sparsity.KthLargestMagnitude(v, k));
            }
        }
        Assert.AreEqual(float.PositiveInfinity, Sparsity.KthLargestMagnitude([1f, float.NegativeInfinity, float.NaN], 2));
        Assert.IsTrue(float.IsNaN(Sparsity.KthLargestMagnitude([1f, float.NaN], 1)));
        Assert.AreEqual(0f, Sparsity.KthLargestMagnitude([-0f, 5f], 2));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => Sparsity.KthLargestMagnitude([1f], 2));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => Sparsity.KthLargestMagnitude([1f], 0));
    }
}
