using System.Text.Json;
using CompressOnBuild.Core;

namespace CompressOnBuild.Validation.Tests;

[TestClass]
public sealed class OrtLoaderTests
{
    private static string PackagesRoot()
    {
        string? env = Environment.GetEnvironmentVariable("NUGET_PACKAGES");
        string root = !string.IsNullOrEmpty(env) ? env : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        if (!Directory.Exists(Path.Combine(root, "microsoft.ml.onnxruntime", OrtLoader.CompiledVersion)))
        {
            Assert.Inconclusive($"ORT {OrtLoader.CompiledVersion} is not in the NuGet cache '{root}' (restore first).");
        }
        return root;
    }

    private static string WriteAssets(TempDir dir, string packagesRoot, params string[] libraries)
    {
        var libs = libraries.ToDictionary(l => l, l => new { type = "package", path = l.ToLowerInvariant() });
        var doc = new Dictionary<string, object>
        {
            ["version"] = 3,
            ["libraries"] = libs,
            ["packageFolders"] = new Dictionary<string, object> { [packagesRoot + "/"] = new() },
        };
        string path = dir.File("obj/project.assets.json");
        File.WriteAllText(path, JsonSerializer.Serialize(doc));
        return path;
    }

    [TestMethod]
    public void CompiledVersion_ComesFromDirectoryPackagesProps()
    {
        string props = File.ReadAllText(Path.Combine(CompressOnBuild.Tests.Corpus.RepoRoot, "Directory.Packages.props"));
        StringAssert.Contains(props, $"<OnnxRuntimeVersion>{OrtLoader.CompiledVersion}</OnnxRuntimeVersion>");
    }

    [TestMethod]
    public void Resolve_AppAssetsFile_UsesItsVersionAndPackageFolder()
    {
        string root = PackagesRoot();
        using TempDir dir = new();
        string v = OrtLoader.CompiledVersion;
        string assets = WriteAssets(dir, root, $"Microsoft.ML.OnnxRuntime/{v}", $"Microsoft.ML.OnnxRuntime.Managed/{v}", "Newtonsoft.Json/13.0.3");
        // The packages root passed explicitly is a decoy: the assets file's folder must win.
        OrtInfo info = OrtLoader.Resolve(new OrtLoaderOptions { AssetsFile = assets, PackagesRoot = dir.File("decoy"), FallbackVersion = "0.0.1", RuntimeIdentifier = "linux-x64" });
        Assert.AreEqual("app", info.Source);
        Assert.AreEqual(v, info.Version);
        Assert.IsTrue(File.Exists(info.ManagedPath), info.ManagedPath);
        Assert.IsTrue(File.Exists(info.NativePath), info.NativePath);
        StringAssert.EndsWith(info.NativePath, Path.Combine("runtimes", "linux-x64", "native", "libonnxruntime.so"));
        StringAssert.Contains(info.ManagedPath, Path.Combine("lib", "net8.0"));
        Assert.AreEqual(root.TrimEnd('/'), info.PackagesRoot);

        OrtInfo win = OrtLoader.Resolve(new OrtLoaderOptions { AssetsFile = assets, RuntimeIdentifier = "win-x64" });
        StringAssert.EndsWith(win.NativePath, Path.Combine("win-x64", "native", "onnxruntime.dll"));
        OrtInfo mac = OrtLoader.Resolve(new OrtLoaderOptions { AssetsFile = assets, RuntimeIdentifier = "osx-arm64" });
        StringAssert.EndsWith(mac.NativePath, "libonnxruntime.dylib");
    }

    [TestMethod]
    public void Resolve_OnlyNativePackageListed_UsesThatVersion()
    {
        string root = PackagesRoot();
        using TempDir dir = new();
        string assets = WriteAssets(dir, root, $"Microsoft.ML.OnnxRuntime/{OrtLoader.CompiledVersion}");
        OrtInfo info = OrtLoader.Resolve(new OrtLoaderOptions { AssetsFile = assets, FallbackVersion = "0.0.1" });
        Assert.AreEqual("app", info.Source);
        Assert.AreEqual(OrtLoader.CompiledVersion, info.Version);
    }

    [TestMethod]
    public void Resolve_GpuNativePackage_IsFoundThroughItsAssetsPath()
    {
        using TempDir dir = new();
        string root = dir.File("packages/x");
        root = Path.GetDirectoryName(root)!;
        File.WriteAllText(dir.File("packages/microsoft.ml.onnxruntime.managed/1.2.3/lib/net8.0/Microsoft.ML.OnnxRuntime.dll"), "fake");
        File.WriteAllText(dir.File("packages/microsoft.ml.onnxruntime.gpu.linux/1.2.3/runtimes/linux-x64/native/libonnxruntime.so"), "fake");
        string assets = WriteAssets(dir, root, "Microsoft.ML.OnnxRuntime.Managed/1.2.3", "Microsoft.ML.OnnxRuntime.Gpu/1.2.3", "Microsoft.ML.OnnxRuntime.Gpu.Linux/1.2.3");
        OrtInfo info = OrtLoader.Resolve(new OrtLoaderOptions { AssetsFile = assets, PackagesRoot = dir.File("none"), RuntimeIdentifier = "linux-x64" });
        Assert.AreEqual("app", info.Source);
        Assert.AreEqual("1.2.3", info.Version);
        StringAssert.Contains(info.NativePath, "microsoft.ml.onnxruntime.gpu.linux");
        StringAssert.Contains(info.ManagedPath, Path.Combine("microsoft.ml.onnxruntime.managed", "1.2.3", "lib", "net8.0"));
    }

    [TestMethod]
    public void Resolve_MissingVersion_IsOrtNotLoadable()
    {
        string root = PackagesRoot();
        using TempDir dir = new();
        string assets = WriteAssets(dir, root, "Microsoft.ML.OnnxRuntime/9.9.9");
        CompressException e = Assert.ThrowsExactly<CompressException>(() => OrtLoader.Resolve(new OrtLoaderOptions { AssetsFile = assets, PackagesRoot = root }));
        Assert.AreEqual(DiagnosticCodes.OrtNotLoadable, e.Code);
        StringAssert.Contains(e.Message, "9.9.9");

        CompressException noRid = Assert.ThrowsExactly<CompressException>(() =>
            OrtLoader.Resolve(new OrtLoaderOptions { PackagesRoot = root, RuntimeIdentifier = "freebsd-x64" }));
        StringAssert.Contains(noRid.Message, "freebsd-x64");
    }

    [TestMethod]
    public void Resolve_NoAssets_FallsBackToCompiledVersion()
    {
        string root = PackagesRoot();
        OrtInfo info = OrtLoader.Resolve(new OrtLoaderOptions { PackagesRoot = root, AssetsFile = "/nonexistent/project.assets.json" });
        Assert.AreEqual("fallback", info.Source);
        Assert.AreEqual(OrtLoader.CompiledVersion, info.Version);
        Assert.IsTrue(File.Exists(info.NativePath));

        // An assets file without ORT also falls back.
        using TempDir dir = new();
        string assets = WriteAssets(dir, dir.File("elsewhere"), "Newtonsoft.Json/13.0.3");
        Assert.AreEqual("fallback", OrtLoader.Resolve(new OrtLoaderOptions { PackagesRoot = root, AssetsFile = assets }).Source);
    }

    [TestMethod]
    public void Resolve_CorruptAssets_IsOrtNotLoadable()
    {
        using TempDir dir = new();
        string assets = dir.File("project.assets.json");
        File.WriteAllText(assets, "{ not json");
        CompressException e = Assert.ThrowsExactly<CompressException>(() => OrtLoader.Resolve(new OrtLoaderOptions { AssetsFile = assets }));
        Assert.AreEqual(DiagnosticCodes.OrtNotLoadable, e.Code);
        StringAssert.Contains(e.Message, assets);
    }

    [TestMethod]
    public void BestLibFolder_PrefersNewestPlainNet()
    {
        using TempDir dir = new();
        foreach (string tfm in new[] { "netstandard2.0", "net8.0", "net9.0-android35.0", "net99.0" })
        {
            File.WriteAllText(dir.File($"lib/{tfm}/Microsoft.ML.OnnxRuntime.dll"), "x");
        }
        StringAssert.EndsWith(OrtLoader.BestLibFolder(dir.File("lib")), "net8.0");
        Assert.IsNull(OrtLoader.BestLibFolder(dir.File("nothing")));
    }

    [TestMethod]
    public void Initialize_InTestHost_LeavesTheHostsOrtAlone()
    {
        OrtInfo info = OrtLoader.Initialize(new OrtLoaderOptions { PackagesRoot = "/nonexistent" });
        Assert.AreEqual("host", info.Source);
        Assert.IsTrue(File.Exists(info.ManagedPath), info.ManagedPath);
        Assert.AreSame(info, OrtLoader.Current);
    }
}
