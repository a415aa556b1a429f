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

    /// <summary>
    /// A file of a large corpus model (not committed; restored by ../shared/corpus/large/fetch.sh, which build/test.sh
    /// runs first, and which runs here once per test process when the file is missing, e.g. for a filtered
    /// <c>dotnet test</c>): CORPUS_LARGE_DIR, else the fetch script's cache folder. Still missing: inconclusive locally,
    /// a failure under CI.
    /// </summary>
    public static string Large(string model, string file)
    {
        string path = LargePath(model, file);
        if (!File.Exists(path))
        {
            FetchLargeOnce();
        }
        if (!File.Exists(path))
        {
            string message = $"The large corpus file '{path}' is missing: run 'bash ../shared/corpus/large/fetch.sh' ({_fetchResult}).";
            if (string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase))
            {
                Assert.Fail(message + " CI must have it (build/test.sh fetches it).");
            }
            Assert.Inconclusive(message);
        }
        return path;
    }

    private static readonly object FetchLock = new();
    private static string? _fetchResult;

    /// <summary>Runs large/fetch.sh (idempotent: verifies, downloads only what is missing) at most once per process.</summary>
    private static void FetchLargeOnce()
    {
        lock (FetchLock)
        {
            if (_fetchResult != null)
            {
                return;
            }
            string script = Path.Combine(Root, "large", "fetch.sh");
            if (!File.Exists(script))
            {
                _fetchResult = "no " + script;
                return;
            }
            var psi = new System.Diagnostics.ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add(script);
            using var p = System.Diagnostics.Process.Start(psi)!;
            Task<string> err = p.StandardError.ReadToEndAsync();
            string output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            _fetchResult = $"fetch.sh ran here and exited {p.ExitCode}: {(output + err.Result).Trim().Split('\n').LastOrDefault()}";
        }
    }

    private static string LargePath(string model, string file)
    {
        RequireDirectory();
        string dir = Environment.GetEnvironmentVariable("CORPUS_LARGE_DIR") is { Length: > 0 } env ? env
            : Path.Combine(Environment.GetEnvironmentVariable("COMPRESSONBUILD_CORPUS_CACHE") is { Length: > 0 } cache ? cache
                : Path.Combine(Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg ? xdg
                    : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"), "compressonbuild-corpus"),
                "large", "models");
        return Path.Combine(dir, model, file);
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
