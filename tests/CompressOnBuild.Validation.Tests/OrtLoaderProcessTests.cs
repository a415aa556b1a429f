using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text.Json.Nodes;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Validation.Tests;

/// <summary>
/// OrtLoader end to end in a fresh process whose deps.json lists no ONNX Runtime (like the packaged CLI): this test
/// assembly is copied without ORT's files, started again with a stripped deps file and runs only <see cref="Child_InitializeThenRun"/>.
/// </summary>
[TestClass]
public sealed class OrtLoaderProcessTests
{
    private const string OutVariable = "COB_ORT_CHILD_OUT";
    private const string ModelVariable = "COB_ORT_CHILD_MODEL";

    [TestMethod]
    [Timeout(120_000, CooperativeCancellation = true)]
    public void FreshProcess_WithoutOrtInDeps_LoadsItFromTheNuGetCache()
    {
        string assembly = typeof(OrtLoaderProcessTests).Assembly.Location;
        string deps = Path.ChangeExtension(assembly, ".deps.json");
        using TempDir dir = new();

        JsonNode root = JsonNode.Parse(File.ReadAllText(deps))!;
        int removed = 0;
        foreach ((string _, JsonNode? target) in root["targets"]!.AsObject())
        {
            foreach ((string lib, JsonNode? entry) in target!.AsObject())
            {
                if (lib.StartsWith("Microsoft.ML.OnnxRuntime", StringComparison.Ordinal))
                {
                    removed += entry!.AsObject().Remove("runtime") ? 1 : 0;
                    removed += entry.AsObject().Remove("runtimeTargets") ? 1 : 0;
                    removed += entry.AsObject().Remove("native") ? 1 : 0;
                }
            }
        }
        Assert.AreEqual(2, removed, "the test host's deps.json should list ORT's managed and native assets");
        // A copy of this test's output folder without ORT's files, with the stripped deps.json.
        string app = dir.File("app/x");
        app = Path.GetDirectoryName(app)!;
        foreach (string file in Directory.GetFiles(Path.GetDirectoryName(assembly)!))
        {
            if (!Path.GetFileName(file).StartsWith("Microsoft.ML.OnnxRuntime", StringComparison.Ordinal))
            {
                File.Copy(file, Path.Combine(app, Path.GetFileName(file)));
            }
        }
        File.WriteAllText(Path.Combine(app, Path.GetFileName(deps)), root.ToJsonString());
        string copy = Path.Combine(app, Path.GetFileName(assembly));

        string model = dir.File("add.onnx");
        var g = new CompressOnBuild.Onnx.GraphProto { Name = "g" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 4));
        g.Output.Add(TinyModels.FloatValue("y", 1, 4));
        g.Initializer.Add(CompressOnBuild.Core.Onnx.TensorUtil.FromFloats("c", [10f, 20f, 30f, 40f], 4));
        g.Node.Add(TinyModels.Node("Add", ["x", "c"], ["y"]));
        TestFiles.Save(TinyModels.Model(g), model);

        string output = dir.File("child.txt");
        string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";
        var psi = new ProcessStartInfo(dotnet)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in new[] { "exec", copy,
            "--filter", "FullyQualifiedName~OrtLoaderProcessTests.Child_InitializeThenRun", "--results-directory", dir.File("results") })
        {
            psi.ArgumentList.Add(a);
        }
        psi.Environment[OutVariable] = output;
        psi.Environment[ModelVariable] = model;
        using Process child = Process.Start(psi)!;
        Task<string> stdout = child.StandardOutput.ReadToEndAsync();
        Task<string> stderr = child.StandardError.ReadToEndAsync();
        child.WaitForExit();
        string log = stdout.Result + stderr.Result;
        Assert.AreEqual(0, child.ExitCode, log);
        Assert.IsTrue(File.Exists(output), log);

        string[] fields = File.ReadAllText(output).Split('|');
        Assert.AreEqual("fallback", fields[0]);
        Assert.AreEqual(OrtLoader.CompiledVersion, fields[1]);
        // The ORT assembly came from the NuGet cache, not from this test's output folder.
        StringAssert.Contains(fields[2], Path.Combine("microsoft.ml.onnxruntime.managed", OrtLoader.CompiledVersion));
        Assert.AreEqual(fields[2], fields[3], "loaded assembly location");
        StringAssert.Contains(fields[4], Path.Combine("microsoft.ml.onnxruntime", OrtLoader.CompiledVersion, "runtimes"));
        Assert.AreEqual("11,22,33,44", fields[5]);
    }

    /// <summary>Runs only inside the child process started above; inconclusive (skipped) in a normal run.</summary>
    [TestMethod]
    public void Child_InitializeThenRun()
    {
        string? output = Environment.GetEnvironmentVariable(OutVariable);
        if (output == null)
        {
            Assert.Inconclusive("Runs only as the child process of FreshProcess_WithoutOrtInDeps_LoadsItFromTheNuGetCache.");
        }
        OrtInfo info = OrtLoader.Initialize(new OrtLoaderOptions());
        string result = RunModel(Environment.GetEnvironmentVariable(ModelVariable)!);
        string loadedFrom = AppDomain.CurrentDomain.GetAssemblies().Single(a => a.GetName().Name == "Microsoft.ML.OnnxRuntime").Location;
        File.WriteAllText(output, string.Join("|", info.Source, info.Version, info.ManagedPath, loadedFrom, info.NativePath, result));
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static string RunModel(string model)
    {
        using ModelRunner runner = new(model);
        TensorData y = runner.Run([new TensorData([1f, 2f, 3f, 4f], [1, 4])])[0];
        return string.Join(",", y.Data);
    }
}
