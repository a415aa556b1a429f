extern alias core;

using System.Security.Cryptography;
using System.Text.RegularExpressions;
using CompressOnBuild.Samples.Shapes;
using CompressOnBuild.Tests;
using core::CompressOnBuild.Onnx;

namespace CompressOnBuild.Build.Tests;

/// <summary>
/// The package as a user gets it: packed from this checkout into a temporary feed, referenced by a fresh app in a
/// temporary folder outside the repository, restored with an isolated NuGet packages folder (the machine's usual
/// packages folder serves as a fallback so ONNX Runtime is not downloaded again), and built with the real SDK.
/// Every build writes a binlog; on failure the folder is kept and its binlogs are attached to the test result.
/// Set COMPRESSONBUILD_TEST_PACKAGE to a .nupkg to test that package instead of packing.
/// </summary>
[TestClass]
public sealed partial class PackageIntegrationTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(6);
    private static string s_root = "";
    private static string s_app = "";
    private static string s_sourceHash = "";
    private static string s_package = "";
    private static bool s_packedFromThisCheckout;
    private static ProcessResult? s_firstBuild;
    private static Dictionary<string, string?> s_environment = [];
    private static bool s_anyFailure;
    private static int s_buildNumber;

    public TestContext TestContext { get; set; } = null!;

    private static string SourceModel => Path.Combine(s_app, "generated", "shapes.onnx");

    [ClassInitialize]
    public static void PackAndCreateApp(TestContext context)
    {
        _ = context;
        s_root = Path.Combine(Path.GetTempPath(), "cob-it-" + DateTime.UtcNow.ToString("yyyyMMddHHmmss", System.Globalization.CultureInfo.InvariantCulture) + "-" + Guid.NewGuid().ToString("N")[..6]);
        s_app = Path.Combine(s_root, "app");
        string feed = Path.Combine(s_root, "feed");
        Directory.CreateDirectory(s_app);
        Directory.CreateDirectory(feed);

        string version = ProvidePackage(feed);
        s_package = Path.Combine(feed, $"CompressOnBuild.{version}.nupkg");

        string machinePackages = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } p
            ? p
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        s_environment = new Dictionary<string, string?>
        {
            ["NUGET_PACKAGES"] = Path.Combine(s_root, "packages"),
            ["DOTNET_HOST_PATH"] = null,
            // The shared result cache of this run only (the default is under the user's profile).
            ["COMPRESSONBUILD_CACHE"] = Path.Combine(s_root, "cache"),
        };
        WriteApp(version, feed, machinePackages);

        // A real trained model and labelled validation data, small enough to train in a second or two.
        ShapesDataset.Generate(new GeneratorOptions
        {
            OutputDirectory = Path.Combine(s_app, "generated"),
            TrainCount = 1200,
            ValidationCount = 300,
            Hidden = 64,
            Epochs = 4,
        });
        s_sourceHash = Hash(SourceModel);

        s_firstBuild = Build("build", "first", "-p:Configuration=Debug");
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        if (!s_anyFailure && s_root.Length > 0 && Directory.Exists(s_root))
        {
            Directory.Delete(s_root, recursive: true);
        }
    }

    [TestCleanup]
    public void KeepEvidenceOnFailure()
    {
        if (TestContext.CurrentTestOutcome != UnitTestOutcome.Passed)
        {
            s_anyFailure = true;
            foreach (string binlog in Directory.GetFiles(s_root, "*.binlog"))
            {
                TestContext.AddResultFile(binlog);
            }
            TestContext.WriteLine($"Kept {s_root} (app, feed, packages, binlogs).");
        }
    }

    [TestMethod]
    public void Build_ShipsTheCompressedModel_AndTheAppRunsIt()
    {
        Assert.IsNotNull(s_firstBuild);
        Assert.AreEqual(0, s_firstBuild.ExitCode, s_firstBuild.Tail());
        StringAssert.Contains(s_firstBuild.Output, "CompressOnBuild: ", "the worker's summary line shows at normal verbosity");

        string shipped = Path.Combine(s_app, "bin", "Debug", "net10.0", "generated", "shapes.onnx");
        AssertCompressed(shipped);
        Assert.AreEqual(s_sourceHash, Hash(SourceModel), "the source model is never touched");
        string summary = Path.Combine(s_app, "obj", "Debug", "net10.0", "CompressOnBuild", "summary.md");
        Assert.IsTrue(File.Exists(summary), "the build writes the Markdown summary");
        StringAssert.Contains(File.ReadAllText(summary), "shapes", File.ReadAllText(summary));

        ProcessResult run = DotNetProcess.Run(s_app, s_environment, Timeout, Path.Combine(s_app, "bin", "Debug", "net10.0", "app.dll"));
        Assert.AreEqual(0, run.ExitCode, run.Tail());
        StringAssert.Contains(run.Output, "APP-OK 4 " + new FileInfo(shipped).Length, "the app loads the shipped model with ONNX Runtime");
    }

    [TestMethod]
    public void SecondBuild_DoesNotRunTheWorker()
    {
        // Settle first (another test may have changed the options), then build again with nothing changed.
        ProcessResult settle = Build("build", "settle", "-p:Configuration=Debug", "--no-restore");
        Assert.AreEqual(0, settle.ExitCode, settle.Tail());

        ProcessResult again = Build("build", "incremental", "-p:Configuration=Debug", "--no-restore", "-v:d");
        Assert.AreEqual(0, again.ExitCode, again.Tail());
        StringAssert.Contains(again.Output, "Skipping target \"_CompressModelsCore\" because all output files are up-to-date");
        Assert.DoesNotContain("Task \"CompressModels\"", again.Output, "the worker task must not run when nothing changed");
        Assert.DoesNotContain("CompressOnBuild: ", again.Output);

        // The public target returns the compressed models even when it had nothing to do.
        ProcessResult items = DotNetProcess.Run(s_app, s_environment, Timeout,
            "msbuild", Path.Combine(s_app, "app.csproj"), "-nologo", "-nodeReuse:false", "-p:Configuration=Debug",
            "-t:CompressModels", "-getItem:CompressedModel");
        Assert.AreEqual(0, items.ExitCode, items.Tail());
        StringAssert.Contains(items.Output.Replace("\\\\", "/", StringComparison.Ordinal).Replace('\\', '/'),
            "obj/Debug/net10.0/CompressOnBuild/generated/shapes.onnx", items.Tail());
        Assert.DoesNotContain("CompressOnBuild: ", items.Output);
    }

    [TestMethod]
    public void BrokenBudget_FailsTheBuildWithCMPR0401NamingTheModel()
    {
        // An earlier configuration that passed has put its compressed model into bin/.
        ProcessResult passing = Build("build", "budget-before", "-p:Configuration=Debug", "--no-restore");
        Assert.AreEqual(0, passing.ExitCode, passing.Tail());
        string shipped = Path.Combine(s_app, "bin", "Debug", "net10.0", "generated", "shapes.onnx");
        Assert.IsTrue(File.Exists(shipped));

        ProcessResult broken = Build("build", "budget", "-p:Configuration=Debug", "--no-restore", "-p:TestMaxSizeKB=1");
        Assert.AreNotEqual(0, broken.ExitCode, broken.Tail());
        Match error = ErrorLine().Match(broken.Output);
        Assert.IsTrue(error.Success, "expected 'error CMPR0401' in:\n" + broken.Tail());
        StringAssert.Contains(error.Value, "shapes.onnx", "the error names the model");
        Assert.AreEqual(s_sourceHash, Hash(SourceModel));
        Assert.IsFalse(File.Exists(shipped), "after a budget failure bin/ must not keep the model of an earlier configuration");

        // Relaxing the budget in the project makes the same build pass and ship the compressed model.
        ProcessResult relaxed = Build("build", "budget-relaxed", "-p:Configuration=Debug", "--no-restore", "-p:TestMaxSizeKB=100000");
        Assert.AreEqual(0, relaxed.ExitCode, relaxed.Tail());
        AssertCompressed(Path.Combine(s_app, "bin", "Debug", "net10.0", "generated", "shapes.onnx"));
    }

    [TestMethod]
    public void MisspelledBudget_FailsTheBuildWithCMPR0009_UnlessAllowed()
    {
        ProcessResult typo = Build("build", "typo", "-p:Configuration=Debug", "--no-restore", "-p:TestTypo=true");
        Assert.AreNotEqual(0, typo.ExitCode, typo.Tail());
        StringAssert.Contains(typo.Output, "error CMPR0009", typo.Tail());
        StringAssert.Contains(typo.Output, "Did you mean 'MinAgreement'?", typo.Tail());
        Assert.AreEqual(s_sourceHash, Hash(SourceModel));

        ProcessResult allowed = Build("build", "typo-allowed", "-p:Configuration=Debug", "--no-restore", "-p:TestTypo=true",
            "-p:CompressModelAllowedMetadata=MinAgrement");
        Assert.AreEqual(0, allowed.ExitCode, allowed.Tail());
        Assert.DoesNotContain("CMPR0009", allowed.Output);
        Assert.DoesNotContain("CMPR0010", allowed.Output);
    }

    [TestMethod]
    public void BrokenBudget_AsWarning_BuildsAndShips()
    {
        ProcessResult warned = Build("build", "budget-warning", "-p:Configuration=Debug", "--no-restore",
            "-p:TestMaxSizeKB=1", "-p:CompressModelBudgetFailureSeverity=Warning");
        Assert.AreEqual(0, warned.ExitCode, warned.Tail());
        StringAssert.Contains(warned.Output, "warning CMPR0401", warned.Tail());
        AssertCompressed(Path.Combine(s_app, "bin", "Debug", "net10.0", "generated", "shapes.onnx"));

        // The usual MSBuild switches work on our codes (each build changes the budget, so the worker runs again).
        ProcessResult elevated = Build("build", "budget-warning-as-error", "-p:Configuration=Debug", "--no-restore",
            "-p:TestMaxSizeKB=2", "-p:CompressModelBudgetFailureSeverity=Warning", "-p:WarningsAsErrors=CMPR0401");
        Assert.AreNotEqual(0, elevated.ExitCode, elevated.Tail());
        StringAssert.Contains(elevated.Output, "error CMPR0401", elevated.Tail());
        ProcessResult suppressed = Build("build", "budget-warning-suppressed", "-p:Configuration=Debug", "--no-restore",
            "-p:TestMaxSizeKB=3", "-p:CompressModelBudgetFailureSeverity=Warning", "-p:NoWarn=CMPR0401");
        Assert.AreEqual(0, suppressed.ExitCode, suppressed.Tail());
        Assert.IsFalse(suppressed.Output.Contains("CMPR0401", StringComparison.Ordinal), suppressed.Tail());
    }

    [TestMethod]
    public void MissingModel_FailsWithACodedError_AndLeavesNoOptionsStamp()
    {
        string app = Path.Combine(s_root, "missing-model");
        Directory.CreateDirectory(app);
        File.Copy(Path.Combine(s_app, "Program.cs"), Path.Combine(app, "Program.cs"));
        File.WriteAllText(Path.Combine(app, "app.csproj"), Regex.Replace(
            File.ReadAllText(Path.Combine(s_app, "app.csproj")),
            "<CompressModel Include=\"generated/shapes.onnx\"[^>]*/>",
            "<CompressModel Include=\"generated/absent.onnx\" />"));
        ProcessResult build = BuildIn(app, "build", "missing-model");
        Assert.AreNotEqual(0, build.ExitCode, build.Tail());
        StringAssert.Matches(build.Output, new Regex("absent\\.onnx.*error CMPR\\d{4}"), build.Tail());
        string intermediate = Path.Combine(app, "obj", "Debug", "net10.0", "CompressOnBuild");
        string[] stamps = Directory.Exists(intermediate) ? Directory.GetFiles(intermediate, "*.options", SearchOption.AllDirectories) : [];
        Assert.IsEmpty(stamps, "a failed model leaves no options stamp: " + string.Join(", ", stamps));
    }

    [TestMethod]
    public void Publish_ShipsTheCompressedModel()
    {
        string publish = Path.Combine(s_root, "publish");
        ProcessResult result = Build("publish", "publish", "-c", "Release", "-r", System.Runtime.InteropServices.RuntimeInformation.RuntimeIdentifier, "--self-contained", "false", "-o", publish);
        Assert.AreEqual(0, result.ExitCode, result.Tail());
        AssertCompressed(Path.Combine(publish, "generated", "shapes.onnx"));
    }

    [TestMethod]
    public void PublishForAnotherRuntime_ShipsTheCompressedModel()
    {
        // Cross-publish: no machine of that runtime needed (framework-dependent, no apphost to download).
        string rid = System.Runtime.InteropServices.RuntimeInformation.OSArchitecture == System.Runtime.InteropServices.Architecture.Arm64
            ? "linux-x64" : "linux-arm64";
        string publish = Path.Combine(s_root, "publish-" + rid);
        ProcessResult result = Build("publish", "publish-" + rid, "-c", "Release", "-r", rid, "--self-contained", "false",
            "-p:UseAppHost=false", "-o", publish);
        Assert.AreEqual(0, result.ExitCode, result.Tail());
        AssertCompressed(Path.Combine(publish, "generated", "shapes.onnx"));
    }

    [TestMethod]
    public void PublishForWindowsAndMacOS_ShipsTheCompressedModel_WithPerRuntimeMetadata()
    {
        // Framework-dependent cross-publishes from this machine, with the apphost of each runtime (the
        // Microsoft.NETCore.App.Host.<rid> pack is restored like any package). The app's project gives win-x64
        // Quantization="Float16" through a Condition on $(RuntimeIdentifier); osx-arm64 keeps the default Int8.
        string windows = Path.Combine(s_root, "publish-win-x64");
        ProcessResult win = Build("publish", "publish-win-x64", "-c", "Release", "-r", "win-x64", "--self-contained", "false", "-o", windows);
        Assert.AreEqual(0, win.ExitCode, win.Tail());
        Assert.IsTrue(File.Exists(Path.Combine(windows, "app.exe")), "the Windows apphost is published");
        Assert.IsTrue(File.Exists(Path.Combine(windows, "onnxruntime.dll")), "the app's own ONNX Runtime ships its Windows native library");
        AssertFloat16(Path.Combine(windows, "generated", "shapes.onnx"));
        string report = File.ReadAllText(Path.Combine(s_app, "obj", "Release", "net10.0", "win-x64", "CompressOnBuild", "generated", "shapes.onnx.report.json"));
        StringAssert.Matches(report, new Regex("\"scheme\"\\s*:\\s*\"Float16\""), "the win-x64 report names the scheme its metadata chose");

        string mac = Path.Combine(s_root, "publish-osx-arm64");
        ProcessResult osx = Build("publish", "publish-osx-arm64", "-c", "Release", "-r", "osx-arm64", "--self-contained", "false", "-o", mac);
        Assert.AreEqual(0, osx.ExitCode, osx.Tail());
        Assert.IsTrue(File.Exists(Path.Combine(mac, "app")), "the macOS apphost is published");
        Assert.IsTrue(File.Exists(Path.Combine(mac, "libonnxruntime.dylib")), "the app's own ONNX Runtime ships its macOS native library");
        AssertCompressed(Path.Combine(mac, "generated", "shapes.onnx"));
        Assert.AreNotEqual(Hash(Path.Combine(windows, "generated", "shapes.onnx")), Hash(Path.Combine(mac, "generated", "shapes.onnx")),
            "each runtime ships the model its own metadata asked for");
    }

    [TestMethod]
    public void EmbeddedResourceModel_EmbedsTheCompressedBytes()
    {
        string app = Path.Combine(s_root, "embedded");
        Directory.CreateDirectory(Path.Combine(app, "generated"));
        File.Copy(SourceModel, Path.Combine(app, "generated", "shapes.onnx"));
        File.WriteAllText(Path.Combine(app, "app.csproj"), Regex.Replace(
            File.ReadAllText(Path.Combine(s_app, "app.csproj")),
            "<CompressModel Include=\"generated/shapes.onnx\"[^>]*/>",
            "<EmbeddedResource Include=\"generated/shapes.onnx\" LogicalName=\"shapes.onnx\" /><CompressModel Include=\"generated/shapes.onnx\" />"));
        File.WriteAllText(Path.Combine(app, "Program.cs"), """
            using Microsoft.ML.OnnxRuntime;

            using Stream stream = typeof(Program).Assembly.GetManifestResourceStream("shapes.onnx")!;
            using var memory = new MemoryStream();
            stream.CopyTo(memory);
            using var session = new InferenceSession(memory.ToArray());
            Console.WriteLine($"EMBEDDED {memory.Length} {File.Exists(Path.Combine(AppContext.BaseDirectory, "generated", "shapes.onnx"))}");
            """);
        ProcessResult build = BuildIn(app, "build", "embedded");
        Assert.AreEqual(0, build.ExitCode, build.Tail());
        string compressed = Path.Combine(app, "obj", "Debug", "net10.0", "CompressOnBuild", "generated", "shapes.onnx");
        AssertCompressed(compressed);

        ProcessResult run = DotNetProcess.Run(app, s_environment, Timeout, Path.Combine(app, "bin", "Debug", "net10.0", "app.dll"));
        Assert.AreEqual(0, run.ExitCode, run.Tail());
        StringAssert.Contains(run.Output, $"EMBEDDED {new FileInfo(compressed).Length} False", "the assembly embeds the compressed model, ONNX Runtime loads it");
    }

    [TestMethod]
    public void Clean_RemovesTheCompressedModelAndItsFiles()
    {
        // Release without a runtime identifier: a configuration no other test uses.
        ProcessResult build = Build("build", "release", "-c", "Release");
        Assert.AreEqual(0, build.ExitCode, build.Tail());
        string intermediate = Path.Combine(s_app, "obj", "Release", "net10.0", "CompressOnBuild");
        string shipped = Path.Combine(s_app, "bin", "Release", "net10.0", "generated", "shapes.onnx");
        Assert.IsTrue(File.Exists(shipped));
        Assert.IsNotEmpty(Directory.GetFiles(intermediate, "*", SearchOption.AllDirectories));

        ProcessResult clean = Build("clean", "clean", "-c", "Release");
        Assert.AreEqual(0, clean.ExitCode, clean.Tail());
        Assert.IsFalse(File.Exists(shipped), "clean removes the shipped model");
        string[] left = Directory.Exists(intermediate) ? Directory.GetFiles(intermediate, "*", SearchOption.AllDirectories) : [];
        Assert.IsEmpty(left, "clean leaves: " + string.Join(", ", left));
        Assert.AreEqual(s_sourceHash, Hash(SourceModel), "clean never touches the source model");
    }

    [TestMethod]
    public void MultiTargetedProject_CompressesOnceAndShipsToEveryFramework()
    {
        string lib = Path.Combine(s_root, "multi");
        Directory.CreateDirectory(lib);
        string version = Regex.Match(File.ReadAllText(Path.Combine(s_app, "app.csproj")), "Include=\"CompressOnBuild\" Version=\"([^\"]+)\"").Groups[1].Value;
        string fallback = Regex.Match(File.ReadAllText(Path.Combine(s_app, "app.csproj")), "<RestoreAdditionalProjectFallbackFolders>([^<]+)<").Groups[1].Value;
        File.WriteAllText(Path.Combine(lib, "multi.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <TargetFrameworks>net10.0;netstandard2.0</TargetFrameworks>
                <RestoreAdditionalProjectFallbackFolders>{fallback}</RestoreAdditionalProjectFallbackFolders>
                <NuGetAudit>false</NuGetAudit>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="CompressOnBuild" Version="{version}" />
                <CompressModel Include="../app/generated/shapes.onnx" Link="models/shapes.onnx" />
              </ItemGroup>
            </Project>
            """);
        File.WriteAllText(Path.Combine(lib, "Lib.cs"), "namespace Multi { public static class Lib { } }\n");

        string binlog = Path.Combine(s_root, $"{++s_buildNumber:D2}-multi.binlog");
        ProcessResult result = DotNetProcess.Run(lib, s_environment, Timeout,
            "build", Path.Combine(lib, "multi.csproj"), "-nologo", "-nodeReuse:false", "-v:n", "-bl:" + binlog);
        Assert.AreEqual(0, result.ExitCode, result.Tail());
        Assert.AreEqual(1, Regex.Count(result.Output, "^\\s*CompressOnBuild: ", RegexOptions.Multiline),
            "the worker runs once for all target frameworks:\n" + result.Tail());
        AssertCompressed(Path.Combine(lib, "bin", "Debug", "net10.0", "models", "shapes.onnx"));
        AssertCompressed(Path.Combine(lib, "bin", "Debug", "netstandard2.0", "models", "shapes.onnx"));
        // This project does not reference ONNX Runtime itself: the package's ORT dependency must bring it nothing.
        string[] ort = Directory.GetFiles(Path.Combine(lib, "bin"), "*onnxruntime*", SearchOption.AllDirectories);
        Assert.IsEmpty(ort, "ONNX Runtime assets flowed from the package into the project: " + string.Join(", ", ort));
    }

    [TestMethod]
    public void SolutionWithTwoProjectsSharingAModel_BuildsInParallel()
    {
        string solution = Path.Combine(s_root, "parallel");
        string fallback = Regex.Match(File.ReadAllText(Path.Combine(s_app, "app.csproj")), "<RestoreAdditionalProjectFallbackFolders>([^<]+)<").Groups[1].Value;
        string version = Regex.Match(File.ReadAllText(Path.Combine(s_app, "app.csproj")), "Include=\"CompressOnBuild\" Version=\"([^\"]+)\"").Groups[1].Value;
        foreach (string name in new[] { "a", "b" })
        {
            Directory.CreateDirectory(Path.Combine(solution, name));
            File.WriteAllText(Path.Combine(solution, name, name + ".csproj"), $"""
                <Project Sdk="Microsoft.NET.Sdk">
                  <PropertyGroup>
                    <TargetFramework>net10.0</TargetFramework>
                    <RestoreAdditionalProjectFallbackFolders>{fallback}</RestoreAdditionalProjectFallbackFolders>
                    <NuGetAudit>false</NuGetAudit>
                  </PropertyGroup>
                  <ItemGroup>
                    <PackageReference Include="CompressOnBuild" Version="{version}" />
                    <CompressModel Include="../../app/generated/shapes.onnx" Link="models/shapes.onnx" Quantization="Int8" MinAgreement="0.5"
                                   ValidationData="../../app/generated/val-images-idx3-ubyte" Labels="../../app/generated/val-labels-idx1-ubyte" />
                  </ItemGroup>
                </Project>
                """);
            File.WriteAllText(Path.Combine(solution, name, "Lib.cs"), $"namespace P{name} {{ public static class Lib {{ }} }}\n");
        }
        File.WriteAllText(Path.Combine(solution, "both.slnx"), """
            <Solution>
              <Project Path="a/a.csproj" />
              <Project Path="b/b.csproj" />
            </Solution>
            """);
        string binlog = Path.Combine(s_root, $"{++s_buildNumber:D2}-parallel.binlog");
        ProcessResult result = DotNetProcess.Run(solution, s_environment, Timeout,
            "build", Path.Combine(solution, "both.slnx"), "-nologo", "-nodeReuse:false", "-m:2", "-v:n", "-bl:" + binlog);
        Assert.AreEqual(0, result.ExitCode, result.Tail());
        Assert.HasCount(2, SummaryLines(result), result.Tail());
        AssertCompressed(Path.Combine(solution, "a", "bin", "Debug", "net10.0", "models", "shapes.onnx"));
        AssertCompressed(Path.Combine(solution, "b", "bin", "Debug", "net10.0", "models", "shapes.onnx"));
    }

    private static ProcessResult Build(string verb, string name, params string[] arguments) => BuildIn(s_app, verb, name, arguments);

    private static ProcessResult BuildIn(string app, string verb, string name, params string[] arguments)
    {
        string binlog = Path.Combine(s_root, $"{++s_buildNumber:D2}-{name}.binlog");
        string[] all = [verb, Path.Combine(app, "app.csproj"), "-nologo", "-nodeReuse:false", "-bl:" + binlog, .. arguments];
        return DotNetProcess.Run(app, s_environment, Timeout, all);
    }

    private static string[] SummaryLines(ProcessResult result) =>
        Regex.Matches(result.Output, "^\\s*CompressOnBuild: .*$", RegexOptions.Multiline).Select(m => m.Value.Trim()).ToArray();

    [TestMethod]
    public void SharedCache_ReusedByCleanBuildsAndOtherCheckouts_EachChangedInputRecompressesOnce()
    {
        Assert.AreEqual(0, s_firstBuild!.ExitCode, s_firstBuild.Tail());

        // Another checkout of the same app (another branch, another CI agent) with the same model and options.
        string app2 = Path.Combine(s_root, "app2");
        string generated = Path.Combine(app2, "generated");
        Directory.CreateDirectory(generated);
        foreach (string file in new[] { "shapes.onnx", "val-images-idx3-ubyte", "val-labels-idx1-ubyte" })
        {
            File.Copy(Path.Combine(s_app, "generated", file), Path.Combine(generated, file));
        }
        File.Copy(Path.Combine(s_app, "Program.cs"), Path.Combine(app2, "Program.cs"));
        string projectFile = Path.Combine(app2, "app.csproj");
        File.WriteAllText(projectFile, File.ReadAllText(Path.Combine(s_app, "app.csproj")));

        ProcessResult fresh = BuildIn(app2, "build", "cache-fresh-checkout", "-v:n");
        Assert.AreEqual(0, fresh.ExitCode, fresh.Tail());
        string[] lines = SummaryLines(fresh);
        Assert.HasCount(1, lines, fresh.Tail());
        StringAssert.EndsWith(lines[0], "(cached)", "a fresh checkout reuses the result: " + lines[0]);
        AssertCompressed(Path.Combine(app2, "bin", "Debug", "net10.0", "generated", "shapes.onnx"));

        ProcessResult clean = BuildIn(app2, "clean", "cache-clean");
        Assert.AreEqual(0, clean.ExitCode, clean.Tail());
        ProcessResult afterClean = BuildIn(app2, "build", "cache-after-clean", "--no-restore", "-v:n");
        Assert.AreEqual(0, afterClean.ExitCode, afterClean.Tail());
        lines = SummaryLines(afterClean);
        Assert.HasCount(1, lines, afterClean.Tail());
        StringAssert.EndsWith(lines[0], "(cached)", "a clean build reuses the result: " + lines[0]);

        // A second trained model and data set to change the inputs with.
        string other = Path.Combine(s_root, "generated-b");
        ShapesDataset.Generate(new GeneratorOptions
        {
            OutputDirectory = other, TrainCount = 1200, ValidationCount = 300, Hidden = 64, Epochs = 4, Seed = 7,
        });
        var changes = new (string Name, Action Apply)[]
        {
            ("model", () => File.Copy(Path.Combine(other, "shapes.onnx"), Path.Combine(generated, "shapes.onnx"), overwrite: true)),
            ("data", () =>
            {
                File.Copy(Path.Combine(other, "val-images-idx3-ubyte"), Path.Combine(generated, "val-images-idx3-ubyte"), overwrite: true);
                File.Copy(Path.Combine(other, "val-labels-idx1-ubyte"), Path.Combine(generated, "val-labels-idx1-ubyte"), overwrite: true);
            }),
            ("option", () => File.WriteAllText(projectFile, File.ReadAllText(projectFile).Replace("MinAgreement=\"0.95\"", "MinAgreement=\"0.95\" ValidationSamples=\"250\"", StringComparison.Ordinal))),
            ("budget", () => File.WriteAllText(projectFile, File.ReadAllText(projectFile).Replace("MaxAccuracyDrop=\"3.0\"", "MaxAccuracyDrop=\"4.0\"", StringComparison.Ordinal))),
        };
        string previous = lines[0];
        foreach ((string name, Action apply) in changes)
        {
            string before = File.ReadAllText(projectFile);
            apply();
            Assert.IsTrue(name is "model" or "data" || before != File.ReadAllText(projectFile), "the edit of the " + name + " took effect");

            ProcessResult changed = BuildIn(app2, "build", "cache-" + name, "--no-restore", "-v:n");
            Assert.AreEqual(0, changed.ExitCode, changed.Tail());
            lines = SummaryLines(changed);
            Assert.HasCount(1, lines, name + ": " + changed.Tail());
            if (name == "budget")
            {
                // A budget is checked against the cached measurements: nothing is compressed again, the numbers are the same.
                StringAssert.EndsWith(lines[0], "(cached)", "a budget-only change reuses the compressed model: " + lines[0]);
                Assert.AreEqual(Measured(previous), Measured(lines[0]), "the same measurements are printed");
            }
            else
            {
                Assert.IsFalse(lines[0].EndsWith("(cached)", StringComparison.Ordinal), "a changed " + name + " recompresses: " + lines[0]);
            }
            previous = lines[0];

            ProcessResult again = BuildIn(app2, "build", "cache-" + name + "-again", "--no-restore", "-v:d");
            Assert.AreEqual(0, again.ExitCode, again.Tail());
            StringAssert.Contains(again.Output, "Skipping target \"_CompressModelsCore\" because all output files are up-to-date", name);
            Assert.IsEmpty(SummaryLines(again), "one recompression per change (" + name + ")");
        }

        // The default location, without the environment variable: under the user's local application data.
        var noVariable = new Dictionary<string, string?>(s_environment) { ["COMPRESSONBUILD_CACHE"] = null };
        ProcessResult property = DotNetProcess.Run(app2, noVariable, Timeout,
            "msbuild", projectFile, "-nologo", "-nodeReuse:false", "-getProperty:CompressModelCacheDir");
        Assert.AreEqual(0, property.ExitCode, property.Tail());
        string expected = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData), "CompressOnBuild", "cache");
        Assert.AreEqual(expected, property.Output.Trim(), property.Tail());

        ProcessResult wipe = BuildIn(app2, "build", "cache-wipe", "--no-restore", "-t:CleanCompressModelCache");
        Assert.AreEqual(0, wipe.ExitCode, wipe.Tail());
        StringAssert.Contains(wipe.Output, "CompressOnBuild: removed", wipe.Tail());
    }

    /// <summary>The measured parts of a summary line: after "model -> output: ", without the budget verdict, report path and "(cached)".</summary>
    private static string Measured(string summary) => string.Join("; ", summary[(summary.IndexOf(".onnx: ", StringComparison.Ordinal) + 7)..]
        .Replace(" (cached)", "", StringComparison.Ordinal).Split("; ")
        .Where(p => !p.Contains("budget(s)", StringComparison.Ordinal) && !p.StartsWith("report ", StringComparison.Ordinal)));

    private static void AssertCompressed(string path)
    {
        Assert.IsTrue(File.Exists(path), $"{path} is missing");
        long original = new FileInfo(SourceModel).Length;
        long compressed = new FileInfo(path).Length;
        Assert.IsLessThan(original / 2, compressed, $"compressed {compressed} bytes vs original {original}");

        ModelProto model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(path));
        // Standard (MatMulInteger, QLinearMatMul, QuantizeLinear ...) or ORT contrib (DynamicQuantizeMatMul,
        // MatMulIntegerToFloat, QGemm ...) integer operators.
        bool hasIntegerOp = model.Graph.Node.Any(n =>
            n.OpType.Contains("Integer", StringComparison.Ordinal) || n.OpType.Contains("Quantize", StringComparison.Ordinal)
            || n.OpType.StartsWith("QLinear", StringComparison.Ordinal) || n.OpType == "QGemm");
        bool hasIntegerWeights = model.Graph.Initializer.Any(t =>
            t.DataType == (int)TensorProto.Types.DataType.Int8 || t.DataType == (int)TensorProto.Types.DataType.Uint8);
        Assert.IsTrue(hasIntegerOp && hasIntegerWeights,
            "expected integer operators and int8/uint8 weights, found ops: " + string.Join(", ", model.Graph.Node.Select(n => n.OpType)));
    }

    private static void AssertFloat16(string path)
    {
        Assert.IsTrue(File.Exists(path), $"{path} is missing");
        Assert.AreNotEqual(s_sourceHash, Hash(path), "the original model was shipped");
        long original = new FileInfo(SourceModel).Length;
        long compressed = new FileInfo(path).Length;
        Assert.IsLessThan(original * 6 / 10, compressed, $"float16: compressed {compressed} bytes vs original {original}");

        ModelProto model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(path));
        TensorProto[] weights = model.Graph.Initializer.Where(t => t.Dims.Aggregate(1L, (a, d) => a * d) > 16).ToArray();
        Assert.IsNotEmpty(weights);
        Assert.IsTrue(weights.All(t => t.DataType == (int)TensorProto.Types.DataType.Float16),
            "expected float16 weights, found: " + string.Join(", ", weights.Select(t => $"{t.Name}:{(TensorProto.Types.DataType)t.DataType}")));
    }

    private static string ProvidePackage(string feed)
    {
        if (Environment.GetEnvironmentVariable("COMPRESSONBUILD_TEST_PACKAGE") is { Length: > 0 } given)
        {
            Match m = Regex.Match(Path.GetFileName(given), @"^CompressOnBuild\.(.+)\.nupkg$", RegexOptions.IgnoreCase);
            Assert.IsTrue(File.Exists(given) && m.Success, $"COMPRESSONBUILD_TEST_PACKAGE='{given}' is not a CompressOnBuild .nupkg");
            File.Copy(given, Path.Combine(feed, $"CompressOnBuild.{m.Groups[1].Value}.nupkg"));
            return m.Groups[1].Value;
        }

        // Pack with the artifacts folder and configuration this test assembly was built with, so the worker and
        // its dependencies are normally already built.
        string binDir = Path.GetFullPath(AppContext.BaseDirectory).TrimEnd(Path.DirectorySeparatorChar);
        string configuration = Path.GetFileName(binDir);
        string? artifacts = Path.GetDirectoryName(Path.GetDirectoryName(Path.GetDirectoryName(binDir)));
        bool artifactsLayout = artifacts != null && Path.GetFileName(Path.GetDirectoryName(Path.GetDirectoryName(binDir))) == "bin";
        string artifactsPath = artifactsLayout ? artifacts! : Path.Combine(Corpus.RepoRoot, "artifacts");
        string config = artifactsLayout && configuration.StartsWith("release", StringComparison.OrdinalIgnoreCase) ? "Release" : "Debug";

        string version = "0.1.0-it." + DateTime.UtcNow.ToString("yyyyMMddHHmmssfff", System.Globalization.CultureInfo.InvariantCulture);
        ProcessResult pack = DotNetProcess.Run(Corpus.RepoRoot, new Dictionary<string, string?>(), Timeout,
            "pack", Path.Combine(Corpus.RepoRoot, "src", "CompressOnBuild.Tasks", "CompressOnBuild.Tasks.csproj"),
            "-c", config, "-nologo", "-nodeReuse:false", "-v:m",
            "-p:Version=" + version, "-p:PackageOutputPath=" + feed + Path.DirectorySeparatorChar, "-p:ArtifactsPath=" + artifactsPath);
        Assert.AreEqual(0, pack.ExitCode, "dotnet pack failed:\n" + pack.Tail());
        Assert.IsTrue(File.Exists(Path.Combine(feed, $"CompressOnBuild.{version}.nupkg")), pack.Tail());
        s_packedFromThisCheckout = true;
        return version;
    }

    private static void WriteApp(string version, string feed, string machinePackages)
    {
        string ortVersion = Regex.Match(
            File.ReadAllText(Path.Combine(Corpus.RepoRoot, "Directory.Packages.props")),
            @"<OnnxRuntimeVersion>([^<]+)</OnnxRuntimeVersion>").Groups[1].Value;
        Assert.IsFalse(string.IsNullOrEmpty(ortVersion), "OnnxRuntimeVersion not found in Directory.Packages.props");

        // Nothing above the temporary folder may shape this build.
        File.WriteAllText(Path.Combine(s_root, "Directory.Build.props"), "<Project />\n");
        File.WriteAllText(Path.Combine(s_root, "Directory.Build.targets"), "<Project />\n");
        File.WriteAllText(Path.Combine(s_root, "Directory.Packages.props"),
            "<Project><PropertyGroup><ManagePackageVersionsCentrally>false</ManagePackageVersionsCentrally></PropertyGroup></Project>\n");
        File.WriteAllText(Path.Combine(s_root, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <add key="compressonbuild-test-feed" value="{feed}" />
              </packageSources>
            </configuration>
            """);
        File.WriteAllText(Path.Combine(s_app, "app.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <ImplicitUsings>enable</ImplicitUsings>
                <Nullable>enable</Nullable>
                <RestoreAdditionalProjectFallbackFolders>{machinePackages}</RestoreAdditionalProjectFallbackFolders>
                <NuGetAudit>false</NuGetAudit>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="CompressOnBuild" Version="{version}" />
                <PackageReference Include="Microsoft.ML.OnnxRuntime" Version="{ortVersion}" />
                <PackageReference Include="System.Numerics.Tensors" Version="9.0.19" />
              </ItemGroup>
              <ItemGroup>
                <CompressModel Include="generated/shapes.onnx"
                               ValidationData="generated/val-images-idx3-ubyte"
                               Labels="generated/val-labels-idx1-ubyte"
                               MaxAccuracyDrop="3.0"
                               MinAgreement="0.95"
                               MaxSizeKB="$(TestMaxSizeKB)" />
                <!-- Per-runtime metadata (PublishForWindowsAndMacOS_...): Windows x64 ships float16. -->
                <CompressModel Update="generated/shapes.onnx" Condition="'$(RuntimeIdentifier)' == 'win-x64'" Quantization="Float16" />
                <!-- MisspelledBudget_...: a typo in a budget name. -->
                <CompressModel Update="generated/shapes.onnx" Condition="'$(TestTypo)' == 'true'" MinAgrement="0.999" />
              </ItemGroup>
            </Project>
            """);
        File.WriteAllText(Path.Combine(s_app, "Program.cs"), """
            using Microsoft.ML.OnnxRuntime;
            using Microsoft.ML.OnnxRuntime.Tensors;

            string model = Path.Combine(AppContext.BaseDirectory, "generated", "shapes.onnx");
            using var session = new InferenceSession(model);
            var input = new DenseTensor<float>(new[] { 2, 784 });
            using var results = session.Run(new[] { NamedOnnxValue.CreateFromTensor(session.InputMetadata.Keys.First(), input) });
            Console.WriteLine($"APP-OK {results.First().AsTensor<float>().Dimensions[1]} {new FileInfo(model).Length}");
            """);
    }

    private static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    [GeneratedRegex(@"^.*error CMPR0401.*$", RegexOptions.Multiline)]
    private static partial Regex ErrorLine();
}
