using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Tests.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Core.Tests.Pruning;

/// <summary>
/// Channels:f with calibration data chooses channels by reconstruction and spreads the removals over the groups by
/// the measured error (issue 15 items 3-4); a panel block in the style of MobileNetV3 (expansion, HardSwish,
/// depthwise, squeeze-excitation with HardSigmoid, projection, residual Add) either prunes or says per layer why not.
/// </summary>
[TestClass]
public sealed class ChannelSelectionTests
{
    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void Greedy_selection_removes_a_duplicated_channel_before_a_small_unique_one()
    {
        // Channels 0 and 1 contribute the same large vector u to the consumer's output, channel 2 a small v orthogonal to it:
        // G = [[a, a, 0], [a, a, 0], [0, 0, b]]. Weight norms would drop channel 2; one of the duplicates costs nothing
        // (the other one's coefficient doubles), so it goes first, then v (error b / (4a + b)), never the last copy of u.
        const double a = 100, b = 1;
        double[] gram = [a, a, 0, a, a, 0, 0, 0, b];
        (int[] order, double[] error) = ChannelSelection.Greedy([gram], 3);
        TestContext.WriteLine($"order {string.Join(",", order)}, error {string.Join(",", error)}");
        Assert.IsTrue(order[0] is 0 or 1, $"first removed: {order[0]}");
        Assert.AreEqual(2, order[1]);
        Assert.IsLessThan(1e-4, error[0]);
        Assert.AreEqual(b / (4 * a + b), error[1], 1e-3);
    }

    [TestMethod]
    public void The_allocation_takes_channels_from_the_redundant_group_and_keeps_the_output()
    {
        // x[8] -> mm1 (16 outputs in 8 identical pairs, read by identical rows of mm2) -> Relu -> mm2 (16 independent outputs) -> Relu -> mm3 -> y[4].
        // Uniform Channels:0.25 would take 4 + 4; the measured allocation takes the duplicates of mm1 (free after the
        // refit) and little or nothing of mm2, so the output stays almost exact.
        var g = new GraphProto { Name = "redundant" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 8));
        g.Output.Add(TinyModels.FloatValue("y", "N", 4));
        float[] half = TinyModels.RandomFloats(8 * 8, 61, 0.5f);
        var w1 = new float[8 * 16];
        for (int r = 0; r < 8; r++)
        {
            for (int c = 0; c < 8; c++)
            {
                w1[r * 16 + 2 * c] = half[r * 8 + c];
                w1[r * 16 + 2 * c + 1] = half[r * 8 + c];
            }
        }
        // mm2 reads each pair through the same row too, so the two copies add the same vector to its output: one of
        // them is enough once its coefficient doubles (what the selection models), whatever its weight norm.
        float[] w2 = TinyModels.RandomFloats(16 * 16, 62, 0.3f);
        for (int c = 0; c < 8; c++)
        {
            Array.Copy(w2, 2 * c * 16, w2, (2 * c + 1) * 16, 16);
        }
        g.Initializer.Add(TensorUtil.FromFloats("w1", w1, 8, 16));
        g.Initializer.Add(TensorUtil.FromFloats("w2", w2, 16, 16));
        g.Initializer.Add(TensorUtil.FromFloats("w3", TinyModels.RandomFloats(16 * 4, 63, 0.3f), 16, 4));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w1"], ["h1"], "mm1"));
        g.Node.Add(TinyModels.Node("Relu", ["h1"], ["r1"], "relu1"));
        g.Node.Add(TinyModels.Node("MatMul", ["r1", "w2"], ["h2"], "mm2"));
        g.Node.Add(TinyModels.Node("Relu", ["h2"], ["r2"], "relu2"));
        g.Node.Add(TinyModels.Node("MatMul", ["r2", "w3"], ["y"], "mm3"));
        ModelProto model = TinyModels.Model(g);
        ModelProto original = model.Clone();
        float[] calibration = TinyModels.RandomFloats(256 * 8, 64);
        ActivationSource source = (m, names) => TestActivations.Run(m, names, calibration, 256, 64, n => [n, 8]);

        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Channels:0.25", "m"), "m", source);
        ModelChecker.Validate(model, "m");
        int Lost(string node) => s.Pruned.FirstOrDefault(p => p.Node == node) is { } p ? p.OutputsBefore - p.OutputsAfter : 0;
        TestContext.WriteLine($"mm1 lost {Lost("mm1")}, mm2 lost {Lost("mm2")}; skipped: {string.Join("; ", s.Skipped.Select(k => k.Node + ": " + k.Reason))}");
        Assert.IsGreaterThanOrEqualTo(5, Lost("mm1"));
        Assert.IsLessThanOrEqualTo(8, Lost("mm1"), "at most one of each identical pair can go for free");
        Assert.IsLessThan(Lost("mm1"), Lost("mm2"));

        float[] x = TinyModels.RandomFloats(64 * 8, 65);
        using var o = new Ort(original);
        using var pr = new Ort(model);
        float[] y = o.Run(x, [64, 8]), yp = pr.Run(x, [64, 8]);
        double err = Math.Sqrt(y.Select((v, i) => (double)(v - yp[i]) * (v - yp[i])).Sum() / y.Select(v => (double)v * v).Sum());
        TestContext.WriteLine($"relative L2 error {err:G4}");
        Assert.IsLessThan(0.05, err);
    }

    [TestMethod]
    public void Inverted_residual_block_with_squeeze_excitation_and_HardSwish_prunes_or_says_why()
    {
        // stem Conv 3->16 -> HardSwish = t (residual stream)
        // expand 1x1 16->32 -> HardSwish -> depthwise 3x3 (group 32) -> HardSwish = d
        // SE: GlobalAveragePool(d) -> fc1 1x1 32->8 -> Relu -> fc2 1x1 8->32 -> HardSigmoid; Mul(d, gate)
        // project 1x1 32->16 -> Add(t) -> GlobalAveragePool -> Flatten -> Gemm 16->4 = y
        var g = new GraphProto { Name = "mbv3" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 3, 8, 8));
        g.Output.Add(TinyModels.FloatValue("y", "N", 4));
        void Conv(string name, int ins, int outs, int k, int seed, string input, string output, int group = 1)
        {
            g.Initializer.Add(TensorUtil.FromFloats(name + "_w", TinyModels.RandomFloats(outs * (ins / group) * k * k, seed, 1f / MathF.Sqrt(ins / group * k * k)), outs, ins / group, k, k));
            g.Initializer.Add(TensorUtil.FromFloats(name + "_b", TinyModels.RandomFloats(outs, seed + 1000, 0.1f), outs));
            NodeProto n = TinyModels.Node("Conv", [input, name + "_w", name + "_b"], [output], name, TinyModels.IntAttr("group", group));
            if (k > 1)
            {
                n.Attribute.Add(TinyModels.IntsAttr("pads", 1, 1, 1, 1));
            }
            g.Node.Add(n);
        }
        Conv("stem", 3, 16, 3, 71, "x", "s");
        g.Node.Add(TinyModels.Node("HardSwish", ["s"], ["t"], "hs0"));
        Conv("expand", 16, 32, 1, 72, "t", "e");
        g.Node.Add(TinyModels.Node("HardSwish", ["e"], ["eh"], "hs1"));
        Conv("dw", 32, 32, 3, 73, "eh", "dd", group: 32);
        g.Node.Add(TinyModels.Node("HardSwish", ["dd"], ["d"], "hs2"));
        g.Node.Add(TinyModels.Node("GlobalAveragePool", ["d"], ["sq"], "squeeze"));
        Conv("fc1", 32, 8, 1, 74, "sq", "f1");
        g.Node.Add(TinyModels.Node("Relu", ["f1"], ["f1r"], "relu_se"));
        Conv("fc2", 8, 32, 1, 75, "f1r", "f2");
        g.Node.Add(TinyModels.Node("HardSigmoid", ["f2"], ["gate"], "hsig"));
        g.Node.Add(TinyModels.Node("Mul", ["d", "gate"], ["excited"], "excite"));
        Conv("project", 32, 16, 1, 76, "excited", "p");
        g.Node.Add(TinyModels.Node("Add", ["p", "t"], ["sum"], "residual_add"));
        g.Node.Add(TinyModels.Node("GlobalAveragePool", ["sum"], ["gap"], "gap"));
        g.Node.Add(TinyModels.Node("Flatten", ["gap"], ["flat"], "flatten"));
        g.Initializer.Add(TensorUtil.FromFloats("head_w", TinyModels.RandomFloats(4 * 16, 77, 0.25f), 4, 16));
        g.Initializer.Add(TensorUtil.FromFloats("head_b", TinyModels.RandomFloats(4, 78), 4));
        g.Node.Add(TinyModels.Node("Gemm", ["flat", "head_w", "head_b"], ["y"], "head", TinyModels.IntAttr("transB", 1)));
        ModelProto model = TinyModels.Model(g, opset: 14);
        ModelChecker.Validate(model, "m");
        ModelProto original = model.Clone();
        float[] calibration = TinyModels.RandomFloats(128 * 192, 79);
        ActivationSource source = (m, names) => TestActivations.Run(m, names, calibration, 128, 32, n => [n, 3, 8, 8]);

        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Channels:0.3", "m"), "m", source);
        ModelChecker.Validate(model, "m");
        TestContext.WriteLine($"pruned: {string.Join(", ", s.Pruned.Select(p => $"{p.Node} {p.OutputsBefore}->{p.OutputsAfter}"))}; refit: {string.Join(",", s.Reconstructed)}; " +
            $"skipped: {string.Join("; ", s.Skipped.Select(k => k.Node + ": " + k.Reason))}; channels {s.ChannelsRemoved}/{s.ChannelsBefore} (requested {s.RequestedChannelFraction})");

        // Not a silent no-op: channels went, and every prunable layer is either in the pruned list or skipped with a reason.
        Assert.IsFalse(s.NothingPruned);
        Assert.IsGreaterThan(0, s.ChannelsRemoved);
        Assert.AreEqual(0.3, s.RequestedChannelFraction);
        foreach (string layer in new[] { "stem", "expand", "dw", "fc1", "fc2", "project", "head" })
        {
            Assert.IsTrue(s.Pruned.Any(p => p.Node == layer) || s.Skipped.Any(k => k.Node == layer && k.Reason.Length > 0), $"{layer} is neither pruned nor reported");
        }
        // The expansion channels are one group (expand, the depthwise Conv and the excitation fc2 tied by the Mul): whatever
        // count the allocation chose, all of them agree and the depthwise group count follows.
        long expandOut = Dims(model, "expand_w")[0];
        Assert.AreEqual(expandOut, Dims(model, "dw_w")[0]);
        Assert.AreEqual(expandOut, Dims(model, "fc2_w")[0]);
        Assert.AreEqual(expandOut, Dims(model, "fc1_w")[1]);
        Assert.AreEqual(expandOut, Dims(model, "project_w")[1]);
        Assert.AreEqual(expandOut, model.Graph.Node.Single(n => n.Name == "dw").Attribute.Single(a => a.Name == "group").I);
        Assert.AreEqual(Dims(model, "stem_w")[0], Dims(model, "project_w")[0], "the residual Add ties stem and project");

        // No destroyed model reported as a success: on inputs that are not the calibration data the output stays close.
        float[] x = TinyModels.RandomFloats(32 * 192, 80);
        using var o = new Ort(original);
        using var pr = new Ort(model);
        float[] y = o.Run(x, [32, 3, 8, 8]), yp = pr.Run(x, [32, 3, 8, 8]);
        Assert.HasCount(32 * 4, yp);
        double err = Math.Sqrt(y.Select((v, i) => (double)(v - yp[i]) * (v - yp[i])).Sum() / y.Select(v => (double)v * v).Sum());
        TestContext.WriteLine($"relative L2 error {err:G4}, parameters {s.ParametersBefore} -> {s.ParametersAfter}, FLOPs {s.FlopsBefore} -> {s.FlopsAfter}");
        Assert.IsLessThan(s.FlopsBefore, s.FlopsAfter);
        Assert.IsLessThan(0.25, err);
    }

    private static long[] Dims(ModelProto m, string name) => [.. m.Graph.Initializer.Single(t => t.Name == name).Dims];
}
