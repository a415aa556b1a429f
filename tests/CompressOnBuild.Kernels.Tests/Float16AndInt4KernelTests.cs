namespace CompressOnBuild.Kernels.Tests;

[TestClass]
public sealed class Float16AndInt4KernelTests
{
    [TestMethod]
    public void ConvertSaturating_matches_the_reference_for_every_length_and_implementation()
    {
        foreach (int n in TestData.Lengths())
        {
            float[] values = TestData.Awkward(n, n * 7 + 1);
            for (int i = 0; i < n; i += 11)
            {
                values[i] *= 20_000f; // many beyond 65504
            }
            if (n > 3)
            {
                values[1] = float.PositiveInfinity;
                values[2] = float.NaN;
                values[3] = float.NegativeInfinity;
            }
            var expected = new Half[n];
            int expectedCount = ScalarReference.ConvertToHalfSaturating(values, expected);
            foreach (KernelImplementation impl in TestData.All)
            {
                var got = new Half[n + 1];
                got[^1] = (Half)7f;
                int count = Float16Kernels.ConvertSaturatingCore(TestData.Unaligned(values, n % 3), got.AsSpan(0, n), impl);
                Assert.AreEqual(expectedCount, count, $"{impl} n={n}");
                Assert.AreEqual(expectedCount, Float16Kernels.CountCore(values, impl), $"{impl} n={n} count");
                for (int i = 0; i < n; i++)
                {
                    Assert.AreEqual(BitConverter.HalfToUInt16Bits(expected[i]), BitConverter.HalfToUInt16Bits(got[i]), $"{impl} n={n} i={i} x={values[i]:R}");
                }
                Assert.AreEqual((Half)7f, got[^1], "wrote past the end");
            }
        }
    }

    [TestMethod]
    public void Out_of_range_values_clamp_and_specials_keep_their_meaning()
    {
        float[] x = [65504f, 65519f, 65520f, 1e6f, -1e6f, float.MaxValue, float.PositiveInfinity, float.NegativeInfinity, float.NaN, 1e-8f, -0f, 0.1f];
        float[] big = Enumerable.Repeat(x, 9).SelectMany(a => a).ToArray();
        foreach (KernelImplementation impl in TestData.All)
        {
            var h = new Half[big.Length];
            int count = Float16Kernels.ConvertSaturatingCore(big, h, impl);
            Assert.AreEqual(9 * 5, count, impl.ToString()); // 65519, 65520, 1e6, -1e6, MaxValue
            for (int r = 0; r < 9; r++)
            {
                int o = r * x.Length;
                Assert.AreEqual(65504f, (float)h[o]);
                Assert.AreEqual(65504f, (float)h[o + 1], "65519 (beyond 65504, counted) becomes the largest half");
                Assert.AreEqual(65504f, (float)h[o + 2], "65520 would round to infinity: clamped");
                Assert.AreEqual(65504f, (float)h[o + 3]);
                Assert.AreEqual(-65504f, (float)h[o + 4]);
                Assert.AreEqual(65504f, (float)h[o + 5]);
                Assert.IsTrue(Half.IsPositiveInfinity(h[o + 6]));
                Assert.IsTrue(Half.IsNegativeInfinity(h[o + 7]));
                Assert.IsTrue(Half.IsNaN(h[o + 8]));
                Assert.AreEqual(0f, (float)h[o + 9], 1e-7f, "1e-8 underflows to a denormal or zero");
                Assert.IsTrue(Half.IsNegative(h[o + 10]) && (float)h[o + 10] == 0f, "-0 stays -0");
                Assert.AreEqual((float)(Half)0.1f, (float)h[o + 11]);
            }
        }
    }

    [TestMethod]
    public void Pack_and_unpack_match_the_reference_and_round_trip()
    {
        var rng = new Random(5);
        foreach (int n in TestData.Lengths())
        {
            var values = new byte[n];
            rng.NextBytes(values); // high nibbles are garbage: only the low nibble counts
            var expected = new byte[Int4Kernels.PackedLength(n)];
            ScalarReference.Pack4(values, expected);
            var codes = values.Select(v => (byte)(v & 0x0F)).ToArray();
            foreach (KernelImplementation impl in TestData.All)
            {
                var packed = new byte[expected.Length + 1];
                packed[^1] = 0xCD;
                Int4Kernels.PackCore(values, packed.AsSpan(0, expected.Length), impl);
                CollectionAssert.AreEqual(expected, packed[..^1], $"{impl} n={n}");
                Assert.AreEqual((byte)0xCD, packed[^1], "wrote past the end");

                var unpacked = new byte[n + 1];
                unpacked[^1] = 0xEE;
                Int4Kernels.UnpackCore(expected, unpacked.AsSpan(0, n), impl);
                CollectionAssert.AreEqual(codes, unpacked[..^1], $"{impl} n={n} unpack");
                Assert.AreEqual((byte)0xEE, unpacked[^1]);
            }
        }
    }

    [TestMethod]
    public void Column_block_packing_matches_the_reference_and_leaves_the_gaps_between_runs()
    {
        var rng = new Random(9);
        foreach (int cols in TestData.Lengths())
        {
            foreach (int rows in new[] { 0, 2, 6, 32 })
            {
                int pairs = rows / 2, stride = pairs + 3;
                var codes = new byte[rows * cols];
                rng.NextBytes(codes); // high nibbles are garbage: only the low nibble counts
                var expected = Enumerable.Repeat((byte)0xCD, cols * stride).ToArray();
                for (int c = 0; c < cols; c++)
                {
                    for (int i = 0; i < pairs; i++)
                    {
                        expected[c * stride + i] = (byte)((codes[2 * i * cols + c] & 0x0F) | ((codes[(2 * i + 1) * cols + c] & 0x0F) << 4));
                    }
                }
                foreach (KernelImplementation impl in TestData.All)
                {
                    var packed = Enumerable.Repeat((byte)0xCD, cols * stride).ToArray();
                    Int4Kernels.PackColumnBlockCore(codes, rows, cols, packed, stride, new byte[pairs * cols], impl);
                    CollectionAssert.AreEqual(expected, packed, $"{impl} rows={rows} cols={cols}");
                }
            }
        }
        var two = new byte[4];
        Int4Kernels.PackColumnBlock([0x1, 0x2, 0xA, 0xB], 2, 2, two, 2, new byte[2]);
        CollectionAssert.AreEqual(new byte[] { 0xA1, 0, 0xB2, 0 }, two, "column 0 at 0, column 1 at the stride");
        Assert.ThrowsExactly<ArgumentException>(() => Int4Kernels.PackColumnBlock(new byte[6], 3, 2, new byte[8], 2, new byte[4]), "odd rows");
        Assert.ThrowsExactly<ArgumentException>(() => Int4Kernels.PackColumnBlock(new byte[8], 4, 2, new byte[3], 2, new byte[4]), "packed too short");
    }

    [TestMethod]
    public void Packing_puts_the_even_element_in_the_low_nibble()
    {
        var packed = new byte[2];
        Int4Kernels.Pack([0x1, 0xA, 0x7], packed);
        CollectionAssert.AreEqual(new byte[] { 0xA1, 0x07 }, packed);
        var back = new byte[3];
        Int4Kernels.Unpack(packed, back);
        CollectionAssert.AreEqual(new byte[] { 0x1, 0xA, 0x7 }, back);
        Assert.ThrowsExactly<ArgumentException>(() => Int4Kernels.Pack(new byte[5], new byte[2]));
    }

    [TestMethod]
    public void Int4_column_blocks_match_the_reference_for_every_implementation()
    {
        (int Rows, int Cols)[] shapes = [(1, 1), (32, 5), (16, 64), (7, 65), (32, 257), (128, 33)];
        foreach ((int rows, int cols) in shapes)
        {
            float[] m = TestData.Random(rows * cols, rows * 7 + cols, 2f);
            // Ties of magnitude (the positive one wins), an all-zero column and a one-signed column.
            if (rows > 3 && cols > 2)
            {
                m[0] = -5f;
                m[cols] = 5f;
                for (int r = 0; r < rows; r++)
                {
                    m[r * cols + 1] = 0f;
                    m[r * cols + 2] = MathF.Abs(m[r * cols + 2]) + 0.5f;
                }
            }
            foreach (bool symmetric in new[] { true, false })
            {
                var expectedScales = new float[cols];
                var expectedZeros = new float[cols];
                ScalarReference.ColumnBlockParameters(m, rows, cols, symmetric, expectedScales, expectedZeros);
                var expectedCodes = new byte[m.Length];
                ScalarReference.QuantizePerColumn(m, rows, cols, expectedScales, expectedZeros, 0f, 15f, expectedCodes);
                float expectedError = ScalarReference.MaxAbsErrorPerColumn(m, rows, cols, expectedScales, expectedZeros, expectedCodes, unsigned: true);
                if (rows > 3 && cols > 2)
                {
                    Assert.AreEqual(symmetric ? 5f / -8f : 1f, symmetric ? expectedScales[0] : expectedScales[1], $"{rows}x{cols}");
                }
                Assert.IsTrue(expectedCodes.All(c => c <= 15));
                foreach (KernelImplementation impl in TestData.All)
                {
                    var scales = new float[cols];
                    var zeros = new float[cols];
                    var codes = new byte[m.Length];
                    float error = Int4Kernels.QuantizeColumnBlockCore(m, rows, cols, symmetric, scales, zeros, codes, new float[cols], impl);
                    CollectionAssert.AreEqual(expectedScales, scales, $"{impl} {rows}x{cols} symmetric={symmetric}");
                    CollectionAssert.AreEqual(expectedZeros, zeros, $"{impl} {rows}x{cols}");
                    CollectionAssert.AreEqual(expectedCodes, codes, $"{impl} {rows}x{cols}");
                    Assert.AreEqual(expectedError, error, $"{impl} {rows}x{cols}");
                }
            }
        }
    }
}
