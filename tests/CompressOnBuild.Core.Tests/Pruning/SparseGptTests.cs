using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using static CompressOnBuild.Core.Tests.Pruning.PruningTestHelpers;

namespace CompressOnBuild.Core.Tests.Pruning;

/// <summary>SparseGPT: masks and surviving weights chosen from the layer input's Hessian so the layer output stays close.</summary>
[TestClass]
public sealed class SparseGptTests
{
    public TestContext TestContext { get; set; } = null!;

    /// <summary>Correlated inputs (x = z A + small noise, z in features / 4 dims): the case where reconstruction pays most.</summary>
    private static float[] Correlated(int rows, int features, int seed)
    {
        int rank = Math.Max(2, features / 4);
        float[] z = TinyModels.RandomFloats(rows * rank, seed);
        float[] a = TinyModels.RandomFloats(rank * features, 99);
        float[] noise = TinyModels.RandomFloats(rows * features, seed + 1, 0.05f);
        var x = new float[rows * features];
        for (int r = 0; r < rows; r++)
        {
            for (int f = 0; f < features; f++)
            {
                float sum = noise[r * features + f];
                for (int j = 0; j < rank; j++)
                {
                    sum += z[r * rank + j] * a[j * features + f];
                }
                x[r * features + f] = sum;
            }
        }
        return x;
    }

    /// <summary>
    /// <paramref name="samples"/> inputs of <paramref name="shape"/>: <see cref="Correlated"/> vectors over the
    /// <paramref name="features"/> (MatMul: last axis; Conv: channels at every position).
    /// </summary>
    private static float[] Samples(int samples, int features, Func<int, long[]> shape, int seed)
    {
        int perSample = (int)shape(1).Aggregate(1L, (a, b) => a * b);
        int positions = perSample / features;
        float[] v = Correlated(samples * positions, features, seed);
        if (positions == 1)
        {
            return v;
        }
        var x = new float[v.Length];
        for (int n = 0; n < samples; n++)
        {
            for (int p = 0; p < positions; p++)
            {
                for (int c = 0; c < features; c++)
                {
                    x[(n * features + c) * positions + p] = v[(n * positions + p) * features + c];
                }
            }
        }
        return x;
    }

    /// <summary>x[N,64] -> MatMul(w[64,32]) -> y.</summary>
    private static ModelProto MatMulModel()
    {
        var g = new GraphProto { Name = "mm" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 64));
        g.Output.Add(TinyModels.FloatValue("y", "N", 32));
        g.Initializer.Add(TensorUtil.FromFloats("w", TinyModels.RandomFloats(64 * 32, 5), 64, 32));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["y"], "mm"));
        return TinyModels.Model(g);
    }

    /// <summary>x[N,8,6,6] -> Conv(8->16, 3x3, pads 1) -> y.</summary>
    private static ModelProto ConvModel()
    {
        var g = new GraphProto { Name = "conv" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 8, 6, 6));
        g.Output.Add(TinyModels.FloatValue("y", "N", 16, 6, 6));
        g.Initializer.Add(TensorUtil.FromFloats("w", TinyModels.RandomFloats(16 * 8 * 9, 6), 16, 8, 3, 3));
        g.Node.Add(TinyModels.Node("Conv", ["x", "w"], ["y"], "conv", TinyModels.IntsAttr("pads", 1, 1, 1, 1)));
        return TinyModels.Model(g);
    }

    private static double RelativeError(ModelProto original, ModelProto pruned, float[] x, int rows, Func<int, long[]> shape)
    {
        float[] y0 = TestActivations.Run(original, ["y"], x, rows, rows, shape)["y"].Data;
        float[] y1 = TestActivations.Run(pruned, ["y"], x, rows, rows, shape)["y"].Data;
        double diff = 0, norm = 0;
        for (int i = 0; i < y0.Length; i++)
        {
            diff += (y1[i] - y0[i]) * (double)(y1[i] - y0[i]);
            norm += y0[i] * (double)y0[i];
        }
        return Math.Sqrt(diff / norm);
    }

    private (double Magnitude, double SparseGpt) Compare(ModelProto original, string sparseGpt, string magnitude, int features, Func<int, long[]> shape, string weight)
    {
        const int calibrationRows = 256, testRows = 200;
        float[] calibration = Samples(calibrationRows, features, shape, 1);
        float[] test = Samples(testRows, features, shape, 2);
        ActivationSource source = (m, names) => TestActivations.Run(m, names, calibration, calibrationRows, 64, shape);
        ModelProto byMagnitude = original.Clone(), byGpt = original.Clone();
        PruningSummary sm = Pruner.Apply(byMagnitude, All(magnitude), "m", source);
        PruningSummary sg = Pruner.Apply(byGpt, All(sparseGpt), "m", source);
        Assert.AreEqual(Zeros(Weight(byMagnitude, weight)), Zeros(Weight(byGpt, weight)), 0.01 * Weight(byGpt, weight).Length, "same sparsity");
        CollectionAssert.AreEqual(new[] { sg.Pruned.Single().Node }, sg.Reconstructed.ToArray());
        double em = RelativeError(original, byMagnitude, test, testRows, shape), eg = RelativeError(original, byGpt, test, testRows, shape);
        TestContext.WriteLine($"{sparseGpt}: relative L2 output error on held-out inputs {eg:F4}, {magnitude} (activation-aware) {em:F4}; achieved {sg.AchievedSparsity:P1}");
        _ = sm;
        return (em, eg);
    }

    [TestMethod]
    [DataRow("SparseGPT:0.5", "Magnitude:0.5")]
    [DataRow("SparseGPT:2:4", "NofM:2:4")]
    public void MatMul_output_error_is_far_below_magnitude_at_the_same_sparsity(string sparseGpt, string magnitude)
    {
        (double em, double eg) = Compare(MatMulModel(), sparseGpt, magnitude, 64, b => [b, 64], "w");
        Assert.IsLessThan(em / 2, eg, $"SparseGPT {eg:F4} vs magnitude {em:F4}");
    }

    [TestMethod]
    [DataRow("SparseGPT:0.5", "Magnitude:0.5")]
    [DataRow("SparseGPT:2:4", "NofM:2:4")]
    public void Conv_output_error_is_far_below_magnitude_at_the_same_sparsity(string sparseGpt, string magnitude)
    {
        (double em, double eg) = Compare(ConvModel(), sparseGpt, magnitude, 8, b => [b, 8, 6, 6], "w");
        Assert.IsLessThan(em / 2, eg, $"SparseGPT {eg:F4} vs magnitude {em:F4}");
    }

    /// <summary>x[N,8,6,6] -> Conv(8->16, 3x3) -> BatchNormalization (scale 8 on even outputs, 1/8 on odd) -> y.</summary>
    private static ModelProto ConvBatchNormModel()
    {
        ModelProto m = ConvModel();
        GraphProto g = m.Graph;
        g.Node[0].Output[0] = "c";
        g.Initializer.Add(TensorUtil.FromFloats("bn_scale", [.. Enumerable.Range(0, 16).Select(o => o % 2 == 0 ? 8f : 0.125f)], 16));
        g.Initializer.Add(TensorUtil.FromFloats("bn_bias", new float[16], 16));
        g.Initializer.Add(TensorUtil.FromFloats("bn_mean", new float[16], 16));
        g.Initializer.Add(TensorUtil.FromFloats("bn_var", [.. Enumerable.Repeat(1f, 16)], 16));
        g.Node.Add(TinyModels.Node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["y"], "bn"));
        return m;
    }

    [TestMethod]
    public void Unstructured_masks_rank_outputs_by_the_error_after_the_batch_normalization_that_reads_them()
    {
        // Masks are chosen over all outputs of a block together, so an output that the BatchNormalization multiplies by 8
        // must lose fewer weights than one it multiplies by 1/8: the error the model sees is the one after it.
        Func<int, long[]> shape = b => [b, 8, 6, 6];
        float[] calibration = Samples(256, 8, shape, 1), test = Samples(200, 8, shape, 2);
        ActivationSource source = (m, names) => TestActivations.Run(m, names, calibration, 256, 64, shape);
        ModelProto original = ConvBatchNormModel();
        ModelProto aware = original.Clone();
        Pruner.Apply(aware, All("SparseGPT:0.5:uniform"), "m", source);
        // The same Conv pruned without the BatchNormalization after it (what the masks were before), then put back in front of it.
        ModelProto bare = ConvModel();
        Pruner.Apply(bare, All("SparseGPT:0.5:uniform"), "m", source);
        ModelProto unaware = original.Clone();
        int at = unaware.Graph.Initializer.IndexOf(unaware.Graph.Initializer.Single(t => t.Name == "w"));
        unaware.Graph.Initializer[at] = TensorUtil.FromFloats("w", Weight(bare, "w"), 16, 8, 3, 3);
        float[] w = Weight(aware, "w");
        Assert.AreEqual(Zeros(Weight(bare, "w")), Zeros(w), "same sparsity");
        int zerosEven = Enumerable.Range(0, w.Length).Count(i => w[i] == 0f && i / 72 % 2 == 0), zerosOdd = Enumerable.Range(0, w.Length).Count(i => w[i] == 0f && i / 72 % 2 == 1);
        double ea = RelativeError(original, aware, test, 200, shape), eu = RelativeError(original, unaware, test, 200, shape);
        TestContext.WriteLine($"zeros on the x8 outputs {zerosEven}, on the x1/8 outputs {zerosOdd}; relative L2 error after the BatchNormalization {ea:F4} (scaled ranking) vs {eu:F4} (unscaled)");
        Assert.IsLessThan(zerosOdd, zerosEven);
        Assert.IsLessThan(0.8 * eu, ea, $"scaled {ea:F4} vs unscaled {eu:F4}");
    }

    [TestMethod]
    public void Two_of_four_keeps_at_most_two_nonzeros_in_every_group_of_input_channels()
    {
        ModelProto model = ConvModel();
        float[] calibration = Samples(64, 8, b => [b, 8, 6, 6], 3);
        Pruner.Apply(model, All("SparseGPT:2:4"), "m", (m, names) => TestActivations.Run(m, names, calibration, 64, 64, b => [b, 8, 6, 6]));
        float[] w = Weight(model, "w");
        for (int o = 0; o < 16; o++)
        {
            for (int s = 0; s < 9; s++)
            {
                for (int c0 = 0; c0 < 8; c0 += 4)
                {
                    int nonzeros = Enumerable.Range(c0, 4).Count(c => w[(o * 8 + c) * 9 + s] != 0f);
                    Assert.AreEqual(2, nonzeros, $"output {o}, kernel position {s}, channels {c0}..{c0 + 3}");
                }
            }
        }
    }

    [TestMethod]
    public void Each_layer_is_solved_on_the_inputs_of_the_model_whose_earlier_layers_are_already_pruned()
    {
        ModelProto model = TinyModels.Mlp(inF: 32, hidden: 16, classes: 8);
        float[] x = Correlated(128, 32, 4);
        var asked = new List<(string Name, int ZerosOfW1)>();
        ActivationSource source = (m, names) =>
        {
            asked.AddRange(names.Select(n => (n, Zeros(Weight(m, "w1")))));
            return TestActivations.Run(m, names, x, 128, 128, b => [b, 32]);
        };
        PruningSummary s = Pruner.Apply(model, All("SparseGPT:0.5"), "m", source);
        CollectionAssert.AreEqual(new[] { "x", "hr" }, asked.Select(a => a.Name).ToArray(), "one input at a time, in graph order");
        Assert.AreEqual(0, asked[0].ZerosOfW1);
        Assert.AreEqual(256, asked[1].ZerosOfW1, "fc2's input comes from the model with fc1 already pruned");
        CollectionAssert.AreEqual(new[] { "fc1", "fc2" }, s.Reconstructed.ToArray());
    }

    [TestMethod]
    public void Padding_rows_left_out_by_the_row_mask_do_not_change_the_result()
    {
        // The same real rows, once alone and once among padding rows (large values, mask 0): the pruned weights agree.
        const int real = 96, padding = 160;
        float[] x = Correlated(real, 64, 7);
        float[] junk = TinyModels.RandomFloats(padding * 64, 8, 50f);
        var mixed = new float[(real + padding) * 64];
        var mask = new float[real + padding];
        for (int r = 0, at = 0, j = 0; r < real + padding; r++)
        {
            bool isReal = r % 8 < 3 && at < real || j >= padding;
            Array.Copy(isReal ? x : junk, (isReal ? at++ : j++) * 64, mixed, r * 64, 64);
            mask[r] = isReal ? 1f : 0f;
        }
        ModelProto alone = MatMulModel(), amongPadding = MatMulModel(), unmasked = MatMulModel();
        Pruner.Apply(alone, All("SparseGPT:0.5"), "m", (m, names) => new Dictionary<string, Activation> { ["x"] = new(x, [1, real, 64]) });
        Pruner.Apply(amongPadding, All("SparseGPT:0.5"), "m", (m, names) => new Dictionary<string, Activation> { ["x"] = new(mixed, [1, real + padding, 64]) { RowMask = mask } });
        Pruner.Apply(unmasked, All("SparseGPT:0.5"), "m", (m, names) => new Dictionary<string, Activation> { ["x"] = new(mixed, [1, real + padding, 64]) });
        float[] a = Weight(alone, "w"), b = Weight(amongPadding, "w"), c = Weight(unmasked, "w");
        for (int i = 0; i < a.Length; i++)
        {
            Assert.AreEqual(a[i], b[i], 1e-4f * (1 + Math.Abs(a[i])), $"weight {i}");
        }
        Assert.IsTrue(a.Where((v, i) => (v == 0f) != (c[i] == 0f)).Any(), "without the mask the padding rows change the masks");
    }

    [TestMethod]
    [DataRow(300, 1000)]
    [DataRow(5, 3)]
    public void Hessian_blocks_in_chunks_equal_the_full_product_over_the_rows_the_mask_keeps(int k, int rows)
    {
        float[] x = TinyModels.RandomFloats(rows * k, 11);
        var mask = new float[rows];
        for (int r = 0; r < rows; r++)
        {
            mask[r] = r % 3 == 1 ? 0f : 1f;
        }
        double[] Naive(bool masked)
        {
            var h = new double[k * k];
            int m = 0;
            for (int r = 0; r < rows; r++)
            {
                if (masked && mask[r] == 0f)
                {
                    continue;
                }
                m++;
                for (int i = 0; i < k; i++)
                {
                    for (int j = 0; j < k; j++)
                    {
                        h[i * k + j] += (double)x[r * k + i] * x[r * k + j];
                    }
                }
            }
            return [.. h.Select(v => 2 * v / m)];
        }
        foreach ((double[] got, double[] want) in new[] { (HessianAccumulator.Of(x, k), Naive(false)), (HessianAccumulator.Of(x, k, mask), Naive(true)) })
        {
            double scale = want.Max(Math.Abs);
            for (int i = 0; i < want.Length; i++)
            {
                Assert.AreEqual(want[i], got[i], 1e-5 * scale, $"entry {i / k},{i % k}");
            }
        }
        // Added in two uneven chunks: the same sums.
        var acc = new HessianAccumulator(k);
        int first = rows / 3;
        acc.Add(x[..(first * k)], first);
        acc.Add(x[(first * k)..], rows - first);
        Assert.AreEqual(rows, acc.Rows);
        double[] full = Naive(false), chunked = acc.Hessian();
        for (int i = 0; i < full.Length; i++)
        {
            Assert.AreEqual(full[i], chunked[i], 1e-5 * full.Max(Math.Abs));
        }
        // A mask that keeps no row is ignored (an all-zero H would zero every weight).
        CollectionAssert.AreEqual(HessianAccumulator.Of(x, k), HessianAccumulator.Of(x, k, new float[rows]));
    }

    [TestMethod]
    [DataRow(7)]
    [DataRow(100)]
    public void Upper_factor_of_the_inverse_is_upper_with_positive_diagonal_and_UtU_inverts_the_dampened_Hessian(int k)
    {
        double[] h = HessianAccumulator.Of(Correlated(4 * k, k, 3), k);
        const double damp = 0.01;
        double[] u = Int4Gptq.UpperFactorOfInverse(h, k, damp)!;
        Assert.IsNotNull(u);
        for (int i = 0; i < k; i++)
        {
            Assert.IsGreaterThan(0.0, u[i * k + i]);
            for (int j = 0; j < i; j++)
            {
                Assert.AreEqual(0.0, u[i * k + j], $"below the diagonal at {i},{j}");
            }
        }
        // (U^T U)(H + damp I) = I.
        for (int i = 0; i < k; i++)
        {
            for (int j = 0; j < k; j++)
            {
                double sum = 0;
                for (int p = 0; p < k; p++)
                {
                    double uh = 0;
                    for (int q = p; q < k; q++)
                    {
                        uh += u[p * k + q] * (h[q * k + j] + (q == j ? damp : 0));
                    }
                    sum += u[p * k + i] * uh;
                }
                Assert.AreEqual(i == j ? 1.0 : 0.0, sum, 1e-8, $"entry {i},{j}");
            }
        }
        // Not positive definite: null.
        double[] indefinite = (double[])h.Clone();
        indefinite[(k / 2) * k + k / 2] = -1e6;
        Assert.IsNull(Int4Gptq.UpperFactorOfInverse(indefinite, k, damp));
    }

    [TestMethod]
    public void Without_calibration_data_it_is_CMPR0003_and_nothing_changes()
    {
        ModelProto model = MatMulModel();
        byte[] before = Google.Protobuf.MessageExtensions.ToByteArray(model);
        var e = Assert.ThrowsExactly<CompressException>(() => Pruner.Apply(model, PruningOptions.Parse("SparseGPT:0.5", "m"), "m"));
        Assert.AreEqual(DiagnosticCodes.InvalidOption, e.Code);
        StringAssert.Contains(e.Message, "CalibrationData");
        CollectionAssert.AreEqual(before, Google.Protobuf.MessageExtensions.ToByteArray(model));
    }

    [TestMethod]
    [DataRow("SparseGPT:0.5", "SparseGPT:0.5")]
    [DataRow("sparsegpt:2:4", "SparseGPT:2:4")]
    public void Parse_round_trips(string text, string expected) =>
        Assert.AreEqual(expected, PruningOptions.Parse(text, "m").ToString());

    [TestMethod]
    [DataRow("SparseGPT:1")]
    [DataRow("SparseGPT:0")]
    [DataRow("SparseGPT:4:4")]
    [DataRow("SparseGPT:2:4:1")]
    public void Parse_rejects_bad_values(string text) =>
        Assert.AreEqual(DiagnosticCodes.InvalidOption, Assert.ThrowsExactly<CompressException>(() => PruningOptions.Parse(text, "m")).Code);
}
