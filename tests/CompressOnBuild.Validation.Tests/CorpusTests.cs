using System.Globalization;
using System.Text.Json;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Validation.Tests;

/// <summary>The real models and data sets of the shared corpus, with the preprocessing from each spec.json.</summary>
[TestClass]
public sealed class CorpusTests
{
    public TestContext TestContext { get; set; } = null!;

    /// <summary>Our preprocessing string from spec.json's "eval" block (layout, scale "0..1" = pixel/255, mean, std).</summary>
    private static string PreprocessingFromSpec(string id)
    {
        using JsonDocument spec = JsonDocument.Parse(File.ReadAllText(Path.Combine(Corpus.RequireDirectory(), "models", id, "spec.json")));
        JsonElement eval = spec.RootElement.GetProperty("eval");
        List<string> parts = ["layout=" + eval.GetProperty("layout").GetString()];
        Assert.AreEqual("0..1", eval.GetProperty("scale").GetString());
        if (eval.TryGetProperty("mean", out JsonElement mean))
        {
            parts.Add("mean=" + mean.GetDouble().ToString(CultureInfo.InvariantCulture));
        }
        if (eval.TryGetProperty("std", out JsonElement std))
        {
            parts.Add("std=" + std.GetDouble().ToString(CultureInfo.InvariantCulture));
        }
        return string.Join(";", parts);
    }

    [TestMethod]
    [DataRow("mnist-8", "mnist", 98.90)]
    [DataRow("mnist-lenet5", "mnist", 98.13)]
    [DataRow("mnist-mlp-gemm", "mnist", 96.43)]
    [DataRow("fashion-mlp", "fashion-mnist", 87.40)]
    public void MnistModels_ReachTheirBaselineTop1(string id, string dataset, double baseline)
    {
        string model = Corpus.Model(id);
        using ModelRunner runner = new(model, new ModelRunnerOptions { BatchSize = 100 });
        Preprocessing pre = Preprocessing.Parse(PreprocessingFromSpec(id));
        Dataset data = DatasetLoader.Load(Corpus.Dataset(dataset, "t10k-images-idx3-ubyte"), Corpus.Dataset(dataset, "t10k-labels-idx1-ubyte"), runner.Inputs, pre);
        Assert.AreEqual(10000, data.Count);
        ModelEvaluation e = Validator.Evaluate(runner, data);
        TestContext.WriteLine($"{id}: top-1 {e.Accuracy:F2}% ({pre}), {e.ImagesPerSecond:F0} images/s, batch {(runner.HasDynamicBatch ? 100 : 1)}");
        Assert.AreEqual(baseline, e.Accuracy!.Value, 0.0101);
    }

    [TestMethod]
    public void SqueezenetFp16_TestDataSet_ReproducesReferenceOutput()
    {
        string model = Corpus.Model("squeezenet-fp16");
        using ModelRunner runner = new(model);
        Assert.AreEqual(TensorElementType.Float16, runner.Inputs[0].ElementType);
        Dataset data = DatasetLoader.Load(Path.GetDirectoryName(model)!, null, runner.Inputs);
        Assert.AreEqual(1, data.Count);
        Assert.IsTrue(data.HasReferenceOutputs);
        ModelEvaluation e = Validator.Evaluate(runner, data);
        TestContext.WriteLine($"squeezenet-fp16 test_data_set_0: max |diff| {e.ReferenceMaxAbsError:E3}, top-1 {e.Top1[0]}");
        Assert.IsNotNull(e.ReferenceMaxAbsError);
        Assert.IsLessThanOrEqualTo(2e-4f, e.ReferenceMaxAbsError.Value);
        Assert.AreEqual(111, e.Top1[0]);
    }

    [TestMethod]
    public void SqueezenetFp16_FishPng_BgrRaw_IsTench()
    {
        string model = Corpus.Model("squeezenet-fp16");
        using ModelRunner runner = new(model);
        Dataset data = DatasetLoader.Load(Path.Combine(Path.GetDirectoryName(model)!, "sample"), null, runner.Inputs, Preprocessing.Parse("channels=BGR;scale=1"));
        Assert.AreEqual(1, data.Count);
        TensorData output = runner.RunDataset(data).Outputs[0][0];
        Assert.AreEqual(0, Validator.ArgMax(output.Data));
        Assert.AreEqual(0.7378f, output.Data[0], 5e-4f);
    }

    [TestMethod]
    public void MobilenetInt8_FinchJpeg_ImageNetPreprocessing_IsHouseFinch()
    {
        string model = Corpus.Model("mobilenetv2-int8");
        using ModelRunner runner = new(model);
        Dataset data = DatasetLoader.Load(Path.Combine(Path.GetDirectoryName(model)!, "sample"), null, runner.Inputs,
            Preprocessing.Parse("layout=NCHW;channels=RGB;resize=256;crop=224x224;mean=0.485,0.456,0.406;std=0.229,0.224,0.225"));
        CollectionAssert.AreEqual(new long[] { 1, 3, 224, 224 }, data.GetSample(0)[0].Shape);
        Assert.AreEqual(12, Validator.Evaluate(runner, data).Top1[0]);
    }

    [TestMethod]
    public void Lenet5_AgainstItself_AgreesFully()
    {
        string model = Corpus.Model("mnist-lenet5");
        using ModelRunner a = new(model);
        using ModelRunner b = new(model);
        Dataset data = DatasetLoader.Load(Corpus.Dataset("mnist", "t10k-images-idx3-ubyte"), Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte"),
            a.Inputs, Preprocessing.Parse(PreprocessingFromSpec("mnist-lenet5")), maxSamples: 2000);
        Assert.AreEqual(2000, data.Count);
        ValidationResult r = Validator.Compare(a, b, data);
        TestContext.WriteLine($"lenet5 self: accuracy {r.OriginalAccuracy:F2}%, {r.OriginalImagesPerSecond:F0}/{r.CompressedImagesPerSecond:F0} images/s, latency {r.OriginalLatencyMs:F3}/{r.CompressedLatencyMs:F3} ms, ratio {r.LatencyRatio:F3}");
        Assert.AreEqual(1.0, r.Top1Agreement);
        Assert.AreEqual(0.0, r.AccuracyDrop);
        Assert.AreEqual(0f, r.MaxAbsError);
        Assert.AreEqual(1.0, r.MeanCosineSimilarity, 1e-9);
        Assert.IsGreaterThan(95.0, r.OriginalAccuracy!.Value);
        Assert.IsGreaterThan(0.0, r.OriginalLatencyMs);
    }

    [TestMethod]
    [DataRow("mnist-mlp-gemm", "mnist", false)]
    [DataRow("mnist-lenet5", "mnist", false)]
    [DataRow("fashion-mlp", "fashion-mnist", false)]
    [DataRow("mnist-lenet5", "mnist", true)]
    public void CompressedByCorePasses_StaysWithinTypicalBudgets(string id, string dataset, bool float16)
    {
        string model = Corpus.Model(id);
        using TempDir dir = new();
        string compressedPath = dir.File(id + (float16 ? ".fp16.onnx" : ".int8.onnx"));
        CompressOnBuild.Onnx.ModelProto proto = CompressOnBuild.Core.Onnx.ModelIO.Load(model);
        if (float16)
        {
            CompressOnBuild.Core.Passes.Float16Converter.Apply(proto, CompressOnBuild.Core.Passes.Float16Options.Default, id);
        }
        else
        {
            CompressOnBuild.Core.Passes.Int8DynamicQuantizer.Apply(proto, CompressOnBuild.Core.Passes.QuantizationOptions.Default, id);
        }
        TestFiles.Save(proto, compressedPath);

        using ModelRunner original = new(model, new ModelRunnerOptions { BatchSize = 100 });
        using ModelRunner compressed = new(compressedPath, new ModelRunnerOptions { BatchSize = 100 });
        Dataset data = DatasetLoader.Load(Corpus.Dataset(dataset, "t10k-images-idx3-ubyte"), Corpus.Dataset(dataset, "t10k-labels-idx1-ubyte"),
            original.Inputs, Preprocessing.Parse(PreprocessingFromSpec(id)));
        ValidationResult r = Validator.Compare(original, compressed, data, new ValidatorOptions { LatencyRuns = 31 });
        TestContext.WriteLine($"{id} {(float16 ? "fp16" : "int8")}: {new FileInfo(model).Length} -> {new FileInfo(compressedPath).Length} bytes; accuracy {r.OriginalAccuracy:F2} -> {r.CompressedAccuracy:F2} (drop {r.AccuracyDrop:F2}), agreement {r.Top1Agreement:F4}, cosine {r.MeanCosineSimilarity:F6}, max abs {r.MaxAbsError:G3}, rel L2 {r.Outputs[0].MeanRelativeL2Error:G3}, {r.OriginalImagesPerSecond:F0} -> {r.CompressedImagesPerSecond:F0} images/s, latency {r.OriginalLatencyMs:F4} -> {r.CompressedLatencyMs:F4} ms (ratio {r.LatencyRatio:F3})");
        Assert.AreEqual(10000, r.SampleCount);
        Assert.IsLessThan(0.5, r.AccuracyDrop!.Value);
        Assert.IsGreaterThanOrEqualTo(0.99, r.Top1Agreement);
        Assert.IsGreaterThan(0f, r.MaxAbsError, "the compressed model should differ from the original at all");
        Assert.IsGreaterThan(0.999, r.MeanCosineSimilarity);
    }
}
