using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Validation.Tests;

/// <summary>ActivationCollector feeding Pruner: the path the worker takes for calibration-driven pruning.</summary>
[TestClass]
public sealed class ActivationCollectorTests
{
    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void Collects_hidden_activations_and_drives_channel_pruning_with_refit()
    {
        string path = Corpus.Model("mnist-mlp-gemm");
        using ModelRunner runner = new(path, new ModelRunnerOptions { BatchSize = 100 });
        Dataset data = DatasetLoader.Load(Corpus.Dataset("mnist", "t10k-images-idx3-ubyte"), Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte"), runner.Inputs,
            Preprocessing.Parse("layout=FLAT;mean=0;std=1"));
        ModelProto model = ModelIO.Load(path);
        string hidden = model.Graph.Node.First(n => n.OpType == "Relu").Output[0];

        Dictionary<string, Activation> acts = ActivationCollector.Collect(model, [hidden], data, maxSamples: 250, new ModelRunnerOptions { BatchSize = 100 });
        Activation a = acts[hidden];
        CollectionAssert.AreEqual(new long[] { 250, 512 }, a.Shape);
        Assert.HasCount(250 * 512, a.Data);
        Assert.IsTrue(a.Data.All(v => v >= 0f), "values after Relu");
        Assert.IsTrue(a.Data.Any(v => v > 0f));

        ModelProto pruned = model.Clone();
        PruningSummary s = Pruner.Apply(pruned, PruningOptions.Parse("Channels:0.3", "m"), "mnist-mlp-gemm", ActivationCollector.Create(data, maxSamples: 1000));
        Assert.HasCount(2, s.Reconstructed);
        string outPath = Path.Combine(Path.GetTempPath(), $"cob-collector-{Environment.ProcessId}.onnx");
        try
        {
            ModelIO.Save(pruned, outPath);
            using ModelRunner prunedRunner = new(outPath, new ModelRunnerOptions { BatchSize = 100 });
            ModelEvaluation e = Validator.Evaluate(prunedRunner, data);
            TestContext.WriteLine($"Channels:0.3 with refit from ActivationCollector: top-1 {e.Accuracy:F2}%");
            Assert.IsGreaterThan(95.4, e.Accuracy!.Value);
        }
        finally
        {
            File.Delete(outPath);
        }
    }
    [TestMethod]
    public void Only_what_the_tensor_needs_is_run_and_token_rows_carry_the_attention_mask()
    {
        // x[N,3,4] -> MatMul(w) -> Relu -> h -> MatMul(w2) -> y; the mask feeds only its own output m2 and x a Log z:
        // collecting h leaves those nodes and their constants out, and the then unused mask input is still accepted.
        var g = new GraphProto { Name = "tokens" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 3, 4));
        g.Input.Add(TinyModels.FloatValue("attention_mask", "N", 3));
        g.Output.Add(TinyModels.FloatValue("y", "N", 3, 2));
        g.Output.Add(TinyModels.FloatValue("m2", "N", 3));
        g.Output.Add(TinyModels.FloatValue("z", "N", 3, 4));
        float[] w = TinyModels.RandomFloats(16, 3);
        g.Initializer.Add(TensorUtil.FromFloats("w", w, 4, 4));
        g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(8, 4), 4, 2));
        g.Initializer.Add(TensorUtil.FromFloats("two", [2f]));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["a"], "mm1"));
        g.Node.Add(TinyModels.Node("Relu", ["a"], ["h"], "relu"));
        g.Node.Add(TinyModels.Node("MatMul", ["h", "w2"], ["y"], "mm2"));
        g.Node.Add(TinyModels.Node("Mul", ["attention_mask", "two"], ["m2"], "mul"));
        g.Node.Add(TinyModels.Node("Log", ["x"], ["z"], "log"));
        ModelProto model = TinyModels.Model(g);
        float[] x = TinyModels.RandomFloats(2 * 3 * 4, 5);
        var samples = new List<TensorData[]>
        {
            new[] { new TensorData(x[..12], [1, 3, 4]), new TensorData([1f, 1f, 0f], [1, 3]) },
            new[] { new TensorData(x[12..], [1, 3, 4]), new TensorData([1f, 0f, 0f], [1, 3]) },
        };
        var data = new Dataset("tiny", ["x", "attention_mask"], samples, ["first", "second"], null, null);
        foreach (int batch in new[] { 1, 2 })
        {
            var options = new ModelRunnerOptions { BatchSize = batch };
            Activation h = ActivationCollector.Collect(model, ["h"], data, options: options)["h"];
            CollectionAssert.AreEqual(new long[] { 2, 3, 4 }, h.Shape);
            for (int r = 0; r < 6; r++)
            {
                for (int c = 0; c < 4; c++)
                {
                    float want = Math.Max(0f, Enumerable.Range(0, 4).Sum(i => x[r * 4 + i] * w[i * 4 + c]));
                    Assert.AreEqual(want, h.Data[r * 4 + c], 1e-5f, $"batch {batch}, row {r}, column {c}");
                }
            }
            CollectionAssert.AreEqual(new[] { 1f, 1f, 0f, 1f, 0f, 0f }, h.RowMask, $"batch {batch}");
            // A graph input asked for (the whole graph is kept then).
            Activation input = ActivationCollector.Collect(model, ["x"], data, options: options)["x"];
            CollectionAssert.AreEqual(x, input.Data);
            CollectionAssert.AreEqual(new[] { 1f, 1f, 0f, 1f, 0f, 0f }, input.RowMask);
        }
        // Not laid out [batch, tokens, ...]: no row mask.
        Assert.IsNull(ActivationCollector.Collect(model, ["m2"], data)["m2"].RowMask);
    }

    [TestMethod]
    public void Row_statistics_are_those_of_the_collected_activations_from_the_model_and_from_its_file()
    {
        // x[N, T, 4] -> MatMul(w) -> h (width 4) -> Relu -> y, 40 samples of 1 to 9 tokens (200 rows): with 30 rows kept the samples
        // run twice, and what is kept is what the whole collection reduces to, batched or not.
        var g = new GraphProto { Name = "rows" };
        g.Input.Add(TinyModels.FloatValue("x", "N", "T", 4));
        g.Initializer.Add(TensorUtil.FromFloats("w", TinyModels.RandomFloats(16, 3), 4, 4));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["h"], "mm"));
        g.Node.Add(TinyModels.Node("Relu", ["h"], ["y"], "relu"));
        g.Output.Add(TinyModels.FloatValue("y", "N", "T", 4));
        ModelProto model = TinyModels.Model(g);
        var samples = new List<TensorData[]>();
        for (int i = 0; i < 40; i++)
        {
            int tokens = 1 + i * 5 % 9;
            samples.Add([new TensorData(TinyModels.RandomFloats(tokens * 4, 100 + i), [1, tokens, 4])]);
        }
        var data = new Dataset("tokens", ["x"], samples, [.. samples.Select((_, i) => "s" + i)], null, null);
        long rows = samples.Sum(s => s[0].Shape[1]);
        ActivationRows expected = ActivationRows.From(ActivationCollector.Collect(model, ["h"], data, maxSamples: 0)["h"], 30)!;
        Assert.AreEqual(rows, expected.TotalRows);
        Assert.AreEqual(30, expected.Count);

        ActivationRows fromModel = ActivationCollector.CollectRows(model, ["h"], data, maxSamples: 0, maxRows: 30)["h"]!;
        string path = Path.Combine(Path.GetTempPath(), $"cob-rows-{Environment.ProcessId}-{Guid.NewGuid():N}.onnx");
        try
        {
            ModelIO.Save(model, path);
            ActivationRows fromFile = ActivationCollector.CollectRowsFromFile(path, ["y"], ["h"], data, maxSamples: 0, maxRows: 30)["h"]!;
            foreach (ActivationRows r in new[] { fromModel, fromFile })
            {
                Assert.AreEqual(expected.TotalRows, r.TotalRows);
                Assert.AreEqual(4, r.Width);
                CollectionAssert.AreEqual(expected.ColumnMaxAbs, r.ColumnMaxAbs);
                CollectionAssert.AreEqual(expected.Rows, r.Rows);
            }
        }
        finally
        {
            File.Delete(path);
        }
        // Fewer rows than kept: one pass, every row.
        ActivationRows few = ActivationCollector.CollectRows(model, ["h"], data, maxSamples: 3, maxRows: 30)["h"]!;
        Assert.AreEqual(samples.Take(3).Sum(s => s[0].Shape[1]), few.TotalRows);
        Assert.AreEqual(few.TotalRows, few.Count);
    }
}
