using System.Text.Json.Nodes;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Cli.Tests;

[TestClass]
public sealed class InspectCommandTests
{
    [TestMethod]
    public void JsonListsOperatorsInitializersAndOpsets()
    {
        CliRun run = CliHarness.InProcess("inspect", Corpus.Model("mobilenetv2-int8"), "--json");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonNode info = JsonNode.Parse(run.Output)!;
        Assert.AreEqual(52, info["operators"]!["QLinearConv"]!.GetValue<int>(), "the model zoo MobileNetV2 int8 has 52 QLinearConv nodes");
        Assert.IsTrue(info["initializers"]!["INT8"]!["bytes"]!.GetValue<long>() > 2_000_000);
        Assert.IsNotNull(info["opsets"]!["com.microsoft"]);
        Assert.AreEqual("input", info["inputs"]![0]!["name"]!.GetValue<string>());
    }

    [TestMethod]
    public void TextShowsExternalDataFiles()
    {
        string dir = Path.Combine(Path.GetTempPath(), "cob-insp-" + Guid.NewGuid().ToString("N")[..8]);
        string path = Path.Combine(dir, "m.onnx");
        // w1 (8192 bytes), b1 (128) and w2 (512) reach the 64-byte threshold; b2 (16 bytes) stays inline.
        ModelIO.Save(TinyModels.Mlp(inF: 64, hidden: 32), path, new ModelSaveOptions { ForceExternalData = true, ExternalTensorMinBytes = 64 });
        CliRun run = CliHarness.InProcess("inspect", path);
        Directory.Delete(dir, recursive: true);
        Assert.AreEqual(0, run.ExitCode, run.Output);
        StringAssert.Contains(run.Output, "external data: m.onnx.data (3 tensors)");
        StringAssert.Contains(run.Output, "Gemm");
    }

    [TestMethod]
    public void MissingModelIsCMPR0101()
    {
        CliRun run = CliHarness.InProcess("inspect", "/nonexistent/m.onnx");
        Assert.AreEqual(2, run.ExitCode);
        Assert.AreEqual(1, run.Errors("CMPR0101").Count(), run.Output);
    }
}
