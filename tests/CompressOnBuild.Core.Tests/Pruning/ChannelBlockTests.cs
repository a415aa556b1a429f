using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Tests.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;
using static CompressOnBuild.Core.Tests.Pruning.PruningTestHelpers;

namespace CompressOnBuild.Core.Tests.Pruning;

/// <summary>
/// Channels:f through the blocks of real CNNs (issue 15): residual Adds, depthwise-separable convolutions,
/// squeeze-excitation, Concat, per-channel constants. Each tiny model gives two of its 8 channels per group tiny weights
/// in every producer of the group (so those are the ones to go and the output barely changes); each is run in ONNX
/// Runtime before and after.
/// </summary>
[TestClass]
public sealed class ChannelBlockTests
{
    private const int Samples = 64;

    public TestContext TestContext { get; set; } = null!;

    private static readonly int[] Weak = [1, 5];

    [TestMethod]
    public void Residual_basic_block_prunes_the_channels_tied_by_the_Add_together()
    {
        var g = new GraphProto { Name = "residual" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 3, 8, 8));
        g.Output.Add(TinyModels.FloatValue("y", "N", 4));
        AddConv(g, "stem", 3, 8, 3, 11, weakOutputs: true);
        AddBatchNorm(g, "bn0", 8, 12);
        AddConv(g, "conv_a", 8, 8, 3, 13, weakOutputs: true);
        AddBatchNorm(g, "bn_a", 8, 14);
        AddConv(g, "conv_b", 8, 8, 3, 15, weakOutputs: true);
        AddBatchNorm(g, "bn_b", 8, 16);
        g.Initializer.Add(TensorUtil.FromFloats("head_w", TinyModels.RandomFloats(4 * 8, 17), 4, 8));
        g.Initializer.Add(TensorUtil.FromFloats("head_b", TinyModels.RandomFloats(4, 18), 4));
        g.Node.Add(Conv("stem", "x", "s"));
        g.Node.Add(BatchNorm("bn0", "s", "sn"));
        g.Node.Add(TinyModels.Node("Relu", ["sn"], ["h"], "relu0"));
        g.Node.Add(Conv("conv_a", "h", "a"));
        g.Node.Add(BatchNorm("bn_a", "a", "an"));
        g.Node.Add(TinyModels.Node("Relu", ["an"], ["ar"], "relu_a"));
        g.Node.Add(Conv("conv_b", "ar", "b"));
        g.Node.Add(BatchNorm("bn_b", "b", "bn"));
        g.Node.Add(TinyModels.Node("Add", ["bn", "h"], ["sum"], "residual_add"));
        g.Node.Add(TinyModels.Node("Relu", ["sum"], ["r"], "relu_out"));
        g.Node.Add(TinyModels.Node("GlobalAveragePool", ["r"], ["gap"], "gap"));
        g.Node.Add(TinyModels.Node("Flatten", ["gap"], ["flat"], "flatten"));
        g.Node.Add(TinyModels.Node("Gemm", ["flat", "head_w", "head_b"], ["y"], "head", TinyModels.IntAttr("transB", 1)));

        (ModelProto original, ModelProto pruned, PruningSummary s) = Prune(TinyModels.Model(g), "Channels:0.25");
        // The Add ties the stem's and conv_b's channels: one keep set for both, and for the inputs of conv_a and the head.
        CollectionAssert.AreEqual(new long[] { 6, 3, 3, 3 }, Dims(pruned, "stem_w"));
        CollectionAssert.AreEqual(new long[] { 6, 6, 3, 3 }, Dims(pruned, "conv_b_w"));
        CollectionAssert.AreEqual(new long[] { 6, 6, 3, 3 }, Dims(pruned, "conv_a_w"));
        CollectionAssert.AreEqual(new long[] { 4, 6 }, Dims(pruned, "head_w"));
        foreach (string bn in new[] { "bn0", "bn_a", "bn_b" })
        {
            CollectionAssert.AreEqual(new long[] { 6 }, Dims(pruned, bn + "_scale"), bn);
        }
        CollectionAssert.AreEquivalent(new[] { "stem", "conv_a", "conv_b", "head" }, s.Pruned.Select(p => p.Node).ToArray());
        AssertCloseInOrt(original, pruned, s, [4]);
    }

    [TestMethod]
    public void Depthwise_separable_block_slices_the_depthwise_Conv_and_its_group_count()
    {
        var g = new GraphProto { Name = "dwsep" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 3, 8, 8));
        g.Output.Add(TinyModels.FloatValue("y", "N", 5, 8, 8));
        AddConv(g, "stem", 3, 8, 3, 21, weakOutputs: true);
        AddBatchNorm(g, "bn0", 8, 22);
        g.Initializer.Add(TensorUtil.FromFloats("dw_w", TinyModels.RandomFloats(8 * 9, 23), 8, 1, 3, 3));
        g.Initializer.Add(TensorUtil.FromFloats("dw_b", TinyModels.RandomFloats(8, 24, 0.1f), 8));
        AddBatchNorm(g, "bn1", 8, 25);
        AddConv(g, "pw", 8, 5, 1, 26, weakOutputs: false);
        g.Initializer.Add(TensorUtil.FromFloats("lo", [0f], []));
        g.Initializer.Add(TensorUtil.FromFloats("hi", [6f], []));
        g.Node.Add(Conv("stem", "x", "s"));
        g.Node.Add(BatchNorm("bn0", "s", "sn"));
        g.Node.Add(TinyModels.Node("Clip", ["sn", "lo", "hi"], ["s6"], "relu6"));
        g.Node.Add(TinyModels.Node("Conv", ["s6", "dw_w", "dw_b"], ["d"], "dw", TinyModels.IntAttr("group", 8), TinyModels.IntsAttr("pads", 1, 1, 1, 1)));
        g.Node.Add(BatchNorm("bn1", "d", "dn"));
        g.Node.Add(TinyModels.Node("HardSwish", ["dn"], ["dh"], "hswish"));
        g.Node.Add(TinyModels.Node("Conv", ["dh", "pw_w", "pw_b"], ["y"], "pw"));

        (ModelProto original, ModelProto pruned, PruningSummary s) = Prune(TinyModels.Model(g, opset: 14), "Channels:0.25");
        CollectionAssert.AreEqual(new long[] { 6, 3, 3, 3 }, Dims(pruned, "stem_w"));
        CollectionAssert.AreEqual(new long[] { 6, 1, 3, 3 }, Dims(pruned, "dw_w"));
        CollectionAssert.AreEqual(new long[] { 6 }, Dims(pruned, "dw_b"));
        CollectionAssert.AreEqual(new long[] { 5, 6, 1, 1 }, Dims(pruned, "pw_w"));
        Assert.AreEqual(6L, pruned.Graph.Node.Single(n => n.Name == "dw").Attribute.Single(a => a.Name == "group").I);
        PrunedLayer dw = s.Pruned.Single(p => p.Node == "dw");
        Assert.AreEqual(8, dw.OutputsBefore);
        Assert.AreEqual(6, dw.OutputsAfter);
        Assert.IsTrue(s.Skipped.Any(k => k.Node == "pw" && k.Reason.Contains("graph output", StringComparison.Ordinal)), string.Join("; ", s.Skipped));
        AssertCloseInOrt(original, pruned, s, [5, 8, 8]);
    }

    [TestMethod]
    public void Squeeze_excitation_block_prunes_the_trunk_and_the_excitation_together()
    {
        var g = new GraphProto { Name = "se" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 3, 8, 8));
        g.Output.Add(TinyModels.FloatValue("y", "N", 4, 8, 8));
        AddConv(g, "stem", 3, 8, 3, 31, weakOutputs: true);
        AddConv(g, "fc1", 8, 4, 1, 32, weakOutputs: false);
        AddConv(g, "fc2", 4, 8, 1, 33, weakOutputs: true);
        AddConv(g, "out", 8, 4, 3, 34, weakOutputs: false);
        g.Node.Add(Conv("stem", "x", "s"));
        g.Node.Add(TinyModels.Node("Relu", ["s"], ["t"], "relu0"));
        g.Node.Add(TinyModels.Node("GlobalAveragePool", ["t"], ["sq"], "squeeze"));
        g.Node.Add(Conv("fc1", "sq", "e1"));
        g.Node.Add(TinyModels.Node("Relu", ["e1"], ["e1r"], "relu1"));
        g.Node.Add(Conv("fc2", "e1r", "e2"));
        g.Node.Add(TinyModels.Node("HardSigmoid", ["e2"], ["gate"], "hsig"));
        g.Node.Add(TinyModels.Node("Mul", ["t", "gate"], ["excited"], "excite"));
        g.Node.Add(Conv("out", "excited", "y"));

        (ModelProto original, ModelProto pruned, PruningSummary s) = Prune(TinyModels.Model(g), "Channels:0.25");
        // The Mul ties the trunk (stem) and the excitation (fc2): one keep set; fc1 (through the pool) and out lose those inputs.
        CollectionAssert.AreEqual(new long[] { 6, 3, 3, 3 }, Dims(pruned, "stem_w"));
        CollectionAssert.AreEqual(new long[] { 6 }, Dims(pruned, "fc2_b"));
        Assert.AreEqual(6L, Dims(pruned, "fc2_w")[0]);
        Assert.AreEqual(6L, Dims(pruned, "fc1_w")[1]);
        CollectionAssert.AreEqual(new long[] { 4, 6, 3, 3 }, Dims(pruned, "out_w"));
        // fc1's own 4 outputs form a second group (fc1 -> Relu -> fc2): 0.25 x 4 = 1 goes.
        Assert.AreEqual(3L, Dims(pruned, "fc1_w")[0]);
        Assert.AreEqual(3L, Dims(pruned, "fc2_w")[1]);
        AssertCloseInOrt(original, pruned, s, [4, 8, 8], maxRelativeError: 0.15);
    }

    [TestMethod]
    public void Concat_of_two_branches_with_per_channel_Mul_and_PRelu_prunes_each_branch()
    {
        var g = new GraphProto { Name = "concat" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 3, 8, 8));
        g.Output.Add(TinyModels.FloatValue("y", "N", 4, 8, 8));
        AddConv(g, "left", 3, 8, 3, 41, weakOutputs: true);
        AddConv(g, "right", 3, 8, 3, 42, weakOutputs: true);
        AddConv(g, "fuse", 16, 4, 3, 43, weakOutputs: false);
        g.Initializer.Add(TensorUtil.FromFloats("gain", TinyModels.RandomFloats(8, 44).Select(v => 1f + 0.2f * v).ToArray(), 8, 1, 1));
        g.Initializer.Add(TensorUtil.FromFloats("slope", TinyModels.RandomFloats(8, 45, 0.2f), 1, 8, 1, 1));
        g.Node.Add(Conv("left", "x", "l"));
        g.Node.Add(TinyModels.Node("Mul", ["l", "gain"], ["lg"], "gain_mul"));
        g.Node.Add(Conv("right", "x", "r"));
        g.Node.Add(TinyModels.Node("PRelu", ["r", "slope"], ["rp"], "prelu"));
        g.Node.Add(TinyModels.Node("Concat", ["lg", "rp"], ["cat"], "concat", TinyModels.IntAttr("axis", 1)));
        g.Node.Add(Conv("fuse", "cat", "y"));

        (ModelProto original, ModelProto pruned, PruningSummary s) = Prune(TinyModels.Model(g), "Channels:0.25");
        CollectionAssert.AreEqual(new long[] { 6, 3, 3, 3 }, Dims(pruned, "left_w"));
        CollectionAssert.AreEqual(new long[] { 6, 3, 3, 3 }, Dims(pruned, "right_w"));
        CollectionAssert.AreEqual(new long[] { 6, 1, 1 }, Dims(pruned, "gain"));
        CollectionAssert.AreEqual(new long[] { 1, 6, 1, 1 }, Dims(pruned, "slope"));
        CollectionAssert.AreEqual(new long[] { 4, 12, 3, 3 }, Dims(pruned, "fuse_w"));
        AssertCloseInOrt(original, pruned, s, [4, 8, 8]);
    }

    [TestMethod]
    public void Blocks_that_cannot_be_pruned_are_left_whole_with_the_reason_per_layer()
    {
        // A residual Add whose sum is the graph output ties the stem to the output; a grouped (not depthwise) Conv cannot follow.
        var g = new GraphProto { Name = "pinned" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 3, 8, 8));
        g.Output.Add(TinyModels.FloatValue("y", "N", 8, 8, 8));
        g.Output.Add(TinyModels.FloatValue("z", "N", 8, 8, 8));
        AddConv(g, "stem", 3, 8, 3, 51, weakOutputs: true);
        AddConv(g, "body", 8, 8, 3, 52, weakOutputs: true);
        AddConv(g, "side", 3, 8, 3, 53, weakOutputs: true);
        g.Initializer.Add(TensorUtil.FromFloats("grouped_w", TinyModels.RandomFloats(8 * 4 * 9, 54), 8, 4, 3, 3));
        g.Node.Add(Conv("stem", "x", "s"));
        g.Node.Add(Conv("body", "s", "b"));
        g.Node.Add(TinyModels.Node("Add", ["s", "b"], ["y"], "residual_add"));
        g.Node.Add(Conv("side", "x", "sd"));
        g.Node.Add(TinyModels.Node("Conv", ["sd", "grouped_w"], ["z"], "grouped", TinyModels.IntAttr("group", 2), TinyModels.IntsAttr("pads", 1, 1, 1, 1)));
        ModelProto model = TinyModels.Model(g);
        byte[] before = model.ToByteArray();
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Channels:0.25", "m"), "m", Source());
        Assert.IsTrue(s.NothingPruned, string.Join(", ", s.Pruned.Select(p => p.Node)));
        CollectionAssert.AreEqual(before, model.ToByteArray());
        string Reason(string node) => s.Skipped.First(k => k.Node == node).Reason;
        StringAssert.Contains(Reason("stem"), "'y' is a graph output");
        StringAssert.Contains(Reason("body"), "'y' is a graph output");
        StringAssert.Contains(Reason("side"), "grouped Conv (group 2");
        StringAssert.Contains(Reason("grouped"), "grouped Conv (group 2)");
        Assert.AreEqual(0.0, s.ChannelFractionRemoved);
        Assert.IsTrue(s.ChannelsShortfall);
    }

    [TestMethod]
    public void The_summary_counts_the_channels_removed_over_all_prunable_layers()
    {
        ModelProto model = TinyModels.Mlp(inF: 16, hidden: 8, classes: 4);
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Channels:0.5", "m"), "m");
        // fc1 loses 4 of its 8 outputs; fc2's 4 outputs are the graph output: 4 of 12 channels.
        Assert.AreEqual(0.5, s.RequestedChannelFraction);
        Assert.AreEqual(4.0 / 12, s.ChannelFractionRemoved, 1e-9);
        Assert.IsTrue(s.ChannelsShortfall);
        PruningSummary m = Pruner.Apply(TinyModels.Mlp(inF: 16, hidden: 8, classes: 4), PruningOptions.Parse("Magnitude:0.5", "m"), "m");
        Assert.IsNull(m.RequestedChannelFraction);
        Assert.IsFalse(m.ChannelsShortfall);
    }

    private static ActivationSource Source()
    {
        float[] calibration = TinyModels.RandomFloats(Samples * 192, 7);
        return (m, names) => TestActivations.Run(m, names, calibration, Samples, 32, b => [b, 3, 8, 8]);
    }

    private (ModelProto Original, ModelProto Pruned, PruningSummary Summary) Prune(ModelProto model, string method)
    {
        ModelProto original = model.Clone();
        ModelChecker.Validate(original, "m");
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse(method, "m"), "m", Source());
        TestContext.WriteLine($"pruned: {string.Join(", ", s.Pruned.Select(p => $"{p.Node} {p.OutputsBefore}->{p.OutputsAfter} outs, {p.ElementsBefore}->{p.ElementsAfter} w"))}; " +
            $"refit: {string.Join(",", s.Reconstructed)}; skipped: {string.Join("; ", s.Skipped.Select(k => k.Node + ": " + k.Reason))}");
        ModelChecker.Validate(model, "m");
        return (original, model, s);
    }

    /// <summary>Same output shape in ONNX Runtime, a smaller file, fewer parameters, and the output close to the original on inputs that are not the calibration data.</summary>
    private void AssertCloseInOrt(ModelProto original, ModelProto pruned, PruningSummary s, long[] outShape, double maxRelativeError = 0.1)
    {
        Assert.IsLessThan(s.ParametersBefore, s.ParametersAfter);
        Assert.IsLessThan(s.ModelBytesBefore, s.ModelBytesAfter);
        Assert.IsNotEmpty(s.Reconstructed);
        float[] x = TinyModels.RandomFloats(16 * 192, 99);
        using var o = new Ort(original);
        using var p = new Ort(pruned);
        float[] y = o.Run(x, [16, 3, 8, 8]), yp = p.Run(x, [16, 3, 8, 8]);
        Assert.HasCount(16 * (int)outShape.Aggregate(1L, (a, b) => a * b), yp);
        double err = Math.Sqrt(y.Select((v, i) => (double)(v - yp[i]) * (v - yp[i])).Sum() / y.Select(v => (double)v * v).Sum());
        TestContext.WriteLine($"relative L2 error after pruning and refit: {err:G4}; parameters {s.ParametersBefore} -> {s.ParametersAfter}; bytes {s.ModelBytesBefore} -> {s.ModelBytesAfter}");
        Assert.IsLessThan(maxRelativeError, err);
    }

    /// <summary>Conv weight [outs, ins, k, k] and bias; with <paramref name="weakOutputs"/> the outputs in <see cref="Weak"/> get weights x 0.02.</summary>
    private static void AddConv(GraphProto g, string name, int ins, int outs, int k, int seed, bool weakOutputs)
    {
        float[] w = TinyModels.RandomFloats(outs * ins * k * k, seed, 1f / MathF.Sqrt(ins * k * k));
        float[] b = TinyModels.RandomFloats(outs, seed + 1000, 0.1f);
        if (weakOutputs)
        {
            foreach (int o in Weak)
            {
                for (int i = 0; i < ins * k * k; i++)
                {
                    w[o * ins * k * k + i] *= 0.02f;
                }
                b[o] *= 0.02f;
            }
        }
        g.Initializer.Add(TensorUtil.FromFloats(name + "_w", w, outs, ins, k, k));
        g.Initializer.Add(TensorUtil.FromFloats(name + "_b", b, outs));
    }

    private static NodeProto Conv(string name, string input, string output)
    {
        NodeProto n = TinyModels.Node("Conv", [input, name + "_w", name + "_b"], [output], name);
        n.Attribute.Add(new AttributeProto { Name = "auto_pad", Type = AttributeProto.Types.AttributeType.String, S = Google.Protobuf.ByteString.CopyFromUtf8("SAME_UPPER") });
        return n;
    }

    private static void AddBatchNorm(GraphProto g, string name, int c, int seed)
    {
        g.Initializer.Add(TensorUtil.FromFloats(name + "_scale", TinyModels.RandomFloats(c, seed).Select(v => 1f + 0.2f * v).ToArray(), c));
        g.Initializer.Add(TensorUtil.FromFloats(name + "_shift", TinyModels.RandomFloats(c, seed + 1, 0.05f), c));
        g.Initializer.Add(TensorUtil.FromFloats(name + "_mean", TinyModels.RandomFloats(c, seed + 2, 0.05f), c));
        g.Initializer.Add(TensorUtil.FromFloats(name + "_var", TinyModels.RandomFloats(c, seed + 3).Select(v => 1f + 0.1f * Math.Abs(v)).ToArray(), c));
    }

    private static NodeProto BatchNorm(string name, string input, string output) =>
        TinyModels.Node("BatchNormalization", [input, name + "_scale", name + "_shift", name + "_mean", name + "_var"], [output], name);
}
