using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Tests.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using static CompressOnBuild.Core.Tests.Pruning.PruningTestHelpers;

namespace CompressOnBuild.Core.Tests.Pruning;

[TestClass]
public sealed class PrunerTests
{
    [TestMethod]
    public void The_output_layer_stays_dense_by_default()
    {
        ModelProto model = TinyModels.Mlp(inF: 32, hidden: 16, classes: 8);
        float[] w2 = Weight(model, "w2");
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Magnitude:0.5", "m"), "m");
        Assert.AreEqual("fc1", s.Pruned.Single().Node);
        Assert.AreEqual("fc2", s.Skipped.Single().Node);
        StringAssert.Contains(s.Skipped.Single().Reason, "output layer");
        CollectionAssert.AreEqual(w2, Weight(model, "w2"));
        Assert.AreEqual(320, Zeros(Weight(model, "w1")), "fc1 makes up for the dense fc2: half of all 640 weights");
    }

    [TestMethod]
    public void Activation_aware_ranking_prunes_weights_of_dead_inputs_first()
    {
        // Input features 0..7 are always zero in the calibration data: their weights go first even when large.
        float[] w0 = TinyModels.RandomFloats(16 * 4, 7);
        for (int i = 0; i < 8 * 4; i++)
        {
            w0[i] = 10f + i; // rows 0..7 of w[16, 4]: the largest weights
        }
        ModelProto model = MatMulModel(16, 4, w0);
        var x = new float[50 * 16];
        float[] noise = TinyModels.RandomFloats(50 * 16, 8);
        for (int r = 0; r < 50; r++)
        {
            for (int f = 8; f < 16; f++)
            {
                x[r * 16 + f] = noise[r * 16 + f];
            }
        }
        PruningSummary s = Pruner.Apply(model, All("Magnitude:0.5"), "m", (m, names) => names.ToDictionary(n => n, n => new Activation(x, [50, 16])));
        float[] w = Weight(model, "w");
        Assert.AreEqual(32, Zeros(w));
        Assert.IsTrue(w.Take(32).All(v => v == 0f), "the weights of the dead inputs are pruned");
        Assert.IsTrue(w.Skip(32).All(v => v != 0f));
        Assert.IsEmpty(s.Reconstructed, "bias correction is opt-in");
    }

    [TestMethod]
    public void Activations_that_do_not_fit_are_CMPR0303()
    {
        ModelProto model = MatMulModel(16, 4, TinyModels.RandomFloats(64, 1));
        var e = Assert.ThrowsExactly<CompressException>(() => Pruner.Apply(model, All("Magnitude:0.5"), "m", (m, names) => names.ToDictionary(n => n, n => new Activation(new float[30], [3, 10]))));
        Assert.AreEqual(DiagnosticCodes.DataShape, e.Code);
    }

    /// <summary>x[N,k] -> MatMul(w[k,n]) -> y.</summary>
    private static ModelProto MatMulModel(int k, int n, float[] w)
    {
        var g = new GraphProto { Name = "mm" };
        g.Input.Add(TinyModels.FloatValue("x", "N", k));
        g.Output.Add(TinyModels.FloatValue("y", "N", n));
        g.Initializer.Add(TensorUtil.FromFloats("w", w, k, n));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["y"], "mm"));
        return TinyModels.Model(g);
    }

    [TestMethod]
    [DataRow("None", PruningMethod.None)]
    [DataRow("magnitude:0.5", PruningMethod.Magnitude)]
    [DataRow("Global:0.25", PruningMethod.Global)]
    [DataRow("NofM:2:4", PruningMethod.NofM)]
    [DataRow("Channels:0.3", PruningMethod.Channels)]
    [DataRow("Channels:0.3:NoRefit", PruningMethod.Channels)]
    public void Parse_accepts_the_documented_syntax(string text, PruningMethod method) =>
        Assert.AreEqual(method, PruningOptions.Parse(text, "m.onnx").Method);

    [TestMethod]
    [DataRow("Magnitude:0")]
    [DataRow("Magnitude:1")]
    [DataRow("Magnitude:1.5")]
    [DataRow("Global:-0.1")]
    [DataRow("NofM:4:4")]
    [DataRow("NofM:0:4")]
    [DataRow("NofM:2")]
    [DataRow("Channels:1")]
    [DataRow("Channels:0.3:refit")]
    [DataRow("Channels:0.3:norefit:x")]
    [DataRow("Random:0.5")]
    [DataRow("Magnitude:abc")]
    public void Parse_rejects_bad_values_with_CMPR0003(string text)
    {
        var e = Assert.ThrowsExactly<CompressException>(() => PruningOptions.Parse(text, "m.onnx"));
        Assert.AreEqual(DiagnosticCodes.InvalidOption, e.Code);
        StringAssert.Contains(e.Message, text);
    }

    [TestMethod]
    public void Channels_norefit_turns_the_refit_off_and_round_trips()
    {
        PruningOptions off = PruningOptions.Parse("channels:0.3:norefit", "m");
        Assert.IsFalse(off.Reconstruct);
        Assert.AreEqual("Channels:0.3:norefit", off.ToString());
        PruningOptions on = PruningOptions.Parse("Channels:0.3", "m");
        Assert.IsTrue(on.Reconstruct);
        Assert.AreEqual("Channels:0.3", on.ToString());
    }

    [TestMethod]
    public void Options_built_in_code_are_validated_before_anything_changes()
    {
        ModelProto model = TinyModels.Mlp();
        byte[] before = Google.Protobuf.MessageExtensions.ToByteArray(model);
        var e = Assert.ThrowsExactly<CompressException>(() => Pruner.Apply(model, new PruningOptions { Method = PruningMethod.Magnitude, Sparsity = 1.0 }, "m.onnx"));
        Assert.AreEqual(DiagnosticCodes.InvalidOption, e.Code);
        CollectionAssert.AreEqual(before, Google.Protobuf.MessageExtensions.ToByteArray(model));
    }

    [TestMethod]
    public void Magnitude_zeroes_the_smallest_half_of_every_layer_and_keeps_biases()
    {
        ModelProto original = TinyModels.Mlp(inF: 32, hidden: 16, classes: 8);
        ModelProto model = original.Clone();
        PruningSummary s = Pruner.Apply(model, All("Magnitude:0.5"), "m");
        ModelChecker.Validate(model, "m");
        Assert.HasCount(2, s.Pruned);
        foreach (string name in new[] { "w1", "w2" })
        {
            float[] w0 = Weight(original, name), w = Weight(model, name);
            Assert.AreEqual(w0.Length / 2, Zeros(w), name);
            float maxZeroed = w0.Where((v, i) => w[i] == 0f).Max(MathF.Abs);
            float minKept = w0.Where((v, i) => w[i] != 0f).Min(MathF.Abs);
            Assert.IsLessThanOrEqualTo(minKept, maxZeroed, name);
            for (int i = 0; i < w.Length; i++)
            {
                Assert.IsTrue(w[i] == 0f || w[i] == w0[i], "kept weights are unchanged");
            }
        }
        CollectionAssert.AreEqual(Weight(original, "b1"), Weight(model, "b1"));
        Assert.AreEqual(32 * 16 + 8 * 16 + 16 + 8, s.ParametersBefore);
        Assert.AreEqual((32 * 16 + 8 * 16) / 2 + 16 + 8, s.ParametersAfter);
        Assert.AreEqual(2L * (32 * 16 + 16 * 8), s.FlopsBefore);
        Assert.AreEqual(s.FlopsBefore / 2, s.FlopsAfter);
        Assert.AreEqual(0.5, s.Pruned[0].Sparsity, 1e-9);
        using var ort = new Ort(model);
        float[] y = ort.Run(TinyModels.RandomFloats(32, 5), [1, 32]);
        Assert.HasCount(8, y);
    }

    [TestMethod]
    public void Global_uses_one_threshold_across_layers()
    {
        ModelProto original = TinyModels.Mlp(inF: 32, hidden: 16, classes: 8);
        // Make the second layer's weights ten times smaller: a global threshold must take most of them.
        float[] w2 = Weight(original, "w2").Select(v => v / 10).ToArray();
        int at = original.Graph.Initializer.IndexOf(original.Graph.Initializer.Single(t => t.Name == "w2"));
        original.Graph.Initializer[at] = TensorUtil.FromFloats("w2", w2, 8, 16);
        ModelProto model = original.Clone();
        PruningSummary s = Pruner.Apply(model, All("Global:0.4"), "m");
        float[] a0 = [.. Weight(original, "w1"), .. Weight(original, "w2")];
        float[] a = [.. Weight(model, "w1"), .. Weight(model, "w2")];
        Assert.AreEqual((int)Math.Round(0.4 * a.Length), Zeros(a));
        Assert.IsLessThanOrEqualTo(a0.Where((v, i) => a[i] != 0f).Min(MathF.Abs), a0.Where((v, i) => a[i] == 0f).Max(MathF.Abs));
        Assert.IsGreaterThan(0.9, s.Pruned.Single(p => p.Weight == "w2").Sparsity, "the small layer is pruned much harder");
        Assert.IsLessThan(0.4, s.Pruned.Single(p => p.Weight == "w1").Sparsity);
    }

    [TestMethod]
    public void NofM_keeps_the_n_largest_of_every_m_along_the_reduction_axis_of_MatMul()
    {
        const int k = 10, n = 3; // K = 10: groups of 4, 4 and a trailing 2
        float[] w0 = TinyModels.RandomFloats(k * n, 11);
        ModelProto model = MatMulModel(k, n, w0);
        Pruner.Apply(model, All("NofM:2:4"), "m");
        float[] w = Weight(model, "w");
        for (int col = 0; col < n; col++)
        {
            for (int k0 = 0; k0 < k; k0 += 4)
            {
                int[] idx = Enumerable.Range(k0, Math.Min(4, k - k0)).Select(r => r * n + col).ToArray();
                int[] kept = idx.Where(i => w[i] != 0f).ToArray();
                Assert.AreEqual(Math.Min(2, idx.Length), kept.Length, $"column {col} group {k0}");
                float minKept = kept.Min(i => MathF.Abs(w0[i]));
                Assert.IsTrue(idx.Except(kept).All(i => MathF.Abs(w0[i]) <= minKept));
            }
        }
    }

    [TestMethod]
    public void NofM_runs_along_rows_of_a_transposed_Gemm_weight_and_input_channels_of_Conv()
    {
        ModelProto mlp = TinyModels.Mlp(inF: 16, hidden: 8, classes: 4);
        Pruner.Apply(mlp, All("NofM:1:4"), "m");
        float[] w1 = Weight(mlp, "w1"); // [8, 16], transB = 1: reduction runs along a row
        for (int g = 0; g < w1.Length; g += 4)
        {
            Assert.AreEqual(1, w1.AsSpan(g, 4).ToArray().Count(v => v != 0f));
        }

        // Conv weight [M=2, C=8, 3, 3]: groups of 4 input channels at each kernel position.
        var graph = new GraphProto { Name = "conv" };
        graph.Input.Add(TinyModels.FloatValue("x", 1, 8, 5, 5));
        graph.Output.Add(TinyModels.FloatValue("y", 1, 2, 3, 3));
        float[] wc0 = TinyModels.RandomFloats(2 * 8 * 9, 3);
        graph.Initializer.Add(TensorUtil.FromFloats("wc", wc0, 2, 8, 3, 3));
        graph.Node.Add(TinyModels.Node("Conv", ["x", "wc"], ["y"], "conv"));
        ModelProto conv = TinyModels.Model(graph);
        PruningSummary s = Pruner.Apply(conv, All("NofM:2:4"), "m");
        float[] wc = Weight(conv, "wc");
        for (int o = 0; o < 2; o++)
        {
            for (int pos = 0; pos < 9; pos++)
            {
                for (int c0 = 0; c0 < 8; c0 += 4)
                {
                    Assert.AreEqual(2, Enumerable.Range(c0, 4).Count(c => wc[o * 72 + c * 9 + pos] != 0f));
                }
            }
        }
        Assert.AreEqual(0.5, s.Pruned.Single().Sparsity, 1e-9);
        Assert.AreEqual(2L * 2 * 8 * 9 * 9, s.FlopsBefore, "Conv FLOPs use the propagated 3x3 output");
        using var ort = new Ort(conv);
        Assert.HasCount(18, ort.Run(TinyModels.RandomFloats(200, 1), [1, 8, 5, 5]));
    }

    [TestMethod]
    public void Shared_weights_subgraph_users_and_small_weights_are_skipped_with_reasons()
    {
        var g = new GraphProto { Name = "shared" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 8));
        g.Output.Add(TinyModels.FloatValue("y", "N", 8));
        float[] w0 = TinyModels.RandomFloats(64, 2);
        g.Initializer.Add(TensorUtil.FromFloats("w", w0, 8, 8));
        g.Initializer.Add(TensorUtil.FromFloats("tiny", TinyModels.RandomFloats(4, 3), 2, 2));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["h"], "first"));
        g.Node.Add(TinyModels.Node("MatMul", ["h", "w"], ["y"], "second"));
        ModelProto model = TinyModels.Model(g);
        PruningSummary s = Pruner.Apply(model, All("Magnitude:0.5"), "m");
        Assert.IsTrue(s.NothingPruned);
        Assert.HasCount(2, s.Skipped);
        Assert.IsTrue(s.Skipped.All(k => k.Reason.Contains("shared", StringComparison.Ordinal)), string.Join("; ", s.Skipped));
        CollectionAssert.AreEqual(w0, Weight(model, "w"));
        Assert.AreEqual(s.ZipBytesBefore, s.ZipBytesAfter);
    }

    [TestMethod]
    public void Weights_behind_Constant_and_Reshape_are_pruned_in_place()
    {
        var g = new GraphProto { Name = "reshaped" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 8));
        g.Output.Add(TinyModels.FloatValue("y", "N", 4));
        float[] w0 = TinyModels.RandomFloats(32, 4);
        var constant = TinyModels.Node("Constant", [], ["flat"], "c");
        constant.Attribute.Add(new AttributeProto { Name = "value", Type = AttributeProto.Types.AttributeType.Tensor, T = TensorUtil.FromFloats("", w0, 32) });
        g.Initializer.Add(TensorUtil.FromInt64("shape", [8, 4], 2));
        g.Node.Add(constant);
        g.Node.Add(TinyModels.Node("Reshape", ["flat", "shape"], ["w"], "r"));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["y"], "mm"));
        ModelProto model = TinyModels.Model(g);
        PruningSummary s = Pruner.Apply(model, All("Magnitude:0.75"), "m");
        Assert.HasCount(1, s.Pruned);
        float[] w = TensorUtil.ToFloatArray(model.Graph.Node[0].Attribute[0].T);
        Assert.AreEqual(24, Zeros(w));
        ModelChecker.Validate(model, "m");
        using var ort = new Ort(model);
        Assert.HasCount(4, ort.Run(TinyModels.RandomFloats(8, 1), [1, 8]));
    }

    [TestMethod]
    public void NaN_weights_are_CMPR0202_and_leave_the_model_unchanged()
    {
        float[] w0 = TinyModels.RandomFloats(32, 4);
        w0[5] = float.NaN;
        ModelProto model = MatMulModel(8, 4, w0);
        byte[] before = Google.Protobuf.MessageExtensions.ToByteArray(model);
        var e = Assert.ThrowsExactly<CompressException>(() => Pruner.Apply(model, All("Magnitude:0.5"), "m"));
        Assert.AreEqual(DiagnosticCodes.NonFiniteWeights, e.Code);
        CollectionAssert.AreEqual(before, Google.Protobuf.MessageExtensions.ToByteArray(model));
    }

    [TestMethod]
    public void Zeros_shrink_the_zip_but_not_the_onnx_file()
    {
        ModelProto model = MatMulModel(256, 128, TinyModels.RandomFloats(256 * 128, 9));
        PruningSummary s = Pruner.Apply(model, All("Magnitude:0.8"), "m");
        Assert.AreEqual(s.ModelBytesBefore, s.ModelBytesAfter);
        Assert.IsLessThan(0.45, s.ZipRatio, $"zip {s.ZipBytesBefore} -> {s.ZipBytesAfter}");
        Assert.AreEqual(PruningSummary.ZipBytes(model), s.ZipBytesAfter);
    }

    [TestMethod]
    public void Zeros_survive_int8_quantization_exactly()
    {
        ModelProto model = TinyModels.Mlp(inF: 64, hidden: 32, classes: 10);
        Pruner.Apply(model, All("Magnitude:0.6"), "m");
        float[] w1 = Weight(model, "w1"); // [32, 64], transB = 1
        QuantizationSummary q = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "m");
        Assert.HasCount(2, q.Quantized);
        NodeProto fc1 = model.Graph.Node.First(n => n.OpType == Int8DynamicQuantizer.QuantizedOpType);
        TensorProto qw = model.Graph.Initializer.Single(t => t.Name == fc1.Input[1]);
        // Signed int8 weights (the default) store no zero point: ORT's default 0 applies, so a pruned weight must be code 0.
        byte zeroPoint = fc1.Input.Count > 3 && fc1.Input[3].Length > 0
            ? TensorUtil.ToRawBytes(model.Graph.Initializer.Single(t => t.Name == fc1.Input[3]))[0]
            : (byte)0;
        byte[] stored = TensorUtil.ToRawBytes(qw); // [K=64, N=32]
        CollectionAssert.AreEqual(new long[] { 64, 32 }, qw.Dims.ToArray());
        int zeros = 0;
        for (int n = 0; n < 32; n++)
        {
            for (int k = 0; k < 64; k++)
            {
                if (w1[n * 64 + k] == 0f)
                {
                    zeros++;
                    Assert.AreEqual(zeroPoint, stored[k * 32 + n], $"pruned weight [{n},{k}] must quantize to the zero point");
                }
            }
        }
        Assert.AreEqual((int)Math.Round(0.6 * 64 * 32), zeros);
    }
}
