using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Core.Tests.Passes;

[TestClass]
public sealed class Int8DynamicQuantizerTests
{
    private const int Batch = 6;

    /// <summary>
    /// The float result for x [M, K] · W [K, N] (+ bias) and an error bound per element derived from the scales:
    /// ORT quantizes x per tensor to uint8 with step sa = (max(x, 0) - min(x, 0)) / 255 (error ≤ sa/2 per value)
    /// and the weights per column with step sw_j = max|W[:, j]| / L (error ≤ sw_j/2), so
    /// |Δy_ij| ≤ Σ_k (|x_ik|·sw_j/2 + |W_kj|·sa/2 + sa·sw_j/4), plus float rounding.
    /// </summary>
    /// <param name="scales">The stored channel scales when they are not max|w| / levels (the pair-bounded encoding).</param>
    private static float[] Tolerance(float[] x, int m, int k, float[] w, int n, float levels, float[]? scales = null)
    {
        float xmax = MathF.Max(0, x.Max()), xmin = MathF.Min(0, x.Min());
        float sa = (xmax - xmin) / 255f;
        var tol = new float[m * n];
        for (int j = 0; j < n; j++)
        {
            float mw = 0;
            for (int kk = 0; kk < k; kk++)
            {
                mw = MathF.Max(mw, MathF.Abs(w[kk * n + j]));
            }
            float sw = scales?[j] ?? mw / levels;
            for (int i = 0; i < m; i++)
            {
                double t = 0, mag = 0;
                for (int kk = 0; kk < k; kk++)
                {
                    float xv = x[i * k + kk], wv = w[kk * n + j];
                    t += MathF.Abs(xv) * sw / 2 + MathF.Abs(wv) * sa / 2 + sa * sw / 4;
                    mag += MathF.Abs(xv * wv);
                }
                tol[i * n + j] = (float)(t + 1e-5 * mag + 1e-6);
            }
        }
        return tol;
    }

    private static void AssertClose(float[] expected, float[] actual, float[] tolerance, string what)
    {
        Assert.HasCount(expected.Length, actual);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.IsLessThanOrEqualTo(tolerance[i], MathF.Abs(expected[i] - actual[i]), $"{what}: element {i}: float {expected[i]}, quantized {actual[i]}, bound {tolerance[i]}");
        }
        // the quantized model really computed something different from the float model, but close
        Assert.IsTrue(expected.Zip(actual).Any(p => p.First != p.Second), $"{what}: outputs are bit-identical; was anything quantized?");
    }

    private static (float[] Float, float[] Quantized) RunBoth(ModelProto original, ModelProto quantized, float[] x, long[] shape)
    {
        using var a = new Ort(original);
        using var b = new Ort(quantized);
        return (a.Run(x, shape), b.Run(x, shape));
    }

    private static ModelProto MatMulModel(int k, int n, float[] w, int seed = 3)
    {
        var g = new GraphProto { Name = "matmul" };
        g.Input.Add(FloatValue("x", "M", k));
        g.Output.Add(FloatValue("y", "M", n));
        g.Initializer.Add(TensorUtil.FromFloats("w", w, k, n));
        g.Node.Add(Node("MatMul", ["x", "w"], ["y"], "mm"));
        _ = seed;
        return Model(g);
    }

    [TestMethod]
    [DataRow(WeightEncoding.UInt8, 127f)]
    [DataRow(WeightEncoding.Int8ReducedRange, 63f)]
    [DataRow(WeightEncoding.Int8PairBounded, 127f)]
    public void MatMul_becomes_DynamicQuantizeMatMul_and_stays_within_the_derived_bound(WeightEncoding encoding, float levels)
    {
        const int K = 40, N = 24;
        float[] w = RandomFloats(K * N, 11, 0.8f);
        for (int kk = 0; kk < K; kk++)
        {
            w[kk * N + 5] = 0f; // an all-zero output channel
        }
        ModelProto original = MatMulModel(K, N, w);
        ModelProto quantized = original.Clone();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(quantized, new QuantizationOptions { WeightEncoding = encoding }, "tiny.onnx");

        Assert.HasCount(1, summary.Quantized);
        Assert.AreEqual(new QuantizedNode("mm", "MatMul", "w", K, N, summary.Quantized[0].MaxAbsWeightError), summary.Quantized[0]);
        if (encoding != WeightEncoding.Int8PairBounded)
        {
            Assert.IsLessThanOrEqualTo(0.8f / levels / 2 * 1.001f, summary.Quantized[0].MaxAbsWeightError);
        }
        Assert.IsGreaterThan(0f, summary.Quantized[0].MaxAbsWeightError);
        Assert.IsFalse(summary.NothingToQuantize);
        Assert.AreEqual(K * N * 4L, summary.FloatWeightBytes);
        bool unsigned = encoding == WeightEncoding.UInt8;
        Assert.AreEqual(K * N + (unsigned ? N : 0) + N * 4L, summary.QuantizedWeightBytes, "signed codes store no zero point");
        Assert.IsLessThan(summary.ModelBytesBefore, summary.ModelBytesAfter);

        NodeProto q = quantized.Graph.Node.Single();
        Assert.AreEqual("DynamicQuantizeMatMul", q.OpType);
        Assert.AreEqual("com.microsoft", q.Domain);
        Assert.IsFalse(quantized.Graph.Initializer.Any(t => t.Name == "w"), "the float weight must be removed");
        Assert.IsTrue(quantized.OpsetImport.Any(o => o.Domain == "com.microsoft" && o.Version >= 1));
        TensorProto qw = quantized.Graph.Initializer.Single(t => t.Name == q.Input[1]);
        CollectionAssert.AreEqual(new long[] { K, N }, qw.Dims.ToArray());
        long[] values = TensorUtil.ToInt64Array(qw);
        Assert.HasCount(unsigned ? 4 : 3, q.Input, "a zero point input only for uint8 codes");
        long[] zeroPoints = unsigned ? TensorUtil.ToInt64Array(quantized.Graph.Initializer.Single(t => t.Name == q.Input[3])) : new long[N];
        float[] scales = TensorUtil.ToFloatArray(quantized.Graph.Initializer.Single(t => t.Name == q.Input[2]));
        long zero = encoding == WeightEncoding.UInt8 ? 128 : 0;
        Assert.AreEqual(encoding == WeightEncoding.UInt8 ? (int)TensorProto.Types.DataType.Uint8 : (int)TensorProto.Types.DataType.Int8, qw.DataType);
        Assert.IsTrue(zeroPoints.All(z => z == zero));
        Assert.IsTrue(values.All(v => Math.Abs(v - zero) <= levels), "levels are symmetric");
        if (encoding == WeightEncoding.Int8PairBounded)
        {
            Assert.IsLessThanOrEqualTo((long)levels, values.Max(v => Math.Abs(v)));
            AssertPairsBounded(values, K, N);
            Assert.IsLessThanOrEqualTo(scales.Max() / 2 * 1.001f, summary.Quantized[0].MaxAbsWeightError, "half a level of the largest stored scale");
        }
        else
        {
            Assert.AreEqual((long)levels, values.Max(v => Math.Abs(v - zero)), "the largest weight maps to the last level");
        }
        Assert.AreEqual(1f, scales[5], "an all-zero channel gets scale 1");
        Assert.IsTrue(Enumerable.Range(0, K).All(kk => values[kk * N + 5] == zero));
        ModelChecker.Validate(quantized, "tiny.onnx");

        float[] x = RandomFloats(Batch * K, 5, 2f);
        (float[] expected, float[] actual) = RunBoth(original, quantized, x, [Batch, K]);
        AssertClose(expected, actual, Tolerance(x, Batch, K, w, N, levels, encoding == WeightEncoding.Int8PairBounded ? scales : null), encoding.ToString());
    }

    /// <summary>Every same-sign pair of adjacent K codes (rows 2i, 2i + 1 of the stored [K, N] weight) sums to at most 128 levels.</summary>
    private static void AssertPairsBounded(long[] kMajor, int k, int n)
    {
        for (int j = 0; j < n; j++)
        {
            for (int i = 0; i + 1 < k; i += 2)
            {
                long a = kMajor[i * n + j], b = kMajor[(i + 1) * n + j];
                if (Math.Sign(a) == Math.Sign(b))
                {
                    Assert.IsLessThanOrEqualTo(128L, Math.Abs(a) + Math.Abs(b), $"pair ({i}, {i + 1}) of column {j}");
                }
            }
        }
    }

    /// <summary>
    /// The default encoding: weights whose adjacent pairs are large together (the case that saturates ORT's AVX2
    /// u8s8 kernel with plain int8, see the test below) stay within the error bound of their stored scales on every
    /// CPU, the pair bound holds, and only the channels that needed it got a larger scale than max|w| / 127.
    /// </summary>
    [TestMethod]
    public void Pair_bounded_int8_stays_within_its_bound_on_every_CPU()
    {
        const int K = 40, N = 24;
        float[] w = RandomFloats(K * N, 11, 0.8f);
        for (int j = 0; j < N; j += 2)
        {
            // Even channels: a same-sign pair of two near-maximal weights (needs 2 x 127 levels unbounded).
            w[6 * N + j] = 0.8f;
            w[7 * N + j] = 0.79f;
        }
        ModelProto original = MatMulModel(K, N, w);
        ModelProto quantized = original.Clone();
        Assert.AreEqual(WeightEncoding.Int8PairBounded, QuantizationOptions.Default.WeightEncoding);
        Int8DynamicQuantizer.Apply(quantized, QuantizationOptions.Default, "tiny.onnx");
        NodeProto q = quantized.Graph.Node.Single();
        TensorProto qw = quantized.Graph.Initializer.Single(t => t.Name == q.Input[1]);
        Assert.AreEqual((int)TensorProto.Types.DataType.Int8, qw.DataType);
        long[] values = TensorUtil.ToInt64Array(qw);
        float[] scales = TensorUtil.ToFloatArray(quantized.Graph.Initializer.Single(t => t.Name == q.Input[2]));
        AssertPairsBounded(values, K, N);
        for (int j = 0; j < N; j++)
        {
            float maxAbs = Enumerable.Range(0, K).Max(kk => MathF.Abs(w[kk * N + j]));
            float maxPair = Enumerable.Range(0, K / 2).Select(i => (a: w[2 * i * N + j], b: w[(2 * i + 1) * N + j]))
                .Where(p => Math.Sign(p.a) == Math.Sign(p.b)).Select(p => MathF.Abs(p.a) + MathF.Abs(p.b)).DefaultIfEmpty(0f).Max();
            Assert.AreEqual(MathF.Max(maxAbs / 127f, maxPair / 128f), scales[j], 1e-7f, $"channel {j}");
            if (j % 2 == 0)
            {
                Assert.IsGreaterThan(maxAbs / 127f * 1.9f, scales[j], $"channel {j} needed the pair bound");
            }
        }

        float[] x = RandomFloats(Batch * K, 5, 2f);
        for (int i = 0; i < Batch; i++)
        {
            x[i * K + 6] = 2f; // the activation maximum (code 255) meets the large pair
            x[i * K + 7] = 2f;
        }
        (float[] expected, float[] actual) = RunBoth(original, quantized, x, [Batch, K]);
        AssertClose(expected, actual, Tolerance(x, Batch, K, w, N, 127f, scales), "pair-bounded int8");
    }

    /// <summary>
    /// The reason <see cref="QuantizationOptions.DefaultWeightEncoding"/> bounds adjacent pairs: with unbounded int8
    /// weights ORT's u8s8 GEMM on x64 without VNNI (vpmaddubsw) saturates int16 pair sums, and the result leaves the
    /// bound the scales allow. With VNNI (or on other CPUs) the same model must stay within the bound.
    /// </summary>
    [TestMethod]
    public void Int8_weights_saturate_in_ORTs_u8s8_kernel_only_without_VNNI()
    {
        const int K = 40, N = 24;
        float[] w = RandomFloats(K * N, 11, 0.8f);
        ModelProto original = MatMulModel(K, N, w);
        ModelProto quantized = original.Clone();
        Int8DynamicQuantizer.Apply(quantized, new QuantizationOptions { WeightEncoding = WeightEncoding.Int8 }, "tiny.onnx");
        float[] x = RandomFloats(Batch * K, 5, 2f);
        (float[] expected, float[] actual) = RunBoth(original, quantized, x, [Batch, K]);
        float[] tol = Tolerance(x, Batch, K, w, N, 127f);
        int outside = Enumerable.Range(0, expected.Length).Count(i => MathF.Abs(expected[i] - actual[i]) > tol[i]);
        bool? saturatingCpu = SaturatingU8S8Cpu();
        if (saturatingCpu == null)
        {
            Assert.Inconclusive($"cannot tell whether this CPU has VNNI ({outside} of {expected.Length} outputs outside the bound)");
        }
        if (saturatingCpu == true)
        {
            Assert.IsGreaterThan(0, outside, "expected int16 saturation on an AVX2 CPU without VNNI");
        }
        else
        {
            Assert.AreEqual(0, outside, "int8 weights left the error bound on a CPU that should not saturate");
        }
    }

    /// <summary>x64 with AVX2 and neither AVX-VNNI nor AVX512-VNNI: true; other CPUs: false; unknown: null.</summary>
    private static bool? SaturatingU8S8Cpu()
    {
        if (!System.Runtime.Intrinsics.X86.Avx2.IsSupported)
        {
            return false;
        }
        if (System.Runtime.Intrinsics.X86.AvxVnni.IsSupported)
        {
            return false;
        }
        if (!OperatingSystem.IsLinux() || !File.Exists("/proc/cpuinfo"))
        {
            return System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? null : true;
        }
        string flags = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal)) ?? "";
        return !flags.Split(' ', ':', '\t').Any(f => f is "avx512_vnni" or "avx_vnni");
    }

    private static ModelProto GemmModel(int k, int n, float[] w, bool transA, bool transB, float alpha, float beta, TensorProto? c, bool cAsInput = false, int m = Batch)
    {
        var g = new GraphProto { Name = "gemm" };
        g.Input.Add(transA ? FloatValue("x", k, m) : FloatValue("x", m, k));
        g.Output.Add(FloatValue("y", m, n));
        g.Initializer.Add(TensorUtil.FromFloats("w", w, transB ? [n, k] : [k, n]));
        var inputs = new List<string> { "x", "w" };
        if (c != null)
        {
            if (cAsInput)
            {
                g.Input.Add(FloatValue("c", [.. c.Dims.Cast<object>()]));
            }
            else
            {
                g.Initializer.Add(c);
            }
            inputs.Add("c");
        }
        g.Node.Add(Node("Gemm", [.. inputs], ["y"], "gemm",
            IntAttr("transA", transA ? 1 : 0), IntAttr("transB", transB ? 1 : 0), FloatAttr("alpha", alpha), FloatAttr("beta", beta)));
        return Model(g);
    }

    public static IEnumerable<object?[]> GemmCases()
    {
        // transA, transB, alpha, beta, C dims (null = no C), C as a graph input
        yield return [false, true, 1f, 1f, new long[] { 12 }, false];
        yield return [false, true, 0.5f, 2f, new long[] { 12 }, false];
        yield return [false, false, -1.5f, 1f, new long[] { 1, 12 }, false];
        yield return [true, true, 1f, 0.25f, new long[] { 1 }, false];
        yield return [false, true, 1f, 3f, new long[] { Batch, 12 }, false];
        yield return [true, false, 2f, 1f, new long[] { Batch, 1 }, false];
        yield return [false, true, 1f, 0.5f, new long[] { 12 }, true];
        yield return [false, false, 1f, 1f, null, false];
    }

    [TestMethod]
    [DynamicData(nameof(GemmCases))]
    public void Gemm_attributes_and_bias_are_honoured(bool transA, bool transB, float alpha, float beta, long[]? cDims, bool cAsInput)
    {
        const int K = 33, N = 12;
        float[] w = RandomFloats(K * N, 21, 0.6f);
        TensorProto? c = cDims == null ? null : TensorUtil.FromFloats("c", RandomFloats((int)cDims.Aggregate(1L, (a, b) => a * b), 8, 1f), cDims);
        ModelProto original = GemmModel(K, N, w, transA, transB, alpha, beta, c, cAsInput);
        ModelProto quantized = original.Clone();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(quantized, QuantizationOptions.Default, "gemm.onnx");
        Assert.HasCount(1, summary.Quantized, string.Join("; ", summary.Skipped));
        Assert.AreEqual((K, N), (summary.Quantized[0].Rows, summary.Quantized[0].Columns));
        ModelChecker.Validate(quantized, "gemm.onnx");
        Assert.IsFalse(quantized.Graph.Node.Any(nd => nd.OpType == "Gemm"));
        bool biasFolded = c != null && !cAsInput && (cDims!.Aggregate(1L, (a, b) => a * b) is 1 or N);
        NodeProto dq = quantized.Graph.Node.Single(nd => nd.OpType == "DynamicQuantizeMatMul");
        Assert.AreEqual(biasFolded ? 5 : 3, dq.Input.Count, "bias input (after an empty zero point: int8 codes use the default 0)");
        if (biasFolded)
        {
            Assert.IsFalse(quantized.Graph.Initializer.Any(t => t.Name == "c"), "the folded C is removed");
        }

        // effective weight alpha * op(W) as [K, N] for the bound
        var eff = new float[K * N];
        for (int kk = 0; kk < K; kk++)
        {
            for (int j = 0; j < N; j++)
            {
                eff[kk * N + j] = alpha * (transB ? w[j * K + kk] : w[kk * N + j]);
            }
        }
        float[] x = RandomFloats(Batch * K, 9, 1.5f);
        float[] xRowMajor = x;
        if (transA)
        {
            // the graph input is [K, M]; the bound wants [M, K]
            xRowMajor = new float[x.Length];
            for (int kk = 0; kk < K; kk++)
            {
                for (int i = 0; i < Batch; i++)
                {
                    xRowMajor[i * K + kk] = x[kk * Batch + i];
                }
            }
        }
        float[] tol = Tolerance(xRowMajor, Batch, K, eff, N, 127f);
        if (cAsInput)
        {
            // C is a second graph input here
            float[] cv = TensorUtil.ToFloatArray(c!);
            float[] e = RunTwoInputs(original, x, [Batch, K], cv, [.. c!.Dims]);
            float[] q = RunTwoInputs(quantized, x, [Batch, K], cv, [.. c!.Dims]);
            AssertClose(e, q, tol, "gemm with C input");
            return;
        }
        (float[] expected, float[] actual) = RunBoth(original, quantized, x, transA ? [K, Batch] : [Batch, K]);
        AssertClose(expected, actual, tol, $"transA={transA} transB={transB} alpha={alpha} beta={beta}");
    }

    private static float[] RunTwoInputs(ModelProto model, float[] x, long[] xShape, float[] c, long[] cShape)
    {
        using var session = new Microsoft.ML.OnnxRuntime.InferenceSession(model.ToByteArray());
        using var xv = Microsoft.ML.OnnxRuntime.OrtValue.CreateTensorValueFromMemory(x, xShape);
        using var cv = Microsoft.ML.OnnxRuntime.OrtValue.CreateTensorValueFromMemory(c, cShape);
        using var ro = new Microsoft.ML.OnnxRuntime.RunOptions();
        using var outputs = session.Run(ro, ["x", "c"], [xv, cv], ["y"]);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }

    [TestMethod]
    public void Weight_shared_with_a_float_consumer_is_skipped_and_the_model_is_unchanged()
    {
        const int K = 16, N = 16;
        var g = new GraphProto { Name = "shared" };
        g.Input.Add(FloatValue("x", Batch, K));
        g.Output.Add(FloatValue("y", Batch, N));
        g.Output.Add(FloatValue("z", K, N));
        g.Initializer.Add(TensorUtil.FromFloats("w", RandomFloats(K * N, 2), K, N));
        g.Node.Add(Node("MatMul", ["x", "w"], ["y"], "mm"));
        g.Node.Add(Node("Relu", ["w"], ["z"], "relu_w"));
        ModelProto model = Model(g);
        byte[] before = model.ToByteArray();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "shared.onnx");
        Assert.IsTrue(summary.NothingToQuantize);
        SkippedNode skipped = summary.Skipped.Single();
        Assert.AreEqual("mm", skipped.Node);
        Assert.Contains("shared with Relu 'relu_w'", skipped.Reason);
        CollectionAssert.AreEqual(before, model.ToByteArray());
        Assert.AreEqual(summary.ModelBytesBefore, summary.ModelBytesAfter);
    }

    [TestMethod]
    public void Weight_shared_by_two_MatMuls_is_quantized_once()
    {
        const int K = 16, N = 8;
        var g = new GraphProto { Name = "shared2" };
        g.Input.Add(FloatValue("x", Batch, K));
        g.Input.Add(FloatValue("x2", Batch, K));
        g.Output.Add(FloatValue("y", Batch, N));
        g.Output.Add(FloatValue("y2", Batch, N));
        float[] w = RandomFloats(K * N, 4);
        g.Initializer.Add(TensorUtil.FromFloats("w", w, K, N));
        g.Node.Add(Node("MatMul", ["x", "w"], ["y"], "mm1"));
        g.Node.Add(Node("MatMul", ["x2", "w"], ["y2"], "mm2"));
        ModelProto model = Model(g);
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "shared2.onnx");
        Assert.HasCount(2, summary.Quantized);
        Assert.AreEqual(2, model.Graph.Initializer.Count, "one quantized weight and one scale (int8 codes: default zero point)");
        Assert.AreEqual(model.Graph.Node[0].Input[1], model.Graph.Node[1].Input[1]);
        Assert.AreEqual(summary.Quantized[0].MaxAbsWeightError, summary.Quantized[1].MaxAbsWeightError);
        Assert.IsGreaterThan(0f, summary.Quantized[1].MaxAbsWeightError);
    }

    /// <summary>
    /// Issue 17: ONNX Runtime's session creation grows with the square of the initializer count, so the zero points
    /// that are the same for every weight (uint8 codes: 128 per output channel; ConvInteger: the scalar 128) are stored
    /// once per value and length instead of once per weight; the model runs as before.
    /// </summary>
    [TestMethod]
    public void Equal_zero_points_are_stored_once_and_shared()
    {
        const int K = 16, N = 8;
        var g = new GraphProto { Name = "zp" };
        g.Input.Add(FloatValue("x", Batch, K));
        g.Output.Add(FloatValue("y", Batch, N));
        g.Initializer.Add(TensorUtil.FromFloats("w1", RandomFloats(K * N, 5), K, N));
        g.Initializer.Add(TensorUtil.FromFloats("w2", RandomFloats(N * N, 6), N, N));
        g.Initializer.Add(TensorUtil.FromFloats("w3", RandomFloats(N * N, 7), N, N));
        g.Node.Add(Node("MatMul", ["x", "w1"], ["h1"], "mm1"));
        g.Node.Add(Node("MatMul", ["h1", "w2"], ["h2"], "mm2"));
        g.Node.Add(Node("MatMul", ["h2", "w3"], ["y"], "mm3"));
        ModelProto original = Model(g);
        ModelProto model = original.Clone();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, new QuantizationOptions { WeightEncoding = WeightEncoding.UInt8 }, "zp.onnx");
        Assert.HasCount(3, summary.Quantized);
        string[] zeroPoints = [.. model.Graph.Node.Where(n => n.OpType == Int8DynamicQuantizer.QuantizedOpType).Select(n => n.Input[3])];
        Assert.HasCount(3, zeroPoints);
        Assert.AreEqual(1, zeroPoints.Distinct().Count(), "every weight has N = 8 output channels: one zero-point tensor");
        Assert.AreEqual(3 * 2 + 1, model.Graph.Initializer.Count, "a quantized weight and a scale per weight, one zero point");
        TensorProto zp = model.Graph.Initializer.Single(t => t.Name == zeroPoints[0]);
        CollectionAssert.AreEqual(Enumerable.Repeat(128L, N).ToArray(), TensorUtil.ToInt64Array(zp));
        ModelChecker.Validate(model, "zp.onnx");
        float[] x = RandomFloats(Batch * K, 8);
        using var a = new Ort(original);
        using var b = new Ort(model);
        float[] expected = a.Run(x, [Batch, K]);
        float[] actual = b.Run(x, [Batch, K]);
        Assert.HasCount(expected.Length, actual);
        float scale = expected.Max(MathF.Abs);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.IsLessThan(0.05f * scale, MathF.Abs(expected[i] - actual[i]), $"output {i}");
        }
    }

    [TestMethod]
    public void Already_quantized_model_is_reported_and_left_alone()
    {
        var g = new GraphProto { Name = "qdq" };
        g.Input.Add(FloatValue("x", Batch, 4));
        g.Output.Add(FloatValue("y", Batch, 4));
        g.Initializer.Add(TensorUtil.FromFloats("s", [0.1f]));
        g.Initializer.Add(TensorUtil.FromUInt8("z", [128]));
        g.Initializer.Add(TensorUtil.FromInt8("wq", Enumerable.Range(0, 16).Select(i => (sbyte)(i - 8)).ToArray(), 4, 4));
        g.Initializer.Add(TensorUtil.FromFloats("ws", [0.05f]));
        g.Initializer.Add(TensorUtil.FromInt8("wz", [0]));
        g.Node.Add(Node("QuantizeLinear", ["x", "s", "z"], ["xq"], "q"));
        g.Node.Add(Node("DequantizeLinear", ["xq", "s", "z"], ["xd"], "dq"));
        g.Node.Add(Node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], "dqw"));
        g.Node.Add(Node("MatMul", ["xd", "wd"], ["y"], "mm"));
        ModelProto model = Model(g);
        byte[] before = model.ToByteArray();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "qdq.onnx");
        Assert.IsTrue(summary.AlreadyQuantized);
        Assert.IsFalse(summary.NothingToQuantize);
        Assert.AreEqual("2 DequantizeLinear, 1 QuantizeLinear nodes", summary.AlreadyQuantizedReason);
        Assert.IsEmpty(summary.Quantized);
        CollectionAssert.AreEqual(before, model.ToByteArray());
        // and the result of a previous run counts as quantized too
        ModelProto mine = MatMulModel(16, 16, RandomFloats(256, 1));
        Int8DynamicQuantizer.Apply(mine, QuantizationOptions.Default, "m");
        Assert.AreEqual("1 DynamicQuantizeMatMul node", Int8DynamicQuantizer.Apply(mine, QuantizationOptions.Default, "m").AlreadyQuantizedReason);
    }

    [TestMethod]
    public void NaN_or_infinite_weight_throws_CMPR0202_naming_model_and_tensor()
    {
        foreach (float bad in new[] { float.NaN, float.PositiveInfinity })
        {
            float[] w = RandomFloats(64, 3);
            w[37] = bad;
            ModelProto model = MatMulModel(8, 8, w);
            byte[] before = model.ToByteArray();
            CompressException e = Assert.ThrowsExactly<CompressException>(() => Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "bad.onnx"));
            Assert.AreEqual(DiagnosticCodes.NonFiniteWeights, e.Code);
            Assert.StartsWith("CMPR0202", e.Message);
            Assert.Contains("'bad.onnx'", e.Message);
            Assert.Contains("'w'", e.Message);
            CollectionAssert.AreEqual(before, model.ToByteArray(), "the model must not be half rewritten");
        }
    }

    [TestMethod]
    public void Unreadable_weight_data_throws_CMPR0103_not_a_crash()
    {
        ModelProto shortData = MatMulModel(8, 8, RandomFloats(64, 3));
        shortData.Graph.Initializer[0].RawData = ByteString.CopyFrom(new byte[17]);
        ModelProto external = MatMulModel(8, 8, RandomFloats(64, 3));
        TensorProto w = external.Graph.Initializer[0];
        w.ClearRawData();
        w.DataLocation = TensorProto.Types.DataLocation.External;
        w.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = "weights.bin" });
        foreach (ModelProto model in new[] { shortData, external })
        {
            CompressException e = Assert.ThrowsExactly<CompressException>(() => Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "broken.onnx"));
            Assert.AreEqual(DiagnosticCodes.ModelInvalid, e.Code);
            Assert.Contains("'broken.onnx'", e.Message);
            Assert.Contains("'w'", e.Message);
        }
    }

    [TestMethod]
    public void Nothing_to_quantize_is_flagged_with_reasons()
    {
        var g = new GraphProto { Name = "none" };
        g.Input.Add(FloatValue("x", Batch, 16));
        g.Input.Add(FloatValue("w_in", 16, 8));
        g.Output.Add(FloatValue("y", Batch, 8));
        g.Output.Add(FloatValue("y2", Batch, 8));
        g.Output.Add(FloatValue("y3", Batch, 8));
        var half = new TensorProto { Name = "w16", DataType = (int)TensorProto.Types.DataType.Float16, RawData = ByteString.CopyFrom(new byte[16 * 8 * 2]) };
        half.Dims.Add([16, 8]);
        g.Initializer.Add(half);
        g.Initializer.Add(TensorUtil.FromFloats("tiny", RandomFloats(8, 1), 1, 8));
        g.Node.Add(Node("MatMul", ["x", "w_in"], ["y"], "runtime_weight"));
        g.Node.Add(Node("Cast", ["w16"], ["w32"], "cast", IntAttr("to", 1)));
        g.Node.Add(Node("MatMul", ["x", "w32"], ["y2"], "cast_weight"));
        g.Node.Add(Node("Relu", ["y"], ["r"], "relu"));
        g.Node.Add(Node("MatMul", ["x", "w16"], ["y3"], "half_weight"));
        ModelProto model = Model(g);
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "none.onnx");
        Assert.IsTrue(summary.NothingToQuantize);
        Assert.IsFalse(summary.AlreadyQuantized);
        Assert.HasCount(3, summary.Skipped);
        Assert.Contains("not a constant", summary.Skipped.Single(s => s.Node == "runtime_weight").Reason);
        // The Cast of the float16 weight is read through (ExportStyleWeightTests), but its source is also read as float16.
        Assert.Contains("weight 'w16' is shared with MatMul 'half_weight'", summary.Skipped.Single(s => s.Node == "cast_weight").Reason);
        // float16 weights are quantized too (Float16Lift); this one is read by the Cast as well, so it stays float.
        Assert.Contains("weight 'w16' is shared with Cast 'cast'", summary.Skipped.Single(s => s.Node == "half_weight").Reason);
        Assert.IsFalse(model.OpsetImport.Any(o => o.Domain == "com.microsoft"));
    }

    [TestMethod]
    public void Initializer_that_is_also_a_graph_input_is_skipped_from_IR4_but_constant_in_IR3()
    {
        foreach (long ir in new long[] { 3, 7 })
        {
            ModelProto model = MatMulModel(16, 8, RandomFloats(128, 6));
            model.IrVersion = ir;
            model.Graph.Input.Add(FloatValue("w", 16, 8));
            ModelProto original = model.Clone();
            QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "ir.onnx");
            if (ir >= 4)
            {
                Assert.Contains("also a graph input", summary.Skipped.Single().Reason);
                continue;
            }
            Assert.HasCount(1, summary.Quantized);
            // IR 3 declared every initializer as an input; the rewritten model is IR 4, where constants need no
            // declaration: only the real input is left.
            Assert.AreEqual(4L, model.IrVersion);
            CollectionAssert.AreEqual(new[] { "x" }, model.Graph.Input.Select(i => i.Name).ToArray());
            ModelChecker.Validate(model, "ir.onnx");
            float[] x = RandomFloats(Batch * 16, 7);
            (float[] e, float[] q) = RunBoth(original, model, x, [Batch, 16]);
            AssertClose(e, q, Tolerance(x, Batch, 16, TensorUtil.ToFloatArray(original.Graph.Initializer[0]), 8, 127f), "IR 3");
        }
    }

    /// <summary>The PyTorch exporter's per-node stack traces and FX text go (every pass that rewrites a model); structural hints stay.</summary>
    [TestMethod]
    public void Exporter_stack_traces_are_dropped_and_structural_metadata_kept()
    {
        ModelProto model = MatMulModel(16, 8, RandomFloats(128, 6));
        model.Graph.Node.Add(Node("Relu", ["y"], ["r"], "relu"));
        model.Graph.Output[0] = FloatValue("r", "M", 8);
        foreach (NodeProto n in model.Graph.Node)
        {
            n.MetadataProps.Add(new StringStringEntryProto { Key = "pkg.torch.onnx.stack_trace", Value = "File \"C:\\Users\\someone\\train.py\", line 42, in forward" });
            n.MetadataProps.Add(new StringStringEntryProto { Key = "pkg.torch.onnx.fx_node", Value = "%linear : [num_users=1] = call_function[...]" });
            n.MetadataProps.Add(new StringStringEntryProto { Key = "namespace", Value = ": __main__.Net/" + n.Name });
        }
        long before = model.CalculateSize();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "meta.onnx");
        Assert.HasCount(1, summary.Quantized);
        Assert.IsFalse(model.Graph.Node.SelectMany(n => n.MetadataProps).Any(p => p.Key.StartsWith("pkg.torch.onnx.", StringComparison.Ordinal)), "stack traces and FX text are gone");
        Assert.AreEqual(": __main__.Net/relu", model.Graph.Node.Single(n => n.OpType == "Relu").MetadataProps.Single().Value, "structural hints stay");
        Assert.AreEqual(model.CalculateSize(), summary.ModelBytesAfter);
        Assert.IsLessThan(before, summary.ModelBytesAfter);
        Assert.AreEqual(0, PassGraph.StripDebugTraces(model), "nothing left to strip");
    }

    [TestMethod]
    public void Weights_from_Constant_and_Reshape_nodes_are_folded()
    {
        const int K = 24, N = 6;
        float[] w = RandomFloats(K * N, 12);
        var g = new GraphProto { Name = "folded" };
        g.Input.Add(FloatValue("x", Batch, K));
        g.Output.Add(FloatValue("y", Batch, N));
        var constant = Node("Constant", [], ["w_flat"], "const_w");
        constant.Attribute.Add(new AttributeProto { Name = "value", Type = AttributeProto.Types.AttributeType.Tensor, T = TensorUtil.FromFloats("", w, 4, K * N / 4) });
        g.Node.Add(constant);
        g.Initializer.Add(TensorUtil.FromInt64("shape", [-1, N], 2));
        g.Node.Add(Node("Reshape", ["w_flat", "shape"], ["w"], "reshape_w"));
        g.Node.Add(Node("MatMul", ["x", "w"], ["y"], "mm"));
        ModelProto original = Model(g);
        ModelProto model = original.Clone();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "folded.onnx");
        Assert.AreEqual((K, N), (summary.Quantized.Single().Rows, summary.Quantized.Single().Columns));
        CollectionAssert.AreEqual(new[] { "DynamicQuantizeMatMul" }, model.Graph.Node.Select(n => n.OpType).ToArray(), "Constant and Reshape are gone");
        Assert.IsFalse(model.Graph.Initializer.Any(t => t.Name == "shape"));
        float[] x = RandomFloats(Batch * K, 13);
        (float[] e, float[] q) = RunBoth(original, model, x, [Batch, K]);
        AssertClose(e, q, Tolerance(x, Batch, K, w, N, 127f), "folded");
    }

    public static IEnumerable<object[]> BiasCases()
    {
        // bias dims, MatMul input goes through a Relu without shape info, expected fold
        yield return [new long[] { 10 }, true, true];
        yield return [new long[] { 1, 10 }, false, true];
        yield return [new long[] { 1, 10 }, true, false];
        yield return [new long[] { Batch, 10 }, false, false];
    }

    [TestMethod]
    [DynamicData(nameof(BiasCases))]
    public void MatMul_then_Add_of_a_bias_vector_folds_into_one_node(long[] biasDims, bool viaRelu, bool folds)
    {
        const int K = 20, N = 10;
        float[] w = RandomFloats(K * N, 40);
        var g = new GraphProto { Name = "linear" };
        g.Input.Add(FloatValue("x", Batch, K));
        g.Output.Add(FloatValue("y", Batch, N));
        g.Initializer.Add(TensorUtil.FromFloats("w", w, K, N));
        g.Initializer.Add(TensorUtil.FromFloats("b", RandomFloats((int)biasDims.Aggregate(1L, (a, b) => a * b), 41), biasDims));
        if (viaRelu)
        {
            g.Node.Add(Node("Relu", ["x"], ["xr"], "relu"));
        }
        g.Node.Add(Node("MatMul", [viaRelu ? "xr" : "x", "w"], ["mm_out"], "mm"));
        g.Node.Add(Node("Add", ["b", "mm_out"], ["y"], "add"));
        ModelProto original = Model(g);
        ModelProto model = original.Clone();
        Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "linear.onnx");
        ModelChecker.Validate(model, "linear.onnx");
        NodeProto dq = model.Graph.Node.Single(n => n.OpType == "DynamicQuantizeMatMul");
        Assert.AreEqual(folds, !model.Graph.Node.Any(n => n.OpType == "Add"));
        Assert.AreEqual(folds ? 5 : 3, dq.Input.Count);
        Assert.AreEqual(folds, !model.Graph.Initializer.Any(t => t.Name == "b"));
        float[] x = RandomFloats(Batch * K, 42);
        (float[] e, float[] q) = RunBoth(original, model, x, [Batch, K]);
        float[] xin = viaRelu ? x.Select(v => MathF.Max(0, v)).ToArray() : x;
        AssertClose(e, q, Tolerance(xin, Batch, K, w, N, 127f), "bias fold");
    }

    [TestMethod]
    public void Unknown_weight_encoding_is_an_invalid_option()
    {
        ModelProto model = MatMulModel(8, 8, RandomFloats(64, 1));
        byte[] before = model.ToByteArray();
        CompressException e = Assert.ThrowsExactly<CompressException>(() =>
            Int8DynamicQuantizer.Apply(model, new QuantizationOptions { WeightEncoding = (WeightEncoding)42 }, "enc.onnx"));
        Assert.AreEqual(DiagnosticCodes.InvalidOption, e.Code);
        Assert.StartsWith("CMPR0003: enc.onnx: option 'WeightEncoding' has the invalid value '42'", e.Message);
        CollectionAssert.AreEqual(before, model.ToByteArray());
    }

    [TestMethod]
    public void MatMul_inside_a_subgraph_is_quantized_in_the_body_as_well_as_the_outer_one()
    {
        const int K = 16, N = 8;
        var body = new GraphProto { Name = "then_body" };
        body.Output.Add(FloatValue("inner_y", Batch, N));
        body.Node.Add(Node("MatMul", ["x", "w_inner"], ["inner_y"], "inner_mm"));
        var elseBody = new GraphProto { Name = "else_body" };
        elseBody.Output.Add(FloatValue("else_y", Batch, N));
        elseBody.Node.Add(Node("Identity", ["outer_y"], ["else_y"], "id"));
        var g = new GraphProto { Name = "outer" };
        g.Input.Add(FloatValue("x", Batch, K));
        g.Input.Add(new ValueInfoProto { Name = "cond", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Bool, Shape = new TensorShapeProto() } } });
        g.Output.Add(FloatValue("y", Batch, N));
        g.Initializer.Add(TensorUtil.FromFloats("w", RandomFloats(K * N, 50), K, N));
        g.Initializer.Add(TensorUtil.FromFloats("w_inner", RandomFloats(K * N, 51), K, N));
        g.Node.Add(Node("MatMul", ["x", "w"], ["outer_y"], "outer_mm"));
        var ifNode = Node("If", ["cond"], ["y"], "if");
        ifNode.Attribute.Add(new AttributeProto { Name = "then_branch", Type = AttributeProto.Types.AttributeType.Graph, G = body });
        ifNode.Attribute.Add(new AttributeProto { Name = "else_branch", Type = AttributeProto.Types.AttributeType.Graph, G = elseBody });
        g.Node.Add(ifNode);
        ModelProto model = Model(g);
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "if.onnx");
        CollectionAssert.AreEquivalent(new[] { "outer_mm", "inner_mm" }, summary.Quantized.Select(q => q.Node).ToArray());
        Assert.IsFalse(ModelWalker.Tensors(model).Any(t => t.Name == "w_inner"), "the weight read only inside the subgraph is quantized there");
        Assert.AreEqual("DynamicQuantizeMatMul", body.Node.Single().OpType);
        ModelChecker.Validate(model, "if.onnx");
    }

    [TestMethod]
    public void Batched_3D_activation_works()
    {
        const int K = 24, N = 7;
        float[] w = RandomFloats(K * N, 60);
        var g = new GraphProto { Name = "seq" };
        g.Input.Add(FloatValue("x", 2, 3, K));
        g.Output.Add(FloatValue("y", 2, 3, N));
        g.Initializer.Add(TensorUtil.FromFloats("w", w, K, N));
        g.Initializer.Add(TensorUtil.FromFloats("b", RandomFloats(N, 61), 1, 1, N));
        g.Node.Add(Node("MatMul", ["x", "w"], ["h"], "mm"));
        g.Node.Add(Node("Add", ["h", "b"], ["y"], "add"));
        ModelProto original = Model(g);
        ModelProto model = original.Clone();
        Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "seq.onnx");
        Assert.AreEqual(1, model.Graph.Node.Count, "rank-3 input: the [1, 1, N] bias folds");
        float[] x = RandomFloats(6 * K, 62);
        (float[] e, float[] q) = RunBoth(original, model, x, [2, 3, K]);
        AssertClose(e, q, Tolerance(x, 6, K, w, N, 127f), "3-D");
    }

    [TestMethod]
    public void Excluded_and_small_weights_stay_float()
    {
        ModelProto model = Mlp(inF: 16, hidden: 8, classes: 1);
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, new QuantizationOptions { ExcludedNodes = ["fc1"] }, "mlp.onnx");
        Assert.IsTrue(summary.NothingToQuantize);
        Assert.AreEqual("excluded by the options", summary.Skipped.Single(s => s.Node == "fc1").Reason);
        Assert.Contains("fewer than the minimum 16", summary.Skipped.Single(s => s.Node == "fc2").Reason);
    }

    [TestMethod]
    public void Mlp_from_the_shared_builder_runs_quantized()
    {
        ModelProto original = Mlp(inF: 64, hidden: 32, classes: 10);
        ModelProto model = original.Clone();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "mlp.onnx");
        Assert.HasCount(2, summary.Quantized);
        float[] x = RandomFloats(Batch * 64, 17);
        (float[] e, float[] q) = RunBoth(original, model, x, [Batch, 64]);
        Kernels.ErrorMetricsResult m = Kernels.ErrorMetrics.Compare(e, q);
        Assert.IsGreaterThan(0.999, m.CosineSimilarity);
        Assert.IsLessThan(0.03, m.RelativeL2);
    }
}
