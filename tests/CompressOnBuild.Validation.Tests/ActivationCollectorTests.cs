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
}
