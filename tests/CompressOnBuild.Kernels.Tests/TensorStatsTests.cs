namespace CompressOnBuild.Kernels.Tests;

[TestClass]
public sealed class TensorStatsTests
{
    [TestMethod]
    public void Reductions_match_the_scalar_reference_for_every_length_offset_and_implementation()
    {
        foreach (int n in TestData.Lengths())
        {
            float[] plain = TestData.Random(n, n);
            float[] awkward = TestData.Awkward(n, n + 7);
            foreach (float[] values in new[] { plain, awkward })
            {
                for (int offset = 0; offset <= 3; offset++)
                {
                    ReadOnlySpan<float> x = TestData.Unaligned(values, offset);
                    float maxAbs = ScalarReference.MaxAbs(x);
                    bool finite = ScalarReference.AllFinite(x);
                    MinMaxResult? minMax = n == 0 ? null : ScalarReference.MinMax(x);
                    foreach (KernelImplementation impl in TestData.All)
                    {
                        string what = $"{impl} n={n} offset={offset}";
                        TestData.AreSame(maxAbs, TensorStats.MaxAbs(x, impl), "MaxAbs " + what);
                        Assert.AreEqual(finite, TensorStats.AllFinite(x, impl), "AllFinite " + what);
                        if (minMax is { } mm)
                        {
                            MinMaxResult got = TensorStats.MinMax(x, impl);
                            TestData.AreSame(mm.Min, got.Min, "Min " + what);
                            TestData.AreSame(mm.Max, got.Max, "Max " + what);
                        }
                    }
                }
            }
        }
    }

    [TestMethod]
    public void Hand_computed_values()
    {
        float[] x = [3f, -7.5f, 0.25f, -0f, 2f];
        foreach (KernelImplementation impl in TestData.All)
        {
            Assert.AreEqual(7.5f, TensorStats.MaxAbs(x, impl));
            Assert.AreEqual(new MinMaxResult(-7.5f, 3f), TensorStats.MinMax(x, impl));
            Assert.AreEqual(0f, TensorStats.MaxAbs([], impl));
            Assert.IsTrue(TensorStats.AllFinite([], impl));
            float[] zeros = [0f, -0f, 0f, -0f, 0f, -0f, 0f, -0f, 0f, -0f, 0f, -0f, 0f, -0f, 0f, -0f, 0f, -0f];
            MinMaxResult z = TensorStats.MinMax(zeros, impl);
            Assert.IsTrue(float.IsNegative(z.Min) && !float.IsNegative(z.Max), $"{impl}: -0 orders below +0");
        }
        Assert.ThrowsExactly<ArgumentException>(() => TensorStats.MinMax([]));
    }

    [TestMethod]
    public void NaN_and_infinity_are_detected_at_every_position()
    {
        foreach (int n in new[] { 1, 3, 4, 15, 16, 17, 31, 33, 63, 64, 65, 100, 257 })
        {
            for (int pos = 0; pos < n; pos += Math.Max(1, n / 9))
            {
                foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
                {
                    float[] x = TestData.Random(n, pos);
                    x[pos] = bad;
                    foreach (KernelImplementation impl in TestData.All)
                    {
                        string what = $"{impl} n={n} pos={pos} bad={bad}";
                        Assert.IsFalse(TensorStats.AllFinite(x, impl), what);
                        MinMaxResult mm = TensorStats.MinMax(x, impl);
                        float maxAbs = TensorStats.MaxAbs(x, impl);
                        if (float.IsNaN(bad))
                        {
                            Assert.IsTrue(mm.HasNaN, what);
                            Assert.IsTrue(float.IsNaN(maxAbs), what);
                        }
                        else
                        {
                            Assert.IsFalse(mm.HasNaN, what);
                            Assert.AreEqual(float.PositiveInfinity, maxAbs, what);
                            Assert.AreEqual(bad, bad > 0 ? mm.Max : mm.Min, what);
                        }
                    }
                }
            }
        }
    }

    [TestMethod]
    public void Row_and_column_max_abs_match_the_reference()
    {
        (int Rows, int Cols)[] shapes = [(0, 5), (5, 0), (1, 1), (3, 7), (7, 3), (16, 16), (33, 65), (10, 257), (784, 128)];
        foreach ((int rows, int cols) in shapes)
        {
            float[] m = TestData.Awkward(rows * cols, rows * 31 + cols);
            if (m.Length > 5)
            {
                m[5] = float.NaN;
            }
            var rowRef = new float[rows];
            var colRef = new float[cols];
            ScalarReference.RowMaxAbs(m, rows, cols, rowRef);
            ScalarReference.ColumnMaxAbs(m, rows, cols, colRef);
            foreach (KernelImplementation impl in TestData.All)
            {
                for (int offset = 0; offset <= 3; offset++)
                {
                    var rowGot = new float[rows];
                    var colGot = new float[cols];
                    TensorStats.RowMaxAbs(TestData.Unaligned(m, offset), rows, cols, rowGot, impl);
                    TensorStats.ColumnMaxAbs(TestData.Unaligned(m, offset), rows, cols, colGot, impl);
                    for (int r = 0; r < rows; r++)
                    {
                        TestData.AreSame(rowRef[r], rowGot[r], $"row {r} {impl} {rows}x{cols}");
                    }
                    for (int c = 0; c < cols; c++)
                    {
                        TestData.AreSame(colRef[c], colGot[c], $"col {c} {impl} {rows}x{cols}");
                    }
                }
            }
        }
        float[] small = [1, -2, 3, -4, 5, -6];
        var rowsOut = new float[2];
        var colsOut = new float[3];
        TensorStats.RowMaxAbs(small, 2, 3, rowsOut);
        TensorStats.ColumnMaxAbs(small, 2, 3, colsOut);
        CollectionAssert.AreEqual(new float[] { 3, 6 }, rowsOut);
        CollectionAssert.AreEqual(new float[] { 4, 5, 6 }, colsOut);
        Assert.ThrowsExactly<ArgumentException>(() => TensorStats.RowMaxAbs(small, 4, 2, rowsOut));
    }

    [TestMethod]
    public void Selector_parses_overrides()
    {
        Assert.AreEqual(KernelImplementation.Scalar, KernelSelector.Parse("scalar"));
        Assert.AreEqual(KernelImplementation.Vector256, KernelSelector.Parse(" Vector256 "));
        Assert.AreEqual(KernelImplementation.Vector512, KernelSelector.Parse("VECTOR512"));
        Assert.IsNull(KernelSelector.Parse("avx9"));
        Assert.AreEqual(KernelImplementation.Vector128, KernelSelector.Select("vector128").Item1);
        (KernelImplementation detected, string text) = KernelSelector.Select("bogus");
        Assert.AreEqual(KernelSelector.Detect(), detected);
        Assert.Contains("bogus", text);
        string? env = Environment.GetEnvironmentVariable(KernelSelector.EnvironmentVariable);
        KernelImplementation expected = KernelSelector.Parse(env) ?? KernelSelector.Detect();
        Assert.AreEqual(expected, KernelSelector.Current, KernelSelector.Description);
    }
}
