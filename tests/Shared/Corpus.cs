namespace CompressOnBuild.Tests;

/// <summary>
/// The shared third-party corpus (../shared/corpus next to the repository). Tests that need it call
/// <see cref="RequireDirectory"/>: absent locally they are reported inconclusive with a clear reason; under
/// CI (CI=true) an absent corpus is a failure, because CI always has it.
/// </summary>
internal static class Corpus
{
    public static string RepoRoot { get; } = FindRepoRoot();

    public static string Root { get; } =
        Environment.GetEnvironmentVariable("COMPRESSONBUILD_CORPUS") is { Length: > 0 } env
            ? Path.GetFullPath(env)
            : Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared", "corpus"));

    public static bool Available => File.Exists(Path.Combine(Root, "MANIFEST.md"));

    public static string RequireDirectory()
    {
        if (!Available)
        {
            string message = $"The shared corpus was not found at '{Root}' (expected ../shared/corpus beside the repository, or COMPRESSONBUILD_CORPUS).";
            if (string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase))
            {
                Assert.Fail(message + " CI must have it.");
            }
            Assert.Inconclusive(message);
        }
        return Root;
    }

    public static string Model(string id) => Path.Combine(RequireDirectory(), "models", id, "model.onnx");

    public static IEnumerable<string> AllModelIds()
    {
        string dir = Path.Combine(RequireDirectory(), "models");
        return Directory.GetDirectories(dir).Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal);
    }

    public static string Dataset(string id, string file) => Path.Combine(RequireDirectory(), "datasets", id, file);

    private static string FindRepoRoot()
    {
        foreach (var a in typeof(Corpus).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyMetadataAttribute), false).Cast<System.Reflection.AssemblyMetadataAttribute>())
        {
            if (a.Key == "CompressOnBuild.RepoRoot" && a.Value is { } root && File.Exists(Path.Combine(root, "CompressOnBuild.sln")))
            {
                return root;
            }
        }
        string? dir = AppContext.BaseDirectory;
        while (dir != null)
        {
            if (File.Exists(Path.Combine(dir, "CompressOnBuild.sln")))
            {
                return dir;
            }
            dir = Path.GetDirectoryName(dir);
        }
        throw new InvalidOperationException("CompressOnBuild.sln was not found above " + AppContext.BaseDirectory);
    }
}
