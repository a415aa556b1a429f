using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Tests.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;
using static CompressOnBuild.Core.Tests.Pruning.PruningTestHelpers;

namespace CompressOnBuild.Core.Tests.Pruning;

/// <summary>
/// Issue 15 item 3: with a harm measure (the worker passes one when CalibrationData is set), Magnitude:s and
/// SparseGPT:s choose per-layer sparsities from measured harm; ":uniform" and no data keep every layer at s.
/// </summary>
[TestClass]
public sealed class DefaultAllocationTests
{
    private const int Features = 16;
    private const int Samples = 64;

    /// <summary>
    /// x[N,16] -> MatMul(wa) -> Mul(10) --Add--> y; x -> MatMul(wb) -> Mul(0.1) --^. Same size, same weight
    /// distribution; the 100x scale makes branch a the fragile one. Both are output layers (nothing prunable follows).
    /// </summary>
    private static ModelProto TwoBranches()
    {
        var g = new GraphProto { Name = "two-branches" };
        g.Input.Add(TinyModels.FloatValue("x", "N", Features));
        g.Output.Add(TinyModels.FloatValue("y", "N", Features));
        g.Initializer.Add(TensorUtil.FromFloats("wa", TinyModels.RandomFloats(256, 11), Features, Features));
        g.Initializer.Add(TensorUtil.FromFloats("wb", TinyModels.RandomFloats(256, 12), Features, Features));
        g.Initializer.Add(TensorUtil.FromFloats("sa", [10f]));
        g.Initializer.Add(TensorUtil.FromFloats("sb", [0.1f]));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "wa"], ["a"], "branch_a"));
        g.Node.Add(TinyModels.Node("Mul", ["a", "sa"], ["a2"], "scale_a"));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "wb"], ["b"], "branch_b"));
        g.Node.Add(TinyModels.Node("Mul", ["b", "sb"], ["b2"], "scale_b"));
        g.Node.Add(TinyModels.Node("Add", ["a2", "b2"], ["y"], "sum"));
        return TinyModels.Model(g);
    }

    private static readonly float[] X = TinyModels.RandomFloats(Samples * Features, 99);

    /// <summary>Mean relative squared output error over 64 fixed inputs, run in ORT; counts its calls.</summary>
    private sealed class Harm(ModelProto original)
    {
        private readonly float[] reference = Run(original);
        public int Calls;

        private static float[] Run(ModelProto m)
        {
            using var ort = new Ort(m);
            return ort.Run(X, [Samples, Features]);
        }

        public HarmMeasure Measure => new("relative squared error", Samples, candidate =>
        {
            Calls++;
            float[] y = Run(candidate);
            double num = 0, den = 0;
            for (int i = 0; i < y.Length; i++)
            {
                num += (y[i] - reference[i]) * (double)(y[i] - reference[i]);
                den += reference[i] * (double)reference[i];
            }
            return num / den;
        });
    }

    private static ActivationSource Source => (m, names) => TestActivations.Run(m, names, X, Samples, Samples, b => [b, Features]);

    [TestMethod]
    [DataRow("Magnitude:0.5")]
    [DataRow("SparseGPT:0.5")]
    public void With_data_the_fragile_layer_gets_the_lower_sparsity_and_the_overall_sparsity_is_exact(string method)
    {
        ModelProto original = TwoBranches();
        ModelProto model = original.Clone();
        var harm = new Harm(original);
        // Default options: KeepOutputLayers is on, yet both (output) layers are measured and pruned.
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse(method, "m"), "m", Source, harm.Measure);
        ModelChecker.Validate(model, "m");
        Assert.AreEqual("sensitivity", s.Allocation);
        Assert.AreEqual(256, Zeros(Weight(model, "wa")) + Zeros(Weight(model, "wb")), "exactly half of all 512 weights");
        Assert.AreEqual(0.5, s.AchievedSparsity, 1e-12);
        double a = s.Pruned.Single(p => p.Node == "branch_a").Sparsity, b = s.Pruned.Single(p => p.Node == "branch_b").Sparsity;
        Assert.IsLessThan(0.5, a, $"fragile branch a: {a:P1}");
        Assert.IsGreaterThan(0.5, b, $"robust branch b: {b:P1}");
        SensitivityAnalysis analysis = s.Sensitivity!;
        Assert.AreEqual(14, analysis.Probes, "2 layers x 7 grid points");
        // Magnitude then measures the allocation and every layer at 50% with both layers pruned together (2 more);
        // SparseGPT's allocation is not checked that way (each candidate would need its own reconstruction).
        Assert.AreEqual(method.StartsWith("Magnitude", StringComparison.Ordinal) ? 16 : 14, harm.Calls);
        Assert.AreEqual(method.StartsWith("Magnitude", StringComparison.Ordinal), analysis.MeasuredHarm.HasValue);
        Assert.IsFalse(analysis.FellBackToUniform);
        Assert.AreEqual(256, analysis.ChosenZeros);
        Assert.IsLessThanOrEqualTo(analysis.UniformPredictedHarm, analysis.PredictedHarm);
        Assert.IsFalse(s.Skipped.Any(k => k.Reason.Contains("output layer", StringComparison.Ordinal)), "the measurement, not the output-layer rule, decides");

        // Measured against uniform on the same inputs: the allocation is better.
        ModelProto uniform = original.Clone();
        Pruner.Apply(uniform, PruningOptions.Parse(method + ":uniform", "m") with { KeepOutputLayers = false }, "m", Source, harm.Measure);
        Assert.IsLessThan(harm.Measure.Measure(uniform), harm.Measure.Measure(model), "sensitivity-allocated harm below uniform");
    }

    [TestMethod]
    [DataRow("Magnitude:0.5:uniform")]
    [DataRow("SparseGPT:0.5:uniform")]
    public void The_uniform_suffix_keeps_every_layer_at_the_requested_sparsity_and_measures_nothing(string method)
    {
        ModelProto model = TwoBranches();
        var harm = new Harm(model.Clone());
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse(method, "m") with { KeepOutputLayers = false }, "m", Source, harm.Measure);
        Assert.AreEqual("uniform", s.Allocation);
        Assert.IsNull(s.Sensitivity);
        Assert.AreEqual(0, harm.Calls);
        Assert.AreEqual(128, Zeros(Weight(model, "wa")));
        Assert.AreEqual(128, Zeros(Weight(model, "wb")));
    }

    [TestMethod]
    public void Without_data_Magnitude_is_unchanged_uniform_with_the_output_layer_rule()
    {
        ModelProto model = TinyModels.Mlp(inF: 32, hidden: 16, classes: 8);
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Magnitude:0.5", "m"), "m");
        Assert.AreEqual("uniform", s.Allocation);
        Assert.IsNull(s.Sensitivity);
        Assert.AreEqual(0, Zeros(Weight(model, "w2")), "output layer kept dense without a measurement");
        Assert.IsGreaterThan(256, Zeros(Weight(model, "w1")), "the hidden layer makes up for it");
    }

    [TestMethod]
    public void The_one_session_path_replaces_the_model_writing_path_when_the_measure_offers_it()
    {
        ModelProto original = TwoBranches();
        ModelProto model = original.Clone();
        var harm = new Harm(original);
        int fast = 0;
        HarmMeasure measure = harm.Measure with
        {
            MeasureWeight = (name, values) =>
            {
                fast++;
                // Equivalent to writing the weight into the original and measuring it.
                ModelProto copy = original.Clone();
                PrunableLayers.SetConstant(new PassGraph(copy), name, values);
                return harm.Measure.Measure(copy);
            },
        };
        int slowBefore = harm.Calls;
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Magnitude:0.5", "m"), "m", Source, measure);
        Assert.AreEqual(14, fast);
        Assert.AreEqual(slowBefore + 14 + 2, harm.Calls, "each probe measured once, through MeasureWeight; the allocation and uniform measured together write their model");
        Assert.IsLessThan(0.5, s.Pruned.Single(p => p.Node == "branch_a").Sparsity);
        CollectionAssert.AreEqual(Weight(original, "sa"), Weight(model, "sa"));
    }

    [TestMethod]
    public void Allocation_is_parsed_printed_and_limited_to_unstructured_schemes()
    {
        Assert.AreEqual(PruningAllocation.Uniform, PruningOptions.Parse("magnitude:0.3:UNIFORM", "m").Allocation);
        Assert.AreEqual("Magnitude:0.3:uniform", PruningOptions.Parse("magnitude:0.3:UNIFORM", "m").ToString());
        Assert.AreEqual("SparseGPT:0.5:uniform", PruningOptions.Parse("SparseGPT:0.5:uniform", "m").ToString());
        Assert.AreEqual("SparseGPT:0.5", PruningOptions.Parse("SparseGPT:0.5", "m").ToString());
        Assert.IsTrue(PruningOptions.Parse("SparseGPT:0.5", "m").AllocatesBySensitivity);
        Assert.IsFalse(PruningOptions.Parse("SparseGPT:2:4", "m").AllocatesBySensitivity, "N:M keeps its pattern in every layer");
        Assert.IsFalse(PruningOptions.Parse("NofM:2:4", "m").AllocatesBySensitivity);
        Assert.IsFalse(PruningOptions.Parse("Global:0.5", "m").AllocatesBySensitivity);
        foreach (string bad in new[] { "NofM:2:4:uniform", "Global:0.5:uniform", "Channels:0.3:uniform", "Magnitude:0.5:even", "SparseGPT:2:4:uniform" })
        {
            var e = Assert.ThrowsExactly<CompressException>(() => PruningOptions.Parse(bad, "m.onnx"), bad);
            Assert.AreEqual(DiagnosticCodes.InvalidOption, e.Code, bad);
        }
    }
}
