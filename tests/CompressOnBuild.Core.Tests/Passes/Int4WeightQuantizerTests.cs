using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Microsoft.ML.OnnxRuntime;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Core.Tests.Passes;

[TestClass]
public sealed class Int4WeightQuantizerTests
{
    public TestContext TestContext { get; set; } = null!;

    /// <summary>Dequantizes what QuantizeBlocks produced back to a channel-major [n, k] matrix (independent unpacking).</summary>
    private static float[] Dequantize(byte[] packed, float[] scales, byte[]? zeros, int n, int k, int block)
    {
        int blocks = (k + block - 1) / block;
        int zpRow = (blocks + 1) / 2;
        var result = new float[n * k];
        for (int r = 0; r < n; r++)
        {
            for (int i = 0; i < k; i++)
            {
                int b = i / block;
                int flat = (r * blocks + b) * block + i % block;
                int code = (packed[flat / 2] >> (flat % 2 * 4)) & 0xF;
                int zp = zeros == null ? 8 : (zeros[r * zpRow + b / 2] >> (b % 2 * 4)) & 0xF;
                result[r * k + i] = (code - zp) * scales[r * blocks + b];
            }
        }
        return result;
    }

    [TestMethod]
    [DataRow(true, 32)]
    [DataRow(false, 32)]
    [DataRow(true, 16)]
    [DataRow(false, 128)]
    public void Blocks_round_trip_within_half_a_step(bool symmetric, int block)
    {
        int n = 5, k = 100; // a partial last block
        float[] w = RandomFloats(n * k, 3, 2f);
        w[7] = 0f;
        w[150] += 5f; // an outlier in one block
        (byte[] packed, float[] scales, byte[]? zeros, float maxError) = Int4WeightQuantizer.QuantizeBlocks(w, n, k, block, symmetric);
        int blocks = (k + block - 1) / block;
        Assert.HasCount(n * blocks * block / 2, packed);
        Assert.HasCount(n * blocks, scales);
        Assert.AreEqual(symmetric, zeros == null);
        float[] back = Dequantize(packed, scales, zeros, n, k, block);
        float worst = 0f;
        for (int r = 0; r < n; r++)
        {
            for (int i = 0; i < k; i++)
            {
                float step = MathF.Abs(scales[r * blocks + i / block]);
                float err = MathF.Abs(w[r * k + i] - back[r * k + i]);
                // symmetric: the side opposite the extreme can be clipped by one step (+8 -> 7)
                Assert.IsLessThanOrEqualTo(step * (symmetric ? 1.0001f : 0.5001f), err, $"r={r} i={i} w={w[r * k + i]} back={back[r * k + i]}");
                worst = MathF.Max(worst, err);
            }
        }
        Assert.AreEqual(worst, maxError, 1e-6f);
        if (symmetric)
        {
            // the block's extreme value is exact
            int at = Enumerable.Range(0, block).OrderByDescending(i => MathF.Abs(w[i])).First();
            Assert.AreEqual(w[at], back[at], 1e-6f);
        }
    }

    [TestMethod]
    public void All_zero_blocks_use_scale_one_and_decode_to_zero()
    {
        (byte[] packed, float[] scales, byte[]? zeros, float maxError) = Int4WeightQuantizer.QuantizeBlocks(new float[64], 2, 32, 32, false);
        Assert.IsTrue(scales.All(s => s == 1f));
        Assert.IsTrue(Dequantize(packed, scales, zeros, 2, 32, 32).All(v => v == 0f));
        Assert.AreEqual(0f, maxError);
    }

    /// <summary>ORT's MatMulNBits on our packed weights must equal a float MatMul on our dequantized weights.</summary>
    [TestMethod]
    [DataRow(true, 32, 0L)]
    [DataRow(false, 32, 0L)]
    [DataRow(true, 64, 0L)]
    [DataRow(false, 128, 0L)]
    [DataRow(true, 32, 4L)]
    [DataRow(true, 32, 0L, false)]
    [DataRow(false, 64, 0L, false)]
    public void Ort_output_matches_the_dequantized_weights(bool symmetric, int block, long accuracy, bool mse = true)
    {
        ModelProto model = Mlp(inF: 96, hidden: 40, classes: 12, seed: 4);
        ModelProto q = model.Clone();
        var options = new Int4Options { BlockSize = block, Symmetric = symmetric, AccuracyLevel = accuracy, MseScales = mse };
        Int4Summary s = Int4WeightQuantizer.Apply(q, options, "mlp");
        ModelChecker.Validate(q, "mlp");
        Assert.HasCount(2, s.Quantized, string.Join("; ", s.Skipped));
        Assert.AreEqual(2, q.Graph.Node.Count(n => n.OpType == "MatMulNBits"));
        Assert.IsFalse(q.Graph.Initializer.Any(t => t.Name is "w1" or "w2" or "b1" or "b2"), "float weights and biases removed");
        NodeProto fc1 = q.Graph.Node.First(n => n.OpType == "MatMulNBits");
        Assert.AreEqual(96, fc1.Attribute.Single(a => a.Name == "K").I);
        Assert.AreEqual(40, fc1.Attribute.Single(a => a.Name == "N").I);
        Assert.AreEqual(4, fc1.Attribute.Single(a => a.Name == "bits").I);
        Assert.AreEqual(block, fc1.Attribute.Single(a => a.Name == "block_size").I);

        // Reference: the same Gemms with the dequantized weights, in float.
        ModelProto reference = model.Clone();
        foreach (string w in new[] { "w1", "w2" })
        {
            TensorProto t = reference.Graph.Initializer.Single(i => i.Name == w);
            int n = (int)t.Dims[0], k = (int)t.Dims[1]; // transB = 1: [N, K]
            (byte[] packed, float[] scales, byte[]? zeros, _) = Int4WeightQuantizer.QuantizeBlocks(TensorUtil.ToFloatArray(t), n, k, block, symmetric, mse);
            reference.Graph.Initializer[reference.Graph.Initializer.IndexOf(t)] = TensorUtil.FromFloats(w, Dequantize(packed, scales, zeros, n, k, block), n, k);
        }
        float[] x = RandomFloats(7 * 96, 5);
        float[] expected, got, original;
        using (var ort = new Ort(reference)) { expected = ort.Run(x, [7, 96]); }
        using (var ort = new Ort(q)) { got = ort.Run(x, [7, 96]); }
        using (var ort = new Ort(model)) { original = ort.Run(x, [7, 96]); }
        ErrorMetricsResult exact = ErrorMetrics.Compare(expected, got);
        ErrorMetricsResult vsFloat = ErrorMetrics.Compare(original, got);
        TestContext.WriteLine($"sym={symmetric} block={block} acc={accuracy}: vs dequantized rel L2 {exact.RelativeL2:G3}; vs float rel L2 {vsFloat.RelativeL2:G3}; size ratio {s.SizeRatio:F3}");
        Assert.IsLessThan(accuracy == 4 ? 2e-2 : 1e-5, exact.RelativeL2, "MatMulNBits disagrees with our packing/scales/zero points");
        Assert.IsLessThan(0.2, vsFloat.RelativeL2);
    }

    /// <summary>
    /// MSE-clipped block ranges: per block never a larger squared round-trip error than min/max (which wins ties), and
    /// on heavy-tailed weights (a few large values per block, as in trained layers) smaller in total (4-8% here); an
    /// all-zero block still gets scale 1.
    /// </summary>
    [TestMethod]
    [DataRow(true, 32)]
    [DataRow(false, 32)]
    [DataRow(true, 128)]
    public void Mse_scales_round_no_block_worse_than_min_max_and_heavy_tails_better(bool symmetric, int block)
    {
        int n = 16, k = 256;
        var rng = new Random(11);
        var w = new float[n * k];
        for (int i = 0; i < w.Length; i++)
        {
            // Laplace-distributed: most weights small, a few far out.
            double u = rng.NextDouble() - 0.5;
            w[i] = (float)(-Math.Sign(u) * Math.Log(1 - 2 * Math.Abs(u)) * 0.02);
        }
        Array.Clear(w, 0, block); // one all-zero block
        (byte[] p0, float[] s0, byte[]? z0, _) = Int4WeightQuantizer.QuantizeBlocks(w, n, k, block, symmetric, mseSearch: false);
        (byte[] p1, float[] s1, byte[]? z1, _) = Int4WeightQuantizer.QuantizeBlocks(w, n, k, block, symmetric, mseSearch: true);
        float[] minMax = Dequantize(p0, s0, z0, n, k, block), mse = Dequantize(p1, s1, z1, n, k, block);
        double total0 = 0, total1 = 0;
        int narrower = 0;
        for (int b = 0; b < n * k / block; b++)
        {
            double e0 = 0, e1 = 0;
            for (int i = b * block; i < (b + 1) * block; i++)
            {
                e0 += (w[i] - minMax[i]) * (double)(w[i] - minMax[i]);
                e1 += (w[i] - mse[i]) * (double)(w[i] - mse[i]);
            }
            Assert.IsLessThanOrEqualTo(e0 * (1 + 1e-6) + 1e-12, e1, $"block {b}");
            narrower += MathF.Abs(s1[b]) < MathF.Abs(s0[b]) ? 1 : 0;
            total0 += e0;
            total1 += e1;
        }
        TestContext.WriteLine($"sym={symmetric} block={block}: squared error min/max {total0:G4}, MSE {total1:G4} ({total1 / total0:P0}); {narrower} of {s0.Length} ranges narrowed");
        Assert.IsLessThan(0.98 * total0, total1, "clipping the tails should cut the round-trip error");
        Assert.IsGreaterThan(0, narrower);
        Assert.AreEqual(1f, s1[0], "all-zero block");
        Assert.IsTrue(mse.AsSpan(0, block).ToArray().All(v => v == 0f));
    }

    /// <summary>Inputs with strongly correlated features (x = z M, z ~ N(0, 1)), [m, k], plus one feature that is always zero.</summary>
    private static float[] CorrelatedInputs(int m, int k, int seed, int deadFeature)
    {
        float[] mix = RandomFloats(k * k, seed, 1f);
        float[] z = RandomFloats(m * k, seed + 1, 1f);
        var x = new float[m * k];
        Gemm.Multiply(z, mix, x, m, k, k);
        for (int r = 0; r < m; r++)
        {
            x[r * k + deadFeature] = 0f;
        }
        return x;
    }

    private static ModelProto SingleMatMul(int k, int n, float[] weightKByN)
    {
        var g = new GraphProto { Name = "g" };
        g.Input.Add(FloatValue("x", "batch", k));
        g.Output.Add(FloatValue("y", "batch", n));
        g.Initializer.Add(TensorUtil.FromFloats("w", weightKByN, k, n));
        g.Node.Add(Node("MatMul", ["x", "w"], ["y"], "mm"));
        return Model(g);
    }

    /// <summary>
    /// GPTQ must beat round-to-nearest where it matters, the layer's output on inputs like the calibration data
    /// (held-out samples here), in the real MatMulNBits kernel, at the same size; a dead input gets zero weights.
    /// Both orders: activation order with static groups (the default) and input order.
    /// </summary>
    [TestMethod]
    [DataRow(true, 32, true)]
    [DataRow(false, 32, true)]
    [DataRow(true, 128, true)]
    [DataRow(true, 32, false)]
    [DataRow(false, 32, false)]
    [DataRow(true, 128, false)]
    public void Gptq_lowers_the_output_error_against_round_to_nearest(bool symmetric, int block, bool actOrder)
    {
        int k = 200, n = 24, dead = 17; // k: two full lazy batches' worth is not needed; 200 also leaves a partial block
        float[] w = RandomFloats(k * n, 21, 0.5f);
        ModelProto model = SingleMatMul(k, n, w);
        float[] calibration = CorrelatedInputs(512, k, 30, dead);
        float[] heldOut = CorrelatedInputs(256, k, 30, dead);
        int sourceCalls = 0;
        ActivationSource source = (original, names) =>
        {
            sourceCalls++;
            CollectionAssert.AreEqual(new[] { "x" }, names.ToArray());
            return new Dictionary<string, Activation> { ["x"] = new Activation(calibration, [512, k]) };
        };
        ModelProto rtn = model.Clone(), gptq = model.Clone();
        Int4Summary sr = Int4WeightQuantizer.Apply(rtn, new Int4Options { BlockSize = block, Symmetric = symmetric }, "m");
        Int4Summary sg = Int4WeightQuantizer.Apply(gptq, new Int4Options { BlockSize = block, Symmetric = symmetric, Method = Int4Method.Gptq, Activations = source, GptqActOrder = actOrder }, "m");
        Assert.AreEqual(1, sourceCalls);
        Assert.AreEqual("GPTQ", sg.Method);
        Assert.IsEmpty(sg.RoundedToNearest);
        Assert.AreEqual(sr.ModelBytesAfter, sg.ModelBytesAfter, "same format, same size");
        float[] reference, outRtn, outGptq;
        using (var ort = new Ort(model)) { reference = ort.Run(heldOut, [256, k]); }
        using (var ort = new Ort(rtn)) { outRtn = ort.Run(heldOut, [256, k]); }
        using (var ort = new Ort(gptq)) { outGptq = ort.Run(heldOut, [256, k]); }
        double eRtn = ErrorMetrics.Compare(reference, outRtn).RelativeL2, eGptq = ErrorMetrics.Compare(reference, outGptq).RelativeL2;
        TestContext.WriteLine($"sym={symmetric} block={block} actOrder={actOrder}: output rel L2 RTN {eRtn:G4}, GPTQ {eGptq:G4} ({eGptq / eRtn:P0})");
        Assert.IsLessThan(0.8 * eRtn, eGptq, "GPTQ should cut the held-out output error clearly below round-to-nearest");

        // The dead input's weights decode to exactly zero (they never contribute, and GPTQ zeroes them).
        TensorProto packed = gptq.Graph.Initializer.Single(t => t.Name == "w_q4");
        TensorProto scales = gptq.Graph.Initializer.Single(t => t.Name == "w_q4_scales");
        TensorProto? zeroPoints = gptq.Graph.Initializer.SingleOrDefault(t => t.Name == "w_q4_zero_points");
        float[] back = Dequantize(packed.RawData.ToByteArray(), TensorUtil.ToFloatArray(scales), zeroPoints?.RawData.ToByteArray(), n, k, block);
        for (int r = 0; r < n; r++)
        {
            Assert.AreEqual(0f, back[r * k + dead], $"channel {r}");
        }
    }

    /// <summary>GPTQ after pruning: every weight that was zero stays exactly zero (the sparsity survives), and the output still beats RTN.</summary>
    [TestMethod]
    [DataRow(true, true)]
    [DataRow(false, true)]
    [DataRow(true, false)]
    [DataRow(false, false)]
    public void Gptq_keeps_pruned_zeros(bool symmetric, bool actOrder)
    {
        int k = 160, n = 16, block = 32;
        float[] w = RandomFloats(k * n, 41, 0.5f);
        // 2:4 along K for every output channel (weights are [K, N] here, K = rows): zero the two smallest of each 4.
        for (int c = 0; c < n; c++)
        {
            for (int g = 0; g < k; g += 4)
            {
                foreach (int i in Enumerable.Range(g, 4).OrderBy(i => MathF.Abs(w[i * n + c])).Take(2))
                {
                    w[i * n + c] = 0f;
                }
            }
        }
        ModelProto model = SingleMatMul(k, n, w);
        float[] calibration = CorrelatedInputs(512, k, 50, 3);
        float[] heldOut = CorrelatedInputs(256, k, 50, 3);
        ActivationSource source = (_, _) => new Dictionary<string, Activation> { ["x"] = new Activation(calibration, [512, k]) };
        ModelProto rtn = model.Clone(), gptq = model.Clone();
        Int4WeightQuantizer.Apply(rtn, new Int4Options { BlockSize = block, Symmetric = symmetric }, "m");
        Int4WeightQuantizer.Apply(gptq, new Int4Options { BlockSize = block, Symmetric = symmetric, Method = Int4Method.Gptq, Activations = source, GptqActOrder = actOrder }, "m");
        TensorProto packed = gptq.Graph.Initializer.Single(t => t.Name == "w_q4");
        TensorProto scales = gptq.Graph.Initializer.Single(t => t.Name == "w_q4_scales");
        TensorProto? zeroPoints = gptq.Graph.Initializer.SingleOrDefault(t => t.Name == "w_q4_zero_points");
        float[] back = Dequantize(packed.RawData.ToByteArray(), TensorUtil.ToFloatArray(scales), zeroPoints?.RawData.ToByteArray(), n, k, block);
        int kept = 0;
        for (int c = 0; c < n; c++)
        {
            for (int i = 0; i < k; i++)
            {
                if (w[i * n + c] == 0f)
                {
                    Assert.AreEqual(0f, back[c * k + i], $"pruned weight ({i}, {c}) came back nonzero");
                    kept++;
                }
            }
        }
        Assert.AreEqual(k * n / 2, kept);
        float[] reference, outRtn, outGptq;
        using (var ort = new Ort(model)) { reference = ort.Run(heldOut, [256, k]); }
        using (var ort = new Ort(rtn)) { outRtn = ort.Run(heldOut, [256, k]); }
        using (var ort = new Ort(gptq)) { outGptq = ort.Run(heldOut, [256, k]); }
        double eRtn = ErrorMetrics.Compare(reference, outRtn).RelativeL2, eGptq = ErrorMetrics.Compare(reference, outGptq).RelativeL2;
        Assert.IsLessThan(eRtn, eGptq, $"GPTQ {eGptq:G4} vs RTN {eRtn:G4} with the sparsity kept");
    }

    [TestMethod]
    public void Gptq_needs_activations_that_fit_the_layer()
    {
        ModelProto model = SingleMatMul(64, 8, RandomFloats(64 * 8, 3));
        var e = Assert.ThrowsExactly<CompressException>(() => Int4WeightQuantizer.Apply(model.Clone(), new Int4Options { Method = Int4Method.Gptq }, "m"));
        Assert.AreEqual(DiagnosticCodes.InvalidOption, e.Code);
        ActivationSource wrong = (_, _) => new Dictionary<string, Activation> { ["x"] = new Activation(new float[10 * 63], [10, 63]) };
        e = Assert.ThrowsExactly<CompressException>(() => Int4WeightQuantizer.Apply(model.Clone(), new Int4Options { Method = Int4Method.Gptq, Activations = wrong }, "m"));
        Assert.AreEqual(DiagnosticCodes.DataShape, e.Code);
        ActivationSource nan = (_, _) => new Dictionary<string, Activation> { ["x"] = new Activation(Enumerable.Repeat(float.NaN, 640).ToArray(), [10, 64]) };
        e = Assert.ThrowsExactly<CompressException>(() => Int4WeightQuantizer.Apply(model.Clone(), new Int4Options { Method = Int4Method.Gptq, Activations = nan }, "m"));
        Assert.AreEqual(DiagnosticCodes.NonFiniteOutputs, e.Code);
    }

    /// <summary>mnist-8's MatMul weight reaches it through a Reshape of an initializer: folded first, then quantized.</summary>
    [TestMethod]
    public void A_weight_behind_a_constant_Reshape_is_folded_and_quantized()
    {
        ModelProto model = ModelIO.Load(Corpus.Model("mnist-8"));
        Assert.IsTrue(model.Graph.Node.Any(n => n.OpType == "Reshape" && model.Graph.Initializer.Any(t => t.Name == n.Input[0])), "the corpus model has the pattern");
        ModelProto q = model.Clone();
        Int4Summary s = Int4WeightQuantizer.Apply(q, new Int4Options { BlockSize = 32 }, "mnist-8");
        ModelChecker.Validate(q, "mnist-8");
        Assert.HasCount(1, s.Quantized, string.Join("; ", s.Skipped.Select(k => k.Node + ": " + k.Reason)));
        Assert.AreEqual(256, s.Quantized[0].Rows);
        Assert.AreEqual(10, s.Quantized[0].Columns);
        Assert.IsLessThan(s.ModelBytesBefore, s.ModelBytesAfter);
        // The first MNIST test image (IDX: 16-byte header, then 28 x 28 bytes), scaled to 0..1 as the model card says.
        byte[] idx = File.ReadAllBytes(Corpus.Dataset("mnist", "t10k-images-idx3-ubyte"));
        float[] x = idx.AsSpan(16, 28 * 28).ToArray().Select(p => p / 255f).ToArray();
        float[] expected, got;
        using (var ort = new Ort(model)) { expected = ort.Run(x, [1, 1, 28, 28]); }
        using (var ort = new Ort(q)) { got = ort.Run(x, [1, 1, 28, 28]); }
        double rel = ErrorMetrics.Compare(expected, got).RelativeL2;
        Assert.IsLessThan(0.05, rel, $"relative L2 {rel}: {string.Join(",", expected)} vs {string.Join(",", got)}");
    }

    [TestMethod]
    public void Gemm_variants_transA_alpha_beta_and_non_vector_C()
    {
        // y = alpha * A^T B + beta * C with A [K, M] (transA), B [K, N] (no transB), C [M, N] (not a vector: Add).
        int m = 3, k = 64, n = 20;
        var g = new GraphProto { Name = "g" };
        g.Input.Add(FloatValue("a", k, m));
        g.Output.Add(FloatValue("y", m, n));
        g.Initializer.Add(TensorUtil.FromFloats("b", RandomFloats(k * n, 8, 0.5f), k, n));
        g.Initializer.Add(TensorUtil.FromFloats("c", RandomFloats(m * n, 9), m, n));
        g.Node.Add(Node("Gemm", ["a", "b", "c"], ["y"], "gemm", IntAttr("transA", 1), FloatAttr("alpha", 0.5f), FloatAttr("beta", 2f)));
        ModelProto model = Model(g);
        ModelProto q = model.Clone();
        Int4Summary s = Int4WeightQuantizer.Apply(q, new Int4Options { Symmetric = false }, "m");
        ModelChecker.Validate(q, "m");
        Assert.HasCount(1, s.Quantized);
        CollectionAssert.AreEqual(new[] { "Transpose", "MatMulNBits", "Mul", "Add" }, q.Graph.Node.Select(x => x.OpType).ToArray());
        float[] x = RandomFloats(k * m, 10);
        float[] expected, got;
        using (var ort = new Ort(model)) { expected = ort.Run(x, [k, m]); }
        using (var ort = new Ort(q)) { got = ort.Run(x, [k, m]); }
        Assert.IsLessThan(0.1, ErrorMetrics.Compare(expected, got).RelativeL2);
    }

    [TestMethod]
    public void Bad_options_weights_and_models_fail_with_codes()
    {
        Assert.AreEqual(DiagnosticCodes.InvalidOption, Assert.ThrowsExactly<CompressException>(() => Int4WeightQuantizer.Apply(Mlp(), new Int4Options { BlockSize = 48 }, "m")).Code);
        Assert.AreEqual(DiagnosticCodes.InvalidOption, Assert.ThrowsExactly<CompressException>(() => Int4WeightQuantizer.Apply(Mlp(), new Int4Options { AccuracyLevel = 7 }, "m")).Code);
        Assert.AreEqual(DiagnosticCodes.ModelInvalid, Assert.ThrowsExactly<CompressException>(() => Int4WeightQuantizer.Apply(new ModelProto(), Int4Options.Default, "m")).Code);
        ModelProto nan = Mlp(inF: 64, hidden: 32);
        float[] w = TensorUtil.ToFloatArray(nan.Graph.Initializer[0]);
        w[3] = float.NaN;
        nan.Graph.Initializer[0] = TensorUtil.FromFloats("w1", w, 32, 64);
        byte[] before = Google.Protobuf.MessageExtensions.ToByteArray(nan);
        Assert.AreEqual(DiagnosticCodes.NonFiniteWeights, Assert.ThrowsExactly<CompressException>(() => Int4WeightQuantizer.Apply(nan, Int4Options.Default, "m")).Code);
        CollectionAssert.AreEqual(before, Google.Protobuf.MessageExtensions.ToByteArray(nan), "a failed pass leaves the model untouched");
    }

    [TestMethod]
    public void Shared_small_and_already_quantized_weights_are_skipped()
    {
        ModelProto model = Mlp(inF: 64, hidden: 32, classes: 4);
        // w2 is [4, 32] = 128 elements; with a minimum of 200 it stays float.
        Int4Summary s = Int4WeightQuantizer.Apply(model, new Int4Options { MinimumWeightElements = 200 }, "m");
        Assert.HasCount(1, s.Quantized);
        StringAssert.Contains(s.Skipped.Single().Reason, "minimum 200");
        Int4Summary again = Int4WeightQuantizer.Apply(model, Int4Options.Default, "m");
        Assert.IsTrue(again.AlreadyQuantized);
        StringAssert.Contains(again.AlreadyQuantizedReason!, "MatMulNBits");

        ModelProto shared = Mlp(inF: 64, hidden: 32);
        shared.Graph.Node.Add(Node("Identity", ["w1"], ["w1_copy"], "copy"));
        shared.Graph.Output.Add(FloatValue("w1_copy", 32, 64));
        Int4Summary sh = Int4WeightQuantizer.Apply(shared, Int4Options.Default, "m");
        StringAssert.Contains(sh.Skipped.Single(x => x.Node == "fc1").Reason, "shared with Identity");
    }

    [TestMethod]
    [DataRow("mnist-mlp-gemm", 32, true)]
    [DataRow("mnist-mlp-gemm", 32, false)]
    [DataRow("mnist-mlp-gemm", 128, true)]
    [DataRow("fashion-mlp", 32, true)]
    [DataRow("fashion-mlp", 32, false)]
    [DataRow("mnist-lenet5", 32, true)]
    public void Corpus_mlp_shrinks_sixfold_and_keeps_top1(string id, int block, bool symmetric)
    {
        ModelProto original = ModelIO.Load(Corpus.Model(id));
        ModelProto q = original.Clone();
        Int4Summary s = Int4WeightQuantizer.Apply(q, new Int4Options { BlockSize = block, Symmetric = symmetric }, id);
        ModelChecker.Validate(q, id);
        Assert.IsNotEmpty(s.Quantized, string.Join("; ", s.Skipped));
        double before = CorpusEval.Accuracy(CorpusEval.Predict(original, id), id);
        int[] predicted = CorpusEval.Predict(q, id);
        double after = CorpusEval.Accuracy(predicted, id);
        long file = new FileInfo(Corpus.Model(id)).Length;
        long size = q.CalculateSize();
        double ratio = (double)file / size;
        TestContext.WriteLine($"{id} int4 block {block} {(symmetric ? "sym" : "asym")}: size {file} -> {size} ({ratio:F2}x smaller); top-1 {before:F2}% -> {after:F2}% (drop {before - after:F2}); " +
            string.Join(", ", s.Quantized.Select(x => $"{x.Node} [{x.Rows}x{x.Columns}] max|dw|={x.MaxAbsWeightError:G3}")) + "; skipped: " + string.Join("; ", s.Skipped.Select(x => x.Node + ": " + x.Reason)));
        Assert.IsLessThanOrEqualTo(1.5, before - after, $"{id}: top-1 dropped {before - after:F2} points");
        if (id != "mnist-lenet5")
        {
            // lenet5 keeps its float convolutions; the 6x target is for the MLPs with the default (symmetric, 32).
            // Asymmetric blocks also store a 4-bit zero point per 32 weights (fashion-mlp: 5.89x).
            double target = block == 128 ? 6.5 : symmetric ? 6.0 : 5.8;
            Assert.IsGreaterThanOrEqualTo(target, ratio, $"{id}: only {ratio:F2}x smaller");
        }
    }

    [TestMethod]
    public void Optimized_graph_keeps_MatMulNBits()
    {
        ModelProto model = ModelIO.Load(Corpus.Model("mnist-mlp-gemm"));
        Int4WeightQuantizer.Apply(model, Int4Options.Default, "mnist-mlp-gemm");
        string path = Path.Combine(Path.GetTempPath(), $"cob-int4-{Environment.ProcessId}.onnx");
        try
        {
            List<string> ops = Ort.OptimizedOps(model, path, GraphOptimizationLevel.ORT_ENABLE_ALL);
            TestContext.WriteLine(string.Join(" ", ops));
            Assert.IsFalse(ops.Any(o => o is "MatMul" or "Gemm" or "FusedMatMul" or "FusedGemm"), string.Join(" ", ops));
            Assert.IsTrue(ops.Contains("MatMulNBits"));
        }
        finally
        {
            File.Delete(path);
        }
    }
}
