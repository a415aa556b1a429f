using CompressOnBuild.Tasks;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

namespace CompressOnBuild.Build.Tests;

[TestClass]
public sealed class CompressModelsTaskTests
{
    private string _dir = "";

    public TestContext TestContext { get; set; } = null!;

    [TestInitialize]
    public void Setup()
    {
        _dir = Path.Combine(Path.GetTempPath(), "cob-task-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(_dir);
    }

    [TestCleanup]
    public void Cleanup()
    {
        if (TestContext.CurrentTestOutcome == UnitTestOutcome.Passed)
        {
            Directory.Delete(_dir, recursive: true);
        }
    }

    private (CompressModels Task, FakeBuildEngine Engine) NewTask(params ITaskItem[] models)
    {
        var engine = new FakeBuildEngine(Path.Combine(_dir, "app.csproj"));
        var task = new CompressModels
        {
            BuildEngine = engine,
            Models = models,
            CliPath = Path.Combine(_dir, "cli", "CompressOnBuild.Cli.dll"),
            ResponseFilePath = Path.Combine(_dir, "obj", "compress.rsp"),
        };
        return (task, engine);
    }

    private static TaskItem Model(string spec, string output, params (string Name, string Value)[] metadata)
    {
        var item = new TaskItem(spec);
        item.SetMetadata("OutputPath", output);
        foreach ((string name, string value) in metadata)
        {
            item.SetMetadata(name, value);
        }
        return item;
    }

    [TestMethod]
    public void ResponseFile_HoldsGlobalOptionsThenEachModelWithItsOptions()
    {
        (CompressModels task, FakeBuildEngine engine) = NewTask(
            Model("Models/a.onnx", "obj/cob/Models/a.onnx",
                ("Quantization", "Int8"), ("Pruning", ""), ("ValidationData", "Data/val"), ("MaxAccuracyDrop", "0.5"),
                ("MinAgreement", "0.99"), ("MaxSizeKB", "100"), ("ReportPath", "obj/cob/Models/a.onnx.report.json")),
            Model("b.onnx", "obj/cob/b.onnx", ("Quantization", "Int8"), ("CalibrationData", "Data/cal"), ("CalibrationMethod", "Percentile:99.9"),
                ("OpTypesToQuantize", "MatMul,Gemm"), ("Tune", "true")));
        task.CacheDirectory = "/cache";
        task.CacheMaxMB = "512";
        task.SummaryMarkdownPath = "obj/cob/summary.md";
        task.OnnxRuntimeAssets = "/app/obj/project.assets.json";
        task.NuGetPackageRoot = "/packages/";
        task.BudgetFailureSeverity = "warning";
        task.MaxParallelism = "2";

        Assert.IsTrue(task.BuildArguments(), engine.Describe());

        string[] expected =
        [
            "--cache-dir", Path.GetFullPath("/cache"),
            "--cache-max-mb", "512",
            "--onnxruntime-assets", "/app/obj/project.assets.json",
            "--nuget-packages", "/packages/",
            "--budget-severity", "Warning",
            "--max-parallelism", "2",
            "--summary-markdown", Path.Combine(_dir, "obj", "cob", "summary.md"),
            Path.Combine(_dir, "Models", "a.onnx"),
            "--output", Path.Combine(_dir, "obj", "cob", "Models", "a.onnx"),
            "--report", Path.Combine(_dir, "obj", "cob", "Models", "a.onnx.report.json"),
            "--quantization", "Int8",
            "--validation-data", "Data/val",
            "--max-accuracy-drop", "0.5",
            "--min-agreement", "0.99",
            "--max-size-kb", "100",
            Path.Combine(_dir, "b.onnx"),
            "--output", Path.Combine(_dir, "obj", "cob", "b.onnx"),
            "--quantization", "Int8",
            "--calibration-data", "Data/cal",
            "--calibration-method", "Percentile:99.9",
            "--op-types-to-quantize", "MatMul,Gemm",
            "--tune", "true",
        ];
        CollectionAssert.AreEqual(expected, task.ResponseFileArguments.ToArray());
        string text = task.ResponseFileText();
        StringAssert.StartsWith(text, "#");
        CollectionAssert.AreEqual(expected, text.Split('\n').Where(l => l.Length > 0 && !l.StartsWith('#')).ToArray());
        Assert.HasCount(2, task.CompressedModels);
        Assert.AreEqual(Path.Combine(_dir, "b.onnx"), task.CompressedModels[1].GetMetadata("SourceModel"));
    }

    [TestMethod]
    [DataRow("m.onnx : error CMPR0401: broke MaxSizeKB", "Warning", "m.onnx : warning CMPR0401: broke MaxSizeKB")]
    [DataRow("m.onnx : warning CMPR0401: broke MaxSizeKB", "Error", "m.onnx : error CMPR0401: broke MaxSizeKB")]
    [DataRow("m.onnx : warning CMPR0401: broke MaxSizeKB", null, "m.onnx : error CMPR0401: broke MaxSizeKB")]
    [DataRow("m.onnx : error CMPR0401: broke MaxSizeKB", "Error", "m.onnx : error CMPR0401: broke MaxSizeKB")]
    [DataRow("m.onnx : warning CMPR0204: clamped", "Error", "m.onnx : warning CMPR0204: clamped")]
    public void CachedBudgetVerdicts_GetThisBuildsSeverity(string line, string? severity, string expected) =>
        Assert.AreEqual(expected, CompressModels.ApplyBudgetSeverity(line, severity));

    [TestMethod]
    public void CacheMaxMB_MustBeAWholeNumber()
    {
        (CompressModels task, FakeBuildEngine engine) = NewTask(Model("a.onnx", "obj/a.onnx"));
        task.CacheDirectory = "/cache";
        task.CacheMaxMB = "lots";
        Assert.IsFalse(task.BuildArguments());
        Assert.AreEqual(DiagnosticCodes.InvalidOption, engine.Errors.Single().Code);
        StringAssert.Contains(engine.Errors[0].Message, "CompressModelCacheMaxMB");
    }

    [TestMethod]
    public void InvalidNumber_IsCMPR0003NamingTheItemAndMetadata()
    {
        (CompressModels task, FakeBuildEngine engine) = NewTask(
            Model("Models/a.onnx", "obj/a.onnx", ("MinAgreement", "1.5"), ("ValidationSamples", "many")));
        Assert.IsFalse(task.BuildArguments());
        Assert.HasCount(2, engine.Errors);
        Assert.IsTrue(engine.Errors.All(e => e.Code == DiagnosticCodes.InvalidOption));
        Assert.AreEqual("Models/a.onnx", engine.Errors[0].File);
        StringAssert.Contains(engine.Errors[0].Message, "Models/a.onnx");
        StringAssert.Contains(engine.Errors[0].Message, "MinAgreement");
        StringAssert.Contains(engine.Errors[1].Message, "ValidationSamples");
    }

    [TestMethod]
    public void TwoModelsWithOneOutput_IsCMPR0006()
    {
        (CompressModels task, FakeBuildEngine engine) = NewTask(
            Model("a/model.onnx", "obj/model.onnx"),
            Model("b/model.onnx", "obj/model.onnx"));
        Assert.IsFalse(task.BuildArguments());
        Assert.AreEqual(DiagnosticCodes.OutputConflict, engine.Errors.Single().Code);
        StringAssert.Contains(engine.Errors[0].Message, "a/model.onnx");
        StringAssert.Contains(engine.Errors[0].Message, "b/model.onnx");
    }

    [TestMethod]
    public void MissingWorker_IsCMPR0001()
    {
        (CompressModels task, FakeBuildEngine engine) = NewTask(Model("a.onnx", "obj/a.onnx"));
        Assert.IsFalse(task.Execute());
        BuildErrorEventArgs error = engine.Errors.Single();
        Assert.AreEqual(DiagnosticCodes.WorkerNotFound, error.Code);
        StringAssert.Contains(error.Message, task.CliPath);
        Assert.IsFalse(File.Exists(task.ResponseFilePath), "nothing runs without a worker");
    }

    [TestMethod]
    public void MissingHost_IsCMPR0008()
    {
        (CompressModels task, FakeBuildEngine engine) = NewTask(Model("a.onnx", "obj/a.onnx"));
        WriteFile(task.CliPath, "not really an assembly");
        task.DotNetHostPath = Path.Combine(_dir, "no-such-dotnet");
        Assert.IsFalse(task.Execute());
        Assert.AreEqual(DiagnosticCodes.DotNetHostNotFound, engine.Errors.Single().Code);
        StringAssert.Contains(engine.Errors[0].Message, "no-such-dotnet");
    }

    // The tests below run a real process through ToolTask: a shell script stands in for the dotnet host, so
    // the command line, the response file, canonical-line parsing and exit code handling are all exercised.

    [TestMethod]
    [OSCondition(OperatingSystems.Linux | OperatingSystems.OSX)]
    public void WorkerErrorsAndWarnings_BecomeCodedMSBuildEvents()
    {
        string model = Path.Combine(_dir, "m.onnx");
        (CompressModels task, FakeBuildEngine engine) = NewTask(Model("m.onnx", "obj/m.onnx", ("MinAgreement", "0.99")));
        task.DotNetHostPath = FakeHost(
            $"echo 'CompressOnBuild: {model}: Int8, 400 KB -> 100 KB (4.00x); agreement 97.0%'",
            $"echo '{model} : warning CMPR0203 : nothing to quantize in a part'",
            $"echo '{model} : error CMPR0401 : Model m.onnx broke the budget MinAgreement: measured 0.97, limit 0.99.'",
            "echo 'some progress text'",
            $"echo 'CompressOnBuild progress: {model}: validating 812/4000 samples, 21 s'",
            "exit 1");

        Assert.IsFalse(task.Execute());

        BuildErrorEventArgs error = engine.Errors.Single();
        Assert.AreEqual("CMPR0401", error.Code);
        Assert.AreEqual(model, error.File);
        StringAssert.Contains(error.Message, "MinAgreement");
        Assert.AreEqual("CMPR0203", engine.Warnings.Single().Code);
        Assert.AreEqual("Model m.onnx broke the budget MinAgreement: measured 0.97, limit 0.99.", error.Message, "the text after the code, unchanged");
        StringAssert.EndsWith(error.HelpLink, "docs/diagnostics.md#cmpr0401");
        StringAssert.EndsWith(engine.Warnings[0].HelpLink, "docs/diagnostics.md#cmpr0203");
        BuildMessageEventArgs summary = engine.Messages.Single(m => m.Message!.StartsWith("CompressOnBuild: ", StringComparison.Ordinal));
        Assert.AreEqual(MessageImportance.High, summary.Importance);
        BuildMessageEventArgs progress = engine.Messages.Single(m => m.Message!.StartsWith("CompressOnBuild progress: ", StringComparison.Ordinal));
        Assert.AreEqual(MessageImportance.Normal, progress.Importance, "progress shows at normal verbosity, not at minimal");
        Assert.IsFalse(engine.Errors.Any(e => e.Code == DiagnosticCodes.WorkerFailed), "an error was reported, so no CMPR0002");
    }

    [TestMethod]
    [OSCondition(OperatingSystems.Linux | OperatingSystems.OSX)]
    public void NonZeroExitWithoutError_IsCMPR0002()
    {
        (CompressModels task, FakeBuildEngine engine) = NewTask(Model("m.onnx", "obj/m.onnx"));
        task.DotNetHostPath = FakeHost("echo 'Segmentation fault' >&2", "exit 3");
        Assert.IsFalse(task.Execute());
        BuildErrorEventArgs error = engine.Errors.Single();
        Assert.AreEqual(DiagnosticCodes.WorkerFailed, error.Code);
        StringAssert.Contains(error.Message, "3");
        StringAssert.EndsWith(error.HelpLink, "docs/diagnostics.md#cmpr0002");
    }

    [TestMethod]
    [OSCondition(OperatingSystems.Linux | OperatingSystems.OSX)]
    public void Success_RunsDotnetExecCompressWithTheResponseFileInTheProjectDirectory()
    {
        (CompressModels task, FakeBuildEngine engine) = NewTask(
            Model("m.onnx", "obj/out/m.onnx", ("Quantization", "Int8")));
        // The fake host checks its command line, records its working directory and arguments, and writes the
        // output named after --output in the response file, as the worker does.
        task.DotNetHostPath = FakeHost(
            "[ \"$1\" = exec ] && [ \"$3\" = compress ] || { echo \"bad command line: $*\"; exit 2; }",
            "rsp=\"${4#@}\"",
            "pwd > \"$rsp.cwd\"",
            "echo \"$2\" > \"$rsp.dll\"",
            "out=$(sed -n '/^--output$/{n;p;}' \"$rsp\")",
            "mkdir -p \"$(dirname \"$out\")\" && echo compressed > \"$out\"",
            "exit 0");
        WriteFile(task.CliPath, "worker");

        Assert.IsTrue(task.Execute(), engine.Describe());

        Assert.AreEqual(_dir, File.ReadAllText(task.ResponseFilePath + ".cwd").Trim());
        Assert.AreEqual(task.CliPath, File.ReadAllText(task.ResponseFilePath + ".dll").Trim());
        Assert.IsTrue(File.Exists(Path.Combine(_dir, "obj", "out", "m.onnx")));
        Assert.AreEqual(Path.Combine(_dir, "obj", "out", "m.onnx"), task.CompressedModels.Single().ItemSpec);
    }

    [TestMethod]
    [OSCondition(OperatingSystems.Linux | OperatingSystems.OSX)]
    public void SuccessWithoutOutput_IsCMPR0106()
    {
        (CompressModels task, FakeBuildEngine engine) = NewTask(Model("m.onnx", "obj/m.onnx"));
        task.DotNetHostPath = FakeHost("exit 0");
        WriteFile(task.CliPath, "worker");
        Assert.IsFalse(task.Execute());
        Assert.AreEqual(DiagnosticCodes.OutputWriteFailed, engine.Errors.Single().Code);
    }

    private string FakeHost(params string[] lines)
    {
        string path = Path.Combine(_dir, "fake-dotnet.sh");
        File.WriteAllText(path, "#!/bin/sh\n" + string.Join("\n", lines) + "\n");
        if (OperatingSystem.IsWindows())
        {
            Assert.Inconclusive("the fake dotnet host is a shell script");
        }
        else
        {
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
        string cli = Path.Combine(_dir, "cli", "CompressOnBuild.Cli.dll");
        if (!File.Exists(cli))
        {
            WriteFile(cli, "worker");
        }
        return path;
    }

    private static void WriteFile(string path, string text)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, text);
    }
}
