using System.Diagnostics;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Cli.Tests;

/// <summary>Faults a build step must survive: the worker killed mid-run, two builds of one model at once.</summary>
[TestClass]
public sealed class FaultTests
{
    private TempDirectory _temp = null!;

    private string _dir => _temp.Path;

    [TestInitialize]
    public void Init() => _temp = new TempDirectory("cob-fault");

    [TestCleanup]
    public void Cleanup() => _temp.Delete();

    private string[] MnistArgs(string output, params string[] extra) =>
    [
        "exec", CliHarness.CliDll(), "compress", Corpus.Model("mnist-lenet5"), "--output", output,
        "--validation-data", Corpus.Dataset("mnist", "t10k-images-idx3-ubyte"), "--labels", Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte"),
        "--min-agreement", "1.0", "--tune", "true", .. extra,
    ];

    [TestMethod]
    public void KillingTheWorkerMidRunLeavesNoPartialOutputAndTheNextRunSucceeds()
    {
        string outDir = Path.Combine(_dir, "obj");
        string output = Path.Combine(outDir, "model.onnx");
        int killedWhileWorking = 0;
        // Kill at a few points of the run (loading, compressing, validating, tuning).
        foreach (int delayMs in new[] { 400, 900, 1800, 3000 })
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = _dir };
            foreach (string a in MnistArgs(output))
            {
                psi.ArgumentList.Add(a);
            }
            using Process p = Process.Start(psi)!;
            Thread.Sleep(delayMs);
            if (!p.HasExited)
            {
                p.Kill(entireProcessTree: true);
                killedWhileWorking++;
            }
            p.WaitForExit();
            // Either nothing was published, or a complete model was: never a torn file.
            if (File.Exists(output))
            {
                ModelChecker.Validate(ModelIO.Load(output), output);
            }
            Assert.AreEqual(0, Directory.Exists(outDir) ? Directory.GetFiles(outDir, "*.tmp", SearchOption.TopDirectoryOnly).Length : 0);
        }
        Assert.IsTrue(killedWhileWorking >= 2, "the worker finished too fast for the kill test to mean anything");

        CliRun next = CliHarness.OutOfProcess(_dir, MnistArgs(output)[2..]);
        Assert.AreEqual(0, next.ExitCode, next.Output);
        ModelChecker.Validate(ModelIO.Load(output), output);
        Assert.AreEqual(0, Directory.GetDirectories(outDir, ".cob-*").Length, "work folders left by killed runs must be cleaned up");
    }

    [TestMethod]
    public void TwoRunsOfTheSameModelAtOnceSharingACacheBothSucceedIdentically()
    {
        string cache = Path.Combine(_dir, "cache");
        var runs = new[] { "a", "b" }.Select(name => Task.Run(() =>
            CliHarness.OutOfProcess(_dir, MnistArgs(Path.Combine(_dir, name, "model.onnx"), "--cache-dir", cache)[2..]))).ToArray();
        Task.WaitAll(runs);
        foreach (Task<CliRun> r in runs)
        {
            Assert.AreEqual(0, r.Result.ExitCode, r.Result.Output);
        }
        CollectionAssert.AreEqual(File.ReadAllBytes(Path.Combine(_dir, "a", "model.onnx")), File.ReadAllBytes(Path.Combine(_dir, "b", "model.onnx")));
        // Exactly one complete entry for the key, no temporary folders left in the cache.
        string[] manifests = Directory.GetFiles(cache, "manifest.sha256", SearchOption.AllDirectories);
        Assert.AreEqual(1, manifests.Length);
        Assert.AreEqual(0, Directory.GetDirectories(cache, "*.tmp", SearchOption.AllDirectories).Length);

        CliRun third = CliHarness.OutOfProcess(_dir, MnistArgs(Path.Combine(_dir, "c", "model.onnx"), "--cache-dir", cache)[2..]);
        Assert.AreEqual(0, third.ExitCode, third.Output);
        StringAssert.Contains(third.Output, "(cached)");
    }
}

/// <summary>
/// The .onnx/.data pair under kill -9 at each moment of publishing (COMPRESSONBUILD_FAULT makes the worker kill itself
/// there, deterministically): the output is always a complete old pair or a complete new pair.
/// </summary>
[TestClass]
public sealed class PublishKillTests
{
    [TestMethod]
    public void AKillAtAnyMomentOfPublishingLeavesTheOldPairOrTheNewPair()
    {
        string dir = Path.Combine(Path.GetTempPath(), "cob-pair-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            string modelA = SaveChain(dir, "a", 1);
            string modelB = SaveChain(dir, "b", 2);
            string data = StreamingPathTests.WriteNpy(dir);
            string output = Path.Combine(dir, "out", "m.onnx");
            Assert.AreEqual(0, Run(dir, modelA, output, data, null), "clean run A");
            string pairA = Weights(output);
            Assert.AreEqual(0, Run(dir, modelB, Path.Combine(dir, "ref", "m.onnx"), data, null), "clean run B");
            string pairB = Weights(Path.Combine(dir, "ref", "m.onnx"));
            Assert.AreNotEqual(pairA, pairB);

            foreach ((string point, bool expectNew) in new[] { ("publish-data-placed", false), ("publish-committed", true) })
            {
                Assert.AreEqual(0, Run(dir, modelA, output, data, null), "back to pair A");
                int code = Run(dir, modelB, output, data, point);
                Assert.AreEqual(137, code, point + ": the worker must have been killed at the fault point");
                Assert.AreEqual(expectNew ? pairB : pairA, Weights(output), point + ": the .onnx must read the data it was written with");
            }
            Assert.AreEqual(0, Run(dir, modelB, output, data, null), "a clean run after the kills");
            Assert.AreEqual(pairB, Weights(output));
            string[] left = Directory.GetFiles(Path.Combine(dir, "out"), "m.onnx*");
            Assert.AreEqual(2, left.Length, "the .onnx and one data file; stale data files are removed: " + string.Join(", ", left));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static string SaveChain(string dir, string name, int seed)
    {
        var g = new CompressOnBuild.Onnx.GraphProto { Name = "chain" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 256));
        g.Output.Add(TinyModels.FloatValue("y", "N", 64));
        g.Initializer.Add(TensorUtil.FromFloats("w1", TinyModels.RandomFloats(256 * 128, seed, 0.1f), 256, 128));
        g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(128 * 64, seed + 10, 0.1f), 128, 64));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w1"], ["h"], "mm1"));
        g.Node.Add(TinyModels.Node("MatMul", ["h", "w2"], ["y"], "mm2"));
        string model = Path.Combine(dir, name, "m.onnx");
        ModelIO.Save(TinyModels.Model(g), model, new ModelSaveOptions { ForceExternalData = true });
        return model;
    }

    /// <summary>Every initializer's name and bytes as the .onnx resolves them (external data read through its locations).</summary>
    internal static string Weights(string model)
    {
        var sb = new System.Text.StringBuilder();
        foreach (CompressOnBuild.Onnx.TensorProto t in ModelIO.Load(model).Graph.Initializer)
        {
            sb.Append(t.Name).Append(':').Append(Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(TensorUtil.ToRawBytes(t)))).Append(';');
        }
        return sb.ToString();
    }

    private static int Run(string dir, string model, string output, string data, string? fault)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = dir };
        psi.Environment["COMPRESSONBUILD_STREAMING_THRESHOLD_BYTES"] = "1000";
        if (fault != null)
        {
            psi.Environment["COMPRESSONBUILD_FAULT"] = fault;
        }
        foreach (string a in new[] { "exec", CliHarness.CliDll(), "compress", model, "--output", output, "--validation-data", data, "--min-cosine", "0.9" })
        {
            psi.ArgumentList.Add(a);
        }
        using Process p = Process.Start(psi)!;
        Task<string> err = p.StandardError.ReadToEndAsync();
        string text = p.StandardOutput.ReadToEnd();
        Assert.IsTrue(p.WaitForExit(TimeSpan.FromMinutes(2)), "hang");
        if (fault == null && p.ExitCode != 0)
        {
            Assert.Fail(text + err.Result);
        }
        return p.ExitCode;
    }
}

[TestClass]
public sealed class StreamingPathTests
{
    [TestMethod]
    [DataRow("Int8Dynamic", "DynamicQuantizeMatMul")]
    [DataRow("Int4Weights", "MatMulNBits")]
    [DataRow("Float16", "MatMul")]
    public void ModelsOverTheStreamingThresholdGoThroughTheStreamingPassAndAreValidated(string scheme, string op)
    {
        string dir = Path.Combine(Path.GetTempPath(), "cob-stream-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            // A MatMul chain with external data; the threshold is lowered so this small model takes the big-model path.
            var g = new CompressOnBuild.Onnx.GraphProto { Name = "chain" };
            g.Input.Add(TinyModels.FloatValue("x", "N", 256));
            g.Output.Add(TinyModels.FloatValue("y", "N", 64));
            g.Initializer.Add(TensorUtil.FromFloats("w1", TinyModels.RandomFloats(256 * 128, 1, 0.1f), 256, 128));
            g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(128 * 64, 2, 0.1f), 128, 64));
            g.Node.Add(TinyModels.Node("MatMul", ["x", "w1"], ["h"], "mm1"));
            g.Node.Add(TinyModels.Node("MatMul", ["h", "w2"], ["y"], "mm2"));
            string model = Path.Combine(dir, "big.onnx");
            ModelIO.Save(TinyModels.Model(g), model, new ModelSaveOptions { ForceExternalData = true });

            var psi = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = dir };
            psi.Environment["COMPRESSONBUILD_STREAMING_THRESHOLD_BYTES"] = "1000";
            foreach (string a in new[] { "exec", CliHarness.CliDll(), "compress", model, "--output", Path.Combine(dir, "out", "big.onnx"), "--report", Path.Combine(dir, "r.json"), "--min-cosine", "0.99", "--validation-data", WriteNpy(dir), "--quantization", scheme })
            {
                psi.ArgumentList.Add(a);
            }
            using var p = System.Diagnostics.Process.Start(psi)!;
            string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.AreEqual(0, p.ExitCode, output);
            IReadOnlyList<string> dataFiles = ModelPair.DataFiles(Path.Combine(dir, "out", "big.onnx"));
            Assert.AreEqual(1, dataFiles.Count, "the streaming pass writes its weights as external data");
            StringAssert.Matches(Path.GetFileName(dataFiles[0]), new System.Text.RegularExpressions.Regex(@"^big\.onnx\.[0-9a-f]{16}\.data$"));
            Assert.IsTrue(File.Exists(dataFiles[0]));
            CompressOnBuild.Onnx.ModelProto q = ModelIO.Load(Path.Combine(dir, "out", "big.onnx"));
            Assert.AreEqual(2, q.Graph.Node.Count(n => n.OpType == op), output);
            if (scheme == "Float16")
            {
                Assert.IsTrue(q.Graph.Initializer.Where(t => t.Name is "w1" or "w2").All(t => t.DataType == (int)CompressOnBuild.Onnx.TensorProto.Types.DataType.Float16), output);
            }
            var report = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "r.json")))!;
            Assert.IsTrue(report["validation"]!["meanCosineSimilarity"]!.GetValue<double>() >= 0.99);
            Assert.IsNull(report["cache"]!["key"], "the streaming path is not cached");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>x[N,256] -> MatMul(w1) -> Relu -> Gemm(w2 transposed, c2) -> y[N,64], external data, as dir/big.onnx.</summary>
    private static string MatMulAndGemm(string dir)
    {
        var g = new CompressOnBuild.Onnx.GraphProto { Name = "layers" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 256));
        g.Output.Add(TinyModels.FloatValue("y", "N", 64));
        g.Initializer.Add(TensorUtil.FromFloats("w1", TinyModels.RandomFloats(256 * 128, 1, 0.1f), 256, 128));
        g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(64 * 128, 2, 0.1f), 64, 128));
        g.Initializer.Add(TensorUtil.FromFloats("c2", TinyModels.RandomFloats(64, 3, 0.1f), 64));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w1"], ["h"], "mm1"));
        g.Node.Add(TinyModels.Node("Relu", ["h"], ["hr"], "relu"));
        g.Node.Add(TinyModels.Node("Gemm", ["hr", "w2", "c2"], ["y"], "gemm2", TinyModels.IntAttr("transB", 1)));
        string model = Path.Combine(dir, "big.onnx");
        ModelIO.Save(TinyModels.Model(g), model, new ModelSaveOptions { ForceExternalData = true });
        return model;
    }

    private static (int Exit, string Output) RunStreamingWorker(string dir, params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = dir };
        psi.Environment["COMPRESSONBUILD_STREAMING_THRESHOLD_BYTES"] = "1000";
        foreach (string a in new[] { "exec", CliHarness.CliDll(), "compress" }.Concat(args))
        {
            psi.ArgumentList.Add(a);
        }
        using var p = System.Diagnostics.Process.Start(psi)!;
        Task<string> err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        Assert.IsTrue(p.WaitForExit(TimeSpan.FromMinutes(3)), "hang");
        return (p.ExitCode, output + err.Result);
    }

    [TestMethod]
    public void Int8StaticOverTheStreamingThresholdCalibratesOnTheFileAndQuantizesMatMulAndGemm()
    {
        string dir = Path.Combine(Path.GetTempPath(), "cob-stream-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            string model = MatMulAndGemm(dir);
            string source = PublishKillTests.Weights(model);
            string output = Path.Combine(dir, "out", "big.onnx");
            (int exit, string text) = RunStreamingWorker(dir, model, "--output", output, "--report", Path.Combine(dir, "r.json"),
                "--calibration-data", WriteNpy(dir), "--quantization", "Int8Static", "--min-cosine", "0.99");
            Assert.AreEqual(0, exit, text);
            Assert.AreEqual(source, PublishKillTests.Weights(model), "the source model is never modified");
            CompressOnBuild.Onnx.ModelProto q = ModelIO.Load(output);
            Assert.IsFalse(q.Graph.Initializer.Any(t => t.Name is "w1" or "w2"), "both float weights are replaced");
            Assert.AreEqual(2, q.Graph.Node.Count(n => n.OpType == "DequantizeLinear" && n.Input[0].StartsWith('w')), text);
            Assert.IsTrue(q.Graph.Node.Any(n => n.OpType == "QuantizeLinear"), text);
            var report = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "r.json")))!;
            CollectionAssert.AreEquivalent(new[] { "mm1", "gemm2" },
                report["quantization"]!["quantizedNodes"]!.AsArray().Select(n => n!["node"]!.GetValue<string>()).ToList(), text);
            Assert.IsTrue(report["validation"]!["meanCosineSimilarity"]!.GetValue<double>() >= 0.99, text);
            Assert.IsFalse(report["diagnostics"]!.AsArray().Any(d => d!["code"]!.GetValue<string>() is "CMPR0004" or "CMPR0114"), text);
            Assert.IsEmpty(Directory.GetFiles(dir, "cob-calibrate-*", SearchOption.AllDirectories), "the calibration copy is removed");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    [DataRow("Int8Dynamic", new[] { "conv", "gemm", "mm" })]
    [DataRow("Int4Weights", new[] { "gemm", "mm" })]
    public void StreamingQuantizesConvAndGemmLayersLikeTheInMemoryPass(string scheme, string[] layers)
    {
        string dir = Path.Combine(Path.GetTempPath(), "cob-stream-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            // x[N,256] -> Reshape [N,4,8,8] -> Conv(bias, pads 1) -> Relu -> Flatten -> Gemm(c) -> Relu -> MatMul -> y[N,64],
            // every weight in external data, through the worker with the streaming threshold lowered.
            var g = new CompressOnBuild.Onnx.GraphProto { Name = "layers" };
            g.Input.Add(TinyModels.FloatValue("x", "N", 256));
            g.Output.Add(TinyModels.FloatValue("y", "N", 64));
            g.Initializer.Add(TensorUtil.FromInt64("shape", [-1, 4, 8, 8], 4));
            g.Initializer.Add(TensorUtil.FromFloats("wc", TinyModels.RandomFloats(8 * 4 * 3 * 3, 1, 0.3f), 8, 4, 3, 3));
            g.Initializer.Add(TensorUtil.FromFloats("bc", TinyModels.RandomFloats(8, 2, 0.1f), 8));
            g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(512 * 64, 3, 0.05f), 512, 64));
            g.Initializer.Add(TensorUtil.FromFloats("c2", TinyModels.RandomFloats(64, 4, 0.1f), 64));
            g.Initializer.Add(TensorUtil.FromFloats("w3", TinyModels.RandomFloats(64 * 64, 5, 0.1f), 64, 64));
            g.Node.Add(TinyModels.Node("Reshape", ["x", "shape"], ["img"], "reshape"));
            g.Node.Add(TinyModels.Node("Conv", ["img", "wc", "bc"], ["c"], "conv", TinyModels.IntsAttr("pads", 1, 1, 1, 1)));
            g.Node.Add(TinyModels.Node("Relu", ["c"], ["cr"], "relu_c"));
            g.Node.Add(TinyModels.Node("Flatten", ["cr"], ["f"], "flatten"));
            g.Node.Add(TinyModels.Node("Gemm", ["f", "w2", "c2"], ["h"], "gemm"));
            g.Node.Add(TinyModels.Node("Relu", ["h"], ["hr"], "relu"));
            g.Node.Add(TinyModels.Node("MatMul", ["hr", "w3"], ["y"], "mm"));
            string model = Path.Combine(dir, "big.onnx");
            ModelIO.Save(TinyModels.Model(g), model, new ModelSaveOptions { ForceExternalData = true });
            string source = PublishKillTests.Weights(model);
            string output = Path.Combine(dir, "out", "big.onnx");
            (int exit, string text) = RunStreamingWorker(dir, model, "--output", output, "--report", Path.Combine(dir, "r.json"),
                "--validation-data", WriteNpy(dir), "--quantization", scheme, "--min-cosine", "0.98");
            Assert.AreEqual(0, exit, text);
            Assert.AreEqual(source, PublishKillTests.Weights(model), "the source model is never modified");
            var report = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "r.json")))!;
            CollectionAssert.AreEqual(layers, report["quantization"]!["quantizedNodes"]!.AsArray().Select(n => n!["node"]!.GetValue<string>()).ToList(), text);
            Assert.IsFalse(report["diagnostics"]!.AsArray().Any(d => d!["code"]!.GetValue<string>() == "CMPR0114"), text);
            Assert.IsNull(report["cache"]!["key"], "the streaming path was taken (it is not cached)");
            CompressOnBuild.Onnx.ModelProto q = ModelIO.Load(output);
            Assert.IsFalse(q.Graph.Initializer.Any(t => t.Name is "w2" or "w3"), text);
            Assert.AreEqual(scheme == "Int8Dynamic", q.Graph.Node.Any(n => n.OpType == "ConvInteger"), text);
            Assert.IsTrue(report["validation"]!["meanCosineSimilarity"]!.GetValue<double>() >= 0.98, text);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [TestMethod]
    public void StreamingInt8DynamicSaysWhichLayersItLeftFloatAndWhy()
    {
        string dir = Path.Combine(Path.GetTempPath(), "cob-stream-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            // MatMul (chunked), Gemm (the in-memory lowering on the lazily loaded graph) and a MatMul whose weight is a
            // Cast of a 2 MiB float16 initializer (non-float external tensors up to 1 MiB are read into memory first): only
            // that one stays float because the model streamed.
            var g = new CompressOnBuild.Onnx.GraphProto { Name = "layers" };
            g.Input.Add(TinyModels.FloatValue("x", "N", 256));
            g.Output.Add(TinyModels.FloatValue("y", "N", 16384));
            g.Initializer.Add(TensorUtil.FromFloats("w1", TinyModels.RandomFloats(256 * 128, 1, 0.1f), 256, 128));
            g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(64 * 128, 2, 0.1f), 64, 128));
            g.Initializer.Add(TensorUtil.FromFloats("c2", TinyModels.RandomFloats(64, 3, 0.1f), 64));
            var w3 = TinyModels.Float16("w3", TinyModels.RandomFloats(64 * 16384, 4, 0.1f), 64, 16384);
            g.Initializer.Add(w3);
            g.Node.Add(TinyModels.Node("MatMul", ["x", "w1"], ["h"], "mm1"));
            g.Node.Add(TinyModels.Node("Relu", ["h"], ["hr"], "relu"));
            g.Node.Add(TinyModels.Node("Gemm", ["hr", "w2", "c2"], ["h2"], "gemm2", TinyModels.IntAttr("transB", 1)));
            g.Node.Add(TinyModels.Node("Cast", ["w3"], ["w3_f"], "cast3", TinyModels.IntAttr("to", 1)));
            g.Node.Add(TinyModels.Node("MatMul", ["h2", "w3_f"], ["y"], "mm3"));
            string model = Path.Combine(dir, "big.onnx");
            ModelIO.Save(TinyModels.Model(g), model, new ModelSaveOptions { ForceExternalData = true });
            (int exit, string text) = RunStreamingWorker(dir, model, "--output", Path.Combine(dir, "out", "big.onnx"), "--report", Path.Combine(dir, "r.json"),
                "--validation-data", WriteNpy(dir), "--quantization", "Int8Dynamic", "--min-cosine", "0.99");
            Assert.AreEqual(0, exit, text);
            var report = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "r.json")))!;
            CollectionAssert.AreEqual(new[] { "mm1", "gemm2" }, report["quantization"]!["quantizedNodes"]!.AsArray().Select(n => n!["node"]!.GetValue<string>()).ToList(), text);
            CompressOnBuild.Onnx.ModelProto q = ModelIO.Load(Path.Combine(dir, "out", "big.onnx"));
            Assert.AreEqual(2, q.Graph.Node.Count(n => n.OpType == "DynamicQuantizeMatMul"), text);
            Assert.IsFalse(q.Graph.Initializer.Any(t => t.Name is "w1" or "w2"), "both float weights are replaced");
            string warning = report["diagnostics"]!.AsArray().Select(d => d!).Single(d => d["code"]!.GetValue<string>() == "CMPR0114")["message"]!.GetValue<string>();
            StringAssert.Contains(warning, "1 layer(s)");
            StringAssert.Contains(warning, "mm3");
            StringAssert.Contains(warning, "computes no Cast of an external weight");
            Assert.IsFalse(warning.Contains("gemm2", StringComparison.Ordinal), warning);
            StringAssert.Contains(text, "CMPR0114", "the summary names it too, not only the report");
            Assert.IsTrue(report["validation"]!["meanCosineSimilarity"]!.GetValue<double>() >= 0.99, text);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>32 samples of 256 floats as a .npy file.</summary>
    internal static string WriteNpy(string dir)
    {
        string path = Path.Combine(dir, "val.npy");
        string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (32, 256), }";
        int total = 10 + header.Length + 1;
        int pad = (64 - total % 64) % 64;
        header = header + new string(' ', pad) + "\n";
        using var fs = File.Create(path);
        fs.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0]);
        fs.Write(BitConverter.GetBytes((ushort)header.Length));
        fs.Write(System.Text.Encoding.ASCII.GetBytes(header));
        float[] values = TinyModels.RandomFloats(32 * 256, 9, 1f);
        fs.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));
        return path;
    }
}
