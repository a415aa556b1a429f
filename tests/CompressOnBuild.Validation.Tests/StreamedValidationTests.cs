using CompressOnBuild.Core;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Validation.Tests;

/// <summary>
/// Validator.Compare compares each sample's outputs as the two models produce them (and drops them); these tests check
/// that this gives exactly the metrics of running each model over the whole data set first and comparing afterwards,
/// whatever the number of concurrent runs; and that the calibrator and the file-based activation collection, which
/// hold no parsed model while ONNX Runtime runs, give what the model-based ones give.
/// </summary>
[TestClass]
public sealed class StreamedValidationTests
{
    private TempDirectory dir = null!;

    [TestInitialize]
    public void Init() => dir = new TempDirectory("cob-streamed");

    [TestCleanup]
    public void Cleanup() => dir.Delete();

    /// <summary>x[1, T, 4] and attention_mask[1, T] -> y = x W [1, T, 3] (per token) and z = Relu(y) + mask-independent.</summary>
    private static ModelProto PerToken(float[] w)
    {
        var g = new GraphProto { Name = "tokens" };
        g.Input.Add(TinyModels.FloatValue("x", 1, "T", 4));
        g.Input.Add(TinyModels.FloatValue("attention_mask", 1, "T"));
        g.Output.Add(TinyModels.FloatValue("y", 1, "T", 3));
        g.Output.Add(TinyModels.FloatValue("z", 1, "T", 3));
        g.Initializer.Add(TensorUtil.FromFloats("w", w, 4, 3));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["y"], "mm"));
        g.Node.Add(TinyModels.Node("Relu", ["y"], ["z"], "relu"));
        return TinyModels.Model(g);
    }

    private static Dataset Tokens(int samples)
    {
        var list = new List<TensorData[]>();
        var names = new List<string>();
        for (int s = 0; s < samples; s++)
        {
            int t = 3 + s % 4;
            float[] mask = [.. Enumerable.Range(0, t).Select(i => i < t - s % 2 ? 1f : 0f)];
            list.Add([new TensorData(TinyModels.RandomFloats(t * 4, 100 + s), [1, t, 4]), new TensorData(mask, [1, t])]);
            names.Add("sample" + s);
        }
        return new Dataset("tokens", ["x", "attention_mask"], list, names, null, null);
    }

    [TestMethod]
    public void Streamed_comparison_gives_the_metrics_of_whole_runs_compared_afterwards()
    {
        float[] w = TinyModels.RandomFloats(12, 1);
        float[] noisy = [.. w.Zip(TinyModels.RandomFloats(12, 2, 0.05f), (a, e) => a + e)];
        string a = Path.Combine(dir.Path, "a.onnx"), b = Path.Combine(dir.Path, "b.onnx");
        TestFiles.Save(PerToken(w), a);
        TestFiles.Save(PerToken(noisy), b);
        Dataset data = Tokens(40);

        // Reference: each model over the whole data set (one run at a time), compared afterwards.
        using var refA = new ModelRunner(a, new ModelRunnerOptions { Parallelism = 1 });
        using var refB = new ModelRunner(b, new ModelRunnerOptions { Parallelism = 1 });
        DatasetRun runA = refA.RunDataset(data, ["y", "z"], batchSize: 1);
        DatasetRun runB = refB.RunDataset(data, ["y", "z"], batchSize: 1);
        var cos = new double[2];
        var rel = new double[2];
        var relCount = new int[2];
        var max = new float[2];
        var pooledA = new List<float[]>();
        var pooledB = new List<float[]>();
        for (int s = 0; s < data.Count; s++)
        {
            for (int o = 0; o < 2; o++)
            {
                ErrorMetricsResult m = ErrorMetrics.Compare(runA.Outputs[s][o].Data, runB.Outputs[s][o].Data);
                cos[o] += m.CosineSimilarity;
                if (m.ExpectedNorm > 0)
                {
                    rel[o] += m.RelativeL2;
                    relCount[o]++;
                }
                max[o] = Math.Max(max[o], m.MaxAbsDifference);
            }
            float[] mask = data.GetSample(s)[1].Data;
            pooledA.Add(EmbeddingMetrics.Pool(runA.Outputs[s][0], mask));
            pooledB.Add(EmbeddingMetrics.Pool(runB.Outputs[s][0], mask));
        }
        EmbeddingMetrics expected = EmbeddingMetrics.Compare(pooledA, pooledB, "x");

        foreach (int parallel in new[] { 1, 2, 3 })
        {
            using var original = new ModelRunner(a, new ModelRunnerOptions { Parallelism = parallel });
            using var compressed = new ModelRunner(b, new ModelRunnerOptions { Parallelism = parallel });
            ValidationResult r = Validator.Compare(original, compressed, data, new ValidatorOptions { LatencyRuns = 0 });
            Assert.AreEqual(OutputKind.Embedding, r.Metric, $"parallel {parallel}");
            Assert.AreEqual(40, r.SampleCount);
            Assert.AreEqual(parallel, r.ParallelRuns);
            for (int o = 0; o < 2; o++)
            {
                Assert.AreEqual(cos[o] / data.Count, r.Outputs[o].MeanCosineSimilarity, $"output {o}, parallel {parallel}");
                Assert.AreEqual(rel[o] / relCount[o], r.Outputs[o].MeanRelativeL2Error, $"output {o}, parallel {parallel}");
                Assert.AreEqual(max[o], r.Outputs[o].MaxAbsError, $"output {o}, parallel {parallel}");
            }
            Assert.IsNotNull(r.Embedding);
            StringAssert.Contains(r.Embedding.Pooling, "attention_mask");
            Assert.AreEqual(expected.MeanCosine, r.Embedding.MeanCosine, $"parallel {parallel}");
            Assert.AreEqual(expected.MinCosine, r.Embedding.MinCosine);
            Assert.AreEqual(expected.NeighborAgreement, r.Embedding.NeighborAgreement);
            Assert.AreEqual(expected.SimilarityCorrelation, r.Embedding.SimilarityCorrelation);
            Assert.IsLessThan(1.0, r.Embedding.MeanCosine, "the noisy weights differ");
            Assert.IsGreaterThan(0.0, r.OriginalImagesPerSecond);
            Assert.IsGreaterThan(0.0, r.CompressedImagesPerSecond);
        }
    }

    /// <summary>
    /// Validation shrinks both sessions' arenas after the sample runs (before the metrics and the latency runs): the
    /// runs after a shrink give the same outputs to the bit, and a validation with latency still measures both models.
    /// </summary>
    [TestMethod]
    public void Runs_after_an_arena_shrink_give_the_same_outputs_to_the_bit()
    {
        string a = Path.Combine(dir.Path, "a.onnx");
        TestFiles.Save(PerToken(TinyModels.RandomFloats(12, 1)), a);
        Dataset data = Tokens(24);
        using var runner = new ModelRunner(a, new ModelRunnerOptions { Parallelism = 3 });
        DatasetRun before = runner.RunDataset(data, ["y", "z"], batchSize: 1);
        runner.ShrinkArena(runner.SampleFor(data, 0));
        DatasetRun after = runner.RunDataset(data, ["y", "z"], batchSize: 1);
        for (int s = 0; s < data.Count; s++)
        {
            for (int o = 0; o < 2; o++)
            {
                CollectionAssert.AreEqual(before.Outputs[s][o].Data, after.Outputs[s][o].Data, $"sample {s}, output {o}");
            }
        }

        using var compressed = new ModelRunner(a, new ModelRunnerOptions { Parallelism = 2 });
        ValidationResult r = Validator.Compare(runner, compressed, data, new ValidatorOptions { LatencyRuns = 5, WarmupRuns = 1 });
        Assert.AreEqual(1.0, r.Embedding!.MeanCosine, 1e-9, "the same model on both sides");
        Assert.AreEqual(5, r.LatencyRuns);
        Assert.IsGreaterThan(0.0, r.OriginalLatencyMs);
        Assert.IsGreaterThan(0.0, r.CompressedLatencyMs);
    }

    /// <summary>
    /// The caller may close both sessions once the latency runs are done (SessionsDone, before the embedding metrics):
    /// every metric is the same as with the sessions open to the end, and it is called once, after the latency runs.
    /// </summary>
    [TestMethod]
    public void Sessions_closed_before_the_embedding_metrics_give_the_same_metrics()
    {
        float[] w = TinyModels.RandomFloats(12, 1);
        float[] noisy = [.. w.Zip(TinyModels.RandomFloats(12, 2, 0.05f), (a, e) => a + e)];
        string a = Path.Combine(dir.Path, "a.onnx"), b = Path.Combine(dir.Path, "b.onnx");
        TestFiles.Save(PerToken(w), a);
        TestFiles.Save(PerToken(noisy), b);
        Dataset data = Tokens(30);
        ValidationResult open;
        using (var original = new ModelRunner(a))
        using (var compressed = new ModelRunner(b))
        {
            open = Validator.Compare(original, compressed, data, new ValidatorOptions { LatencyRuns = 3, WarmupRuns = 1 });
        }

        var closedOriginal = new ModelRunner(a);
        var closedCompressed = new ModelRunner(b);
        int calls = 0;
        ValidationResult closed = Validator.Compare(closedOriginal, closedCompressed, data, new ValidatorOptions
        {
            LatencyRuns = 3, WarmupRuns = 1,
            SessionsDone = () =>
            {
                calls++;
                closedCompressed.Dispose();
                closedOriginal.Dispose();
            },
        });
        closedOriginal.Dispose();
        closedCompressed.Dispose(); // a second Dispose does nothing
        Assert.AreEqual(1, calls);
        Assert.AreEqual(3, closed.LatencyRuns, "the latency runs came before the sessions closed");
        Assert.IsGreaterThan(0.0, closed.CompressedLatencyMs);
        Assert.AreEqual(OutputKind.Embedding, closed.Metric);
        Assert.AreEqual(open.Embedding!.MeanCosine, closed.Embedding!.MeanCosine);
        Assert.AreEqual(open.Embedding.MinCosine, closed.Embedding.MinCosine);
        Assert.AreEqual(open.Embedding.NeighborAgreement, closed.Embedding.NeighborAgreement);
        Assert.AreEqual(open.Embedding.NeighborAgreementAll, closed.Embedding.NeighborAgreementAll);
        Assert.AreEqual(open.Embedding.SimilarityCorrelation, closed.Embedding.SimilarityCorrelation);
        Assert.AreEqual(open.Top1Agreement, closed.Top1Agreement);
        for (int o = 0; o < open.Outputs.Count; o++)
        {
            Assert.AreEqual(open.Outputs[o].MeanCosineSimilarity, closed.Outputs[o].MeanCosineSimilarity);
            Assert.AreEqual(open.Outputs[o].MaxAbsError, closed.Outputs[o].MaxAbsError);
            Assert.AreEqual(open.Outputs[o].MeanRelativeL2Error, closed.Outputs[o].MeanRelativeL2Error);
        }
    }

    [TestMethod]
    public void Original_failing_wins_over_a_compressed_failure_at_an_earlier_sample()
    {
        // Sample 5 carries NaN: the original's non-finite output is the user's data (reported for the original), even
        // though the compressed model (a Sqrt of negative values) already fails at sample 0 as well.
        float[] w = TinyModels.RandomFloats(12, 1);
        string a = Path.Combine(dir.Path, "a.onnx"), b = Path.Combine(dir.Path, "b.onnx");
        TestFiles.Save(PerToken(w), a);
        ModelProto bad = PerToken(w);
        bad.Graph.Node[1] = TinyModels.Node("Sqrt", ["y"], ["z"], "sqrt");
        TestFiles.Save(bad, b);
        Dataset data = Tokens(8);
        var samples = Enumerable.Range(0, 8).Select(s => data.GetSample(s).ToArray()).ToList();
        samples[5][0] = new TensorData([.. samples[5][0].Data.Select(v => float.NaN)], samples[5][0].Shape);
        var poisoned = new Dataset("tokens", ["x", "attention_mask"], samples, [.. Enumerable.Range(0, 8).Select(s => "sample" + s)], null, null);
        using var original = new ModelRunner(a);
        using var compressed = new ModelRunner(b);
        CompressException e = Assert.ThrowsExactly<CompressException>(() => Validator.Compare(original, compressed, poisoned, new ValidatorOptions { LatencyRuns = 0 }));
        Assert.AreEqual(DiagnosticCodes.NonFiniteOutputs, e.Code);
        Assert.AreEqual(a, e.File);
        StringAssert.Contains(e.Message, "5");
    }

    [TestMethod]
    public void Calibration_of_a_model_it_is_given_to_drop_equals_calibration_of_a_kept_model()
    {
        ModelProto model = TinyModels.Mlp();
        var samples = Enumerable.Range(0, 12).Select(s => new[] { new TensorData(TinyModels.RandomFloats(16, 30 + s), [1, 16]) }).ToList();
        var data = new Dataset("mlp", [model.Graph.Input[0].Name], samples, [.. Enumerable.Range(0, 12).Select(s => "s" + s)], null, null);
        string[] tensors = [.. model.Graph.Node.SelectMany(n => n.Output)];
        foreach (CalibrationMethod method in new[] { CalibrationMethod.MinMax, CalibrationMethod.Percentile })
        {
            var options = new CalibrationOptions { Method = method, Percentile = 99 };
            CalibrationResult kept = Calibrator.Run(model, data, tensors, options);
            CalibrationResult dropped = Calibrator.Run(() => (model.Clone(), tensors), data, options);
            Assert.HasCount(tensors.Length, kept.Ranges);
            CollectionAssert.AreEquivalent(kept.Ranges.ToList(), dropped.Ranges.ToList(), method.ToString());
        }
        Assert.AreEqual(1, model.Graph.Output.Count, "the caller's model is not changed");
    }

    [TestMethod]
    public void Collection_from_the_model_file_equals_collection_from_the_parsed_model()
    {
        ModelProto model = PerToken(TinyModels.RandomFloats(12, 1));
        string path = Path.Combine(dir.Path, "m.onnx");
        TestFiles.Save(model, path);
        Dataset data = Tokens(6);
        // A graph input, a graph output and an intermediate value all asked for.
        string[] names = ["x", "y", "z"];
        Dictionary<string, Activation> parsed = ActivationCollector.Collect(model, names, data, workDirectory: dir.Path);
        Dictionary<string, Activation> file = ActivationCollector.CollectFromFile(path, ["y", "z"], names, data, workDirectory: dir.Path);
        foreach (string n in names)
        {
            CollectionAssert.AreEqual(parsed[n].Shape, file[n].Shape, n);
            CollectionAssert.AreEqual(parsed[n].Data, file[n].Data, n);
            CollectionAssert.AreEqual(parsed[n].RowMask, file[n].RowMask, n);
        }
        Assert.AreEqual(1, Directory.GetFiles(dir.Path).Length, "the collection model is deleted");
    }
}
