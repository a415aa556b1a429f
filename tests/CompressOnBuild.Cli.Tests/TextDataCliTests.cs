using System.Text.Json.Nodes;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Cli.Tests;

/// <summary>ValidationData / CalibrationData as text (one sentence per line) with a Tokenizer, end to end through the CLI.</summary>
[TestClass]
public sealed class TextDataCliTests
{
    private TempDirectory _temp = null!;

    [TestInitialize]
    public void Init() => _temp = new TempDirectory("cob-text");

    [TestCleanup]
    public void Cleanup() => _temp.Delete();

    private string P(string name) => Path.Combine(_temp.Path, name);

    private static readonly string[] Words = ["the", "cat", "dog", "sat", "ran", "on", "under", "a", "mat", "tree", "big", "small", "red", "quick"];

    /// <summary>vocab.txt (BERT specials + words), a tiny encoder over it, and sentences.</summary>
    private (string Model, string Vocab, string Text) Setup(int sentences = 24)
    {
        string[] vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", .. Words];
        File.WriteAllLines(P("vocab.txt"), vocab);
        ModelIO.Save(TinyModels.Encoder(vocab.Length, dim: 32), P("encoder.onnx"));
        var rng = new Random(11);
        File.WriteAllLines(P("sentences.txt"), Enumerable.Range(0, sentences)
            .Select(_ => string.Join(" ", Enumerable.Range(0, rng.Next(3, 9)).Select(_ => Words[rng.Next(Words.Length)]))));
        return (P("encoder.onnx"), P("vocab.txt"), P("sentences.txt"));
    }

    [TestMethod]
    public void TextValidationAndCalibrationData_AreTokenizedIntoTheModelsInputs()
    {
        (string model, string vocab, string text) = Setup();
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("out/dyn.onnx"), "--report", P("out/dyn.json"),
            "--quantization", "Int8Dynamic", "--validation-data", text, "--tokenizer", vocab, "--sequence-length", "16", "--min-cosine", "0.9");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonNode report = JsonNode.Parse(File.ReadAllText(P("out/dyn.json")))!;
        Assert.AreEqual(24, report["validation"]!["samples"]!.GetValue<int>());

        CliRun calibrated = CliHarness.InProcess("compress", model, "--output", P("out/static.onnx"),
            "--quantization", "Int8Static", "--calibration-data", text, "--validation-data", text, "--tokenizer", vocab, "--min-cosine", "0.9");
        Assert.AreEqual(0, calibrated.ExitCode, calibrated.Output);
    }

    [TestMethod]
    public void TokenizerBytesArePartOfTheCacheKey()
    {
        (string model, string vocab, string text) = Setup();
        string[] args = ["compress", model, "--output", P("out/m.onnx"), "--report", P("out/m.json"), "--cache-dir", P("cache"),
            "--validation-data", text, "--tokenizer", vocab];
        Assert.AreEqual(0, CliHarness.InProcess(args).ExitCode);
        Assert.AreEqual(0, CliHarness.InProcess(args).ExitCode);
        Assert.IsTrue(JsonNode.Parse(File.ReadAllText(P("out/m.json")))!["cache"]!["hit"]!.GetValue<bool>(), "same inputs: restored from the cache");
        File.AppendAllText(vocab, "extra\n");
        Assert.AreEqual(0, CliHarness.InProcess(args).ExitCode);
        Assert.IsFalse(JsonNode.Parse(File.ReadAllText(P("out/m.json")))!["cache"]!["hit"]!.GetValue<bool>(), "a changed vocabulary must not hit the cache");
    }

    [TestMethod]
    public void TextOptionsMisused_GetCodedErrors()
    {
        (string model, string vocab, string text) = Setup();
        CliRun noTokenizer = CliHarness.InProcess("compress", model, "--output", P("a.onnx"), "--validation-data", text);
        Assert.AreEqual(2, noTokenizer.ExitCode, noTokenizer.Output);
        Assert.AreEqual(1, noTokenizer.Errors("CMPR0302").Count(), noTokenizer.Output);

        CliRun noData = CliHarness.InProcess("compress", model, "--output", P("b.onnx"), "--tokenizer", vocab);
        Assert.AreEqual(1, noData.Errors("CMPR0003").Count(), noData.Output);

        CliRun lengthAlone = CliHarness.InProcess("compress", model, "--output", P("c.onnx"), "--validation-data", text, "--sequence-length", "64");
        Assert.AreEqual(1, lengthAlone.Errors("CMPR0003").Count(), lengthAlone.Output);

        CliRun badLength = CliHarness.InProcess("compress", model, "--output", P("d.onnx"), "--validation-data", text, "--tokenizer", vocab, "--sequence-length", "1");
        Assert.AreEqual(1, badLength.Errors("CMPR0003").Count(), badLength.Output);

        File.WriteAllText(P("bpe.json"), "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}");
        CliRun bpe = CliHarness.InProcess("compress", model, "--output", P("e.onnx"), "--validation-data", text, "--tokenizer", P("bpe.json"));
        Assert.AreEqual(2, bpe.ExitCode, bpe.Output);
        Assert.AreEqual(1, bpe.Errors("CMPR0313").Count(), bpe.Output);
    }

    [TestMethod]
    public void PerTokenOutput_IsJudgedAsAMaskPooledEmbedding_WithItsBudgets()
    {
        (string model, string vocab, string text) = Setup(sentences: 40);
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("out/e.onnx"), "--report", P("out/e.json"), "--quantization", "Int8Dynamic",
            "--validation-data", text, "--tokenizer", vocab, "--sequence-length", "12",
            "--min-neighbor-agreement", "0.5", "--min-similarity-correlation", "0.5", "--min-cosine", "0.9");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        StringAssert.Contains(run.Lines.Single(l => l.StartsWith("CompressOnBuild: ", StringComparison.Ordinal)), "clear-neighbour agreement");
        JsonNode v = JsonNode.Parse(File.ReadAllText(P("out/e.json")))!["validation"]!;
        Assert.AreEqual("embedding", v["metric"]!.GetValue<string>());
        StringAssert.Contains(v["metricReason"]!.GetValue<string>(), "per token");
        JsonNode e = v["embedding"]!;
        StringAssert.Contains(e["pooling"]!.GetValue<string>(), "attention_mask");
        Assert.AreEqual(40, e["pairwiseSamples"]!.GetValue<int>());
        Assert.AreEqual(e["meanCosine"]!.GetValue<double>(), v["meanCosineSimilarity"]!.GetValue<double>());
        Assert.IsTrue(e["similarityCorrelation"]!.GetValue<double>() > 0.5);

        // A correlation budget of 1 cannot hold after int8: the budget is really checked.
        CliRun strict = CliHarness.InProcess("compress", model, "--output", P("out/s.onnx"), "--quantization", "Int8Dynamic",
            "--validation-data", text, "--tokenizer", vocab, "--min-similarity-correlation", "1");
        Assert.AreEqual(1, strict.ExitCode, strict.Output);
        Assert.AreEqual(1, strict.Errors("CMPR0401").Count(), strict.Output);

        CliRun forced = CliHarness.InProcess("compress", model, "--output", P("out/f.onnx"), "--report", P("out/f.json"),
            "--validation-data", text, "--tokenizer", vocab, "--metric", "Classification");
        Assert.AreEqual(0, forced.ExitCode, forced.Output);
        Assert.AreEqual("classification", JsonNode.Parse(File.ReadAllText(P("out/f.json")))!["validation"]!["metric"]!.GetValue<string>());
    }

    [TestMethod]
    public void NeighbourBudgetOnTwoSamples_IsCMPR0425()
    {
        (string model, string vocab, string text) = Setup(sentences: 2);
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("out/two.onnx"),
            "--validation-data", text, "--tokenizer", vocab, "--min-neighbor-agreement", "0.9");
        Assert.AreEqual(2, run.ExitCode, run.Output);
        Assert.AreEqual(1, run.Errors("CMPR0425").Count(), run.Output);
    }
}
