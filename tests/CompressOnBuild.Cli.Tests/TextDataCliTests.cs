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
}
