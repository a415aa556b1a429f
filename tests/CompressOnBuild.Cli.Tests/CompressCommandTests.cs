using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Cli.Tests;

[TestClass]
public sealed class CompressCommandTests
{
    private TempDirectory _temp = null!;

    private string _dir => _temp.Path;

    [TestInitialize]
    public void Init() => _temp = new TempDirectory("cob-cli");

    [TestCleanup]
    public void Cleanup() => _temp.Delete();

    private string P(string name) => Path.Combine(_dir, name);

    /// <summary>A small MLP (big enough that int8 pays) and IDX validation data labelled by the float model itself.</summary>
    private (string Model, string Images, string Labels) MakeMlpWithData(int samples = 64)
    {
        ModelProto m = TinyModels.Mlp(inF: 784, hidden: 64, classes: 10, seed: 3);
        m.Graph.Input[0] = TinyModels.FloatValue("x", "N", 784);
        string model = P("mlp.onnx");
        ModelIO.Save(m, model);
        var rng = new Random(5);
        var pixels = new byte[samples * 784];
        rng.NextBytes(pixels);
        string images = P("val-images-idx3-ubyte");
        string labels = P("val-labels-idx1-ubyte");
        Idx.WriteImages(images, pixels, samples, 28, 28);
        Idx.WriteLabels(labels, Enumerable.Range(0, samples).Select(i => (byte)(i % 10)).ToArray());
        return (model, images, labels);
    }

    [TestMethod]
    public void CompressesAnMnistModelWithinBudgetAndWritesTheReport()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        string labels = Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte");
        string source = Corpus.Model("mnist-mlp-gemm");
        byte[] sourceHash = SHA256.HashData(File.ReadAllBytes(source));
        CliRun run = CliHarness.InProcess("compress", source, "--output", P("out/mnist.onnx"), "--report", P("out/mnist.report.json"),
            "--validation-data", images, "--labels", labels, "--max-accuracy-drop", "0.5", "--min-agreement", "0.99");

        Assert.AreEqual(0, run.ExitCode, run.Output);
        string summary = run.Lines.Single(l => l.StartsWith("CompressOnBuild: ", StringComparison.Ordinal));
        StringAssert.Contains(summary, "Int8Dynamic");
        StringAssert.Contains(summary, "2 budget(s) met");
        CollectionAssert.AreEqual(sourceHash, SHA256.HashData(File.ReadAllBytes(source)), "the source model must not change");

        JsonNode report = JsonNode.Parse(File.ReadAllText(P("out/mnist.report.json")))!;
        Assert.AreEqual(1, report["schemaVersion"]!.GetValue<int>());
        Assert.AreEqual("passed", report["verdict"]!.GetValue<string>());
        Assert.AreEqual(10000, report["validation"]!["samples"]!.GetValue<int>());
        double original = report["validation"]!["originalAccuracy"]!.GetValue<double>();
        double compressed = report["validation"]!["compressedAccuracy"]!.GetValue<double>();
        Assert.AreEqual(96.43, original, 0.005, "the float model's top-1 must match the corpus baseline");
        Assert.IsTrue(original - compressed <= 0.5, $"top-1 drop {original - compressed} points");
        long before = report["model"]!["sourceBytes"]!.GetValue<long>();
        long after = report["model"]!["compressedBytes"]!.GetValue<long>();
        Assert.AreEqual(new FileInfo(P("out/mnist.onnx")).Length, after);
        Assert.IsTrue((double)before / after >= 3.8, $"size ratio {(double)before / after}");
        Assert.AreEqual(2, report["budgets"]!.AsArray().Count);
        Assert.IsTrue(report["budgets"]!.AsArray().All(b => b!["passed"]!.GetValue<bool>()));
        JsonNode hist = report["weightHistograms"]!;
        long beforeCount = hist["before"]!.AsArray().Sum(x => x!.GetValue<long>());
        long afterCount = hist["after"]!.AsArray().Sum(x => x!.GetValue<long>());
        Assert.AreEqual(784 * 512 + 512 * 512 + 512 * 10, beforeCount, "every weight of the three Gemm layers");
        Assert.AreEqual(beforeCount, afterCount, "every quantized weight is decoded back");
        StringAssert.Contains(File.ReadAllText(P("out/mnist.report.html")), "Weight histograms");
        ModelProto output = ModelIO.Load(P("out/mnist.onnx"));
        Assert.IsTrue(output.Graph.Node.Any(n => n.OpType is "DynamicQuantizeMatMul" or "MatMulInteger"), "the output must hold integer ops");
    }

    /// <summary>
    /// The report's weight histograms cover the same weights before and after for every scheme: mnist-8's MatMul weight
    /// sits behind a Reshape (folded on both sides), its Convs become ConvInteger (dynamic) or QDQ (static), and
    /// Int4Weights stores 4-bit blocks.
    /// </summary>
    [TestMethod]
    [DataRow("Int8Dynamic", 8 * 25 + 16 * 8 * 25 + 256 * 10)]
    [DataRow("Int4Weights", 256 * 10)]
    [DataRow("Int4Weights:128:asym", 256 * 10)]
    public void WeightHistogramsCountTheSameWeightsBeforeAndAfter(string scheme, int weights)
    {
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("mnist-8"), "--output", P("h8.onnx"), "--report", P("h8.json"), "--quantization", scheme);
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonNode hist = JsonNode.Parse(File.ReadAllText(P("h8.json")))!["weightHistograms"]!;
        long before = hist["before"]!.AsArray().Sum(x => x!.GetValue<long>());
        long after = hist["after"]!.AsArray().Sum(x => x!.GetValue<long>());
        Assert.AreEqual(weights, before, "every quantized layer's float weights");
        Assert.AreEqual(before, after, "every quantized weight decoded back");
    }

    [TestMethod]
    public void ABrokenBudgetFailsWithCMPR0401NamingModelBudgetAndValueAndShipsNothing()
    {
        (string model, string images, string labels) = MakeMlpWithData();
        string output = P("out/m.onnx");
        Directory.CreateDirectory(P("out"));
        File.WriteAllText(output, "stale output from an earlier build");
        CliRun run = CliHarness.InProcess("compress", model, "--output", output, "--validation-data", images, "--labels", labels,
            "--max-size-kb", "1");
        Assert.AreEqual(1, run.ExitCode, run.Output);
        string error = run.Errors("CMPR0401").Single();
        StringAssert.StartsWith(error, model + " : error CMPR0401 : ");
        StringAssert.Contains(error, "MaxSizeKB");
        StringAssert.Contains(error, "limit 1 KB");
        StringAssert.Matches(error, new System.Text.RegularExpressions.Regex(@"measured \d+(\.\d)? KB"));
        Assert.IsFalse(File.Exists(output), "a model that broke its budget must not ship, and a stale output must go");
    }

    [TestMethod]
    public void BudgetEqualToTheMeasuredValuePassesAndJustBelowFails()
    {
        (string model, string images, string labels) = MakeMlpWithData();
        CliRun first = CliHarness.InProcess("compress", model, "--output", P("a.onnx"), "--report", P("a.json"));
        Assert.AreEqual(0, first.ExitCode, first.Output);
        long bytes = JsonNode.Parse(File.ReadAllText(P("a.json")))!["model"]!["compressedBytes"]!.GetValue<long>();
        string exact = (bytes / 1024.0).ToString("R", CultureInfo.InvariantCulture);
        string below = ((bytes - 1) / 1024.0).ToString("R", CultureInfo.InvariantCulture);

        CliRun atLimit = CliHarness.InProcess("compress", model, "--output", P("b.onnx"), "--max-size-kb", exact);
        Assert.AreEqual(0, atLimit.ExitCode, atLimit.Output);
        CliRun overLimit = CliHarness.InProcess("compress", model, "--output", P("c.onnx"), "--max-size-kb", below);
        Assert.AreEqual(1, overLimit.ExitCode, overLimit.Output);
        _ = images;
        _ = labels;
    }

    [TestMethod]
    public void WarningSeverityReportsTheBrokenBudgetButShips()
    {
        (string model, _, _) = MakeMlpWithData();
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("w.onnx"), "--max-size-kb", "1", "--budget-severity", "Warning");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        Assert.AreEqual(1, run.Lines.Count(l => l.Contains(" : warning CMPR0401 : ", StringComparison.Ordinal)), run.Output);
        Assert.IsTrue(File.Exists(P("w.onnx")));
    }

    [TestMethod]
    public void ResponseFileWithSeveralItemsRunsThemAllInParallel()
    {
        (string model, string images, string labels) = MakeMlpWithData();
        ModelIO.Save(TinyModels.Mlp(inF: 300, hidden: 40, classes: 5, seed: 9), P("second.onnx"));
        string rsp = P("items.rsp");
        File.WriteAllLines(rsp,
        [
            "# generated by a test", "--max-parallelism", "2",
            model, "--output", P("o/one.onnx"), "--validation-data", images, "--labels", labels, "--min-agreement", "0.5",
            "", P("second.onnx"), "--output", P("o/two.onnx"), "--quantization", "None",
        ]);
        CliRun run = CliHarness.InProcess("compress", "@" + rsp);
        Assert.AreEqual(0, run.ExitCode, run.Output);
        Assert.AreEqual(2, run.Lines.Count(l => l.StartsWith("CompressOnBuild: ", StringComparison.Ordinal)));
        Assert.IsTrue(ModelIO.Load(P("o/one.onnx")).Graph.Node.Any(n => n.OpType == "DynamicQuantizeMatMul"));
        Assert.IsFalse(ModelIO.Load(P("o/two.onnx")).Graph.Node.Any(n => n.OpType == "DynamicQuantizeMatMul"), "Quantization=None keeps float ops");
    }

    [TestMethod]
    [DataRow("Int4Weights", "Conv")]
    [DataRow("Int8Dynamic", "Relu")]
    [DataRow("None", "MatMul")]
    public void OpTypesToQuantizeMustListSomethingTheSchemeQuantizes(string scheme, string opTypes)
    {
        (string model, _, _) = MakeMlpWithData();
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("x.onnx"), "--quantization", scheme, "--op-types-to-quantize", opTypes);
        Assert.AreEqual(2, run.ExitCode, run.Output);
        Assert.AreEqual(1, run.Errors("CMPR0003").Count(), run.Output);
        StringAssert.Contains(run.Output, "OpTypesToQuantize");
    }

    /// <summary>
    /// The summary line judges one output; the cosines of a model's other outputs are printed beside it, lowest first, so
    /// an app that reads a second output (a transformer's pooler, a detector's boxes) sees its number too.
    /// </summary>
    [TestMethod]
    public void The_summary_line_gives_the_cosine_of_every_output_it_does_not_judge()
    {
        var g = new GraphProto { Name = "three-heads" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 64));
        foreach ((string name, int seed) in new[] { ("scores", 1), ("pooled", 2), ("aux", 3) })
        {
            g.Output.Add(TinyModels.FloatValue(name, 1, 32));
            g.Initializer.Add(TensorUtil.FromFloats("w_" + name, TinyModels.RandomFloats(64 * 32, seed, 0.2f), 64, 32));
            g.Node.Add(TinyModels.Node("MatMul", ["x", "w_" + name], [name], "head_" + name));
        }
        string model = P("three-heads.onnx");
        ModelIO.Save(TinyModels.Model(g), model);
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("three-heads.out.onnx"), "--report", P("three-heads.json"), "--quantization", "Int8Dynamic");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        string summary = run.Lines.Single(l => l.StartsWith("CompressOnBuild: ", StringComparison.Ordinal));
        JsonNode v = JsonNode.Parse(File.ReadAllText(P("three-heads.json")))!["validation"]!;
        Assert.AreEqual("scores", v["output"]!.GetValue<string>(), "the first output is the judged one");
        var others = v["outputs"]!.AsArray().Where(o => o!["name"]!.GetValue<string>() != "scores")
            .Select(o => (Name: o!["name"]!.GetValue<string>(), Cosine: o["meanCosineSimilarity"]!.GetValue<double>())).OrderBy(o => o.Cosine).ToList();
        Assert.HasCount(2, others);
        string expected = "other outputs: " + string.Join(", ", others.Select(o => string.Format(CultureInfo.InvariantCulture, "'{0}' cosine {1:0.0000}", o.Name, o.Cosine)));
        StringAssert.Contains(summary, expected);
        Assert.IsFalse(summary.Contains("'scores' cosine", StringComparison.Ordinal), summary);
    }

    /// <summary>OpTypesToQuantize narrows the quantization pass to the listed op types on lenet5 (Conv + Gemm layers).</summary>
    [TestMethod]
    [DataRow("Int8Dynamic", "Gemm", "DynamicQuantizeMatMul", "ConvInteger")]
    [DataRow("Int8Dynamic", "Conv", "ConvInteger", "DynamicQuantizeMatMul")]
    [DataRow("Int8Dynamic", "Conv;Gemm", "ConvInteger", null)]
    [DataRow("Float16", "Gemm", "Gemm", null)]
    public void OpTypesToQuantizeLeavesOtherOpTypesFloat(string scheme, string opTypes, string present, string? absent)
    {
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("mnist-lenet5"), "--output", P("o.onnx"), "--report", P("o.json"),
            "--quantization", scheme, "--op-types-to-quantize", opTypes);
        Assert.AreEqual(0, run.ExitCode, run.Output);
        ModelProto m = ModelIO.Load(P("o.onnx"));
        Assert.IsTrue(m.Graph.Node.Any(n => n.OpType == present), string.Join(" ", m.Graph.Node.Select(n => n.OpType)));
        if (absent != null)
        {
            Assert.IsFalse(m.Graph.Node.Any(n => n.OpType == absent), string.Join(" ", m.Graph.Node.Select(n => n.OpType)));
        }
        JsonNode q = JsonNode.Parse(File.ReadAllText(P("o.json")))!["quantization"]!;
        if (scheme == "Int8Dynamic")
        {
            var quantizedOps = q["quantizedNodes"]!.AsArray().Select(n => n!["opType"]!.GetValue<string>()).Distinct().Order().ToArray();
            CollectionAssert.AreEqual(opTypes.Split(';').Order().ToArray(), quantizedOps);
        }
        else
        {
            // Float16: only the Gemm layers run in fp16; every Conv stays float32 (fed through Casts).
            TensorProto[] convWeights = [.. m.Graph.Node.Where(n => n.OpType == "Conv").Select(n => m.Graph.Initializer.Single(t => t.Name == n.Input[1]))];
            Assert.IsNotEmpty(convWeights);
            Assert.IsTrue(convWeights.All(t => t.DataType == (int)TensorProto.Types.DataType.Float), "Conv weights stay float32");
            Assert.IsTrue(m.Graph.Initializer.Any(t => t.DataType == (int)TensorProto.Types.DataType.Float16), "the Gemm weights are fp16");
        }
    }

    [TestMethod]
    [DataRow("--quantization", "Int9", "CMPR0003")]
    [DataRow("--quantization", "Int8Static", "CMPR0003")]
    [DataRow("--calibration-method", "Entropy:2", "CMPR0003")]
    [DataRow("--calibration-method", "KL", "CMPR0003")]
    [DataRow("--calibration-samples", "-3", "CMPR0003")]
    [DataRow("--quantization", "Int4Weights:48", "CMPR0003")]
    [DataRow("--quantization", "Int4Weights:gptq", "CMPR0003")]
    [DataRow("--op-types-to-quantize", "conv", "CMPR0003")]
    [DataRow("--op-types-to-quantize", ";", "CMPR0003")]
    [DataRow("--quantization", "Float16:64", "CMPR0003")]
    [DataRow("--pruning", "Magnitude:1.5", "CMPR0003")]
    [DataRow("--pruning", "NofM:4:2", "CMPR0003")]
    [DataRow("--pruning", "Sensitivity:0.5", "CMPR0003")]
    [DataRow("--pruning", "Sensitivity:0.99", "CMPR0003")]
    [DataRow("--min-agreement", "1.5", "CMPR0003")]
    [DataRow("--max-accuracy-drop", "-1", "CMPR0003")]
    [DataRow("--max-size-kb", "lots", "CMPR0003")]
    [DataRow("--validation-samples", "0", "CMPR0003")]
    [DataRow("--min-agreement", "0.9", "CMPR0407")]
    [DataRow("--frobnicate", "1", "CMPR0009")]
    [DataRow("--tune", "yes", "CMPR0003")]
    [DataRow("--tune-time-budget-seconds", "0", "CMPR0003")]
    [DataRow("--tune", "true", "CMPR0407")]
    [DataRow("--activation-type", "Int8", "CMPR0003")]
    [DataRow("--per-channel", "false", "CMPR0003")]
    public void BadOptionsAreCodedUsageErrors(string option, string value, string code)
    {
        (string model, _, _) = MakeMlpWithData();
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("x.onnx"), option, value);
        Assert.AreEqual(2, run.ExitCode, run.Output);
        Assert.AreEqual(1, run.Errors(code).Count(), run.Output);
    }

    [TestMethod]
    public void AccuracyBudgetWithoutLabelsIsCMPR0406()
    {
        (string model, string images, _) = MakeMlpWithData();
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("x.onnx"), "--validation-data", images, "--max-accuracy-drop", "1");
        Assert.AreEqual(2, run.ExitCode, run.Output);
        Assert.AreEqual(1, run.Errors("CMPR0406").Count(), run.Output);
    }

    [TestMethod]
    public void OutputOverTheSourceAndDuplicateOutputsAreRefused()
    {
        (string model, _, _) = MakeMlpWithData();
        byte[] before = File.ReadAllBytes(model);
        CliRun same = CliHarness.InProcess("compress", model, "--output", model);
        Assert.AreEqual(2, same.ExitCode);
        Assert.AreEqual(1, same.Errors("CMPR0107").Count(), same.Output);
        CollectionAssert.AreEqual(before, File.ReadAllBytes(model));

        CliRun dup = CliHarness.InProcess("compress", model, "--output", P("d.onnx"), model, "--output", P("d.onnx"));
        Assert.AreEqual(2, dup.ExitCode);
        Assert.AreEqual(1, dup.Errors("CMPR0006").Count(), dup.Output);
    }

    [TestMethod]
    public void MissingAndCorruptModelsAreCodedErrorsAndTheOtherItemsStillRun()
    {
        (string model, _, _) = MakeMlpWithData();
        File.WriteAllBytes(P("corrupt.onnx"), File.ReadAllBytes(model).AsSpan(0, 100).ToArray());
        CliRun run = CliHarness.InProcess("compress", P("missing.onnx"), "--output", P("1.onnx"), P("corrupt.onnx"), "--output", P("2.onnx"), model, "--output", P("3.onnx"));
        Assert.AreEqual(2, run.ExitCode, run.Output);
        Assert.AreEqual(1, run.Errors("CMPR0101").Count(), run.Output);
        Assert.IsTrue(run.Errors("CMPR0102").Any() || run.Errors("CMPR0103").Any(), run.Output);
        Assert.IsTrue(File.Exists(P("3.onnx")), "a good item is compressed even when another item fails");
        Assert.IsFalse(File.Exists(P("1.onnx")) || File.Exists(P("2.onnx")));
    }

    [TestMethod]
    public void CacheReplaysResultsAndVerdictsAndRebuildsCorruptEntries()
    {
        (string model, string images, string labels) = MakeMlpWithData();
        string cache = P("cache");
        string[] args = ["compress", model, "--output", P("c/out.onnx"), "--validation-data", images, "--labels", labels, "--min-agreement", "0.5", "--cache-dir", cache];
        CliRun first = CliHarness.InProcess(args);
        Assert.AreEqual(0, first.ExitCode, first.Output);
        byte[] produced = File.ReadAllBytes(P("c/out.onnx"));
        File.Delete(P("c/out.onnx"));

        CliRun second = CliHarness.InProcess(args);
        Assert.AreEqual(0, second.ExitCode, second.Output);
        StringAssert.Contains(second.Output, "(cached)");
        CollectionAssert.AreEqual(produced, File.ReadAllBytes(P("c/out.onnx")));

        // Any option change is a different key: recomputed, not cached.
        CliRun changed = CliHarness.InProcess([.. args, "--validation-samples", "32"]);
        Assert.AreEqual(0, changed.ExitCode, changed.Output);
        Assert.IsFalse(changed.Output.Contains("(cached)", StringComparison.Ordinal), changed.Output);

        // Corrupt every cached model file: the entry is detected, dropped and rebuilt.
        foreach (string f in Directory.GetFiles(cache, "model.onnx", SearchOption.AllDirectories))
        {
            File.WriteAllText(f, "garbage");
        }
        CliRun third = CliHarness.InProcess(args);
        Assert.AreEqual(0, third.ExitCode, third.Output);
        Assert.AreEqual(1, third.Lines.Count(l => l.Contains(" : warning CMPR0502 : ", StringComparison.Ordinal)), third.Output);
        Assert.IsFalse(third.Output.Contains("(cached)", StringComparison.Ordinal));
        CollectionAssert.AreEqual(produced, File.ReadAllBytes(P("c/out.onnx")));

        // A failed verdict is cached too and fails again without shipping.
        string[] failing = ["compress", model, "--output", P("c/fail.onnx"), "--max-size-kb", "1", "--cache-dir", cache];
        Assert.AreEqual(1, CliHarness.InProcess(failing).ExitCode);
        CliRun again = CliHarness.InProcess(failing);
        Assert.AreEqual(1, again.ExitCode, again.Output);
        StringAssert.Contains(again.Output, "(cached)");
        Assert.AreEqual(1, again.Errors("CMPR0401").Count(), again.Output);
        Assert.IsFalse(File.Exists(P("c/fail.onnx")));
    }

    /// <summary>The summary line without this run's "(cached)" marker, and its measured part (after "model -> output: ").</summary>
    private static string Measured(CliRun run)
    {
        string line = run.Lines.Single(l => l.StartsWith("CompressOnBuild: ", StringComparison.Ordinal));
        line = line.Replace(" (cached)", "", StringComparison.Ordinal);
        return line[(line.IndexOf(": ", "CompressOnBuild: ".Length, StringComparison.Ordinal) + 2)..];
    }

    private static string Body(string measured) => string.Join("; ", measured.Split("; ").Where(p => !p.Contains("budget(s)", StringComparison.Ordinal) && !p.StartsWith("report ", StringComparison.Ordinal)));

    [TestMethod]
    public void ABudgetOnlyChangeReChecksTheCachedMeasurementsInsteadOfCompressingAgain()
    {
        (string model, string images, string labels) = MakeMlpWithData();
        string cache = P("budget-cache");
        string[] common = ["compress", model, "--output", P("b/out.onnx"), "--report", P("b/out.report.json"), "--validation-data", images, "--labels", labels, "--cache-dir", cache];
        CliRun first = CliHarness.InProcess([.. common, "--max-accuracy-drop", "50"]);
        Assert.AreEqual(0, first.ExitCode, first.Output);
        Assert.IsFalse(first.Output.Contains("(cached)", StringComparison.Ordinal), first.Output);
        byte[] shipped = File.ReadAllBytes(P("b/out.onnx"));

        // Only the budget changes: the cached model and measurements are reused and the new limit is checked.
        CliRun looser = CliHarness.InProcess([.. common, "--max-accuracy-drop", "60"]);
        Assert.AreEqual(0, looser.ExitCode, looser.Output);
        StringAssert.Contains(looser.Output, "(cached)");
        Assert.AreEqual(Body(Measured(first)), Body(Measured(looser)), "the same measurements are printed");
        JsonNode report = JsonNode.Parse(File.ReadAllText(P("b/out.report.json")))!;
        Assert.IsTrue(report["cache"]!["hit"]!.GetValue<bool>());
        Assert.AreEqual(60, report["budgets"]![0]!["limit"]!.GetValue<double>(), "the report shows this run's limit");
        Assert.AreEqual("60", report["options"]!["MaxAccuracyDrop"]!.GetValue<string>());
        CollectionAssert.AreEqual(shipped, File.ReadAllBytes(P("b/out.onnx")));

        // A budget the cached measurements break fails from the cache, and the output is removed.
        CliRun tight = CliHarness.InProcess([.. common, "--max-accuracy-drop", "60", "--max-size-kb", "1"]);
        Assert.AreEqual(1, tight.ExitCode, tight.Output);
        StringAssert.Contains(tight.Output, "(cached)");
        Assert.AreEqual(1, tight.Errors("CMPR0401").Count(), tight.Output);
        StringAssert.Contains(tight.Errors("CMPR0401").Single(), "MaxSizeKB");
        Assert.IsFalse(File.Exists(P("b/out.onnx")), "a model that breaks this build's budget does not ship");
        Assert.AreEqual("failed", JsonNode.Parse(File.ReadAllText(P("b/out.report.json")))!["verdict"]!.GetValue<string>());

        // Loosened again: the cached model (stored whatever its verdict) ships without compressing.
        CliRun again = CliHarness.InProcess([.. common, "--max-size-kb", "100000"]);
        Assert.AreEqual(0, again.ExitCode, again.Output);
        StringAssert.Contains(again.Output, "(cached)");
        CollectionAssert.AreEqual(shipped, File.ReadAllBytes(P("b/out.onnx")));
    }

    [TestMethod]
    public void ACacheHitNamesThisBuildsPathsNotThoseOfTheBuildThatFilledIt()
    {
        (string model, string images, string labels) = MakeMlpWithData();
        string cache = P("shared-cache");
        foreach (string app in new[] { "appA", "appB" })
        {
            Directory.CreateDirectory(P(app));
            File.Copy(model, P(app + "/mlp.onnx"));
        }
        CliRun Build(string app, string config) => CliHarness.InProcess("compress", P(app + "/mlp.onnx"), "--output", P($"{app}/obj/{config}/mlp.onnx"),
            "--report", P($"{app}/obj/{config}/mlp.onnx.report.json"), "--validation-data", images, "--labels", labels, "--min-agreement", "0.5",
            "--max-size-kb", "1", "--cache-dir", cache);

        CliRun a = Build("appA", "Debug");
        Assert.AreEqual(1, a.ExitCode, a.Output);
        Assert.IsFalse(a.Output.Contains("(cached)", StringComparison.Ordinal), a.Output);
        CliRun b = Build("appB", "Release");
        Assert.AreEqual(1, b.ExitCode, b.Output);
        StringAssert.Contains(b.Output, "(cached)");
        Assert.IsFalse(b.Output.Contains("appA", StringComparison.Ordinal), "nothing printed names the other build's files:\n" + b.Output);
        Assert.IsFalse(b.Output.Contains("Debug", StringComparison.Ordinal), b.Output);
        string summary = b.Lines.Single(l => l.StartsWith("CompressOnBuild: ", StringComparison.Ordinal));
        StringAssert.StartsWith(summary, "CompressOnBuild: " + P("appB/mlp.onnx") + " -> " + P("appB/obj/Release/mlp.onnx") + ": ");
        StringAssert.Contains(summary, "report " + P("appB/obj/Release/mlp.onnx.report.html"));
        StringAssert.StartsWith(b.Errors("CMPR0401").Single(), P("appB/mlp.onnx") + " : error CMPR0401 : ");
        JsonNode report = JsonNode.Parse(File.ReadAllText(P("appB/obj/Release/mlp.onnx.report.json")))!;
        Assert.AreEqual(P("appB/mlp.onnx"), report["model"]!["source"]!.GetValue<string>());
        Assert.AreEqual(P("appB/obj/Release/mlp.onnx"), report["model"]!["output"]!.GetValue<string>());
        Assert.IsFalse(File.ReadAllText(P("appB/obj/Release/mlp.onnx.report.html")).Contains("appA", StringComparison.Ordinal));
        Assert.IsFalse(File.ReadAllText(P("appB/obj/Release/mlp.onnx.report.json")).Contains("appA", StringComparison.Ordinal));
    }

    [TestMethod]
    public void TheWorkerLeavesNoOnnxRuntimeTelemetryFilesInHomeOrTemp()
    {
        (string model, string images, string labels) = MakeMlpWithData();
        string home = P("home"), temp = P("tmp"), work = P("work");
        foreach (string d in new[] { home, temp, work })
        {
            Directory.CreateDirectory(d);
        }
        string packages = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } np
            ? np : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        var environment = new Dictionary<string, string?>
        {
            ["HOME"] = home, ["USERPROFILE"] = home, ["TMPDIR"] = temp, ["TMP"] = temp, ["TEMP"] = temp,
            ["XDG_CACHE_HOME"] = null, ["LOCALAPPDATA"] = null, ["ORT_DISABLE_TELEMETRY"] = null, ["NUGET_PACKAGES"] = packages,
            ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1",
        };
        CliRun run = CliHarness.OutOfProcess(work, environment, "compress", model, "--output", Path.Combine(work, "out.onnx"),
            "--validation-data", images, "--labels", labels, "--min-agreement", "0.5");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        string[] left = Directory.GetFileSystemEntries(home, "*", SearchOption.AllDirectories)
            .Concat(Directory.GetFileSystemEntries(temp, "*", SearchOption.AllDirectories)).ToArray();
        Assert.IsEmpty(left, "the worker left files in the user's home or TMPDIR: " + string.Join(", ", left));
    }

    [TestMethod]
    public void SeparateProcessLoadsOnnxRuntimeFromTheNuGetFolderAndReportsIt()
    {
        (string model, _, _) = MakeMlpWithData();
        CliRun run = CliHarness.OutOfProcess(_dir, "compress", model, "--output", "sep.onnx", "--report", "sep.json");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonNode report = JsonNode.Parse(File.ReadAllText(P("sep.json")))!;
        Assert.AreEqual("fallback", report["onnxRuntime"]!["source"]!.GetValue<string>(), "the CLI ships no ORT, so it must have loaded the NuGet package's");
        Assert.AreEqual("1.31.1", report["onnxRuntime"]!["version"]!.GetValue<string>());
        Assert.IsTrue(File.Exists(report["onnxRuntime"]!["nativePath"]!.GetValue<string>()));
        Assert.IsFalse(File.Exists(Path.Combine(Path.GetDirectoryName(CliHarness.CliDll())!, "Microsoft.ML.OnnxRuntime.dll")), "ORT must not be copied next to the CLI");
    }

    /// <summary>--help documents every option the parser takes, with its metadata name, and says nothing is "not yet" there.</summary>
    [TestMethod]
    public void HelpListsEveryOptionWithItsMetadataName()
    {
        string help = CliHarness.InProcess("--help").Output;
        foreach ((string option, string metadata) in CommandLine.ItemOptions.Where(o => o.Key is not ("--output" or "--report")))
        {
            StringAssert.Contains(help, option + " ", $"{option} is missing from --help");
            StringAssert.Contains(help, "[" + metadata + "]", $"{option}'s metadata name [{metadata}] is missing from --help");
        }
        foreach (string option in CommandLine.GlobalOptionNames)
        {
            StringAssert.Contains(help, option + " ", $"{option} is missing from --help");
        }
        Assert.IsFalse(help.Contains("not yet", StringComparison.OrdinalIgnoreCase), "an option --help calls unimplemented");
    }

    /// <summary>--help lists exactly the option table's CLI options, each once, and nothing else that looks like one.</summary>
    [TestMethod]
    public void HelpListsExactlyTheOptionTable()
    {
        string help = CliHarness.InProcess("--help").Output;
        int start = help.IndexOf("Item options", StringComparison.Ordinal);
        Assert.IsGreaterThanOrEqualTo(0, start, help);
        string[] listed = help[start..].Split('\n')
            .Select(l => System.Text.RegularExpressions.Regex.Match(l, @"^  (--[a-z0-9-]+)"))
            .Where(m => m.Success).Select(m => m.Groups[1].Value).ToArray();
        string[] table = OptionTable.ItemOptions.Concat(OptionTable.GlobalOptions).Where(o => o.Cli.Length > 0).Select(o => o.Cli).ToArray();
        CollectionAssert.AreEquivalent(table, listed, string.Join(" ", listed));
    }

    [TestMethod]
    public void MisspelledOption_IsCodedErrorWithSuggestion_AndNothingIsWritten()
    {
        (string model, string images, string labels) = MakeMlpWithData();
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("typo.onnx"), "--validation-data", images, "--labels", labels,
            "--max-acuracy-drop", "0.01");
        Assert.AreEqual(2, run.ExitCode, run.Output);
        string error = run.Errors("CMPR0009").Single();
        StringAssert.Contains(error, "'--max-acuracy-drop'");
        StringAssert.Contains(error, "Did you mean '--max-accuracy-drop'?");
        Assert.IsFalse(File.Exists(P("typo.onnx")), "a run whose budget was misspelled must not produce a model");

        CliRun global = CliHarness.InProcess("compress", model, "--output", P("typo.onnx"), "--max-paralelism", "2");
        Assert.AreEqual(2, global.ExitCode, global.Output);
        StringAssert.Contains(global.Errors("CMPR0009").Single(), "Did you mean '--max-parallelism'?");

        CliRun unrelated = CliHarness.InProcess("compress", model, "--output", P("typo.onnx"), "--colour", "red");
        Assert.AreEqual(2, unrelated.ExitCode, unrelated.Output);
        Assert.DoesNotContain("Did you mean", unrelated.Errors("CMPR0009").Single());
    }

    [TestMethod]
    public void ExitCodesAreDocumentedValues()
    {
        Assert.AreEqual(2, CliHarness.InProcess().ExitCode, "no arguments is a usage error");
        Assert.AreEqual(0, CliHarness.InProcess("--help").ExitCode);
        CliRun unknown = CliHarness.InProcess("shrink", "x.onnx");
        Assert.AreEqual(2, unknown.ExitCode);
        Assert.AreEqual(1, unknown.Errors("CMPR0005").Count());
        Assert.DoesNotContain("did you mean", unknown.Output);
        CliRun typo = CliHarness.InProcess("compres", "x.onnx");
        Assert.AreEqual(2, typo.ExitCode);
        StringAssert.Contains(typo.Errors("CMPR0005").Single(), "did you mean 'compress'?");
        CliRun badRsp = CliHarness.InProcess("compress", "@" + P("absent.rsp"));
        Assert.AreEqual(2, badRsp.ExitCode);
        Assert.AreEqual(1, badRsp.Errors("CMPR0007").Count());
    }

    [TestMethod]
    public void TuneMeetsATightAgreementBudgetByKeepingTheMostSensitiveLayersFloat()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        string labels = Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte");
        string[] common = ["compress", Corpus.Model("mnist-mlp-gemm"), "--validation-data", images, "--labels", labels, "--min-agreement", "1.0"];

        CliRun plain = CliHarness.InProcess([.. common, "--output", P("plain.onnx")]);
        Assert.AreEqual(1, plain.ExitCode, "int8 on every layer must break a 100% agreement budget for this test to mean anything: " + plain.Output);

        CliRun tuned = CliHarness.InProcess([.. common, "--output", P("tuned.onnx"), "--report", P("tuned.json"), "--tune", "true"]);
        Assert.AreEqual(0, tuned.ExitCode, tuned.Output);
        JsonNode t = JsonNode.Parse(File.ReadAllText(P("tuned.json")))!["tuning"]!;
        Assert.IsTrue(t["met"]!.GetValue<bool>());
        Assert.AreEqual(3, t["sensitivity"]!.AsArray().Count, "one sensitivity measurement per quantized Gemm");
        JsonArray trials = t["trials"]!.AsArray();
        JsonNode chosen = trials.Single(x => x!["chosen"]!.GetValue<bool>())!;
        Assert.IsTrue(chosen["budgetsPassed"]!.GetValue<bool>());
        Assert.AreEqual(1.0, chosen["top1Agreement"]!.GetValue<double>());
        Assert.IsFalse(trials[0]!["budgetsPassed"]!.GetValue<bool>(), "the first trial is the plain scheme, which broke the budget");
        // Every failed trial before the chosen one kept fewer layers float: the search stops at the first that holds.
        int chosenIndex = trials.IndexOf(chosen);
        Assert.IsTrue(trials.Take(chosenIndex).All(x => !x!["budgetsPassed"]!.GetValue<bool>()));
        Assert.AreEqual(chosen["compressedBytes"]!.GetValue<long>(), new FileInfo(P("tuned.onnx")).Length);
        StringAssert.Contains(tuned.Output, "tuned in");
        // The layers Tune kept float are labelled as Tune's choice, not as the user's exclusion.
        JsonNode report = JsonNode.Parse(File.ReadAllText(P("tuned.json")))!;
        var keptByTune = report["quantization"]!["skippedNodes"]!.AsArray().Where(n => n!["keptByTune"]!.GetValue<bool>()).ToList();
        Assert.AreEqual(chosen["excludedNodes"]!.AsArray().Count, keptByTune.Count, report["quantization"]!.ToJsonString());
        Assert.IsTrue(keptByTune.All(n => n!["reason"]!.GetValue<string>().StartsWith("kept float by Tune", StringComparison.Ordinal)));
        StringAssert.Contains(File.ReadAllText(P("tuned.html")), "kept float by Tune");
        if (keptByTune.Count * 2 > 3)
        {
            // Most of the compression given back, and no size or latency goal stated: the build says so.
            Assert.AreEqual(1, tuned.Lines.Count(l => l.Contains(" : warning CMPR0422 : ", StringComparison.Ordinal)), tuned.Output);
        }
    }

    [TestMethod]
    public void TuneStopsAtItsTimeBudgetAndStillFailsTheBrokenBudget()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        string labels = Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte");
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("mnist-mlp-gemm"), "--output", P("t.onnx"), "--report", P("t.json"),
            "--validation-data", images, "--labels", labels, "--min-agreement", "1.0", "--tune", "true", "--tune-time-budget-seconds", "0.001");
        Assert.AreEqual(1, run.ExitCode, run.Output);
        Assert.AreEqual(1, run.Errors("CMPR0401").Count(), run.Output);
        JsonNode t = JsonNode.Parse(File.ReadAllText(P("t.json")))!["tuning"]!;
        Assert.IsTrue(t["timedOut"]!.GetValue<bool>());
        Assert.IsFalse(t["met"]!.GetValue<bool>());
        Assert.IsFalse(File.Exists(P("t.onnx")));
        // The build output says it timed out and how to raise the limit.
        string warning = run.Lines.Single(l => l.Contains(" : warning CMPR0421 : ", StringComparison.Ordinal));
        StringAssert.Contains(warning, "timed out");
        StringAssert.Contains(warning, "TuneTimeBudgetSeconds=");
        StringAssert.Contains(run.Lines.Single(l => l.StartsWith("CompressOnBuild: ", StringComparison.Ordinal)), "TIMED OUT");
    }

    [TestMethod]
    public void TuneWithoutAGivenTimeBudgetScalesItWithTheCostOfATrial()
    {
        (string model, string images, string labels) = MakeMlpWithData();
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("sc.onnx"), "--report", P("sc.json"),
            "--validation-data", images, "--labels", labels, "--max-size-kb", "1", "--tune", "true");
        Assert.AreEqual(1, run.ExitCode, run.Output);
        JsonNode t = JsonNode.Parse(File.ReadAllText(P("sc.json")))!["tuning"]!;
        StringAssert.StartsWith(t["timeBudgetSource"]!.GetValue<string>(), "default");
        StringAssert.Contains(run.Lines.Single(l => l.StartsWith("CompressOnBuild: ", StringComparison.Ordinal)), " s over ", "the summary line states the time budget");

        // The rule itself: 20 trials like the first one, never below the 60 s default, at most an hour.
        Assert.AreEqual((60.0, "default"), Tuner.TimeBudget(null, 60, 0.4));
        (double seconds, string source) = Tuner.TimeBudget(null, 60, 14.2);
        Assert.AreEqual(290, seconds);
        StringAssert.Contains(source, "20 trials of 14.2 s");
        Assert.AreEqual(3600, Tuner.TimeBudget(null, 60, 1000).Seconds);
        Assert.AreEqual((5.0, "TuneTimeBudgetSeconds"), Tuner.TimeBudget(5, 60, 1000));
        CliRun given = CliHarness.InProcess("compress", model, "--output", P("sc2.onnx"), "--report", P("sc2.json"),
            "--validation-data", images, "--labels", labels, "--max-size-kb", "1", "--tune", "true", "--tune-time-budget-seconds", "30");
        Assert.AreEqual("TuneTimeBudgetSeconds", JsonNode.Parse(File.ReadAllText(P("sc2.json")))!["tuning"]!["timeBudgetSource"]!.GetValue<string>(), given.Output);
    }

    [TestMethod]
    public void TuneMeasuresWhichPassDoesTheHarmAndBacksOffOnlyThatOne()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        string labels = Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte");
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("mnist-mlp-gemm"), "--pruning", "Magnitude:0.8", "--quantization", "Int8Dynamic",
            "--validation-data", images, "--labels", labels, "--max-accuracy-drop", "3.0", "--output", P("ph.onnx"), "--report", P("ph.json"), "--tune", "true");
        JsonNode t = JsonNode.Parse(File.ReadAllText(P("ph.json")))!["tuning"]!;
        Assert.AreEqual("pruning", t["harm"]!.GetValue<string>(), t.ToJsonString());
        JsonArray diagnosis = t["diagnosis"]!.AsArray();
        Assert.HasCount(2, diagnosis);
        Assert.IsTrue(diagnosis.Single(d => d!["passes"]!.GetValue<string>() == "quantization only")!["budgetsPassed"]!.GetValue<bool>());
        Assert.IsFalse(diagnosis.Single(d => d!["passes"]!.GetValue<string>() == "pruning only")!["budgetsPassed"]!.GetValue<bool>());
        // Only pruning is backed off: every later trial keeps every layer quantized and some layers dense.
        foreach (JsonNode? trial in t["trials"]!.AsArray().Skip(1))
        {
            Assert.IsEmpty(trial!["excludedNodes"]!.AsArray(), trial.ToJsonString());
            Assert.IsNotEmpty(trial["denseNodes"]!.AsArray(), trial.ToJsonString());
        }
        Assert.AreEqual(0, run.ExitCode, run.Output);
        StringAssert.Contains(run.Output, "harm from pruning");
    }

    [TestMethod]
    public void ATunedResultThatGaveMostOfTheCompressionBackSaysSo()
    {
        (string model, string images, string labels) = MakeMlpWithData();
        string[] common = ["compress", model, "--pruning", "Magnitude:0.95", "--quantization", "None", "--validation-data", images, "--labels", labels,
            "--min-agreement", "1.0", "--tune", "true"];
        CliRun run = CliHarness.InProcess([.. common, "--output", P("g.onnx")]);
        Assert.AreEqual(0, run.ExitCode, run.Output);
        string warning = run.Lines.Single(l => l.Contains(" : warning CMPR0422 : ", StringComparison.Ordinal));
        StringAssert.Contains(warning, "1 of 1 compressed layer(s) float");
        StringAssert.Contains(warning, "MinCompressionRatio");

        // Stated as a budget, the goal makes the build fail instead.
        CliRun goal = CliHarness.InProcess([.. common, "--output", P("g2.onnx"), "--min-compression-ratio", "1.5"]);
        Assert.AreEqual(1, goal.ExitCode, goal.Output);
        Assert.IsFalse(goal.Output.Contains("CMPR0422", StringComparison.Ordinal), goal.Output);
        StringAssert.Contains(goal.Errors("CMPR0401").Single(), "MinCompressionRatio");
    }

    [TestMethod]
    public void CalibratingOnTheValidationDataWarns()
    {
        (string model, string images, string labels) = MakeMlpWithData();
        string cache = P("cv-cache");
        string[] args = ["compress", model, "--output", P("cv.onnx"), "--calibration-data", images, "--validation-data", images, "--labels", labels,
            "--min-agreement", "0.5", "--cache-dir", cache];
        foreach (CliRun run in new[] { CliHarness.InProcess(args), CliHarness.InProcess(args) })
        {
            Assert.AreEqual(0, run.ExitCode, run.Output);
            Assert.AreEqual(1, run.Lines.Count(l => l.Contains(" : warning CMPR0420 : ", StringComparison.Ordinal)), "once, also on a cache hit:\n" + run.Output);
        }
        // A copy of the same file is the same data.
        File.Copy(images, P("copy-idx3-ubyte"));
        CliRun copy = CliHarness.InProcess("compress", model, "--output", P("cv2.onnx"), "--calibration-data", P("copy-idx3-ubyte"), "--validation-data", images,
            "--labels", labels, "--min-agreement", "0.5");
        Assert.AreEqual(1, copy.Lines.Count(l => l.Contains(" : warning CMPR0420 : ", StringComparison.Ordinal)), copy.Output);
    }

    [TestMethod]
    public void HtmlChartsHaveRoundTicksBudgetLinesAndNoOverlappingLabels()
    {
        CollectionAssert.AreEqual(new[] { 0.0, 1000, 2000, 3000 }, ReportRenderers.NiceTicks(0, 2700, 5));
        CollectionAssert.AreEqual(new[] { 0.0, 0.2, 0.4, 0.6, 0.8, 1.0 }, ReportRenderers.NiceTicks(0, 0.93, 5));
        CollectionAssert.AreEqual(new[] { 94.0, 94.5, 95, 95.5, 96, 96.5 }, ReportRenderers.NiceTicks(94.37, 96.12, 5));

        var trials = new JsonArray();
        for (int i = 0; i < 8; i++)
        {
            trials.Add(new JsonObject { ["compressedBytes"] = 100_000 + i * 100, ["accuracy"] = 95.0, ["top1Agreement"] = 0.99, ["chosen"] = i == 7, ["excludedNodes"] = new JsonArray() });
        }
        var report = new JsonObject
        {
            ["model"] = new JsonObject { ["sourceBytes"] = 400_000, ["compressedBytes"] = 100_700 },
            ["validation"] = new JsonObject { ["originalAccuracy"] = 96.1, ["compressedAccuracy"] = 95.0, ["top1Agreement"] = 0.99 },
            ["tuning"] = new JsonObject { ["trials"] = trials },
            ["budgets"] = new JsonArray(new JsonObject { ["name"] = "MaxAccuracyDrop", ["limit"] = 0.5, ["passed"] = false },
                new JsonObject { ["name"] = "MaxSizeKB", ["limit"] = 200, ["passed"] = true }),
        };
        string svg = ReportRenderers.AccuracyVsSize(report);
        Assert.AreEqual(2, System.Text.RegularExpressions.Regex.Count(svg, "class=\"budget\""), svg);
        StringAssert.Contains(svg, "MaxAccuracyDrop 0.5");
        var ticks = System.Text.RegularExpressions.Regex.Matches(svg, "class=\"tick\"[^>]*>([^<]+)<").Select(m => m.Groups[1].Value).ToList();
        Assert.IsTrue(ticks.All(v => double.Parse(v, CultureInfo.InvariantCulture) * 10 % 5 == 0), string.Join(" ", ticks));
        var labels = System.Text.RegularExpressions.Regex.Matches(svg, "class=\"point-label\" x=\"([0-9.]+)\" y=\"([0-9.]+)\">([^<]+)<")
            .Select(m => (X: double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), Y: double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture), W: m.Groups[3].Value.Length * 6.2))
            .ToList();
        Assert.IsTrue(labels.Count >= 2, svg);
        for (int i = 0; i < labels.Count; i++)
        {
            for (int j = i + 1; j < labels.Count; j++)
            {
                bool overlap = labels[i].X < labels[j].X + labels[j].W && labels[j].X < labels[i].X + labels[i].W && Math.Abs(labels[i].Y - labels[j].Y) < 12;
                Assert.IsFalse(overlap, $"labels {i} and {j} overlap:\n{svg}");
            }
        }
    }

    [TestMethod]
    public void ReportsComeAsJsonMarkdownAndOfflineHtmlPlusOneSummaryTable()
    {
        (string model, string images, string labels) = MakeMlpWithData();
        ModelIO.Save(TinyModels.Mlp(inF: 300, hidden: 40, classes: 5, seed: 9), P("second.onnx"));
        CliRun run = CliHarness.InProcess("compress", "--summary-markdown", P("summary.md"),
            model, "--output", P("r/one.onnx"), "--report", P("r/one.report.json"), "--validation-data", images, "--labels", labels, "--max-size-kb", "1",
            P("second.onnx"), "--output", P("r/two.onnx"), "--report", P("r/two.report.json"));
        Assert.AreEqual(1, run.ExitCode, run.Output);

        string md = File.ReadAllText(P("r/one.report.md"));
        StringAssert.Contains(md, "| model | size | top-1 | agreement | budgets | verdict |");
        StringAssert.Contains(md, "❌ MaxSizeKB");
        StringAssert.Contains(md, "**failed**");

        string html = File.ReadAllText(P("r/one.report.html"));
        StringAssert.StartsWith(html, "<!DOCTYPE html>");
        StringAssert.Contains(html, "<svg");
        StringAssert.Contains(html, "BROKEN");
        Assert.IsFalse(html.Contains("http://", StringComparison.Ordinal) && html.Replace("http://www.w3.org/2000/svg", "", StringComparison.Ordinal).Contains("http://", StringComparison.Ordinal),
            "the page must not load anything from the network");
        Assert.IsFalse(html.Contains("<script", StringComparison.OrdinalIgnoreCase) || html.Contains("<link", StringComparison.OrdinalIgnoreCase));

        string summary = File.ReadAllText(P("summary.md"));
        Assert.AreEqual(2, summary.Split('\n').Count(l => l.StartsWith("| `", StringComparison.Ordinal)), summary);
        StringAssert.Contains(summary, "second.onnx");
    }

    [TestMethod]
    public void HtmlEscapesHostileModelNames()
    {
        string dir = P("<script>alert(1)<");
        Directory.CreateDirectory(dir);
        string model = Path.Combine(dir, "m.onnx");
        ModelIO.Save(TinyModels.Mlp(inF: 64, hidden: 16), model);
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("h.onnx"), "--report", P("h.json"));
        Assert.AreEqual(0, run.ExitCode, run.Output);
        string html = File.ReadAllText(P("h.html"));
        Assert.IsFalse(html.Contains("<script>", StringComparison.Ordinal));
        StringAssert.Contains(html, "&lt;script&gt;");
    }

    [TestMethod]
    [DataRow("Float16", 1.95, 0.1)]
    [DataRow("Int4Weights", 6.0, 1.5)]
    [DataRow("Int4Weights:64:asym", 6.0, 1.5)]
    public void OtherSchemesMeetTheirSizeAndAccuracyTargetsOnMnistMlp(string scheme, double minRatio, double maxDrop)
    {
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("mnist-mlp-gemm"), "--output", P("s.onnx"), "--report", P("s.json"),
            "--quantization", scheme,
            "--validation-data", Corpus.Dataset("mnist", "t10k-images-idx3-ubyte"), "--labels", Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte"),
            "--min-compression-ratio", minRatio.ToString(CultureInfo.InvariantCulture), "--max-accuracy-drop", maxDrop.ToString(CultureInfo.InvariantCulture));
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonNode report = JsonNode.Parse(File.ReadAllText(P("s.json")))!;
        Assert.AreEqual(scheme.Split(':')[0], report["quantization"]!["scheme"]!.GetValue<string>());
        Assert.IsTrue(report["model"]!["compressionRatio"]!.GetValue<double>() >= minRatio);
    }

    /// <summary>
    /// GPTQ (the Int4Weights default when CalibrationData is given) against round-to-nearest on fashion-mlp, block 128
    /// where rounding hurts most: same size, output closer to the float model on the full test set.
    /// </summary>
    [TestMethod]
    public void Int4GptqAgreesWithTheFloatModelBetterThanRoundToNearest()
    {
        string images = Corpus.Dataset("fashion-mnist", "t10k-images-idx3-ubyte");
        string[] common = ["--validation-data", images, "--labels", Corpus.Dataset("fashion-mnist", "t10k-labels-idx1-ubyte"),
            "--preprocessing", "scale=0.003921569;mean=0.5;std=0.5", "--max-accuracy-drop", "1.5"];
        CliRun rtn = CliHarness.InProcess(["compress", Corpus.Model("fashion-mlp"), "--output", P("r.onnx"), "--report", P("r.json"),
            "--quantization", "Int4Weights:128", .. common]);
        Assert.AreEqual(0, rtn.ExitCode, rtn.Output);
        CliRun gptq = CliHarness.InProcess(["compress", Corpus.Model("fashion-mlp"), "--output", P("g.onnx"), "--report", P("g.json"),
            "--quantization", "Int4Weights:128", "--calibration-data", images, "--calibration-samples", "256", .. common]);
        Assert.AreEqual(0, gptq.ExitCode, gptq.Output);
        JsonNode r = JsonNode.Parse(File.ReadAllText(P("r.json")))!, g = JsonNode.Parse(File.ReadAllText(P("g.json")))!;
        Assert.AreEqual("GPTQ", g["quantization"]!["method"]!.GetValue<string>());
        Assert.AreEqual(0, g["quantization"]!["roundedToNearest"]!.AsArray().Count);
        Assert.AreEqual(new FileInfo(P("r.onnx")).Length, new FileInfo(P("g.onnx")).Length, "same format, same size");
        double agreeR = r["validation"]!["top1Agreement"]!.GetValue<double>(), agreeG = g["validation"]!["top1Agreement"]!.GetValue<double>();
        Assert.IsGreaterThan(agreeR, agreeG, $"GPTQ should keep more top-1 decisions of the float model: agreement RTN {agreeR}, GPTQ {agreeG}");
    }

    /// <summary>
    /// Channels pruning then GPTQ: the layers' inputs lose columns, so GPTQ needs the pruned model's activations, not
    /// the ones pruning collected from the unpruned model under the same tensor names (they were reused: CMPR0303).
    /// </summary>
    [TestMethod]
    public void ChannelsPruningThenInt4GptqUsesThePrunedModelsActivations()
    {
        string images = Corpus.Dataset("fashion-mnist", "t10k-images-idx3-ubyte");
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("fashion-mlp"), "--output", P("cg.onnx"), "--report", P("cg.json"),
            "--pruning", "Channels:0.3", "--quantization", "Int4Weights:32:gptq", "--calibration-data", images, "--calibration-samples", "128",
            "--validation-data", images, "--labels", Corpus.Dataset("fashion-mnist", "t10k-labels-idx1-ubyte"),
            "--preprocessing", "scale=0.003921569;mean=0.5;std=0.5", "--max-accuracy-drop", "5");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonNode report = JsonNode.Parse(File.ReadAllText(P("cg.json")))!;
        Assert.IsLessThan(report["pruning"]!["parametersBefore"]!.GetValue<double>(), report["pruning"]!["parametersAfter"]!.GetValue<double>());
        Assert.AreEqual("GPTQ", report["quantization"]!["method"]!.GetValue<string>());
        Assert.AreEqual(0, report["quantization"]!["roundedToNearest"]!.AsArray().Count);
        Assert.IsNotEmpty(report["quantization"]!["quantizedNodes"]!.AsArray());
    }

    [TestMethod]
    public void Int8WithCalibrationDataIsStaticQdqThatOrtRunsAsIntegerKernels()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("mnist-lenet5"), "--output", P("st.onnx"), "--report", P("st.json"),
            "--calibration-data", images, "--calibration-samples", "128", "--calibration-method", "Percentile:99.99",
            "--validation-data", images, "--labels", Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte"), "--max-accuracy-drop", "0.5");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonNode report = JsonNode.Parse(File.ReadAllText(P("st.json")))!;
        Assert.AreEqual("Int8Static", report["quantization"]!["scheme"]!.GetValue<string>());
        Assert.IsTrue(report["quantization"]!["quantizedActivations"]!.GetValue<int>() > 0);
        ModelProto m = ModelIO.Load(P("st.onnx"));
        Assert.IsTrue(m.Graph.Node.Any(n => n.OpType == "QuantizeLinear") && m.Graph.Node.Any(n => n.OpType == "DequantizeLinear"));

        CliRun opt = CliHarness.InProcess("inspect", P("st.onnx"), "--optimized", "--json");
        JsonNode o = JsonNode.Parse(opt.Output)!["optimized"]!;
        Assert.AreEqual(0, o["floatFallbacks"]!.AsArray().Count, opt.Output);
        Assert.IsTrue(o["operators"]!.AsObject().Any(kv => kv.Key.Contains("QLinearConv", StringComparison.Ordinal)), opt.Output);
    }

    /// <summary>ActivationType and PerChannel take only their values (with static int8; without calibration data, see BadOptionsAreCodedUsageErrors).</summary>
    [TestMethod]
    [DataRow("--activation-type", "UInt16", "ActivationType")]
    [DataRow("--activation-type", "S8", "ActivationType")]
    [DataRow("--per-channel", "per-tensor", "PerChannel")]
    [DataRow("--per-channel", "1", "PerChannel")]
    public void StaticInt8ActivationTypeAndPerChannelRejectBadValues(string option, string value, string metadata)
    {
        (string model, string images, _) = MakeMlpWithData();
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("x.onnx"), "--calibration-data", images, option, value);
        Assert.AreEqual(2, run.ExitCode, run.Output);
        Assert.AreEqual(1, run.Errors("CMPR0003").Count(), run.Output);
        StringAssert.Contains(run.Output, metadata);
        Assert.IsFalse(File.Exists(P("x.onnx")));
    }

    /// <summary>
    /// --activation-type Int8 --per-channel false on lenet5 reach the pass (int8 zero points 0, one scale per weight,
    /// report fields, integer kernels in ORT) and the cache key: UInt8 or per-channel is another result, while "int8"
    /// spelled differently is the same one.
    /// </summary>
    /// <summary>CalibrationMethod keys the cache by its canonical spelling: "percentile" is "Percentile:99.99", "minmax" is the default
    /// (the same output file name in different folders, as the name is part of the key).</summary>
    [TestMethod]
    public void CalibrationMethodSpellingsOfOneMethodShareACacheEntry()
    {
        (string model, string images, _) = MakeMlpWithData();
        string cache = P("cm-cache");
        CliRun Run(string output, params string[] extra) => CliHarness.InProcess(
            ["compress", model, "--output", P(output), "--report", P(output + ".json"), "--quantization", "Int8Static", "--calibration-data", images,
                "--cache-dir", cache, .. extra]);
        Assert.AreEqual(0, Run("a/m.onnx", "--calibration-method", "Percentile:99.99").ExitCode);
        CliRun same = Run("b/m.onnx", "--calibration-method", "percentile");
        StringAssert.Contains(same.Output, "(cached)");
        Assert.AreEqual("Percentile:99.99", JsonNode.Parse(File.ReadAllText(P("b/m.onnx.json")))!["options"]!["CalibrationMethod"]!.GetValue<string>());
        Assert.AreEqual(0, Run("c/m.onnx").ExitCode);
        StringAssert.Contains(Run("d/m.onnx", "--calibration-method", "minmax").Output, "(cached)");
        Assert.IsFalse(Run("e/m.onnx", "--calibration-method", "Entropy").Output.Contains("(cached)", StringComparison.Ordinal));
    }

    [TestMethod]
    public void StaticInt8ActivationTypeAndPerChannelReachThePassAndTheCacheKey()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        string cache = P("cache");
        string[] Args(string output, params string[] extra) =>
            ["compress", Corpus.Model("mnist-lenet5"), "--output", P(output), "--report", P(output + ".json"), "--calibration-data", images,
                "--calibration-samples", "64", "--cache-dir", cache, .. extra];

        CliRun s8 = CliHarness.InProcess(Args("a/s8.onnx", "--activation-type", "Int8", "--per-channel", "false"));
        Assert.AreEqual(0, s8.ExitCode, s8.Output);
        JsonNode q = JsonNode.Parse(File.ReadAllText(P("a/s8.onnx.json")))!["quantization"]!;
        Assert.AreEqual("Int8", q["activationType"]!.GetValue<string>());
        Assert.IsFalse(q["perChannel"]!.GetValue<bool>());
        ModelProto m = ModelIO.Load(P("a/s8.onnx"));
        var inits = m.Graph.Initializer.ToDictionary(t => t.Name, StringComparer.Ordinal);
        List<NodeProto> quantize = [.. m.Graph.Node.Where(n => n.OpType == "QuantizeLinear")];
        Assert.IsNotEmpty(quantize);
        Assert.IsTrue(quantize.All(n => inits[n.Input[2]].DataType == (int)TensorProto.Types.DataType.Int8 && inits[n.Input[2]].RawData[0] == 0),
            "every activation zero point is int8 0");
        List<NodeProto> weightDq = [.. m.Graph.Node.Where(n => n.OpType == "DequantizeLinear" && inits.TryGetValue(n.Input[0], out TensorProto? w)
            && w.DataType == (int)TensorProto.Types.DataType.Int8 && w.Dims.Count >= 2)];
        Assert.IsNotEmpty(weightDq);
        Assert.IsTrue(weightDq.All(n => TensorUtil.ElementCount(inits[n.Input[1]]) == 1), "one scale per weight tensor");
        CliRun opt = CliHarness.InProcess("inspect", P("a/s8.onnx"), "--optimized", "--json");
        JsonNode o = JsonNode.Parse(opt.Output)!["optimized"]!;
        Assert.AreEqual(0, o["floatFallbacks"]!.AsArray().Count, opt.Output);
        Assert.IsTrue(o["operators"]!.AsObject().Any(kv => kv.Key.Contains("QLinearConv", StringComparison.Ordinal)), opt.Output);

        CliRun same = CliHarness.InProcess(Args("b/s8.onnx", "--activation-type", "int8", "--per-channel", "False"));
        Assert.AreEqual(0, same.ExitCode, same.Output);
        StringAssert.Contains(same.Output, "(cached)");
        CollectionAssert.AreEqual(File.ReadAllBytes(P("a/s8.onnx")), File.ReadAllBytes(P("b/s8.onnx")));

        CliRun u8 = CliHarness.InProcess(Args("c/s8.onnx", "--activation-type", "UInt8", "--per-channel", "false"));
        Assert.AreEqual(0, u8.ExitCode, u8.Output);
        Assert.IsFalse(u8.Output.Contains("(cached)", StringComparison.Ordinal), u8.Output);
        Assert.AreEqual("UInt8", JsonNode.Parse(File.ReadAllText(P("c/s8.onnx.json")))!["quantization"]!["activationType"]!.GetValue<string>());

        CliRun perChannel = CliHarness.InProcess(Args("d/s8.onnx", "--activation-type", "Int8"));
        Assert.AreEqual(0, perChannel.ExitCode, perChannel.Output);
        Assert.IsFalse(perChannel.Output.Contains("(cached)", StringComparison.Ordinal), perChannel.Output);
        Assert.IsTrue(JsonNode.Parse(File.ReadAllText(P("d/s8.onnx.json")))!["quantization"]!["perChannel"]!.GetValue<bool>());

        // An explicit default is the default's key.
        CliRun defaults = CliHarness.InProcess(Args("e/u8.onnx"));
        Assert.AreEqual(0, defaults.ExitCode, defaults.Output);
        CliRun explicitDefaults = CliHarness.InProcess(Args("f/u8.onnx", "--activation-type", "UInt8", "--per-channel", "true"));
        Assert.AreEqual(0, explicitDefaults.ExitCode, explicitDefaults.Output);
        StringAssert.Contains(explicitDefaults.Output, "(cached)");
    }

    [TestMethod]
    public void CalibrationDataWithANonInt8SchemeIsRefused()
    {
        (string model, string images, _) = MakeMlpWithData();
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("x.onnx"), "--quantization", "Float16", "--calibration-data", images);
        Assert.AreEqual(2, run.ExitCode, run.Output);
        Assert.AreEqual(1, run.Errors("CMPR0003").Count(), run.Output);
    }

    [TestMethod]
    public void Int8DynamicReadsCalibrationDataForItsActivationSmoothing()
    {
        // No ValidationData: the only data smoothing can have measured on is CalibrationData.
        (string model, string images, _) = MakeMlpWithData();
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("x.onnx"), "--report", P("x.json"), "--quantization", "Int8Dynamic",
            "--calibration-data", images);
        Assert.AreEqual(0, run.ExitCode, run.Output);
        Assert.AreEqual(0, run.Errors("CMPR0003").Count(), run.Output);
        string json = File.ReadAllText(P("x.json"));
        JsonNode? measured = JsonNode.Parse(json)!["quantization"]?["smoothingMeasured"];
        Assert.IsNotNull(measured, json);
        Assert.IsTrue(measured.GetValue<int>() > 0, json);
    }

    [TestMethod]
    public void MagnitudePruningThenInt8MeetsTheAccuracyBudgetAndShrinksTheZippedModel()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("mnist-mlp-gemm"), "--output", P("pm.onnx"), "--report", P("pm.json"),
            "--pruning", "Magnitude:0.5:uniform", "--calibration-data", images, "--calibration-samples", "500",
            "--validation-data", images, "--labels", Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte"), "--max-accuracy-drop", "0.8");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonNode p = JsonNode.Parse(File.ReadAllText(P("pm.json")))!["pruning"]!;
        Assert.AreEqual("Magnitude:0.5:uniform", p["method"]!.GetValue<string>());
        Assert.AreEqual("uniform", p["allocation"]!.GetValue<string>());
        JsonArray layers = p["layers"]!.AsArray();
        Assert.IsTrue(layers.Count >= 2, "every hidden layer is pruned (the output layer stays dense by default)");
        foreach (JsonNode? l in layers)
        {
            Assert.AreEqual(0.5, l!["sparsity"]!.GetValue<double>(), 0.01);
        }
        long zipOriginal = p["zipBytesBefore"]!.GetValue<long>();
        long zipShipped = CompressOnBuild.Core.Passes.PruningSummary.ZipBytes(File.ReadAllBytes(P("pm.onnx")));
        long zipInt8Only;
        {
            CliRun q = CliHarness.InProcess("compress", Corpus.Model("mnist-mlp-gemm"), "--output", P("q.onnx"));
            Assert.AreEqual(0, q.ExitCode, q.Output);
            zipInt8Only = CompressOnBuild.Core.Passes.PruningSummary.ZipBytes(File.ReadAllBytes(P("q.onnx")));
        }
        Assert.IsTrue(zipShipped < zipInt8Only, $"pruning must shrink the zipped int8 model further ({zipShipped} vs {zipInt8Only})");
        Assert.IsTrue((double)zipOriginal / zipShipped >= 3.5, $"zip ratio {(double)zipOriginal / zipShipped}");
        StringAssert.Contains(File.ReadAllText(P("pm.html")), "Per-layer sparsity (Magnitude:0.5:uniform)");
    }

    [TestMethod]
    public void MagnitudeWithCalibrationDataChoosesPerLayerSparsitiesFromMeasuredHarmByDefault()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("mnist-mlp-gemm"), "--output", P("sa.onnx"), "--report", P("sa.json"),
            "--pruning", "Magnitude:0.5", "--quantization", "None", "--calibration-data", images, "--calibration-samples", "256",
            "--validation-data", images, "--labels", Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte"), "--validation-samples", "2000");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        StringAssert.Contains(run.Output, "per-layer sparsities by measured sensitivity");
        JsonNode p = JsonNode.Parse(File.ReadAllText(P("sa.json")))!["pruning"]!;
        Assert.AreEqual("sensitivity", p["allocation"]!.GetValue<string>());
        JsonNode a = p["sensitivity"]!;
        // mnist-mlp-gemm needs well under 10 MFLOP per sample, so 256 fit the allocation's 2.56 GFLOP probe budget (AllocationSamplesTests):
        // every calibration sample is measured, and no more.
        Assert.AreEqual(256, a["samples"]!.GetValue<int>(), "a small model's probes use all 256 calibration samples");
        JsonArray layers = p["layers"]!.AsArray();
        Assert.AreEqual(layers.Count, a["layers"]!.AsArray().Count, "every prunable layer measured, the output layer included");
        Assert.AreEqual(0.5, p["achievedSparsity"]!.GetValue<double>(), 1e-5);
        Assert.IsTrue(layers.Select(l => Math.Round(l!["sparsity"]!.GetValue<double>(), 3)).Distinct().Count() > 1, p.ToJsonString());
        StringAssert.Contains(File.ReadAllText(P("sa.html")), "sensitivity allocation");
    }

    [TestMethod]
    public void PruningThatFallsFarShortOfTheRequestedSparsityWarnsWithCMPR0220AndSaysWhy()
    {
        // fc1 has 16 x 8 = 128 weights, the output layer fc2 8 x 200 = 1,600: keeping it dense leaves at most 75 % of 128 to prune.
        ModelIO.Save(TinyModels.Mlp(inF: 16, hidden: 8, classes: 200, seed: 4), P("head.onnx"));
        CliRun run = CliHarness.InProcess("compress", P("head.onnx"), "--output", P("head-out.onnx"), "--report", P("head.json"),
            "--pruning", "Magnitude:0.5", "--quantization", "None");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        string warning = run.Lines.Single(l => l.Contains(" : warning CMPR0220 : ", StringComparison.Ordinal));
        StringAssert.Contains(warning, "output layer(s) 'fc2' kept dense");
        StringAssert.Contains(warning, "a sparsity of 5.6% over the model's 1728 prunable weights (requested 50.0%)");
        JsonNode p = JsonNode.Parse(File.ReadAllText(P("head.json")))!["pruning"]!;
        Assert.AreEqual(0.5, p["requestedSparsity"]!.GetValue<double>());
        Assert.AreEqual(Math.Round(96 / 1728.0, 4), p["achievedSparsity"]!.GetValue<double>());
        StringAssert.Contains(run.Output, "sparsity 5.6% of 1728 prunable weights (requested 50.0%)");
    }

    [TestMethod]
    public void SensitivityPruningWithoutDataNamesTheMissingData()
    {
        (string model, _, _) = MakeMlpWithData();
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("x.onnx"), "--pruning", "Sensitivity:0.5");
        Assert.AreEqual(2, run.ExitCode, run.Output);
        StringAssert.Contains(run.Errors("CMPR0003").Single(), "CalibrationData");
        Assert.IsFalse(File.Exists(P("x.onnx")));
    }

    [TestMethod]
    public void SensitivityPruningWithoutCalibrationDataMeasuresOnTheValidationInputs()
    {
        (string model, string images, string labels) = MakeMlpWithData(samples: 40);
        CliRun run = CliHarness.InProcess("compress", model, "--output", P("v.onnx"), "--report", P("v.json"),
            "--pruning", "Sensitivity:0.6", "--quantization", "None", "--validation-data", images, "--labels", labels);
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonNode a = JsonNode.Parse(File.ReadAllText(P("v.json")))!["pruning"]!["sensitivity"]!;
        Assert.AreEqual(40, a["samples"]!.GetValue<int>(), "all 40 validation inputs (fewer than CalibrationSamples)");
        // Both layers measured (the output layer too: the measurement decides how much of it goes), 0.6 of all prunable weights.
        Assert.HasCount(2, a["layers"]!.AsArray());
        Assert.IsNull(JsonNode.Parse(File.ReadAllText(P("v.json")))!["pruning"]!["layerSparsity"], "per layer, not one sparsity");
        Assert.AreEqual(0.6 * (784 * 64 + 64 * 10), a["chosenZeros"]!.GetValue<long>(), 1.0);
    }

    /// <summary>
    /// Sensitivity probes and calibration activations run on temporary model files: they go to the work folder, never
    /// into the source model's folder (read-only package folders, leftovers after a cancelled build picked up by globs).
    /// </summary>
    [TestMethod]
    public void PruningWithDataWritesNothingIntoTheSourceModelsFolder()
    {
        string source = Path.Combine(_temp.Path, "src");
        Directory.CreateDirectory(source);
        // Weights in external data: the probes still run from the work folder (loading inlines external data).
        string model = Path.Combine(source, "model.onnx");
        ModelProto mlp = TinyModels.Mlp(inF: 784, hidden: 64, classes: 10, seed: 3);
        mlp.Graph.Input[0] = TinyModels.FloatValue("x", "N", 784);
        ModelIO.Save(mlp, model, new ModelSaveOptions { ForceExternalData = true, ExternalTensorMinBytes = 64 });
        string[] sourceFiles = Directory.GetFileSystemEntries(source);
        Assert.HasCount(2, sourceFiles, "the model and its external data file");
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        var created = new System.Collections.Concurrent.ConcurrentBag<string>();
        using (var watcher = new FileSystemWatcher(source) { IncludeSubdirectories = true })
        {
            watcher.Created += (_, e) => created.Add(e.Name ?? e.FullPath);
            watcher.EnableRaisingEvents = true;
            CliRun sensitivity = CliHarness.InProcess("compress", model, "--output", P("s.onnx"), "--pruning", "Sensitivity:0.5", "--quantization", "None",
                "--calibration-data", images, "--calibration-samples", "16", "--preprocessing", "layout=FLAT");
            Assert.AreEqual(0, sensitivity.ExitCode, sensitivity.Output);
            CliRun gptq = CliHarness.InProcess("compress", model, "--output", P("g.onnx"), "--quantization", "Int4Weights:gptq",
                "--calibration-data", images, "--calibration-samples", "16", "--preprocessing", "layout=FLAT");
            Assert.AreEqual(0, gptq.ExitCode, gptq.Output);
            Thread.Sleep(500); // inotify events arrive asynchronously
        }
        Assert.IsEmpty(created, "written into the source folder: " + string.Join(", ", created));
        CollectionAssert.AreEquivalent(sourceFiles, Directory.GetFileSystemEntries(source));
    }

    [TestMethod]
    public void SensitivityPruningRecordsCurvesAndHitsTheOverallSparsityExactly()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("mnist-lenet5"), "--output", P("s.onnx"), "--report", P("s.json"),
            "--pruning", "Sensitivity:0.7", "--quantization", "None", "--calibration-data", images, "--calibration-samples", "128",
            "--validation-data", images, "--labels", Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte"), "--validation-samples", "2000");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonNode p = JsonNode.Parse(File.ReadAllText(P("s.json")))!["pruning"]!;
        Assert.AreEqual("Sensitivity:0.7", p["method"]!.GetValue<string>());
        JsonNode a = p["sensitivity"]!;
        Assert.AreEqual(128, a["samples"]!.GetValue<int>());
        StringAssert.Contains(a["measure"]!.GetValue<string>(), "KL");
        long elements = a["elements"]!.GetValue<long>();
        // The pruned layers make up for the dense output layer: their target is 0.7 of all prunable weights.
        Assert.AreEqual(0.7 * p["prunableWeights"]!.GetValue<long>(), a["targetZeros"]!.GetValue<long>(), 2.0);
        Assert.AreEqual(0.7, p["achievedSparsity"]!.GetValue<double>(), 1e-4);
        Assert.AreEqual(a["targetZeros"]!.GetValue<long>(), a["chosenZeros"]!.GetValue<long>());
        JsonArray layers = p["layers"]!.AsArray(), chosen = a["layers"]!.AsArray();
        Assert.AreEqual(layers.Count, chosen.Count);
        Assert.AreEqual(elements, layers.Sum(l => l!["nonzerosBefore"]!.GetValue<long>()));
        Assert.AreEqual(a["targetZeros"]!.GetValue<long>(), layers.Sum(l => l!["nonzerosBefore"]!.GetValue<long>() - l["nonzerosAfter"]!.GetValue<long>()));
        Assert.IsTrue(chosen.Select(l => l!["chosenSparsity"]!.GetValue<double>()).Distinct().Count() > 1, "layers get different sparsities: " + a.ToJsonString());
        foreach (JsonNode? l in chosen)
        {
            Assert.AreEqual(7, l!["curve"]!.AsArray().Count);
        }
        StringAssert.Contains(File.ReadAllText(P("s.html")), "<h3>Sensitivity</h3>");
    }

    [TestMethod]
    public void ChannelPruningRemovesAQuarterOfTheParametersWithinOnePoint()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("mnist-mlp-gemm"), "--output", P("ch.onnx"), "--report", P("ch.json"),
            "--pruning", "Channels:0.3", "--quantization", "None", "--calibration-data", images, "--calibration-samples", "1000",
            "--validation-data", images, "--labels", Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte"), "--max-accuracy-drop", "1.0");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonNode p = JsonNode.Parse(File.ReadAllText(P("ch.json")))!["pruning"]!;
        double before = p["parametersBefore"]!.GetValue<double>(), after = p["parametersAfter"]!.GetValue<double>();
        Assert.IsTrue(after <= 0.75 * before, $"parameters {before} -> {after}");
        Assert.IsTrue(p["reconstructed"]!.AsArray().Count > 0, "the consumers of pruned layers are refit from calibration activations");
        // The summary line gives the channels removed next to the request, and the FLOPs ratio.
        double removed = p["channelsRemoved"]!.GetValue<double>() / p["channelsBefore"]!.GetValue<double>();
        StringAssert.Contains(run.Output, string.Format(System.Globalization.CultureInfo.InvariantCulture, "channels {0:0.0}% of {1} removed (requested 30.0%), FLOPs ",
            removed * 100, p["channelsBefore"]!.GetValue<long>()));
    }

    [TestMethod]
    public void TuneTriesOtherCalibrationMethodsBeforeKeepingLayersFloat()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("mnist-lenet5"), "--output", P("tc.onnx"), "--report", P("tc.json"),
            "--calibration-data", images, "--validation-data", images, "--labels", Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte"),
            "--min-agreement", "1.0", "--tune", "true");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonArray trials = JsonNode.Parse(File.ReadAllText(P("tc.json")))!["tuning"]!["trials"]!.AsArray();
        Assert.AreEqual("MinMax", trials[0]!["calibrationMethod"]!.GetValue<string>(), "the first trial is the item's own method");
        var methods = trials.Select(t => t!["calibrationMethod"]!.GetValue<string>()).Distinct().ToList();
        CollectionAssert.IsSubsetOf(new[] { "MinMax", "Percentile:99.99", "Percentile:99.9", "Entropy", "Mse" }, methods,
            "every calibration method is tried (with all layers int8) before any layer is kept float");
        int firstBackOff = trials.ToList().FindIndex(t => t!["excludedNodes"]!.AsArray().Count > 0);
        Assert.IsTrue(firstBackOff < 0 || firstBackOff >= 5, "layer back-off starts only after the calibration methods");
    }

    [TestMethod]
    public void CachedVerdictsFollowTheBudgetSeverityOfTheCurrentRun()
    {
        (string model, _, _) = MakeMlpWithData();
        string cache = P("sev-cache");
        string[] args = ["compress", model, "--output", P("sev/out.onnx"), "--max-size-kb", "1", "--cache-dir", cache];
        Assert.AreEqual(1, CliHarness.InProcess(args).ExitCode, "an error-severity run fails and ships nothing");
        Assert.IsFalse(File.Exists(P("sev/out.onnx")));
        CliRun warning = CliHarness.InProcess([.. args, "--budget-severity", "Warning"]);
        Assert.AreEqual(0, warning.ExitCode, warning.Output);
        Assert.AreEqual(1, warning.Lines.Count(l => l.Contains(" : warning CMPR0401 : ", StringComparison.Ordinal)), warning.Output);
        Assert.IsTrue(File.Exists(P("sev/out.onnx")), "a warning-severity run ships the model even after an error run cached its verdict");
        CliRun warningAgain = CliHarness.InProcess([.. args, "--budget-severity", "Warning"]);
        Assert.AreEqual(0, warningAgain.ExitCode, warningAgain.Output);
        StringAssert.Contains(warningAgain.Output, "(cached)");
        Assert.AreEqual(1, CliHarness.InProcess(args).ExitCode, "and the error run still fails from its own entry");
    }

    [TestMethod]
    public void WithoutValidationDataAgreementBudgetsAreMeasuredOnTheCalibrationInputs()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        CliRun run = CliHarness.InProcess("compress", Corpus.Model("mnist-mlp-gemm"), "--output", P("cal.onnx"), "--report", P("cal.json"),
            "--calibration-data", images, "--calibration-samples", "300", "--min-agreement", "0.98");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        JsonNode v = JsonNode.Parse(File.ReadAllText(P("cal.json")))!["validation"]!;
        StringAssert.StartsWith(v["data"]!.GetValue<string>(), "calibration data (no ValidationData given)");
        Assert.AreEqual(10000, v["samples"]!.GetValue<int>(), "validation runs over the whole calibration set, not just the calibration subset");
        Assert.IsFalse(v["hasLabels"]!.GetValue<bool>());
        StringAssert.Contains(run.Output, "calibration samples");

        CliRun drop = CliHarness.InProcess("compress", Corpus.Model("mnist-mlp-gemm"), "--output", P("cal2.onnx"),
            "--calibration-data", images, "--max-accuracy-drop", "1");
        Assert.AreEqual(2, drop.ExitCode, "an accuracy budget still needs labelled validation data");
        Assert.AreEqual(1, drop.Errors("CMPR0407").Count(), drop.Output);
    }

    [TestMethod]
    public void TuneBacksOffPruningLayerByLayerToo()
    {
        string images = Corpus.Dataset("mnist", "t10k-images-idx3-ubyte");
        string labels = Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte");
        string[] common = ["compress", Corpus.Model("mnist-mlp-gemm"), "--pruning", "Magnitude:0.8", "--quantization", "None",
            "--validation-data", images, "--labels", labels, "--max-accuracy-drop", "4.0"];
        CliRun plain = CliHarness.InProcess([.. common, "--output", P("pp.onnx")]);
        Assert.AreEqual(1, plain.ExitCode, "80% magnitude pruning without calibration must break a 4-point budget for this test to mean anything: " + plain.Output);
        CliRun tuned = CliHarness.InProcess([.. common, "--output", P("pt.onnx"), "--report", P("pt.json"), "--tune", "true"]);
        Assert.AreEqual(0, tuned.ExitCode, tuned.Output);
        JsonNode r = JsonNode.Parse(File.ReadAllText(P("pt.json")))!;
        JsonNode chosen = r["tuning"]!["trials"]!.AsArray().Single(t => t!["chosen"]!.GetValue<bool>())!;
        int keptDense = chosen["excludedNodes"]!.AsArray().Count;
        Assert.IsTrue(keptDense >= 1);
        Assert.IsTrue(r["pruning"]!["layers"]!.AsArray().Count >= 1, "the layers not backed off stay pruned");
    }
}
