namespace CompressOnBuild.Kernels.Tests;

[TestClass]
public sealed class QuantizationKernelTests
{
    // (min, max, zero point) for int8, symmetric int8, uint8, reduced-range int8.
    private static readonly (float Min, float Max, float Zp)[] Ranges = [(-128, 127, 0), (-127, 127, 0), (0, 255, 128), (-64, 63, -3), (0, 255, 0)];

    [TestMethod]
    public void Quantize_matches_the_reference_for_every_length_offset_and_implementation()
    {
        foreach (int n in TestData.Lengths())
        {
            float[] values = TestData.Awkward(n, n * 3);
            if (n > 2)
            {
                values[n / 2] = float.NaN;
                values[n - 1] = float.NegativeInfinity;
            }
            foreach ((float min, float max, float zp) in Ranges)
            {
                float scale = 0.037f;
                var expected = new byte[n];
                ScalarReference.Quantize(values, scale, zp, min, max, expected);
                foreach (KernelImplementation impl in TestData.All)
                {
                    for (int offset = 0; offset <= 3; offset++)
                    {
                        var buffer = new byte[n + offset + 1];
                        buffer[^1] = 0xAB;
                        QuantizationKernels.QuantizeCore(TestData.Unaligned(values, offset), scale, zp, min, max,
                            buffer.AsSpan(offset, n), impl);
                        CollectionAssert.AreEqual(expected, buffer.AsSpan(offset, n).ToArray(), $"{impl} n={n} offset={offset} range=[{min},{max}]");
                        Assert.AreEqual((byte)0xAB, buffer[^1], "wrote past the end");
                    }
                }
            }
        }
    }

    [TestMethod]
    public void Ties_round_half_to_even_and_values_saturate()
    {
        // scale 0.5: x / 0.5 lands exactly on .5 for x = k/2 + 1/4.
        float[] x = [0.25f, 0.75f, 1.25f, -0.25f, -0.75f, -1.25f, 63.75f, 1e9f, -1e9f, float.MaxValue, 0f, -0f, float.Epsilon, 1e-40f];
        sbyte[] expectedInt8 = [0, 2, 2, 0, -2, -2, 127, 127, -128, 127, 0, 0, 0, 0];
        sbyte[] expectedSym = [0, 2, 2, 0, -2, -2, 127, 127, -127, 127, 0, 0, 0, 0];
        byte[] expectedU8 = [128, 130, 130, 128, 126, 126, 255, 255, 0, 255, 128, 128, 128, 128];
        foreach (KernelImplementation impl in TestData.All)
        {
            // repeat the pattern so every vector width sees it in its main loop, not only the tail
            float[] big = Enumerable.Repeat(x, 20).SelectMany(a => a).ToArray();
            var s8 = new byte[big.Length];
            var sym = new byte[big.Length];
            var u8 = new byte[big.Length];
            QuantizationKernels.QuantizeCore(big, 0.5f, 0, -128, 127, s8, impl);
            QuantizationKernels.QuantizeCore(big, 0.5f, 0, -127, 127, sym, impl);
            QuantizationKernels.QuantizeCore(big, 0.5f, 128, 0, 255, u8, impl);
            for (int i = 0; i < big.Length; i++)
            {
                int k = i % x.Length;
                Assert.AreEqual(expectedInt8[k], (sbyte)s8[i], $"{impl} int8 x={x[k]}");
                Assert.AreEqual(expectedSym[k], (sbyte)sym[i], $"{impl} sym x={x[k]}");
                Assert.AreEqual(expectedU8[k], u8[i], $"{impl} uint8 x={x[k]}");
            }
        }
        var pub = new sbyte[x.Length];
        QuantizationKernels.Quantize(x, 0.5f, (sbyte)0, pub);
        CollectionAssert.AreEqual(expectedInt8, pub);
        var pubU = new byte[x.Length];
        QuantizationKernels.Quantize(x, 0.5f, (byte)128, pubU);
        CollectionAssert.AreEqual(expectedU8, pubU);
    }

    [TestMethod]
    public void Per_column_and_per_row_match_the_reference()
    {
        (int Rows, int Cols)[] shapes = [(1, 1), (3, 5), (4, 16), (5, 63), (2, 64), (9, 65), (784, 128), (17, 257)];
        foreach ((int rows, int cols) in shapes)
        {
            float[] m = TestData.Random(rows * cols, rows + cols, 3f);
            float[] scales = TestData.Random(cols, cols).Select(s => MathF.Abs(s) / 100f + 1e-3f).ToArray();
            float[] zps = Enumerable.Range(0, cols).Select(c => (float)(c % 7 - 3)).ToArray();
            var expected = new byte[m.Length];
            ScalarReference.QuantizePerColumn(m, rows, cols, scales, zps, -128, 127, expected);
            foreach (KernelImplementation impl in TestData.All)
            {
                var got = new byte[m.Length];
                QuantizationKernels.QuantizePerColumnCore(TestData.Unaligned(m, 1), rows, cols, scales, zps, -128, 127, got, impl);
                CollectionAssert.AreEqual(expected, got, $"{impl} {rows}x{cols}");
            }
            var pub = new sbyte[m.Length];
            QuantizationKernels.QuantizePerColumn(m, rows, cols, scales, zps.Select(z => (sbyte)z).ToArray(), pub);
            CollectionAssert.AreEqual(expected, pub.Select(v => (byte)v).ToArray());

            // per-row: transpose the problem (row r of m uses rowScales[r])
            float[] rowScales = scales.Take(Math.Min(rows, cols)).Concat(Enumerable.Repeat(0.01f, Math.Max(0, rows - cols))).ToArray();
            var rowExpected = new byte[m.Length];
            for (int r = 0; r < rows; r++)
            {
                ScalarReference.Quantize(m.AsSpan(r * cols, cols), rowScales[r], 5, 0, 255, rowExpected.AsSpan(r * cols, cols));
            }
            var rowGot = new byte[m.Length];
            QuantizationKernels.QuantizePerRow(m, rows, cols, rowScales, Enumerable.Repeat((byte)5, rows).ToArray(), rowGot);
            CollectionAssert.AreEqual(rowExpected, rowGot, $"per-row {rows}x{cols}");
        }
    }

    [TestMethod]
    public void Max_abs_error_per_column_matches_the_reference_for_every_implementation()
    {
        (int Rows, int Cols)[] shapes = [(1, 1), (3, 5), (4, 16), (5, 63), (2, 64), (9, 65), (7, 128), (17, 257), (3, 1000)];
        foreach ((int rows, int cols) in shapes)
        {
            float[] m = TestData.Random(rows * cols, rows * 31 + cols, 3f);
            float[] scales = TestData.Random(cols, cols + 1).Select(s => MathF.Abs(s) / 100f + 1e-3f).ToArray();
            foreach (bool unsigned in new[] { false, true })
            {
                // Per-column zero points (int4 asymmetric blocks) around the type's middle.
                float[] zp = Enumerable.Range(0, cols).Select(c => unsigned ? 128f + c % 5 - 2 : c % 3 - 1).ToArray();
                var codes = new byte[m.Length];
                QuantizationKernels.QuantizePerColumnCore(m, rows, cols, scales, zp, unsigned ? 0 : -128, unsigned ? 255 : 127, codes, KernelImplementation.Scalar);
                float expected = ScalarReference.MaxAbsErrorPerColumn(m, rows, cols, scales, zp, codes, unsigned);
                // Independent check of the formula on the first element, and that clamping shows up as error.
                float first = MathF.Abs(m[0] - ((unsigned ? codes[0] : (sbyte)codes[0]) - zp[0]) * scales[0]);
                Assert.IsTrue(expected >= first, $"{rows}x{cols}: the maximum covers element 0");
                Assert.IsTrue(expected > 0f, $"{rows}x{cols}: clamped values give a positive error");
                foreach (KernelImplementation impl in TestData.All)
                {
                    float got = QuantizationKernels.MaxAbsErrorPerColumnCore(TestData.Unaligned(m, 1), rows, cols, scales, zp, codes, unsigned, impl);
                    Assert.AreEqual(expected, got, $"{impl} {rows}x{cols} unsigned={unsigned}");
                }
                Assert.AreEqual(expected, QuantizationKernels.MaxAbsErrorPerColumn(m, rows, cols, scales, zp, codes, unsigned));
            }
        }
        Assert.AreEqual(0f, QuantizationKernels.MaxAbsErrorPerColumn([], 0, 4, [1f, 1f, 1f, 1f], [0f, 0f, 0f, 0f], [], unsigned: false));
    }

    [TestMethod]
    public void Same_sign_pair_checks_match_the_reference_for_every_implementation()
    {
        var rng = new Random(17);
        foreach (int n in TestData.Lengths().Where(l => l < 5000))
        {
            float[] a = TestData.Awkward(n, n + 3).Select(v => v == float.MaxValue || v == float.MinValue || v == 1e30f ? 0.5f : v).ToArray();
            float[] b = TestData.Random(n, n + 4, 2f);
            float[] seed = TestData.Random(n, n + 5, 1f).Select(MathF.Abs).ToArray();
            var expected = (float[])seed.Clone();
            ScalarReference.AccumulateSameSignPairMax(a, b, expected);
            foreach (KernelImplementation impl in TestData.All)
            {
                var got = (float[])seed.Clone();
                TensorStats.AccumulateSameSignPairMax(a, b, got, impl);
                CollectionAssert.AreEqual(expected, got, $"{impl} n={n}");
            }

            // Codes in [-127, 127]; at most one over-limit pair, placed at a random position (or none).
            var qa = new sbyte[n];
            var qb = new sbyte[n];
            for (int i = 0; i < n; i++)
            {
                qa[i] = (sbyte)rng.Next(-127, 128);
                qb[i] = (sbyte)Math.Clamp(Math.Sign(qa[i]) * (128 - Math.Abs(qa[i])) - Math.Sign(qa[i]) * rng.Next(0, 3), -127, 127);
            }
            foreach (int limit in new[] { 128, 200, 0 })
            {
                bool want = Enumerable.Range(0, n).Any(i => ScalarReference.SameSignPairOver(qa[i], qb[i], limit));
                foreach (KernelImplementation impl in TestData.All)
                {
                    Assert.AreEqual(want, QuantizationKernels.AnySameSignPairOverCore(qa, qb, limit, impl), $"{impl} n={n} limit={limit}");
                }
            }
            if (n > 0)
            {
                int at = rng.Next(n);
                (qa[at], qb[at]) = ((sbyte)-70, (sbyte)-59); // 129 levels, same sign
                foreach (KernelImplementation impl in TestData.All)
                {
                    Assert.IsTrue(QuantizationKernels.AnySameSignPairOverCore(qa, qb, 128, impl), $"{impl} n={n} at={at}");
                }
                (qa[at], qb[at]) = ((sbyte)-127, (sbyte)127); // opposite signs never count
                bool rest = Enumerable.Range(0, n).Any(i => ScalarReference.SameSignPairOver(qa[i], qb[i], 128));
                Assert.AreEqual(rest, QuantizationKernels.AnySameSignPairOver(qa, qb, 128));
            }
        }
    }

    [TestMethod]
    public void Dequantize_matches_the_formula_for_every_byte_and_implementation()
    {
        foreach (int n in TestData.Lengths().Where(l => l < 2000))
        {
            byte[] q = Enumerable.Range(0, n).Select(i => (byte)(i * 37 + 11)).ToArray();
            foreach (bool unsigned in new[] { false, true })
            {
                float zp = unsigned ? 131 : -5;
                const float scale = 0.0123f;
                foreach (KernelImplementation impl in TestData.All)
                {
                    for (int offset = 0; offset <= 3; offset++)
                    {
                        var src = new byte[n + offset];
                        q.CopyTo(src, offset);
                        var got = new float[n];
                        QuantizationKernels.DequantizeCore(src.AsSpan(offset, n), unsigned, scale, zp, got, impl);
                        for (int i = 0; i < n; i++)
                        {
                            float expected = ((unsigned ? q[i] : (sbyte)q[i]) - zp) * scale;
                            TestData.AreSame(expected, got[i], $"{impl} unsigned={unsigned} q={q[i]}");
                        }
                    }
                }
            }
        }
        var d = new float[3];
        QuantizationKernels.Dequantize(new sbyte[] { -128, 0, 127 }, 0.5f, (sbyte)1, d);
        CollectionAssert.AreEqual(new[] { -64.5f, -0.5f, 63f }, d);
        QuantizationKernels.Dequantize(new byte[] { 0, 128, 255 }, 2f, (byte)128, d);
        CollectionAssert.AreEqual(new[] { -256f, 0f, 254f }, d);
    }

    [TestMethod]
    public void Quantize_then_dequantize_is_within_half_a_step()
    {
        float[] x = TestData.Random(10_000, 42, 5f);
        float scale = TensorStats.MaxAbs(x) / 127f;
        var q = new sbyte[x.Length];
        QuantizationKernels.Quantize(x, scale, (sbyte)0, q, -127, 127);
        var back = new float[x.Length];
        QuantizationKernels.Dequantize(q, scale, (sbyte)0, back);
        Assert.IsLessThanOrEqualTo(scale * 0.5f * 1.0001f, ErrorMetrics.MaxAbsDifference(x, back));
        Assert.AreEqual(127, q.Max(v => Math.Abs((int)v)));
    }

    [TestMethod]
    public void Short_destinations_are_rejected()
    {
        Assert.ThrowsExactly<ArgumentException>(() => QuantizationKernels.Quantize(new float[4], 1f, (sbyte)0, new sbyte[3]));
        Assert.ThrowsExactly<ArgumentException>(() => QuantizationKernels.Dequantize(new byte[4], 1f, (byte)0, new float[3]));
        Assert.ThrowsExactly<ArgumentException>(() => QuantizationKernels.QuantizePerColumn(new float[6], 2, 3, new float[2], new sbyte[3], new sbyte[6]));
    }

    [TestMethod]
    public void Scales_must_be_positive_and_finite()
    {
        foreach (float bad in new[] { 0f, -1f, float.NaN, float.PositiveInfinity })
        {
            Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => QuantizationKernels.Quantize(new float[4], bad, (sbyte)0, new sbyte[4]), bad.ToString(System.Globalization.CultureInfo.InvariantCulture));
            Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => QuantizationKernels.QuantizePerColumn(new float[6], 2, 3, [1f, bad, 1f], new sbyte[3], new sbyte[6]), bad.ToString(System.Globalization.CultureInfo.InvariantCulture));
            Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => QuantizationKernels.QuantizePerRow(new float[6], 2, 3, [bad, 1f], new byte[2], new byte[6]), bad.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }
        Assert.ThrowsExactly<ArgumentException>(() => QuantizationKernels.Quantize(new float[4], 1f, (sbyte)0, new sbyte[4], 5, -5));
        // a denormal scale is positive and finite: allowed, values saturate
        var q = new sbyte[2];
        QuantizationKernels.Quantize([1f, -1f], float.Epsilon, (sbyte)0, q);
        CollectionAssert.AreEqual(new sbyte[] { 127, -128 }, q);
    }
}
