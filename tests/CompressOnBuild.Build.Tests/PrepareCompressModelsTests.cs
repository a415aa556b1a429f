using CompressOnBuild.Tasks;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

namespace CompressOnBuild.Build.Tests;

[TestClass]
public sealed class PrepareCompressModelsTests
{
    private string _dir = "";

    public TestContext TestContext { get; set; } = null!;

    [TestInitialize]
    public void Setup()
    {
        _dir = Path.Combine(Path.GetTempPath(), "cob-prep-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(Path.Combine(_dir, "Models"));
        Directory.CreateDirectory(Path.Combine(_dir, "Data", "val"));
        File.WriteAllText(Path.Combine(_dir, "Models", "a.onnx"), "model a");
        File.WriteAllText(Path.Combine(_dir, "Data", "val", "0.png"), "image");
    }

    [TestCleanup]
    public void Cleanup()
    {
        if (TestContext.CurrentTestOutcome == UnitTestOutcome.Passed)
        {
            Directory.Delete(_dir, recursive: true);
        }
    }

    private (PrepareCompressModels Task, FakeBuildEngine Engine) NewTask(ITaskItem[] models, ITaskItem[]? none = null, ITaskItem[]? content = null)
    {
        var engine = new FakeBuildEngine(Path.Combine(_dir, "app.csproj"));
        var task = new PrepareCompressModels
        {
            BuildEngine = engine,
            Models = models,
            NoneItems = none ?? [],
            ContentItems = content ?? [],
            ProjectDirectory = _dir,
            IntermediateDirectory = "obj/Debug/net10.0/CompressOnBuild/",
        };
        return (task, engine);
    }

    private static TaskItem Item(string spec, params (string Name, string Value)[] metadata)
    {
        var item = new TaskItem(spec);
        foreach ((string name, string value) in metadata)
        {
            item.SetMetadata(name, value);
        }
        return item;
    }

    private string Intermediate(string relative) => Path.Combine(_dir, "obj", "Debug", "net10.0", "CompressOnBuild", relative);

    [TestMethod]
    public void ModelNotListedElsewhere_IsAddedAsNoneCopiedToOutputAndPublish()
    {
        (PrepareCompressModels task, FakeBuildEngine engine) = NewTask([Item("Models/a.onnx", ("Quantization", "Int8"))]);
        Assert.IsTrue(task.Execute(), engine.Describe());

        ITaskItem prepared = task.PreparedModels.Single();
        string output = Intermediate(Path.Combine("Models", "a.onnx"));
        Assert.AreEqual(output, prepared.GetMetadata("OutputPath"));
        Assert.AreEqual(output + ".options", prepared.ItemSpec);
        Assert.AreEqual(Path.Combine(_dir, "Models", "a.onnx"), prepared.GetMetadata("SourceModel"));
        Assert.AreEqual("Int8", prepared.GetMetadata("Quantization"));
        Assert.IsTrue(File.Exists(prepared.ItemSpec), "the options stamp is written");

        ITaskItem added = task.NoneToAdd.Single();
        Assert.AreEqual(output, added.ItemSpec);
        Assert.AreEqual(Path.Combine("Models", "a.onnx"), added.GetMetadata("Link"));
        Assert.AreEqual("PreserveNewest", added.GetMetadata("CopyToOutputDirectory"));
        Assert.AreEqual("PreserveNewest", added.GetMetadata("CopyToPublishDirectory"));
        Assert.IsEmpty(task.NoneToRemove);
    }

    [TestMethod]
    public void ModelListedAsNoneWithLink_IsSwappedKeepingLinkAndCopyMode()
    {
        TaskItem none = Item("Models/a.onnx", ("Link", "assets/classifier.onnx"), ("CopyToOutputDirectory", "Always"), ("Custom", "x"));
        TaskItem other = Item("readme.txt", ("CopyToOutputDirectory", "Always"));
        (PrepareCompressModels task, FakeBuildEngine engine) = NewTask([Item("Models/a.onnx")], none: [none, other]);
        Assert.IsTrue(task.Execute(), engine.Describe());

        Assert.AreSame(none, task.NoneToRemove.Single());
        ITaskItem swapped = task.NoneToAdd.Single();
        Assert.AreEqual(Intermediate(Path.Combine("Models", "a.onnx")), swapped.ItemSpec);
        Assert.AreEqual("assets/classifier.onnx", swapped.GetMetadata("Link"));
        Assert.AreEqual("Always", swapped.GetMetadata("CopyToOutputDirectory"));
        Assert.AreEqual("x", swapped.GetMetadata("Custom"));
    }

    [TestMethod]
    public void ModelListedAsContentWithTargetPath_IsSwappedAtThatPath()
    {
        TaskItem content = Item("Models/a.onnx", ("TargetPath", "ml/a.onnx"), ("CopyToPublishDirectory", "PreserveNewest"));
        (PrepareCompressModels task, FakeBuildEngine engine) = NewTask([Item("Models/a.onnx")], content: [content]);
        Assert.IsTrue(task.Execute(), engine.Describe());

        Assert.IsEmpty(task.NoneToAdd);
        Assert.AreSame(content, task.ContentToRemove.Single());
        Assert.AreEqual("ml/a.onnx", task.ContentToAdd.Single().GetMetadata("Link"));
        Assert.AreEqual("ml/a.onnx", task.ContentToAdd.Single().GetMetadata("TargetPath"));
    }

    [TestMethod]
    public void ModelListedAsEmbeddedResource_IsSwappedKeepingItsResourceName_AndNotCopied()
    {
        TaskItem resource = Item("Models/a.onnx", ("LogicalName", "classifier"));
        // The SDK's default None glob also lists the file, without copy metadata.
        (PrepareCompressModels task, FakeBuildEngine engine) = NewTask([Item("Models/a.onnx")], none: [Item("Models/a.onnx")]);
        task.EmbeddedResourceItems = [resource, Item("Other/b.onnx")];
        Assert.IsTrue(task.Execute(), engine.Describe());

        Assert.AreEqual("", task.NoneToAdd.Single().GetMetadata("CopyToOutputDirectory"), "an embedded model is not also copied to the output");
        Assert.AreSame(resource, task.EmbeddedResourceToRemove.Single());
        ITaskItem swapped = task.EmbeddedResourceToAdd.Single();
        Assert.AreEqual(Intermediate(Path.Combine("Models", "a.onnx")), swapped.ItemSpec);
        Assert.AreEqual("Models/a.onnx", swapped.GetMetadata("Link").Replace('\\', '/'), "the manifest name follows the original path");
        Assert.AreEqual("classifier", swapped.GetMetadata("LogicalName"));
        Assert.AreEqual("", swapped.GetMetadata("CopyToOutputDirectory"));
    }

    [TestMethod]
    public void Stamp_ChangesOnlyWhenOptionsModelOrDataChange()
    {
        TaskItem model = Item("Models/a.onnx", ("ValidationData", "Data/val"), ("MinAgreement", "0.99"));
        (PrepareCompressModels task, FakeBuildEngine engine) = NewTask([model]);
        Assert.IsTrue(task.Execute(), engine.Describe());
        string stamp = task.PreparedModels.Single().ItemSpec;
        DateTime old = new(2020, 1, 1, 0, 0, 0, DateTimeKind.Utc);
        File.SetLastWriteTimeUtc(stamp, old);

        Assert.IsTrue(NewTask([model]).Task.Execute());
        Assert.AreEqual(old, File.GetLastWriteTimeUtc(stamp), "same inputs: the stamp is not rewritten");

        model.SetMetadata("MinAgreement", "0.98");
        Assert.IsTrue(NewTask([model]).Task.Execute());
        Assert.AreNotEqual(old, File.GetLastWriteTimeUtc(stamp), "an option changed");
        StringAssert.Contains(File.ReadAllText(stamp), "MinAgreement=0.98");

        File.SetLastWriteTimeUtc(stamp, old);
        File.WriteAllText(Path.Combine(_dir, "Data", "val", "1.png"), "another image");
        Assert.IsTrue(NewTask([model]).Task.Execute());
        Assert.AreNotEqual(old, File.GetLastWriteTimeUtc(stamp), "the validation folder changed");

        File.SetLastWriteTimeUtc(stamp, old);
        File.WriteAllText(Path.Combine(_dir, "Models", "a.onnx"), "model a, retrained");
        Assert.IsTrue(NewTask([model]).Task.Execute());
        Assert.AreNotEqual(old, File.GetLastWriteTimeUtc(stamp), "the model changed");
    }

    [TestMethod]
    public void LinkLeavingTheOutput_IsCMPR0003()
    {
        (PrepareCompressModels task, FakeBuildEngine engine) = NewTask([Item("Models/a.onnx", ("Link", "../a.onnx"))]);
        Assert.IsFalse(task.Execute());
        Assert.AreEqual(DiagnosticCodes.InvalidOption, engine.Errors.Single().Code);
        Assert.IsEmpty(task.PreparedModels);
    }

    [TestMethod]
    public void InvalidMetadata_IsCMPR0003()
    {
        (PrepareCompressModels task, FakeBuildEngine engine) = NewTask([Item("Models/a.onnx", ("MaxAccuracyDrop", "half a point"))]);
        Assert.IsFalse(task.Execute());
        BuildErrorEventArgs error = engine.Errors.Single();
        Assert.AreEqual(DiagnosticCodes.InvalidOption, error.Code);
        Assert.AreEqual("Models/a.onnx", error.File);
        StringAssert.Contains(error.Message, "MaxAccuracyDrop");
    }

    [TestMethod]
    public void TwoModelsLandingOnOnePath_IsCMPR0006()
    {
        File.WriteAllText(Path.Combine(_dir, "b.onnx"), "model b");
        (PrepareCompressModels task, FakeBuildEngine engine) = NewTask(
            [Item("Models/a.onnx", ("Link", "model.onnx")), Item("b.onnx", ("Link", "model.onnx"))]);
        Assert.IsFalse(task.Execute());
        Assert.AreEqual(DiagnosticCodes.OutputConflict, engine.Errors.Single().Code);
    }

    [TestMethod]
    public void MisspelledBudget_IsAnError_ThatSuggestsTheOption()
    {
        (PrepareCompressModels task, FakeBuildEngine engine) = NewTask(
            [Item("Models/a.onnx", ("ValidationData", "Data/val"), ("MaxAcuracyDrop", "0.01"))]);
        Assert.IsFalse(task.Execute(), "a typo that removes a gate must not build green");
        BuildErrorEventArgs error = engine.Errors.Single();
        Assert.AreEqual(DiagnosticCodes.UnknownOption, error.Code);
        StringAssert.Contains(error.Message, "'MaxAcuracyDrop'");
        StringAssert.Contains(error.Message, "Did you mean 'MaxAccuracyDrop'?");
        StringAssert.Contains(error.Message, "CompressModelAllowedMetadata");
        Assert.AreEqual("Models/a.onnx", error.File);
        Assert.IsEmpty(task.PreparedModels, "the model is not compressed without its budget");
    }

    [TestMethod]
    public void UnknownMetadataFarFromAnyOption_IsAWarning()
    {
        (PrepareCompressModels task, FakeBuildEngine engine) = NewTask([Item("Models/a.onnx", ("MinAgreement", "0.9"), ("Owner", "vision team"))]);
        Assert.IsTrue(task.Execute(), engine.Describe());
        Assert.IsEmpty(engine.Errors);
        BuildWarningEventArgs warning = engine.Warnings.Single();
        Assert.AreEqual(DiagnosticCodes.UnknownMetadata, warning.Code);
        StringAssert.Contains(warning.Message, "'Owner'");
        Assert.HasCount(1, task.PreparedModels);
    }

    [TestMethod]
    public void AllowedMetadata_IsNotReported_CaseInsensitively()
    {
        (PrepareCompressModels task, FakeBuildEngine engine) = NewTask(
            [Item("Models/a.onnx", ("MinAgreement", "0.9"), ("Owner", "vision team"), ("MaxAccuracyDropNote", "see wiki"), ("MinAgrement", "x"))]);
        task.AllowedMetadata = " owner ; MaxAccuracyDropNote;minagrement";
        Assert.IsTrue(task.Execute(), engine.Describe());
        Assert.IsEmpty(engine.Errors, engine.Describe());
        Assert.IsEmpty(engine.Warnings, engine.Describe());
    }

    [TestMethod]
    public void WellKnownItemMetadata_IsNotReported()
    {
        (PrepareCompressModels task, FakeBuildEngine engine) = NewTask(
            [Item("Models/a.onnx", ("MinAgreement", "0.9"), ("Link", "m/a.onnx"), ("Visible", "false"), ("CopyToOutputDirectory", "Always"),
                ("CopyToPublishDirectory", "Never"), ("DependentUpon", "a.json"), ("Pack", "true"), ("PackagePath", "models"),
                ("TargetPath", "m/a.onnx"), ("LogicalName", "a"), ("Generator", "x"), ("SubType", "Designer"))]);
        Assert.IsTrue(task.Execute(), engine.Describe());
        Assert.IsEmpty(engine.Errors, engine.Describe());
        Assert.IsEmpty(engine.Warnings, engine.Describe());
        // The well-known metadata MSBuild defines on every item (FullPath, Identity, ...) are not custom metadata at all.
        Assert.IsNotEmpty(task.PreparedModels.Single().GetMetadata("FullPath"));
    }

    [TestMethod]
    public void ModelWithoutValidationDataOrBudget_GetsOneInformationalLine()
    {
        (PrepareCompressModels task, FakeBuildEngine engine) = NewTask(
            [Item("Models/a.onnx", ("Quantization", "Int8")), Item("b.onnx", ("MaxSizeKB", "100")), Item("c.onnx", ("ValidationData", "Data/val"))]);
        Assert.IsTrue(task.Execute(), engine.Describe());
        BuildMessageEventArgs[] notGated = engine.Messages.Where(m => m.Code == DiagnosticCodes.AccuracyNotGated).ToArray();
        Assert.HasCount(1, notGated, "only the model with neither data nor budget");
        Assert.AreEqual("Models/a.onnx", notGated[0].File);
        Assert.AreEqual(MessageImportance.High, notGated[0].Importance);
        StringAssert.Contains(notGated[0].Message, "does not gate");
        Assert.IsEmpty(engine.Warnings, "informational, not a warning");
    }
}
