using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Validation.Tests;

/// <summary>SensitivityHarm: the ORT-backed harm measure the worker gives Sensitivity pruning.</summary>
[TestClass]
public sealed class SensitivityHarmTests
{
    [TestMethod]
    public void Kl_divergence_is_zero_for_equal_logits_and_matches_a_hand_computed_value()
    {
        Assert.AreEqual(0.0, SensitivityHarm.KlDivergence([1f, 2f, 3f], [1f, 2f, 3f]), 1e-12);
        Assert.AreEqual(0.0, SensitivityHarm.KlDivergence([1f, 2f, 3f], [11f, 12f, 13f]), 1e-12, "softmax ignores a shift");
        // p = softmax(0, ln 3) = (1/4, 3/4), q = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2).
        double expected = 0.25 * Math.Log(0.5) + 0.75 * Math.Log(1.5);
        Assert.AreEqual(expected, SensitivityHarm.KlDivergence([0f, (float)Math.Log(3)], [0f, 0f]), 1e-6);
        Assert.IsTrue(double.IsNaN(SensitivityHarm.KlDivergence([0f, 1f], [float.NaN, 0f])));
    }

    [TestMethod]
    public void Harm_is_zero_for_the_original_and_grows_with_sparsity_on_mnist()
    {
        string path = Corpus.Model("mnist-mlp-gemm");
        var options = new ModelRunnerOptions { BatchSize = 128 };
        using ModelRunner runner = new(path, options);
        Dataset data = DatasetLoader.Load(Corpus.Dataset("mnist", "t10k-images-idx3-ubyte"), null, runner.Inputs, Preprocessing.Parse("layout=FLAT"), maxSamples: 256);
        HarmMeasure harm = SensitivityHarm.Create(runner, data, options);
        Assert.AreEqual(256, harm.Samples);
        StringAssert.Contains(harm.Name, "KL");
        ModelProto model = ModelIO.Load(path);
        Assert.AreEqual(0.0, harm.Measure(model), 1e-9);
        double previous = 0;
        foreach (string s in new[] { "Magnitude:0.5", "Magnitude:0.8", "Magnitude:0.95" })
        {
            ModelProto pruned = model.Clone();
            Pruner.Apply(pruned, PruningOptions.Parse(s, "m"), "m");
            double h = harm.Measure(pruned);
            Assert.IsGreaterThan(previous, h, s);
            previous = h;
        }
    }

    [TestMethod]
    public void A_layer_that_feeds_only_the_second_output_is_not_free_to_prune()
    {
        // x -> MatMul(w1) -> y1 (first output); x -> MatMul(w2) -> y2 (second output only, like a transformer's pooler).
        var g = new GraphProto { Name = "two-heads" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 8));
        g.Output.Add(TinyModels.FloatValue("y1", 1, 4));
        g.Output.Add(TinyModels.FloatValue("y2", 1, 4));
        g.Initializer.Add(TensorUtil.FromFloats("w1", TinyModels.RandomFloats(32, 1, 0.5f), 8, 4));
        g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(32, 2, 0.5f), 8, 4));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w1"], ["y1"], "head1"));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w2"], ["y2"], "head2"));
        ModelProto model = TinyModels.Model(g);
        WithRunner(model, runner =>
        {
            var samples = Enumerable.Range(0, 8).Select(s => new[] { new TensorData(TinyModels.RandomFloats(8, 40 + s), [1, 8]) }).ToList();
            var data = new Dataset("two-heads", ["x"], samples, [.. Enumerable.Range(0, 8).Select(s => "s" + s)], null, null);
            HarmMeasure harm = SensitivityHarm.Create(runner, data);
            StringAssert.Contains(harm.Name, "y2");
            Assert.AreEqual(0.0, harm.Measure(model), 1e-9, "the original: no harm");
            ModelProto firstZeroed = model.Clone();
            firstZeroed.Graph.Initializer[0] = TensorUtil.FromFloats("w1", new float[32], 8, 4);
            ModelProto secondZeroed = model.Clone();
            secondZeroed.Graph.Initializer[1] = TensorUtil.FromFloats("w2", new float[32], 8, 4);
            double first = harm.Measure(firstZeroed), second = harm.Measure(secondZeroed);
            Assert.IsGreaterThan(0.0, first);
            // Measured on the first output alone, the second head would cost exactly 0; the two heads are alike.
            Assert.IsGreaterThan(0.25 * first, second, $"zeroing the second head's weight harms the second output (first head: {first})");
        });
    }

    [TestMethod]
    public void A_bounded_second_output_weighs_like_a_token_output_beside_it()
    {
        // y1 = x1 w1 over [1, 4 tokens, 4] (a token output: relative squared error); y2 = tanh(x2 w2) over [1, 16], small
        // values like a transformer's tanh pooler, whose softmax is nearly uniform: by the KL alone, destroying y2 (w2 = 0,
        // y2 = 0 everywhere) would cost about a hundredth of destroying y1, and the pooler would look free to prune.
        var g = new GraphProto { Name = "token-and-pooler" };
        g.Input.Add(TinyModels.FloatValue("x1", 1, 4, 8));
        g.Input.Add(TinyModels.FloatValue("x2", 1, 8));
        g.Output.Add(TinyModels.FloatValue("y1", 1, 4, 4));
        g.Output.Add(TinyModels.FloatValue("y2", 1, 16));
        g.Initializer.Add(TensorUtil.FromFloats("w1", TinyModels.RandomFloats(32, 1, 0.5f), 8, 4));
        g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(128, 2, 0.1f), 8, 16));
        g.Node.Add(TinyModels.Node("MatMul", ["x1", "w1"], ["h1"], "tokens"));
        g.Node.Add(TinyModels.Node("Identity", ["h1"], ["y1"], "out1"));
        g.Node.Add(TinyModels.Node("MatMul", ["x2", "w2"], ["p"], "pooler"));
        g.Node.Add(TinyModels.Node("Tanh", ["p"], ["y2"], "tanh"));
        ModelProto model = TinyModels.Model(g);
        WithRunner(model, runner =>
        {
            var samples = Enumerable.Range(0, 8).Select(s => new[] { new TensorData(TinyModels.RandomFloats(32, 80 + s), [1, 4, 8]), new TensorData(TinyModels.RandomFloats(8, 90 + s), [1, 8]) }).ToList();
            var data = new Dataset("token-and-pooler", ["x1", "x2"], samples, [.. Enumerable.Range(0, 8).Select(s => "s" + s)], null, null);
            HarmMeasure harm = SensitivityHarm.Create(runner, data);
            StringAssert.Contains(harm.Name, "KL divergence of softmax('y2') vs the original + squared difference");
            ModelProto firstZeroed = model.Clone();
            firstZeroed.Graph.Initializer[0] = TensorUtil.FromFloats("w1", new float[32], 8, 4);
            ModelProto secondZeroed = model.Clone();
            secondZeroed.Graph.Initializer[1] = TensorUtil.FromFloats("w2", new float[128], 8, 16);
            double first = harm.Measure(firstZeroed), second = harm.Measure(secondZeroed);
            // Each output wiped out entirely: relative squared error 1 for either, plus y2's (small) KL.
            Assert.AreEqual(0.5, first, 1e-3, "y1 gone: relative squared error 1, averaged over the two outputs");
            Assert.IsGreaterThan(first, second, "y2 gone weighs at least as much as y1 gone");
            Assert.IsLessThan(1.5 * first, second, "the KL adds little over a nearly uniform softmax");
        });
    }

    [TestMethod]
    public void Padding_rows_of_a_token_output_do_not_count()
    {
        // y = x w over [1, 4 tokens, 8]; the last two tokens of every sample are padding (attention_mask 0) with values
        // 100x the real ones, so counting them would change both the error and the mean square it is divided by.
        var g = new GraphProto { Name = "tokens" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 4, 8));
        g.Input.Add(TinyModels.FloatValue("attention_mask", 1, 4));
        g.Output.Add(TinyModels.FloatValue("y", 1, 4, 4));
        float[] w = TinyModels.RandomFloats(32, 1, 0.5f);
        g.Initializer.Add(TensorUtil.FromFloats("w", w, 8, 4));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["y"], "proj"));
        ModelProto model = TinyModels.Model(g);
        WithRunner(model, runner =>
        {
            var xs = Enumerable.Range(0, 6).Select(s => TinyModels.RandomFloats(32, 60 + s).Select((v, i) => i >= 16 ? v * 100 : v).ToArray()).ToList();
            float[] mask = [1, 1, 0, 0];
            var samples = xs.Select(x => new[] { new TensorData(x, [1, 4, 8]), new TensorData(mask, [1, 4]) }).ToList();
            var data = new Dataset("tokens", ["x", "attention_mask"], samples, [.. Enumerable.Range(0, 6).Select(s => "s" + s)], null, null);
            HarmMeasure harm = SensitivityHarm.Create(runner, data);
            float[] changed = [.. w.Select((v, i) => i % 3 == 0 ? 0f : v)];
            ModelProto candidate = model.Clone();
            candidate.Graph.Initializer[0] = TensorUtil.FromFloats("w", changed, 8, 4);
            // By hand over the real rows (tokens 0 and 1) only.
            float[] Y(float[] x, float[] weights, int row) => [.. Enumerable.Range(0, 4).Select(o => Enumerable.Range(0, 8).Sum(i => x[row * 8 + i] * weights[i * 4 + o]))];
            double meanSquare = xs.Average(x => new[] { 0, 1 }.SelectMany(r => Y(x, w, r)).Average(v => (double)v * v));
            double expected = xs.Average(x => new[] { 0, 1 }.Sum(r => Y(x, w, r).Zip(Y(x, changed, r)).Sum(p => (double)(p.First - p.Second) * (p.First - p.Second))) / (meanSquare * 8));
            Assert.AreEqual(expected, harm.Measure(candidate), expected * 1e-3);
        });
    }

    [TestMethod]
    public void The_one_session_probe_gives_the_harm_of_the_model_with_that_weight_replaced()
    {
        string path = Corpus.Model("mnist-mlp-gemm");
        var options = new ModelRunnerOptions { BatchSize = 64 };
        using ModelRunner runner = new(path, options);
        Dataset data = DatasetLoader.Load(Corpus.Dataset("mnist", "t10k-images-idx3-ubyte"), null, runner.Inputs, Preprocessing.Parse("layout=FLAT"), maxSamples: 64);
        ModelProto model = ModelIO.Load(path);
        TensorProto weight = model.Graph.Initializer.Where(t => t.Dims.Count == 2).OrderByDescending(t => t.Dims[0] * t.Dims[1]).First();
        int inputsBefore = model.Graph.Input.Count;
        HarmMeasure harm = SensitivityHarm.Create(runner, data, options, model: model, weights: [weight.Name, "no-such-weight"]);
        Assert.IsNotNull(harm.MeasureWeight);
        float[] values = TensorUtil.ToFloatArray(weight);
        float[] pruned = [.. values.Select((v, i) => i % 2 == 0 ? 0f : v)];
        double fast = harm.MeasureWeight(weight.Name, pruned)!.Value;
        Assert.AreEqual(inputsBefore, model.Graph.Input.Count, "the model handed in is left as it was");
        ModelProto written = model.Clone();
        int at = written.Graph.Initializer.IndexOf(written.Graph.Initializer.Single(t => t.Name == weight.Name));
        written.Graph.Initializer[at] = TensorUtil.FromFloats(weight.Name, pruned, [.. weight.Dims]);
        double slow = harm.Measure(written);
        Assert.IsGreaterThan(0, slow);
        Assert.AreEqual(slow, fast, Math.Max(1e-6, slow * 1e-3), "same harm through the overridable initializer");
        Assert.AreEqual(0.0, harm.MeasureWeight(weight.Name, values)!.Value, 1e-6, "the original weight: no harm");
        Assert.IsNull(harm.MeasureWeight("no-such-weight", [1f]), "unknown to the model: the caller writes a model instead");
        Assert.IsNull(harm.MeasureWeight(weight.Name, [1f, 2f]), "another size");
        harm.Release!();
        Assert.AreEqual(fast, harm.MeasureWeight(weight.Name, pruned)!.Value, 1e-9, "reopened after Release");
        harm.Release();
    }

    [TestMethod]
    public void The_one_session_probe_replaces_weights_of_an_ir3_model_whose_initializers_are_inputs()
    {
        // Below IR 4 every initializer is also a graph input and ONNX Runtime lists none as overridable: without raising
        // the probe copy's IR version, every probe wrote a model (ResNet18 of the corpus is such a model).
        ModelProto model = ModelIO.Load(Corpus.Model("mnist-mlp-gemm"));
        model.IrVersion = 3;
        var names = new HashSet<string>(model.Graph.Input.Select(i => i.Name), StringComparer.Ordinal);
        foreach (TensorProto t in model.Graph.Initializer.Where(t => !names.Contains(t.Name)))
        {
            var vi = new ValueInfoProto { Name = t.Name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = t.DataType, Shape = new TensorShapeProto() } } };
            vi.Type.TensorType.Shape.Dim.AddRange(t.Dims.Select(d => new TensorShapeProto.Types.Dimension { DimValue = d }));
            model.Graph.Input.Add(vi);
        }
        string path = Path.Combine(Path.GetTempPath(), $"cob-ir3-{Guid.NewGuid():N}.onnx");
        File.WriteAllBytes(path, Google.Protobuf.MessageExtensions.ToByteArray(model));
        try
        {
            var options = new ModelRunnerOptions { BatchSize = 64 };
            using ModelRunner runner = new(path, options);
            Assert.IsEmpty(runner.OverridableInitializers, "IR 3: ORT lists no initializer as overridable");
            Dataset data = DatasetLoader.Load(Corpus.Dataset("mnist", "t10k-images-idx3-ubyte"), null, runner.Inputs, Preprocessing.Parse("layout=FLAT"), maxSamples: 64);
            TensorProto weight = model.Graph.Initializer.Where(t => t.Dims.Count == 2).OrderByDescending(t => t.Dims[0] * t.Dims[1]).First();
            int inputsBefore = model.Graph.Input.Count;
            HarmMeasure harm = SensitivityHarm.Create(runner, data, options, model: model, weights: [weight.Name]);
            float[] values = TensorUtil.ToFloatArray(weight);
            float[] pruned = [.. values.Select((v, i) => i % 2 == 0 ? 0f : v)];
            double? fast = harm.MeasureWeight!(weight.Name, pruned);
            Assert.IsNotNull(fast, "the weight is replaced on the one session, not by writing a model");
            Assert.AreEqual(3L, model.IrVersion, "the model handed in keeps its IR version");
            Assert.AreEqual(inputsBefore, model.Graph.Input.Count, "and its inputs");
            ModelProto written = model.Clone();
            int at = written.Graph.Initializer.IndexOf(written.Graph.Initializer.Single(t => t.Name == weight.Name));
            written.Graph.Initializer[at] = TensorUtil.FromFloats(weight.Name, pruned, [.. weight.Dims]);
            double slow = harm.Measure(written);
            Assert.IsGreaterThan(0, slow);
            Assert.AreEqual(slow, fast!.Value, Math.Max(1e-6, slow * 1e-3), "same harm as the written model");
            harm.Release!();
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>Saves <paramref name="model"/> to a temporary file, opens it in ONNX Runtime for <paramref name="body"/>, then deletes the file.</summary>
    private static void WithRunner(ModelProto model, Action<ModelRunner> body)
    {
        string path = Path.Combine(Path.GetTempPath(), $"cob-harm-{Guid.NewGuid():N}.onnx");
        ModelIO.Save(model, path);
        try
        {
            using ModelRunner runner = new(path);
            body(runner);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
