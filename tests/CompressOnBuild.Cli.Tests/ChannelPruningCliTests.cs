using System.Text.Json.Nodes;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Cli.Tests;

/// <summary>Channels:0.3 on the Conv corpus models through the CLI: Conv channels pruned and their consumers refit from --calibration-data.</summary>
[TestClass]
public sealed class ChannelPruningCliTests
{
    private TempDirectory _temp = null!;

    public TestContext TestContext { get; set; } = null!;

    [TestInitialize]
    public void Init() => _temp = new TempDirectory("cob-chan");

    [TestCleanup]
    public void Cleanup() => _temp.Delete();

    private string P(string name) => Path.Combine(_temp.Path, name);

    [TestMethod]
    public void Lenet5_loses_a_quarter_of_its_parameters_and_at_most_one_point_with_Conv_channels_refit()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("mnist-lenet5"), "--output", P("l.onnx"), "--report", P("l.json"),
            "--pruning", "Channels:0.3", "--quantization", "None", "--calibration-data", images, "--calibration-samples", "256",
            "--validation-data", images, "--labels", Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte"), "--max-accuracy-drop", "1.0",
            "--max-latency-ratio", "1000"); // only so the report measures the latency (printed, not asserted: noisy on a shared machine)
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonNode report = JsonNode.Parse(File.ReadAllText(P("l.json")))!;
        JsonNode p = report["pruning"]!, v = report["validation"]!;
        double before = p["parametersBefore"]!.GetValue<double>(), after = p["parametersAfter"]!.GetValue<double>();
        double drop = v["originalAccuracy"]!.GetValue<double>() - v["compressedAccuracy"]!.GetValue<double>();
        TestContext.WriteLine($"mnist-lenet5 Channels:0.3 (CLI): parameters {before} -> {after}, top-1 drop {drop:F2}, latency ratio {v["latency"]!["ratio"]}; refit {p["reconstructed"]!.ToJsonString()}");
        Assert.IsLessThanOrEqualTo(0.75 * before, after, $"parameters {before} -> {after}");
        Assert.IsLessThanOrEqualTo(1.0, drop);
        CollectionAssert.Contains(p["reconstructed"]!.AsArray().Select(n => n!.GetValue<string>()).ToList(), "/net/net.3/Conv", "the second Conv is refit after the first lost channels");
    }
}
