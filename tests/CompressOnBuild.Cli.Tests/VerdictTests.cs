using System.Text.Json.Nodes;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using CompressOnBuild.Validation;

namespace CompressOnBuild.Cli.Tests;

/// <summary>The verdict says what it rests on and what went wrong (issue 13, items 4 and 5).</summary>
[TestClass]
public sealed class VerdictTests
{
    private TempDirectory _temp = null!;

    [TestInitialize]
    public void Init() => _temp = new TempDirectory("cob-verdict");

    [TestCleanup]
    public void Cleanup() => _temp.Delete();

    private string P(string name) => Path.Combine(_temp.Path, name);

    private static IEnumerable<string> Warnings(CliRun run, string code) =>
        run.Lines.Where(l => l.Contains(" : warning " + code + " : ", StringComparison.Ordinal));

    private static string Summary(CliRun run) => run.Lines.Single(l => l.StartsWith("CompressOnBuild: ", StringComparison.Ordinal));

    private string SaveMlp()
    {
        string model = P("mlp.onnx");
        ModelIO.Save(TinyModels.Mlp(inF: 64, hidden: 32, classes: 10, seed: 4), model);
        return model;
    }

    [TestMethod]
    [DataRow("Int8Dynamic", "None", false)]
    [DataRow("None", "Magnitude:0.5", true)]
    [DataRow("None", "Global:0.5", true)]
    [DataRow("None", "NofM:2:4", true)]
    [DataRow("Int8Dynamic", "Channels:0.3", true)]
    public void WithoutData_TheVerdictSaysSyntheticInputs_AndWeightChangingSchemesWarn(string quantization, string pruning, bool warns)
    {
        CliRun run = CliHarness.InProcess("compress", SaveMlp(), "--output", P("out.onnx"), "--report", P("out.json"),
            "--quantization", quantization, "--pruning", pruning);
        Assert.AreEqual(0, run.ExitCode, run.Output);
        StringAssert.Contains(Summary(run), "on 16 synthetic inputs: not representative of real data");
        JsonNode v = JsonNode.Parse(File.ReadAllText(P("out.json")))!["validation"]!;
        Assert.IsTrue(v["syntheticInputs"]!.GetValue<bool>());
        Assert.AreEqual("on 16 synthetic inputs: not representative of real data", v["note"]!.GetValue<string>());
        string[] w = [.. Warnings(run, "CMPR0415")];
        Assert.HasCount(warns ? 1 : 0, w, run.Output);
        // The Markdown and HTML reports beside report.json (CI job summaries) say it too.
        string md = File.ReadAllText(P("out.md"));
        string html = File.ReadAllText(P("out.html"));
        StringAssert.Contains(md, "on 16 synthetic inputs: not representative of real data");
        StringAssert.Contains(html, "on 16 synthetic inputs: not representative of real data");
        if (warns)
        {
            StringAssert.Contains(w[0], "Pruning=" + pruning);
            StringAssert.Contains(w[0], "ValidationData");
            StringAssert.Contains(md, "warning CMPR0415:");
            StringAssert.Contains(html, "warning CMPR0415:");
        }
    }

    [TestMethod]
    public void WithValidationData_TheVerdictIsNotLabelledSynthetic()
    {
        string model = SaveMlp();
        string data = P("val.npy");
        float[] values = TinyModels.RandomFloats(20 * 64, 9);
        File.WriteAllBytes(data, NpyFloat(20, 64, values));
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("out.onnx"), "--report", P("out.json"),
            "--quantization", "None", "--pruning", "Magnitude:0.5", "--validation-data", data);
        Assert.AreEqual(0, run.ExitCode, run.Output);
        StringAssert.Contains(Summary(run), "on 20 samples (batch 1)");
        Assert.IsFalse(Summary(run).Contains("synthetic", StringComparison.Ordinal), Summary(run));
        Assert.IsFalse(JsonNode.Parse(File.ReadAllText(P("out.json")))!["validation"]!["syntheticInputs"]!.GetValue<bool>());
        Assert.IsEmpty(Warnings(run, "CMPR0415"));
    }

    private static byte[] NpyFloat(int rows, int columns, float[] values)
    {
        string header = $"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {columns}), }}";
        int total = 10 + header.Length + 1;
        header += new string(' ', (64 - total % 64) % 64) + "\n";
        using var ms = new MemoryStream();
        ms.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0]);
        ms.Write(BitConverter.GetBytes((ushort)header.Length));
        ms.Write(System.Text.Encoding.ASCII.GetBytes(header));
        foreach (float f in values)
        {
            ms.Write(BitConverter.GetBytes(f));
        }
        return ms.ToArray();
    }

    [TestMethod]
    public void NothingQuantized_TheWarningGivesThePassReasonsPerLayer_AndTheOutputIsNotSmaller()
    {
        // Two MatMuls whose weights (4x3 = 12 elements) are below the pass's minimum size: the pass says so per layer.
        var g = new GraphProto { Name = "small" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 4));
        g.Output.Add(TinyModels.FloatValue("y", "N", 3));
        g.Initializer.Add(TensorUtil.FromFloats("w1", TinyModels.RandomFloats(16, 1), 4, 4));
        g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(12, 2), 4, 3));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w1"], ["h"], "first"));
        g.Node.Add(TinyModels.Node("MatMul", ["h", "w2"], ["y"], "second"));
        string model = P("small.onnx");
        ModelIO.Save(TinyModels.Model(g), model);
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("out.onnx"), "--report", P("out.json"), "--quantization", "Int8Dynamic",
            "--nodes-to-exclude", "first");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        string w = Warnings(run, "CMPR0203").Single();
        StringAssert.Contains(w, "2 layer(s) left alone");
        StringAssert.Contains(w, "first: excluded by the options");
        StringAssert.Contains(w, "second: weight 'w2' has 12 elements, fewer than the minimum 16");
        Assert.IsFalse(w.Contains("no MatMul, Gemm or Conv", StringComparison.Ordinal), w);
        JsonArray skipped = JsonNode.Parse(File.ReadAllText(P("out.json")))!["quantization"]!["skippedNodes"]!.AsArray();
        Assert.HasCount(2, skipped);
        StringAssert.Contains(Warnings(run, "CMPR0206").Single(), "is not smaller than the original");
    }

    [TestMethod]
    public void NothingPruned_WarnsWithThePassReasons()
    {
        // One Gemm: it is the output layer, which pruning keeps dense, so the pass changes nothing.
        var g = new GraphProto { Name = "one" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 32));
        g.Output.Add(TinyModels.FloatValue("y", "N", 8));
        g.Initializer.Add(TensorUtil.FromFloats("w", TinyModels.RandomFloats(8 * 32, 3), 8, 32));
        g.Node.Add(TinyModels.Node("Gemm", ["x", "w"], ["y"], "only", TinyModels.IntAttr("transB", 1)));
        string model = P("one.onnx");
        ModelIO.Save(TinyModels.Model(g), model);
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("out.onnx"), "--report", P("out.json"),
            "--quantization", "None", "--pruning", "Magnitude:0.5");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        string w = Warnings(run, "CMPR0205").Single();
        StringAssert.Contains(w, "only: no other prunable layer follows it (output layer)");
        JsonArray skipped = JsonNode.Parse(File.ReadAllText(P("out.json")))!["pruning"]!["skippedNodes"]!.AsArray();
        Assert.HasCount(1, skipped);
    }

    [TestMethod]
    public void Reasons_GroupLayersByReason_AndCountTheRest()
    {
        SkippedNode[] skipped =
        [
            new("a", "Conv", "opset 9 is too old"), new("b", "Conv", "opset 9 is too old"), new("c", "Conv", "opset 9 is too old"),
            new("d", "Conv", "opset 9 is too old"), new("e", "MatMul", "weight is an input"), new("f", "Gemm", "r3"), new("g", "Gemm", "r4"),
        ];
        Assert.AreEqual("7 layer(s) left alone (a, b, c and 1 more: opset 9 is too old; e: weight is an input; f: r3; 1 more reason(s) in the report)",
            Verdict.Reasons(skipped));
        Assert.IsNull(Verdict.Reasons([]));
    }

    private static ValidationResult Timed(double ratio, double slowerShare, int runs = 15) => new()
    {
        SampleCount = 16, OutputName = "y", HasLabels = false, Top1Agreement = 1, MeanCosineSimilarity = 1, MaxAbsError = 0,
        Outputs = [], OriginalImagesPerSecond = 1, CompressedImagesPerSecond = 1, BatchSize = 1,
        OriginalLatencyMs = 1, CompressedLatencyMs = ratio, LatencyRatio = ratio, LatencyRuns = runs, Threads = 1,
        CompressedSlowerFraction = slowerShare,
    };

    [TestMethod]
    public void Slower_NeedsARatioAbove1Point1_AndMostPairsSlower()
    {
        Assert.IsTrue(Verdict.ClearlySlower(Timed(1.5, 0.9)));
        Assert.IsFalse(Verdict.ClearlySlower(Timed(1.05, 1.0)), "within 10%");
        Assert.IsFalse(Verdict.ClearlySlower(Timed(1.5, 0.6)), "a median pushed up while the pairs disagree is noise");
        Assert.IsFalse(Verdict.ClearlySlower(Timed(3, 1, runs: 0)), "not measured");
    }

    private ItemResult Result(string model, Dictionary<string, string> options)
    {
        var request = new ItemRequest(model);
        request.Values["OutputPath"] = P("o.onnx");
        foreach ((string k, string v) in options)
        {
            request.Values[k] = v;
        }
        return new ItemResult { Settings = ItemSettings.From(request) };
    }

    [TestMethod]
    public void SlowerCompressedModel_WarnsWithTheRatio_UnlessALatencyBudgetDecides()
    {
        string model = SaveMlp();
        ItemResult r = Result(model, []);
        r.OriginalBytes = 100;
        r.CompressedBytes = 50;
        r.Validation = Timed(1.8, 0.93);
        Verdict.AddWarnings(r, candidatePath: null);
        Diagnostic d = r.Diagnostics.Single();
        Assert.AreEqual("CMPR0416", d.Code);
        Assert.AreEqual(Severity.Warning, d.Severity);
        StringAssert.Contains(d.Message, "latency ratio 1.80");
        StringAssert.Contains(d.Message, "slower in 93% of the pairs");

        ItemResult budgeted = Result(model, new() { ["MaxLatencyRatio"] = "2" });
        budgeted.OriginalBytes = 100;
        budgeted.CompressedBytes = 50;
        budgeted.Validation = Timed(1.8, 0.93);
        Verdict.AddWarnings(budgeted, candidatePath: null);
        Assert.IsEmpty(budgeted.Diagnostics);
    }

    [TestMethod]
    public void QuantizedLayersOrtRunsInFloat_AreNamedInAWarningAndTheReport()
    {
        // A Conv fed by a DequantizeLinear of an int8 weight and a float activation: ORT has no integer kernel for it
        // (no QuantizeLinear on the activation), so after its optimizer the layer still computes in float.
        var g = new GraphProto { Name = "dq" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 2, 4, 4));
        g.Output.Add(TinyModels.FloatValue("y", "N", 3, 2, 2));
        g.Initializer.Add(TensorUtil.FromInt8("wq", Enumerable.Range(0, 54).Select(i => (sbyte)(i - 27)).ToArray(), 3, 2, 3, 3));
        g.Initializer.Add(TensorUtil.FromFloats("ws", [0.01f]));
        g.Initializer.Add(TensorUtil.FromInt8("wz", [(sbyte)0]));
        g.Node.Add(TinyModels.Node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], "dq_w"));
        g.Node.Add(TinyModels.Node("Conv", ["x", "w"], ["y"], "fc_float"));
        string model = P("dq.onnx");
        ModelIO.Save(TinyModels.Model(g), model);

        ItemResult r = Result(model, []);
        r.OriginalBytes = 1000;
        r.CompressedBytes = 500;
        r.Quantization = new PassResult("Int8Static", false, null, [new QuantizedNode("fc_float", "Conv", "w", 18, 3, 0f)], [], []);
        Verdict.AddWarnings(r, model);
        CollectionAssert.AreEqual(new[] { "'fc_float' (Conv)" }, r.FloatFallbacks!.ToArray());
        Diagnostic d = r.Diagnostics.Single();
        Assert.AreEqual("CMPR0207", d.Code);
        StringAssert.Contains(d.Message, "1 quantized layer(s) in float");
        StringAssert.Contains(d.Message, "fc_float");
        JsonNode report = Report.Build(r, null);
        Assert.AreEqual("'fc_float' (Conv)", report["quantization"]!["floatFallbacks"]![0]!.GetValue<string>());
    }
    /// <summary>
    /// Issue 17: on graphs of 10^5 nodes opening an ONNX Runtime session costs more than the pass, so one attempt opens
    /// each model once: the compressed model's validation session also writes the optimized graph the float-fallback
    /// check reads, and the original's inputs come from its graph (synthetic inputs are probed on its validation session).
    /// </summary>
    [TestMethod]
    [DataRow("Int8Dynamic")]
    [DataRow("Int4Weights:16")]
    public void OneAttempt_OpensEachModelOnce_AndStillChecksTheOptimizedGraph(string scheme)
    {
        string model = SaveMlp();
        long before = ModelRunner.SessionsOpened;
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("once.onnx"), "--report", P("once.json"), "--quantization", scheme);
        long opened = ModelRunner.SessionsOpened - before;
        Assert.AreEqual(0, run.ExitCode, run.Output);
        Assert.AreEqual(2, opened, "sessions opened: the compressed model's and the original's, once each\n" + run.Output);
        JsonNode report = JsonNode.Parse(File.ReadAllText(P("once.json")))!;
        Assert.IsNotNull(report["quantization"]!["floatFallbacks"], "the optimized-graph check ran");
        Assert.IsTrue(report["validation"]!["syntheticInputs"]!.GetValue<bool>());
        Assert.AreEqual(16, report["validation"]!["samples"]!.GetValue<int>());
    }

    /// <summary>The optimized graph a validation session wrote gives the same fallbacks as a session opened for it, and is deleted once read.</summary>
    [TestMethod]
    public void FloatFallbacks_FromTheValidationSessionsOptimizedGraph_MatchASeparateSession()
    {
        var g = new GraphProto { Name = "dq" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 2, 4, 4));
        g.Output.Add(TinyModels.FloatValue("y", "N", 3, 2, 2));
        g.Initializer.Add(TensorUtil.FromInt8("wq", Enumerable.Range(0, 54).Select(i => (sbyte)(i - 27)).ToArray(), 3, 2, 3, 3));
        g.Initializer.Add(TensorUtil.FromFloats("ws", [0.01f]));
        g.Initializer.Add(TensorUtil.FromInt8("wz", [(sbyte)0]));
        g.Node.Add(TinyModels.Node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], "dq_w"));
        g.Node.Add(TinyModels.Node("Conv", ["x", "w"], ["y"], "fc_float"));
        string model = P("dq.onnx");
        ModelIO.Save(TinyModels.Model(g), model);
        string optimized = P("ort-optimized.onnx");
        using (new ModelRunner(model, new ModelRunnerOptions().WithOptimizedModelPath(optimized)))
        {
            Assert.IsTrue(File.Exists(optimized));
        }

        ItemResult r = Result(model, []);
        r.OriginalBytes = 1000;
        r.CompressedBytes = 500;
        r.Quantization = new PassResult("Int8Static", false, null, [new QuantizedNode("fc_float", "Conv", "w", 18, 3, 0f)], [], []);
        Verdict.AddWarnings(r, model, optimized);
        CollectionAssert.AreEqual(new[] { "'fc_float' (Conv)" }, r.FloatFallbacks!.ToArray());
        Assert.IsFalse(File.Exists(optimized), "read once, then deleted");
        CollectionAssert.AreEqual(OptimizedGraph.FloatFallbacks(OptimizedGraph.Optimize(model)), r.FloatFallbacks!.ToArray());
    }
}
