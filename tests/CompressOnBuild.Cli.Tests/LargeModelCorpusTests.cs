using System.Text.Json.Nodes;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Cli.Tests;

/// <summary>
/// Issue 18's real-size models through the worker, on subsets of the corpus data so CI stays quick: all-MiniLM-L6-v2
/// (91 MB) on text sentences with its vocab.txt, the ResNet18 featurizer (64 MB) on unlabelled photos. Asserts the
/// size and quality targets the worker meets (docs/results.md has the full-data table, timing only there).
/// </summary>
[TestClass]
public sealed class LargeModelCorpusTests
{
    private const string ResNetPreprocessing = "layout=NCHW;channels=BGR;scale=1;mean=103.0626,115.9029,123.1516;std=1;resize=224;crop=224x224";

    private TempDirectory _temp = null!;

    [TestInitialize]
    public void Init() => _temp = new TempDirectory("cob-large");

    [TestCleanup]
    public void Cleanup() => _temp.Delete();

    private string P(string name) => Path.Combine(_temp.Path, name);

    private JsonNode Compress(string model, string name, params string[] args)
    {
        CliRun run = CliHarness.InProcess(["compress", model, "--output", P(name + ".onnx"), "--report", P(name + ".json"), .. args]);
        Assert.AreEqual(0, run.ExitCode, run.Output);
        return JsonNode.Parse(File.ReadAllText(P(name + ".json")))!;
    }

    private static double D(JsonNode? n) => n!.GetValue<double>();

    private static string[] Sentences(int samples) =>
    [
        "--validation-data", Corpus.Dataset("sentences", "sentences.txt"), "--tokenizer", Corpus.Large("all-minilm-l6-v2", "vocab.txt"),
        "--validation-samples", samples.ToString(System.Globalization.CultureInfo.InvariantCulture),
    ];

    [TestMethod]
    public void MiniLm_Float16_HalvesTheSize_AndKeepsTheMaskPooledEmbeddings()
    {
        JsonNode r = Compress(Corpus.Large("all-minilm-l6-v2", "model.onnx"), "minilm-fp16", ["--quantization", "Float16", .. Sentences(120)]);
        JsonNode v = r["validation"]!;
        Assert.AreEqual("embedding", v["metric"]!.GetValue<string>(), "last_hidden_state [1,tokens,384] is per token");
        StringAssert.Contains(v["embedding"]!["pooling"]!.GetValue<string>(), "attention_mask");
        Assert.AreEqual(120, v["samples"]!.GetValue<int>());
        Assert.IsTrue(D(r["model"]!["compressionRatio"]) >= 1.99, r.ToJsonString());
        Assert.IsTrue(D(v["embedding"]!["meanCosine"]) >= 0.9999, r.ToJsonString());
    }

    /// <summary>
    /// Issue 18's MiniLM Int8 row, as the default Int8 runs it without CalibrationData (dynamic: per-channel
    /// pair-bounded int8 weights, int8 embedding tables, SmoothQuant smoothing measured on 32 of the sentences) at
    /// sequence length 128, validated on 200 evenly spaced corpus sentences instead of all 2,000 so that it fits CI's
    /// time (docs/results.md has the full-data row; latency is measured there, not asserted here). The size target is
    /// in decimal megabytes: 23.0 MB = 23,000,000 bytes (the unit: its "90.9 MB" fp32 model is 90,893,304
    /// bytes; ONNX Runtime's published int8 export is about 23 MB in the same unit). Targets: mean cosine >= 0.995,
    /// min >= 0.98, clear-neighbour agreement >= 98%, similarity rank correlation >= 0.995.
    /// </summary>
    [TestMethod]
    public void MiniLm_Int8_MeetsTheSizeAndQualityTargets_OnASubsetOfTheSentences()
    {
        string model = Corpus.Large("all-minilm-l6-v2", "model.onnx");
        JsonNode r = Compress(model, "minilm-int8", ["--quantization", "Int8", "--sequence-length", "128", .. Sentences(200)]);
        JsonNode v = r["validation"]!, e = v["embedding"]!;
        string all = r["model"]!.ToJsonString() + " " + e.ToJsonString();
        Console.WriteLine("MiniLM Int8 (200 sentences): " + all);
        Assert.AreEqual("Int8Dynamic", r["quantization"]!["scheme"]!.GetValue<string>());
        Assert.AreEqual(200, v["samples"]!.GetValue<int>());
        long bytes = r["model"]!["compressedBytes"]!.GetValue<long>();
        Assert.AreEqual(new FileInfo(P("minilm-int8.onnx")).Length, bytes, "the report states the shipped file's size");
        Assert.IsLessThanOrEqualTo(23_000_000L, bytes, "size target 23.0 MB (decimal): " + all);
        Assert.IsGreaterThanOrEqualTo(0.995, D(e["meanCosine"]), all);
        Assert.IsGreaterThanOrEqualTo(0.98, D(e["minCosine"]), all);
        Assert.IsGreaterThanOrEqualTo(80, e["clearNeighborSamples"]!.GetValue<int>(), "enough sentences with a clear neighbour to judge: " + all);
        Assert.IsGreaterThanOrEqualTo(0.98, D(e["neighborAgreement"]), all);
        Assert.IsGreaterThanOrEqualTo(0.995, D(e["similarityCorrelation"]), all);
    }

    /// <summary>
    /// Issue 18's MiniLM Int4Weights row as a user with calibration data runs it: `Quantization="Int4Weights"` plus
    /// CalibrationData, so the default method is GPTQ (activation order, MSE-clipped block scales, block 32), at
    /// sequence length 128. Calibrated on 128 corpus sentences that are not among the 200 evenly spaced ones it is
    /// validated on (measured 2026-12-02: 64 of them gave cosine 0.9828, too close to the target for a CI gate) (docs/results.md has the full-data row: 256 calibration sentences, 1,744 others; latency is
    /// measured there, not asserted here). Targets: <= 16.0 MB (decimal, 16,000,000 bytes), mean cosine >= 0.98.
    /// </summary>
    [TestMethod]
    public void MiniLm_Int4Weights_WithCalibrationData_MeetsTheSizeAndCosineTargets()
    {
        string model = Corpus.Large("all-minilm-l6-v2", "model.onnx");
        string[] all = File.ReadAllLines(Corpus.Dataset("sentences", "sentences.txt"));
        HashSet<int> validated = [.. CompressOnBuild.Validation.DatasetLoader.SubsetIndices(all.Length, 200)];
        int[] calibration = [.. Enumerable.Range(0, all.Length).Where(i => !validated.Contains(i) && all[i].Trim().Length > 0)
            .Where((_, j) => j % 14 == 6).Take(128)];
        Assert.HasCount(128, calibration);
        File.WriteAllLines(P("calibration.txt"), calibration.Select(i => all[i]));
        JsonNode r = Compress(model, "minilm-int4", ["--quantization", "Int4Weights", "--sequence-length", "128",
            "--calibration-data", P("calibration.txt"), "--calibration-samples", "128", .. Sentences(200)]);
        JsonNode v = r["validation"]!, e = v["embedding"]!;
        string summary = r["model"]!.ToJsonString() + " " + e.ToJsonString();
        Console.WriteLine("MiniLM Int4Weights (GPTQ on 128, 200 validated): " + summary);
        Assert.AreEqual("GPTQ", r["quantization"]!["method"]!.GetValue<string>(), "GPTQ is the default with CalibrationData");
        Assert.AreEqual(0, r["quantization"]!["roundedToNearest"]!.AsArray().Count);
        Assert.AreEqual(200, v["samples"]!.GetValue<int>());
        long bytes = r["model"]!["compressedBytes"]!.GetValue<long>();
        Assert.IsLessThanOrEqualTo(16_000_000L, bytes, "size target 16.0 MB (decimal): " + summary);
        Assert.IsGreaterThanOrEqualTo(0.98, D(e["meanCosine"]), summary);
    }

    [TestMethod]
    public void ResNet18_Float16_OnUnlabelledPhotos_IsJudgedAsFeatures()
    {
        JsonNode r = Compress(Corpus.Large("resnet18-featurizer", "model.onnx"), "resnet-fp16", "--quantization", "Float16",
            "--validation-data", Path.GetDirectoryName(Corpus.Dataset("photos-224", "crops.csv"))!, "--validation-samples", "48",
            "--preprocessing", ResNetPreprocessing);
        JsonNode v = r["validation"]!;
        Assert.IsFalse(v["hasLabels"]!.GetValue<bool>());
        Assert.AreEqual("embedding", v["metric"]!.GetValue<string>(), "[1,512,1,1] features");
        Assert.IsTrue(D(r["model"]!["compressionRatio"]) >= 1.99, r.ToJsonString());
        Assert.IsTrue(D(v["embedding"]!["meanCosine"]) >= 0.9999, r.ToJsonString());
    }

    /// <summary>Static int8 calibrated on 64 photos, judged on 120 others (no crop in both): issue 18's size (>= 3.95x),
    /// mean feature cosine (>= 0.995) and clear-neighbour (>= 99%) targets. Measured on this subset (2026-12-02):
    /// cosine 0.9957, 100% of 86 clear samples (one flip would be 98.8%). Retrieval@1 and latency are in
    /// docs/results.md (bash build/results.sh large-resnet), not asserted here.</summary>
    [TestMethod]
    public void ResNet18_Int8Static_MeetsTheSizeCosineAndClearNeighbourTargets()
    {
        string photos = Path.GetDirectoryName(Corpus.Dataset("photos-224", "crops.csv"))!;
        string[] files = [.. Directory.GetFiles(photos, "*.jpg").Order(StringComparer.Ordinal)];
        string calibration = P("calibration"), evaluation = P("evaluation");
        Directory.CreateDirectory(calibration);
        Directory.CreateDirectory(evaluation);
        for (int i = 0; i < files.Length; i++)
        {
            // Every 4th crop calibrates (126), the others are evaluated (evenly spaced 120 of them by --validation-samples).
            File.CreateSymbolicLink(Path.Combine(i % 4 == 0 ? calibration : evaluation, Path.GetFileName(files[i])), files[i]);
        }
        JsonNode r = Compress(Corpus.Large("resnet18-featurizer", "model.onnx"), "resnet-int8", "--quantization", "Int8Static",
            "--calibration-data", calibration, "--calibration-samples", "64", "--validation-data", evaluation, "--validation-samples", "120",
            "--preprocessing", ResNetPreprocessing);
        JsonNode e = r["validation"]!["embedding"]!;
        Assert.IsTrue(D(r["model"]!["compressionRatio"]) >= 3.95, r.ToJsonString());
        Assert.IsTrue(e["clearNeighborSamples"]!.GetValue<int>() >= 30, "enough samples with a clear neighbour to judge: " + e.ToJsonString());
        Assert.IsTrue(D(e["neighborAgreement"]) >= 0.99, e.ToJsonString());
        Assert.IsTrue(D(e["meanCosine"]) >= 0.995, e.ToJsonString());
    }
}
