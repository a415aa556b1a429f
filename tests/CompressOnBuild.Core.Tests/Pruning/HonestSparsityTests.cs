using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using static CompressOnBuild.Core.Tests.Pruning.PruningTestHelpers;

namespace CompressOnBuild.Core.Tests.Pruning;

/// <summary>The requested sparsity is a fraction of the model's prunable weights, and the summary says what was achieved.</summary>
[TestClass]
public sealed class HonestSparsityTests
{
    /// <summary>x[N,1,8,8] -> Conv(1->4, 3x3, pads 1) -> Relu -> Flatten -> Gemm(256 -> 10): the output layer holds 256 x 10 of 2,596 weights.</summary>
    private static ModelProto SmallConvBigHead()
    {
        var g = new GraphProto { Name = "cnn" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 1, 8, 8));
        g.Output.Add(TinyModels.FloatValue("y", "N", 10));
        g.Initializer.Add(TensorUtil.FromFloats("wc", TinyModels.RandomFloats(4 * 9, 3), 4, 1, 3, 3));
        g.Initializer.Add(TensorUtil.FromFloats("wf", TinyModels.RandomFloats(10 * 256, 4), 10, 256));
        g.Node.Add(TinyModels.Node("Conv", ["x", "wc"], ["c"], "conv", TinyModels.IntsAttr("pads", 1, 1, 1, 1)));
        g.Node.Add(TinyModels.Node("Relu", ["c"], ["cr"], "relu"));
        g.Node.Add(TinyModels.Node("Flatten", ["cr"], ["f"], "flatten"));
        g.Node.Add(TinyModels.Node("Gemm", ["f", "wf"], ["y"], "fc", TinyModels.IntAttr("transB", 1)));
        return TinyModels.Model(g);
    }

    [TestMethod]
    public void A_model_whose_output_layer_dominates_reports_the_small_achieved_sparsity_and_why()
    {
        ModelProto model = SmallConvBigHead();
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Magnitude:0.5", "m"), "m");
        Assert.AreEqual(2596, s.PrunableWeights);
        Assert.AreEqual(0.5, s.RequestedSparsity);
        long zeros = Zeros(Weight(model, "wc"));
        Assert.AreEqual(zeros / 2596.0, s.AchievedSparsity, 1e-12);
        Assert.IsLessThan(0.02, s.AchievedSparsity, "only the 36-weight Conv could be pruned");
        Assert.IsTrue(s.SparsityDiffers);
        Assert.IsTrue(s.SparsityNotes.Any(n => n.Contains("output layer", StringComparison.Ordinal) && n.Contains("'fc'", StringComparison.Ordinal)), string.Join(" | ", s.SparsityNotes));
        Assert.IsTrue(s.SparsityNotes.Any(n => n.Contains("capped", StringComparison.Ordinal)), string.Join(" | ", s.SparsityNotes));
        // The Conv is pruned harder to make up for the dense head, but never beyond the cap (75 % for 0.5).
        Assert.AreEqual(27, zeros);
    }

    [TestMethod]
    public void The_other_layers_make_up_for_the_dense_output_layer_so_the_whole_model_meets_the_request()
    {
        ModelProto model = TinyModels.Mlp(inF: 32, hidden: 16, classes: 8);
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Magnitude:0.5", "m"), "m");
        Assert.AreEqual(640, s.PrunableWeights);
        Assert.AreEqual(320, Zeros(Weight(model, "w1")), "0.5 x 640 weights, all from fc1");
        Assert.AreEqual(0.5, s.AchievedSparsity, 1e-12);
        Assert.IsFalse(s.SparsityDiffers);
        Assert.AreEqual(0.625, s.LayerSparsity!.Value, 1e-12);
    }

    [TestMethod]
    public void Excluded_layers_count_in_the_model_and_are_named_but_not_made_up_for()
    {
        ModelProto model = SmallConvBigHead();
        PruningSummary s = Pruner.Apply(model, All("Magnitude:0.5") with { ExcludedNodes = ["fc"] }, "m");
        Assert.AreEqual(18, Zeros(Weight(model, "wc")), "the Conv gets the requested 50 %, no more");
        Assert.IsTrue(s.SparsityDiffers);
        Assert.IsTrue(s.SparsityNotes.Any(n => n.Contains("excluded", StringComparison.Ordinal) && n.Contains("2560 weights", StringComparison.Ordinal)), string.Join(" | ", s.SparsityNotes));
    }

    /// <summary>x -> fc1 -> Relu -> fc2 -> Relu -> fc3 -> y (Gemm, transB).</summary>
    private static ModelProto ThreeLayers()
    {
        var g = new GraphProto { Name = "mlp3" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 16));
        g.Output.Add(TinyModels.FloatValue("y", "N", 4));
        g.Initializer.Add(TensorUtil.FromFloats("w1", TinyModels.RandomFloats(16 * 16, 1), 16, 16));
        g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(16 * 16, 2), 16, 16));
        g.Initializer.Add(TensorUtil.FromFloats("w3", TinyModels.RandomFloats(4 * 16, 3), 4, 16));
        g.Node.Add(TinyModels.Node("Gemm", ["x", "w1"], ["h1"], "fc1", TinyModels.IntAttr("transB", 1)));
        g.Node.Add(TinyModels.Node("Relu", ["h1"], ["r1"], "relu1"));
        g.Node.Add(TinyModels.Node("Gemm", ["r1", "w2"], ["h2"], "fc2", TinyModels.IntAttr("transB", 1)));
        g.Node.Add(TinyModels.Node("Relu", ["h2"], ["r2"], "relu2"));
        g.Node.Add(TinyModels.Node("Gemm", ["r2", "w3"], ["y"], "fc3", TinyModels.IntAttr("transB", 1)));
        return TinyModels.Model(g);
    }

    [TestMethod]
    public void Excluding_the_output_layer_does_not_make_the_layer_before_it_an_output_layer()
    {
        ModelProto model = ThreeLayers();
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Magnitude:0.5", "m") with { ExcludedNodes = ["fc3"] }, "m");
        CollectionAssert.AreEquivalent(new[] { "fc1", "fc2" }, s.Pruned.Select(p => p.Node).ToArray());
        Assert.IsGreaterThan(0, Zeros(Weight(model, "w2")), "fc2 is followed by fc3 in the graph, so it is no output layer");
        Assert.IsFalse(s.Skipped.Any(k => k.Reason.Contains("output layer", StringComparison.Ordinal)));
        Assert.AreEqual("excluded by the options", s.Skipped.Single().Reason);
    }

    [TestMethod]
    public void NofM_reports_its_pattern_sparsity_as_requested()
    {
        ModelProto model = TinyModels.Mlp(inF: 64, hidden: 16, classes: 8);
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("NofM:2:4", "m"), "m");
        Assert.AreEqual(0.5, s.RequestedSparsity);
        Assert.AreEqual(512 / 1152.0, s.AchievedSparsity, 1e-12, "N:M is a pattern per layer; the dense output layer is not made up for");
        Assert.IsFalse(s.SparsityDiffers, "5.6 points off: within the tolerance");
    }

    [TestMethod]
    public void Channels_reports_the_achieved_weight_sparsity_without_a_requested_one()
    {
        ModelProto model = TinyModels.Mlp(inF: 32, hidden: 16, classes: 8);
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Channels:0.25", "m"), "m");
        Assert.IsNull(s.RequestedSparsity);
        Assert.IsFalse(s.SparsityDiffers);
        Assert.AreEqual(640, s.PrunableWeights);
        Assert.AreEqual(1 - (12 * 32 + 8 * 12) / 640.0, s.AchievedSparsity, 1e-12, "4 of 16 hidden neurons gone with their weights in both layers");
    }
}
