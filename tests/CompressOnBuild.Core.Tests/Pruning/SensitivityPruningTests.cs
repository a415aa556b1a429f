using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Tests.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;
using static CompressOnBuild.Core.Tests.Pruning.PruningTestHelpers;

namespace CompressOnBuild.Core.Tests.Pruning;

/// <summary>Sensitivity-guided per-layer sparsity (Pruning="Sensitivity:s") on tiny in-code models, harm measured in ORT.</summary>
[TestClass]
public sealed class SensitivityPruningTests
{
    /// <summary>
    /// x[N,16] -> MatMul(wa[16,16]) -> Mul(10) --Add--> y[N,16]; x -> MatMul(wb[16,16]) -> Mul(0.1) --^.
    /// Both weights have the same size and the same distribution; the 100x larger scale on branch a makes it the
    /// sensitive one. Neither layer feeds another, so KeepOutputLayers is turned off to prune both.
    /// </summary>
    private static ModelProto TwoBranches()
    {
        var g = new GraphProto { Name = "two-branches" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 16));
        g.Output.Add(TinyModels.FloatValue("y", "N", 16));
        g.Initializer.Add(TensorUtil.FromFloats("wa", TinyModels.RandomFloats(256, 11), 16, 16));
        g.Initializer.Add(TensorUtil.FromFloats("wb", TinyModels.RandomFloats(256, 12), 16, 16));
        g.Initializer.Add(TensorUtil.FromFloats("sa", [10f]));
        g.Initializer.Add(TensorUtil.FromFloats("sb", [0.1f]));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "wa"], ["a"], "branch_a"));
        g.Node.Add(TinyModels.Node("Mul", ["a", "sa"], ["a2"], "scale_a"));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "wb"], ["b"], "branch_b"));
        g.Node.Add(TinyModels.Node("Mul", ["b", "sb"], ["b2"], "scale_b"));
        g.Node.Add(TinyModels.Node("Add", ["a2", "b2"], ["y"], "sum"));
        return TinyModels.Model(g);
    }

    /// <summary>Mean KL(softmax(original) || softmax(candidate)) over 64 fixed random inputs, run in ORT.</summary>
    private static HarmMeasure Kl(ModelProto original, int features)
    {
        const int samples = 64;
        float[] x = TinyModels.RandomFloats(samples * features, 99);
        float[] reference;
        using (var ort = new Ort(original))
        {
            reference = ort.Run(x, [samples, features]);
        }
        return new HarmMeasure("test KL", samples, candidate =>
        {
            using var ort = new Ort(candidate);
            float[] y = ort.Run(x, [samples, features]);
            int classes = y.Length / samples;
            double sum = 0;
            for (int s = 0; s < samples; s++)
            {
                sum += TestKl(reference.AsSpan(s * classes, classes), y.AsSpan(s * classes, classes));
            }
            return sum / samples;
        });
    }

    private static double TestKl(ReadOnlySpan<float> p, ReadOnlySpan<float> q)
    {
        double[] lp = LogSoftmax(p), lq = LogSoftmax(q);
        return lp.Select((v, i) => Math.Exp(v) * (v - lq[i])).Sum();
    }

    private static double[] LogSoftmax(ReadOnlySpan<float> v)
    {
        double max = double.NegativeInfinity;
        foreach (float f in v)
        {
            max = Math.Max(max, f);
        }
        double sum = 0;
        foreach (float f in v)
        {
            sum += Math.Exp(f - max);
        }
        double log = max + Math.Log(sum);
        var result = new double[v.Length];
        for (int i = 0; i < v.Length; i++)
        {
            result[i] = v[i] - log;
        }
        return result;
    }

    [TestMethod]
    [DataRow(0.1)]
    [DataRow(0.37)]
    [DataRow(0.5)]
    [DataRow(0.83)]
    [DataRow(0.95)]
    public void Overall_sparsity_is_the_target_to_the_element(double target)
    {
        ModelProto original = TinyModels.Mlp(inF: 32, hidden: 16, classes: 8);
        ModelProto model = original.Clone();
        PruningSummary s = Pruner.Apply(model, All("Sensitivity:" + target.ToString(System.Globalization.CultureInfo.InvariantCulture)), "m", harm: Kl(original, 32));
        ModelChecker.Validate(model, "m");
        long elements = 32 * 16 + 16 * 8;
        long expected = (long)Math.Round(target * elements);
        Assert.AreEqual(expected, Zeros(Weight(model, "w1")) + Zeros(Weight(model, "w2")), "zeros in the model");
        Assert.AreEqual(expected, s.Pruned.Sum(p => p.NonzerosBefore - p.NonzerosAfter), "zeros in the summary");
        SensitivityAnalysis a = s.Sensitivity!;
        Assert.AreEqual(expected, a.ChosenZeros);
        Assert.AreEqual(expected, a.TargetZeros);
        Assert.AreEqual(elements, a.Elements);
        Assert.AreEqual(expected, a.Layers.Sum(l => l.ChosenZeros));
        Assert.AreEqual(14, a.Probes, "2 layers x 7 grid points");
        foreach (LayerSensitivity l in a.Layers)
        {
            CollectionAssert.AreEqual(new[] { 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95 }, l.Curve.Select(c => c.Sparsity).ToArray());
            Assert.IsTrue(l.Curve.All(c => c.Harm >= 0 && double.IsFinite(c.Harm)), l.Node);
            Assert.IsLessThan(l.Curve[^1].Harm, l.Curve[0].Harm, $"{l.Node}: pruning 25% must hurt less than 95%");
            Assert.AreEqual(l.ChosenZeros, s.Pruned.Single(p => p.Node == l.Node).NonzerosBefore - s.Pruned.Single(p => p.Node == l.Node).NonzerosAfter);
        }
        // Per layer, the zeroed weights are the smallest ones (nested magnitude masks).
        foreach (string name in new[] { "w1", "w2" })
        {
            float[] w0 = Weight(original, name), w = Weight(model, name);
            if (Zeros(w) > 0 && Zeros(w) < w.Length)
            {
                Assert.IsLessThanOrEqualTo(w0.Where((v, i) => w[i] != 0f).Min(MathF.Abs), w0.Where((v, i) => w[i] == 0f).Max(MathF.Abs), name);
            }
        }
    }

    [TestMethod]
    public void A_layer_made_sensitive_gets_the_lower_sparsity()
    {
        ModelProto original = TwoBranches();
        ModelProto model = original.Clone();
        PruningSummary s = Pruner.Apply(model, All("Sensitivity:0.5"), "m", harm: Kl(original, 16));
        double a = s.Pruned.Single(p => p.Node == "branch_a").Sparsity, b = s.Pruned.Single(p => p.Node == "branch_b").Sparsity;
        Assert.AreEqual(256, Zeros(Weight(model, "wa")) + Zeros(Weight(model, "wb")), "half of all 512 weights");
        Assert.IsLessThan(0.5, a, $"sensitive branch a: {a:P1}");
        Assert.IsGreaterThan(0.5, b, $"insensitive branch b: {b:P1}");
        LayerSensitivity[] layers = [.. s.Sensitivity!.Layers];
        Assert.IsGreaterThan(layers.Single(l => l.Node == "branch_b").Curve[3].Harm * 10, layers.Single(l => l.Node == "branch_a").Curve[3].Harm,
            "at 70% the sensitive branch measures far more harm");
        Assert.IsLessThanOrEqualTo(s.Sensitivity.UniformPredictedHarm, s.Sensitivity.PredictedHarm);

        // The chosen split is measured better than the uniform 50/50 split on the same inputs.
        ModelProto uniform = original.Clone();
        Pruner.Apply(uniform, All("Magnitude:0.5"), "m");
        HarmMeasure measure = Kl(original, 16);
        Assert.IsLessThan(measure.Measure(uniform), measure.Measure(model));
        Assert.IsFalse(s.Sensitivity.FellBackToUniform, "the allocation measured together beats uniform");
        Assert.IsLessThan(s.Sensitivity.UniformMeasuredHarm!.Value, s.Sensitivity.MeasuredHarm!.Value);
    }

    [TestMethod]
    public void A_second_allocation_with_the_same_reuse_table_measures_nothing_again_and_chooses_the_same()
    {
        // Tune reruns the allocation per attempt, some layers excluded: each probe is the unchanged model with one layer
        // pruned, so the harms measured by the first attempt hold for the later ones.
        ModelProto original = TwoBranches();
        int measured = 0;
        HarmMeasure kl = Kl(original, 16);
        var reuse = new Dictionary<string, double>(StringComparer.Ordinal);
        HarmMeasure counting = new(kl.Name, kl.Samples, m => { measured++; return kl.Measure(m); }) { Reuse = reuse };
        ModelProto first = original.Clone(), second = original.Clone(), excluded = original.Clone();
        PruningSummary s1 = Pruner.Apply(first, All("Magnitude:0.5"), "m", harm: counting);
        // Besides the probes, the allocation measures whole pruned models against uniform ones (not reusable).
        int afterFirst = measured, checks = afterFirst - s1.Sensitivity!.Probes;
        Assert.IsGreaterThan(0, s1.Sensitivity.Probes);
        Assert.AreEqual(0, s1.Sensitivity.ReusedProbes);
        PruningSummary s2 = Pruner.Apply(second, All("Magnitude:0.5"), "m", harm: counting);
        Assert.AreEqual(afterFirst + checks, measured, "no probe measured again");
        Assert.AreEqual(s2.Sensitivity!.Probes, s2.Sensitivity.ReusedProbes);
        afterFirst = measured;
        CollectionAssert.AreEqual(Weight(first, "wa"), Weight(second, "wa"));
        CollectionAssert.AreEqual(Weight(first, "wb"), Weight(second, "wb"));
        PruningSummary s3 = Pruner.Apply(excluded, All("Magnitude:0.5") with { ExcludedNodes = ["branch_a"] }, "m", harm: counting);
        Assert.AreEqual(afterFirst, measured, "a layer excluded: the other's curve is reused");
        Assert.AreEqual(s3.Sensitivity!.Probes, s3.Sensitivity.ReusedProbes);
        // Without the table every allocation measures again.
        Pruner.Apply(original.Clone(), All("Magnitude:0.5"), "m", harm: counting with { Reuse = null });
        Assert.AreEqual(afterFirst + s1.Sensitivity.Probes + checks, measured, "every probe measured again");
    }

    [TestMethod]
    [DataRow("Sensitivity:0")]
    [DataRow("Sensitivity:1")]
    [DataRow("Sensitivity:0.96")]
    [DataRow("Sensitivity:-0.5")]
    [DataRow("Sensitivity:half")]
    [DataRow("Sensitivity")]
    [DataRow("Sensitivity:0.5:0.7")]
    public void Bad_values_are_CMPR0003(string text)
    {
        var e = Assert.ThrowsExactly<CompressException>(() => PruningOptions.Parse(text, "m.onnx"));
        Assert.AreEqual(DiagnosticCodes.InvalidOption, e.Code);
        StringAssert.Contains(e.Message, text);
    }

    [TestMethod]
    public void Parse_accepts_any_case_and_round_trips()
    {
        PruningOptions o = PruningOptions.Parse("sensitivity:0.7", "m");
        Assert.AreEqual(PruningMethod.Sensitivity, o.Method);
        Assert.AreEqual(0.7, o.Sparsity);
        Assert.AreEqual("Sensitivity:0.7", o.ToString());
        Assert.AreEqual(0.95, PruningOptions.Parse("Sensitivity:0.95", "m").Sparsity);
    }

    [TestMethod]
    public void Without_data_to_measure_on_it_is_CMPR0003_and_nothing_changes()
    {
        ModelProto model = TinyModels.Mlp();
        byte[] before = model.ToByteArray();
        var e = Assert.ThrowsExactly<CompressException>(() => Pruner.Apply(model, PruningOptions.Parse("Sensitivity:0.5", "m.onnx"), "m.onnx"));
        Assert.AreEqual(DiagnosticCodes.InvalidOption, e.Code);
        StringAssert.Contains(e.Message, "CalibrationData");
        CollectionAssert.AreEqual(before, model.ToByteArray());
    }

    [TestMethod]
    public void A_grid_built_in_code_is_validated()
    {
        ModelProto model = TinyModels.Mlp();
        HarmMeasure none = new("zero", 1, _ => 0);
        foreach (PruningOptions bad in new[]
        {
            new PruningOptions { Method = PruningMethod.Sensitivity, Sparsity = 0.5, SensitivityGrid = [0.5, 0.25] },
            new PruningOptions { Method = PruningMethod.Sensitivity, Sparsity = 0.5, SensitivityGrid = [0.25, 1.0] },
            new PruningOptions { Method = PruningMethod.Sensitivity, Sparsity = 0.5, SensitivityGrid = [] },
            new PruningOptions { Method = PruningMethod.Sensitivity, Sparsity = 0.8, SensitivityGrid = [0.25, 0.5, 0.75] },
        })
        {
            var e = Assert.ThrowsExactly<CompressException>(() => Pruner.Apply(model, bad, "m", harm: none), string.Join(",", bad.SensitivityGrid));
            Assert.AreEqual(DiagnosticCodes.InvalidOption, e.Code);
        }
    }

    [TestMethod]
    public void The_measured_model_is_restored_after_every_probe()
    {
        ModelProto original = TinyModels.Mlp(inF: 32, hidden: 16, classes: 8);
        ModelProto model = original.Clone();
        var seen = new List<(int W1, int W2)>();
        var probe = new HarmMeasure("zeros seen", 1, m => { seen.Add((Zeros(Weight(m, "w1")), Zeros(Weight(m, "w2")))); return seen.Count; });
        Pruner.Apply(model, All("Sensitivity:0.5"), "m", harm: probe);
        // 14 one-layer probes, then the allocation and uniform sparsity measured with both layers pruned together.
        Assert.HasCount(16, seen);
        // Exactly one layer is pruned per probe, at the grid's counts (0.25 x 512 = 128 ... for w1, 0.25 x 128 = 32 ... for w2).
        CollectionAssert.AreEqual(new[] { 128, 256, 307, 358, 410, 461, 486 }, seen.Take(7).Select(p => p.W1).ToArray());
        Assert.IsTrue(seen.Take(7).All(p => p.W2 == 0));
        CollectionAssert.AreEqual(new[] { 32, 64, 77, 90, 102, 115, 122 }, seen.Skip(7).Take(7).Select(p => p.W2).ToArray());
        Assert.IsTrue(seen.Skip(7).Take(7).All(p => p.W1 == 0));
        Assert.AreEqual(320, seen[14].W1 + seen[14].W2, "the allocation, all layers together");
        Assert.AreEqual((256, 64), seen[15], "every layer at 50%");
        Assert.AreEqual(0, Zeros(Weight(original, "w1")) + Zeros(Weight(original, "w2")));
    }

    /// <summary>
    /// A harm that the one-layer probes cannot see: pruning w1 alone costs 0.1 per unit of sparsity, except between the
    /// grid's 60% and 70% (where the allocation, interpolating, puts it), where it costs 5; w2 costs 1 per unit. So the
    /// allocation picks w1 at 62.5% and w2 dense, which measures 5 together, against 0.55 for both at 50%.
    /// </summary>
    private static HarmMeasure BumpBetweenGridPoints() => new("bump", 8, m =>
    {
        double f1 = Zeros(Weight(m, "w1")) / 512.0, f2 = Zeros(Weight(m, "w2")) / 128.0;
        return (f1 is > 0.61 and < 0.69 ? 5 : 0.1 * f1) + f2;
    });

    [TestMethod]
    [DataRow("Sensitivity:0.5")]
    [DataRow("Magnitude:0.5")]
    public void An_allocation_that_measures_worse_than_uniform_falls_back_to_uniform_and_says_so(string method)
    {
        ModelProto original = TinyModels.Mlp(inF: 32, hidden: 16, classes: 8);
        ModelProto model = original.Clone();
        PruningSummary s = Pruner.Apply(model, All(method), "m", harm: BumpBetweenGridPoints());
        SensitivityAnalysis a = s.Sensitivity!;
        Assert.IsTrue(a.FellBackToUniform);
        Assert.AreEqual(5.0, a.MeasuredHarm!.Value, 1e-9, "the allocation (w1 62.5%, w2 dense) measured together");
        Assert.AreEqual(0.55, a.UniformMeasuredHarm!.Value, 1e-9, "both layers at 50%");
        Assert.AreEqual("uniform", s.Allocation);
        Assert.AreEqual(256, Zeros(Weight(model, "w1")), "uniform applied to the model");
        Assert.AreEqual(64, Zeros(Weight(model, "w2")));
        CollectionAssert.AreEqual(new long[] { 256, 64 }, a.Layers.Select(l => l.ChosenZeros).ToArray(), "the report shows what was applied");
        Assert.AreEqual(320, a.ChosenZeros);
        StringAssert.Contains(string.Join("\n", s.SparsityNotes), "uniform sparsity used");
        ModelChecker.Validate(model, "m");
    }

    [TestMethod]
    public void With_the_output_layer_kept_by_default_uniform_is_also_what_the_uniform_option_would_prune()
    {
        // KeepOutputLayers on (Magnitude's default): the uniform option keeps w2 (the output layer) dense and makes up
        // for it on w1 (0.5 x 640 / 512 = 62.5%, inside the bump); every layer at 50% is the better uniform candidate.
        ModelProto original = TinyModels.Mlp(inF: 32, hidden: 16, classes: 8);
        ModelProto model = original.Clone();
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Magnitude:0.5", "m"), "m", harm: BumpBetweenGridPoints());
        SensitivityAnalysis a = s.Sensitivity!;
        Assert.IsTrue(a.FellBackToUniform);
        StringAssert.Contains(a.UniformCandidate, "every layer at 50");
        Assert.AreEqual(256, Zeros(Weight(model, "w1")));
        Assert.AreEqual(64, Zeros(Weight(model, "w2")));

        // Without the bump the allocation (w1 62.5%, w2 dense: 0.0625) equals the uniform option's split and is not measured
        // against itself; every layer at 50% (0.55) measures worse, so the allocation stays.
        ModelProto model2 = original.Clone();
        PruningSummary s2 = Pruner.Apply(model2, PruningOptions.Parse("Magnitude:0.5", "m"), "m", harm: new HarmMeasure("smooth", 8, m =>
            0.1 * Zeros(Weight(m, "w1")) / 512.0 + Zeros(Weight(m, "w2")) / 128.0));
        Assert.IsFalse(s2.Sensitivity!.FellBackToUniform);
        Assert.AreEqual("sensitivity", s2.Allocation);
        Assert.AreEqual(320, Zeros(Weight(model2, "w1")));
        Assert.AreEqual(0, Zeros(Weight(model2, "w2")));
        Assert.AreEqual(0.0625, s2.Sensitivity.MeasuredHarm!.Value, 1e-9);
        Assert.AreEqual(0.55, s2.Sensitivity.UniformMeasuredHarm!.Value, 1e-9);
    }

    [TestMethod]
    public void A_gain_within_the_required_margin_is_not_enough_to_keep_the_allocation()
    {
        // The allocation (w1 at 320 zeros, w2 dense; never a one-layer probe point) measures 1% less than both layers at
        // 50% together: within RequiredGain (2%), so uniform is applied. At 3% less, the allocation stays.
        foreach ((double allocationHarm, bool fallBack) in new[] { (0.99, true), (0.97, false) })
        {
            ModelProto original = TinyModels.Mlp(inF: 32, hidden: 16, classes: 8);
            ModelProto model = original.Clone();
            PruningSummary s = Pruner.Apply(model, All("Sensitivity:0.5"), "m", harm: new HarmMeasure("near tie", 8, m =>
            {
                int z1 = Zeros(Weight(m, "w1")), z2 = Zeros(Weight(m, "w2"));
                return (z1, z2) == (256, 64) ? 1.0 : (z1, z2) == (320, 0) ? allocationHarm : 0.01 * z1 / 512.0 + z2 / 128.0;
            }));
            Assert.AreEqual(fallBack, s.Sensitivity!.FellBackToUniform, $"allocation {allocationHarm} vs uniform 1.0");
            Assert.AreEqual(fallBack ? 256 : 320, Zeros(Weight(model, "w1")));
            Assert.AreEqual(fallBack ? 64 : 0, Zeros(Weight(model, "w2")));
        }
    }

    [TestMethod]
    public void Allocation_takes_the_cheapest_harm_per_element_first_on_convex_hulls()
    {
        // Layer 0: harm 1 per element (linear). Layer 1: harm 0 up to 50 elements, then 10 per element.
        // Layer 2: non-convex (a bump at 25 that the hull skips): (25, 5), (50, 2), (100, 100).
        long[] elements = [100, 100, 100];
        long[] start = [0, 0, 0];
        IReadOnlyList<IReadOnlyList<SensitivityPoint>> curves =
        [
            [new(0.5, 50, 50), new(1.0, 100, 100)],
            [new(0.5, 50, 0), new(1.0, 100, 500)],
            [new(0.25, 25, 5), new(0.5, 50, 2), new(1.0, 100, 100)],
        ];
        // 50 free from layer 1, then 50 at slope 0.04 from layer 2, then layer 0 at slope 1.
        CollectionAssert.AreEqual(new long[] { 0, 50, 50 }, SensitivityPruner.Allocate(elements, start, curves, 100));
        CollectionAssert.AreEqual(new long[] { 30, 50, 50 }, SensitivityPruner.Allocate(elements, start, curves, 130));
        CollectionAssert.AreEqual(new long[] { 0, 37, 0 }, SensitivityPruner.Allocate(elements, start, curves, 37));
        // Beyond layer 0 (slope 1), layer 2 (slope 1.96) before layer 1 (slope 10).
        CollectionAssert.AreEqual(new long[] { 100, 50, 60 }, SensitivityPruner.Allocate(elements, start, curves, 210));
        // Elements that are already zero are kept and counted.
        CollectionAssert.AreEqual(new long[] { 20, 50, 50 }, SensitivityPruner.Allocate(elements, [20, 0, 0], [[new(0.5, 50, 30), new(1.0, 100, 80)], curves[1], curves[2]], 120));
    }
}
