using System.Diagnostics;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Tests.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using static CompressOnBuild.Core.Tests.Pruning.PruningTestHelpers;

namespace CompressOnBuild.Core.Tests.Pruning;

[TestClass]
public sealed class ChannelPruningTests
{
    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void Removing_neurons_that_the_next_layer_ignores_keeps_the_output_exactly()
    {
        ModelProto model = TinyModels.Mlp(inF: 16, hidden: 8, classes: 4);
        float[] w1 = Weight(model, "w1"), w2 = Weight(model, "w2");
        // Hidden neurons 1, 4, 6 get tiny incoming weights (smallest L1) and no outgoing weight.
        foreach (int h in new[] { 1, 4, 6 })
        {
            for (int k = 0; k < 16; k++)
            {
                w1[h * 16 + k] *= 0.01f;
            }
            for (int c = 0; c < 4; c++)
            {
                w2[c * 8 + h] = 0f;
            }
        }
        model.Graph.Initializer[0] = TensorUtil.FromFloats("w1", w1, 8, 16);
        model.Graph.Initializer[2] = TensorUtil.FromFloats("w2", w2, 4, 8);
        ModelProto original = model.Clone();

        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Channels:0.375", "m"), "m");
        ModelChecker.Validate(model, "m");
        CollectionAssert.AreEqual(new long[] { 5, 16 }, Dims(model, "w1"));
        CollectionAssert.AreEqual(new long[] { 5 }, Dims(model, "b1"));
        CollectionAssert.AreEqual(new long[] { 4, 5 }, Dims(model, "w2"));
        Assert.AreEqual(8, s.Pruned.Single(p => p.Node == "fc1").OutputsBefore);
        Assert.AreEqual(5, s.Pruned.Single(p => p.Node == "fc1").OutputsAfter);
        Assert.AreEqual(16 * 8 + 8 + 4 * 8 + 4 - 12, s.ParametersBefore, "12 outgoing weights were set to zero above");
        Assert.AreEqual(16 * 5 + 5 + 4 * 5 + 4, s.ParametersAfter);
        Assert.IsLessThan(s.ModelBytesBefore, s.ModelBytesAfter);

        using var a = new Ort(original);
        using var b = new Ort(model);
        float[] x = TinyModels.RandomFloats(3 * 16, 5);
        float[] ya = a.Run(x, [3, 16]), yb = b.Run(x, [3, 16]);
        for (int i = 0; i < ya.Length; i++)
        {
            Assert.AreEqual(ya[i], yb[i], 1e-4f);
        }
    }

    [TestMethod]
    public void Least_squares_reconstruction_recovers_a_redundant_neuron()
    {
        // Hidden neuron 0 duplicates neuron 1 (same incoming weights and bias x 0.5, so h0 = 0.5 h1 after Relu) but
        // has the smallest L1 norm: without refit its contribution is lost, with refit it moves onto neuron 1.
        ModelProto model = TinyModels.Mlp(inF: 16, hidden: 8, classes: 4);
        float[] w1 = Weight(model, "w1"), b1 = Weight(model, "b1"), w2 = Weight(model, "w2");
        for (int k = 0; k < 16; k++)
        {
            w1[k] = 0.5f * w1[16 + k];
        }
        b1[0] = 0.5f * b1[1];
        for (int c = 0; c < 4; c++)
        {
            w2[c * 8] = 3f;
        }
        model.Graph.Initializer[0] = TensorUtil.FromFloats("w1", w1, 8, 16);
        model.Graph.Initializer[1] = TensorUtil.FromFloats("b1", b1, 8);
        model.Graph.Initializer[2] = TensorUtil.FromFloats("w2", w2, 4, 8);
        ModelProto original = model.Clone();
        float[] calibration = TinyModels.RandomFloats(200 * 16, 3);
        ActivationSource source = (m, names) => TestActivations.Run(m, names, calibration, 200, 50, b => [b, 16]);

        var options = PruningOptions.Parse("Channels:0.125", "m");
        ModelProto plain = original.Clone();
        PruningSummary sp = Pruner.Apply(plain, options, "m");
        ModelProto refit = original.Clone();
        PruningSummary sr = Pruner.Apply(refit, options, "m", source);
        Assert.IsEmpty(sp.Reconstructed);
        CollectionAssert.AreEqual(new[] { "fc2" }, sr.Reconstructed.ToArray());
        CollectionAssert.AreEqual(new long[] { 7, 16 }, Dims(refit, "w1"));

        float[] x = TinyModels.RandomFloats(100 * 16, 99); // not the calibration data
        using var o = new Ort(original);
        using var p = new Ort(plain);
        using var r = new Ort(refit);
        float[] y = o.Run(x, [100, 16]), yp = p.Run(x, [100, 16]), yr = r.Run(x, [100, 16]);
        double errPlain = y.Select((v, i) => (double)(v - yp[i]) * (v - yp[i])).Sum();
        double errRefit = y.Select((v, i) => (double)(v - yr[i]) * (v - yr[i])).Sum();
        TestContext.WriteLine($"squared error without refit {errPlain:G4}, with {errRefit:G4}");
        Assert.IsGreaterThan(1.0, errPlain);
        Assert.IsLessThan(errPlain * 1e-3, errRefit);
    }

    [TestMethod]
    public void Conv_channels_feeding_a_Conv_through_Relu_and_MaxPool_are_removed()
    {
        var g = new GraphProto { Name = "convs" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 2, 8, 8));
        g.Output.Add(TinyModels.FloatValue("y", "N", 3, 2, 2));
        g.Initializer.Add(TensorUtil.FromFloats("wa", TinyModels.RandomFloats(10 * 2 * 9, 1), 10, 2, 3, 3));
        g.Initializer.Add(TensorUtil.FromFloats("ba", TinyModels.RandomFloats(10, 2), 10));
        g.Initializer.Add(TensorUtil.FromFloats("wb", TinyModels.RandomFloats(3 * 10 * 4, 3), 3, 10, 2, 2));
        g.Node.Add(TinyModels.Node("Conv", ["x", "wa", "ba"], ["a"], "conv_a", TinyModels.IntsAttr("pads", 1, 1, 1, 1)));
        g.Node.Add(TinyModels.Node("Relu", ["a"], ["ar"], "relu"));
        g.Node.Add(TinyModels.Node("MaxPool", ["ar"], ["ap"], "pool", TinyModels.IntsAttr("kernel_shape", 2, 2), TinyModels.IntsAttr("strides", 2, 2)));
        g.Node.Add(TinyModels.Node("Conv", ["ap", "wb"], ["y"], "conv_b", TinyModels.IntsAttr("strides", 2, 2)));
        ModelProto model = TinyModels.Model(g);
        float[] calibration = TinyModels.RandomFloats(64 * 128, 9);
        ActivationSource source = (m, names) => TestActivations.Run(m, names, calibration, 64, 32, b => [b, 2, 8, 8]);
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Channels:0.3", "m"), "m", source);
        ModelChecker.Validate(model, "m");
        CollectionAssert.AreEqual(new long[] { 7, 2, 3, 3 }, Dims(model, "wa"));
        CollectionAssert.AreEqual(new long[] { 7 }, Dims(model, "ba"));
        CollectionAssert.AreEqual(new long[] { 3, 7, 2, 2 }, Dims(model, "wb"));
        Assert.IsTrue(s.Skipped.Any(k => k.Node == "conv_b" && k.Reason.Contains("graph output", StringComparison.Ordinal)), string.Join("; ", s.Skipped));
        Assert.AreEqual(2L * (10 * 18 * 64 + 3 * 40 * 4), s.FlopsBefore);
        Assert.AreEqual(2L * (7 * 18 * 64 + 3 * 28 * 4), s.FlopsAfter);
        using var ort = new Ort(model);
        Assert.HasCount(2 * 12, ort.Run(TinyModels.RandomFloats(2 * 128, 4), [2, 2, 8, 8]));
    }

    [TestMethod]
    public void Fan_out_and_unfollowable_consumers_are_skipped_not_broken()
    {
        var g = new GraphProto { Name = "fanout" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 8));
        g.Output.Add(TinyModels.FloatValue("y", "N", 8));
        g.Output.Add(TinyModels.FloatValue("z", "N", 8));
        g.Initializer.Add(TensorUtil.FromFloats("w1", TinyModels.RandomFloats(64, 1), 8, 8));
        g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(64, 2), 8, 8));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w1"], ["h"], "mm1"));
        g.Node.Add(TinyModels.Node("Softmax", ["h"], ["z"], "soft"));
        g.Node.Add(TinyModels.Node("MatMul", ["h", "w2"], ["y"], "mm2"));
        ModelProto model = TinyModels.Model(g);
        byte[] before = model.ToByteArray();
        PruningSummary s = Pruner.Apply(model, PruningOptions.Parse("Channels:0.5", "m"), "m");
        Assert.IsTrue(s.NothingPruned);
        StringAssert.Contains(s.Skipped.Single(k => k.Node == "mm1").Reason, "reaches Softmax 'soft'");
        CollectionAssert.AreEqual(before, model.ToByteArray());
    }

    [TestMethod]
    [DataRow("mnist-mlp-gemm")]
    [DataRow("fashion-mlp")]
    [DataRow("mnist-lenet5")]
    public void Channels_30_percent_on_the_corpus(string id)
    {
        ModelProto original = ModelIO.Load(Corpus.Model(id));
        double baseline = CorpusEval.Spec(id).Baseline;
        var options = PruningOptions.Parse("Channels:0.3", id);

        // Calibration: the first 1000 test images, unlabelled (Conv channels are pruned only with them; "plain" skips the refit).
        ActivationSource source = TestActivations.Corpus(id, 1000);
        ModelProto plain = original.Clone();
        PruningSummary sp = Pruner.Apply(plain, options with { Reconstruct = false }, id, source);
        ModelChecker.Validate(plain, id);
        double plainTop1 = CorpusEval.Accuracy(CorpusEval.Predict(plain, id), id);

        ModelProto refit = original.Clone();
        var watch = Stopwatch.StartNew();
        PruningSummary s = Pruner.Apply(refit, options, id, source);
        long applyMs = watch.ElapsedMilliseconds;
        ModelChecker.Validate(refit, id);
        double refitTop1 = CorpusEval.Accuracy(CorpusEval.Predict(refit, id), id);

        double latency = LatencyRatio(original, refit, id);
        double paramsFewer = 1 - (double)s.ParametersAfter / s.ParametersBefore;
        TestContext.WriteLine($"{id} Channels:0.3: top-1 {baseline:F2}% -> {plainTop1:F2}% without refit (drop {baseline - plainTop1:F2}), {refitTop1:F2}% with least-squares refit (drop {baseline - refitTop1:F2}); " +
            $"params {s.ParametersBefore} -> {s.ParametersAfter} ({paramsFewer:P1} fewer); FLOPs {s.FlopsBefore} -> {s.FlopsAfter}; onnx {s.ModelBytesBefore} -> {s.ModelBytesAfter}; ORT latency pruned/original (1 thread) {latency:F2}; " +
            $"layers: {string.Join(", ", s.Pruned.Select(p => $"{p.Node} {p.OutputsBefore}->{p.OutputsAfter} outs, {p.ElementsBefore}->{p.ElementsAfter} w"))}; refit: {string.Join(",", s.Reconstructed)}; skipped: {string.Join("; ", s.Skipped.Select(k => k.Node + ": " + k.Reason))}; pass {applyMs} ms");
        File.AppendAllText(Path.Combine(Path.GetTempPath(), "prune-channels.txt"), $"{id}: plain drop {baseline - plainTop1:F2}, refit drop {baseline - refitTop1:F2}, params {paramsFewer:P1} fewer, latency {latency:F2}, {s.ParametersBefore}->{s.ParametersAfter}\n");

        Assert.IsNotEmpty(s.Reconstructed);
        // Without the refit every group loses round(0.3 x C) by weight norm; with it the channels are chosen by reconstruction and
        // spread over the groups by the measured error, giving up about the multiply-adds the uniform split would (steps of 8 channels).
        Assert.IsLessThanOrEqualTo(sp.FlopsAfter * 1.1, (double)s.FlopsAfter, $"{id}: FLOPs {s.FlopsAfter} with the measured allocation, {sp.FlopsAfter} uniform");
        Assert.IsGreaterThanOrEqualTo(0.25, paramsFewer, $"{id}: {s.ParametersBefore} -> {s.ParametersAfter}");
        Assert.IsLessThanOrEqualTo(1.0, baseline - refitTop1, $"{id}: {baseline:F2} -> {refitTop1:F2} with refit");
        Assert.IsGreaterThanOrEqualTo(plainTop1 - 0.2, refitTop1, "the refit must not make it worse");
    }

    private static double LatencyRatio(ModelProto original, ModelProto pruned, string id)
    {
        (float[] images, _) = CorpusEval.Data(id);
        long[] shape = CorpusEval.ShapeFor(id)(1);
        float[] one = images.AsSpan(0, 784).ToArray();
        double Time(ModelProto m)
        {
            using var ort = new Ort(m, GraphOptimizationLevel.ORT_ENABLE_ALL, threads: 1);
            for (int i = 0; i < 50; i++)
            {
                ort.Run(one, shape);
            }
            var w = Stopwatch.StartNew();
            for (int i = 0; i < 500; i++)
            {
                ort.Run(one, shape);
            }
            return w.Elapsed.TotalMilliseconds;
        }
        double a = Time(original), b = Time(pruned), a2 = Time(original), b2 = Time(pruned);
        return (b + b2) / (a + a2);
    }
}
