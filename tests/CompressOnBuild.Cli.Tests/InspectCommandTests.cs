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

[TestClass]
public sealed class InspectOptimizedTests
{
    [TestMethod]
    public void OptimizedViewFlagsADequantizedWeightFeedingAFloatConv()
    {
        string dir = Path.Combine(Path.GetTempPath(), "cob-opt-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        try
        {
            // x[1,1,8,8] -> Conv(x, DequantizeLinear(w_int8[4,1,3,3], scale)) -> y: the weight is quantized, the Conv is float.
            // (ORT 1.31 fuses a dequantized MatMul weight into MatMulNBits, but has no such fusion for Conv.)
            var g = new CompressOnBuild.Onnx.GraphProto { Name = "dq" };
            g.Input.Add(TinyModels.FloatValue("x", 1, 1, 8, 8));
            g.Output.Add(TinyModels.FloatValue("y", 1, 4, 6, 6));
            var rng = new Random(1);
            sbyte[] w = Enumerable.Range(0, 4 * 9).Select(_ => (sbyte)rng.Next(-127, 128)).ToArray();
            g.Initializer.Add(TensorUtil.FromInt8("w_q", w, 4, 1, 3, 3));
            g.Initializer.Add(TensorUtil.FromFloats("w_scale", [0.01f]));
            g.Node.Add(TinyModels.Node("DequantizeLinear", ["w_q", "w_scale"], ["w"], "dq_w"));
            g.Node.Add(TinyModels.Node("Conv", ["x", "w"], ["y"], "conv"));
            string path = Path.Combine(dir, "dq.onnx");
            ModelIO.Save(TinyModels.Model(g), path);

            CliRun run = CliHarness.InProcess("inspect", path, "--optimized", "--json");
            Assert.AreEqual(0, run.ExitCode, run.Output);
            JsonNode info = JsonNode.Parse(run.Output)!;
            JsonArray fallbacks = info["optimized"]!["floatFallbacks"]!.AsArray();
            Assert.AreEqual(1, fallbacks.Count, run.Output);
            StringAssert.Contains(fallbacks[0]!.GetValue<string>(), "Conv");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void Int8DynamicOutputRunsIntegerKernelsAfterOrtOptimizations()
    {
        string dir = Path.Combine(Path.GetTempPath(), "cob-opt-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        try
        {
            string out1 = Path.Combine(dir, "q.onnx");
            CliRun c = CliHarness.InProcess("compress", Corpus.Model("mnist-lenet5"), "--output", out1);
            Assert.AreEqual(0, c.ExitCode, c.Output);
            CliRun run = CliHarness.InProcess("inspect", out1, "--optimized", "--json");
            Assert.AreEqual(0, run.ExitCode, run.Output);
            JsonNode opt = JsonNode.Parse(run.Output)!["optimized"]!;
            Assert.AreEqual(0, opt["floatFallbacks"]!.AsArray().Count, run.Output);
            Assert.AreEqual(3, opt["operators"]!["com.microsoft:DynamicQuantizeMatMul"]!.GetValue<int>(), "LeNet-5's three Gemm layers must run as integer MatMuls");
            Assert.IsNull(opt["operators"]!["Gemm"]);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}

[TestClass]
public sealed class CacheCommandTests
{
    [TestMethod]
    public void CacheCleanEmptiesTheCacheAndInfoReportsItsSize()
    {
        string dir = Path.Combine(Path.GetTempPath(), "cob-cc-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            string model = Path.Combine(dir, "m.onnx");
            ModelIO.Save(TinyModels.Mlp(inF: 256, hidden: 64), model);
            CliRun run = CliHarness.InProcess("compress", model, "--output", Path.Combine(dir, "o.onnx"), "--cache-dir", Path.Combine(dir, "cache"));
            Assert.AreEqual(0, run.ExitCode, run.Output);
            Assert.AreEqual(1, Directory.GetFiles(Path.Combine(dir, "cache"), "manifest.sha256", SearchOption.AllDirectories).Length);

            CliRun info = CliHarness.InProcess("cache", "--cache-dir", Path.Combine(dir, "cache"));
            Assert.AreEqual(0, info.ExitCode);
            StringAssert.Contains(info.Output, "MiB");

            CliRun clean = CliHarness.InProcess("cache", "--cache-dir", Path.Combine(dir, "cache"), "--clean");
            Assert.AreEqual(0, clean.ExitCode, clean.Output);
            StringAssert.Contains(clean.Output, "removed 1 cache entry");
            Assert.AreEqual(0, Directory.GetFiles(Path.Combine(dir, "cache"), "manifest.sha256", SearchOption.AllDirectories).Length);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
