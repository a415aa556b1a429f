using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.Loader;
using System.Text.Json;
using CompressOnBuild.Core;
using CompressOnBuild.Core.IO;

namespace CompressOnBuild.Validation;

/// <summary>Where <see cref="OrtLoader"/> looks for ONNX Runtime.</summary>
public sealed class OrtLoaderOptions
{
    /// <summary>The app's obj/project.assets.json. When it lists Microsoft.ML.OnnxRuntime (or .Managed), that
    /// version is loaded from the assets file's package folders. Optional.</summary>
    public string? AssetsFile { get; init; }

    /// <summary>NuGet global packages folder. Default: NUGET_PACKAGES, else ~/.nuget/packages.</summary>
    public string? PackagesRoot { get; init; }

    /// <summary>Version used when the assets file names none. Default: <see cref="OrtLoader.CompiledVersion"/>.</summary>
    public string? FallbackVersion { get; init; }

    /// <summary>Runtime identifier of the native binaries; default: the current process's OS and architecture.</summary>
    public string? RuntimeIdentifier { get; init; }
}

/// <summary>What ONNX Runtime was (or would be) loaded, for the report.</summary>
public sealed class OrtInfo
{
    /// <summary>ORT package version, e.g. "1.31.1"; null when the host already had ORT and its version is unknown.</summary>
    public string? Version { get; init; }

    /// <summary>"app" (named by the app's assets file), "fallback" (the version this build was compiled against)
    /// or "host" (the process could already load ORT by itself, e.g. a test host).</summary>
    public required string Source { get; init; }

    /// <summary>Full path of Microsoft.ML.OnnxRuntime.dll.</summary>
    public string? ManagedPath { get; init; }

    /// <summary>Full path of the native onnxruntime library.</summary>
    public string? NativePath { get; init; }

    /// <summary>Runtime identifier used to pick the native library.</summary>
    public string? RuntimeIdentifier { get; init; }

    /// <summary>Package folder the files came from.</summary>
    public string? PackagesRoot { get; init; }
}

/// <summary>
/// Makes ONNX Runtime loadable in a process that does not ship it (the packaged CLI): resolves the version the
/// user's app uses (its project.assets.json) or the compiled-against fallback, then hooks assembly and native
/// library resolution to the NuGet package folders. Call <see cref="Initialize"/> before any ORT type is touched.
/// This class itself never references ORT types.
/// </summary>
public static class OrtLoader
{
    private const string ManagedAssemblyName = "Microsoft.ML.OnnxRuntime";
    private static readonly Lock Gate = new();
    private static OrtInfo? loaded;
    private static Assembly? managedAssembly;
    private static IntPtr nativeHandle;

    /// <summary>The ORT version this assembly was compiled against (from the OnnxRuntimeVersion MSBuild property).</summary>
    public static string CompiledVersion { get; } =
        typeof(OrtLoader).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .FirstOrDefault(a => a.Key == "OnnxRuntimeVersion")?.Value ?? "0.0.0";

    /// <summary>The result of the first successful <see cref="Initialize"/>, or null.</summary>
    public static OrtInfo? Current
    {
        get { lock (Gate) { return loaded; } }
    }

    /// <summary>Resolves ORT and hooks loading. Idempotent: later calls return the first result.</summary>
    /// <exception cref="CompressException">OrtNotLoadable when the files are missing or cannot be loaded.</exception>
    public static OrtInfo Initialize(OrtLoaderOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        lock (Gate)
        {
            if (loaded != null)
            {
                return loaded;
            }
            OrtTelemetry.DisableForThisProcess();
            string? hostPath = HostManagedPath();
            if (hostPath != null)
            {
                loaded = new OrtInfo
                {
                    Source = "host",
                    ManagedPath = hostPath,
                    Version = FileVersionOf(hostPath),
                    RuntimeIdentifier = CurrentRuntimeIdentifier(),
                };
                return loaded;
            }
            OrtInfo info = Resolve(options);
            DisableTelemetry();
            try
            {
                AssemblyLoadContext.Default.Resolving += OnResolving;
                managedAssembly = AssemblyLoadContext.Default.LoadFromAssemblyPath(info.ManagedPath!);
                nativeHandle = NativeLibrary.Load(info.NativePath!);
                // Newer ORT registers its own resolver (which looks next to the managed dll); turn it off when the
                // switch exists, then register ours. Reflection keeps this working with ORT versions without it.
                PropertyInfo? disable = managedAssembly.GetType("Microsoft.ML.OnnxRuntime.OrtEnv")
                    ?.GetProperty("DisableDllImportResolver", BindingFlags.Public | BindingFlags.Static);
                disable?.SetValue(null, true);
                try
                {
                    NativeLibrary.SetDllImportResolver(managedAssembly, ResolveNative);
                }
                catch (InvalidOperationException)
                {
                    // A resolver was already registered; the library is loaded by path above, which is the best left.
                }
            }
            catch (Exception e) when (e is IOException or BadImageFormatException or DllNotFoundException
                or TargetInvocationException or UnauthorizedAccessException)
            {
                throw new CompressException(e, DiagnosticCodes.OrtNotLoadable, info.ManagedPath + ", " + info.NativePath, e.Message);
            }
            loaded = info;
            return loaded;
        }
    }

    /// <summary>
    /// ONNX Runtime (1.29 and later on Linux and macOS) writes a telemetry database and device id under
    /// ~/.cache/Microsoft/DeveloperTools/.onnxruntime and a .ses file in TMPDIR when its environment is created, and
    /// uploads events. ORT_DISABLE_TELEMETRY=1 in the process environment (before that moment) stops all of it; the
    /// API switch (DisableTelemetryEvents) comes too late, after the files are written. A user's own setting wins.
    /// </summary>
    private static void DisableTelemetry() => NativeEnvironment.SetIfUnset("ORT_DISABLE_TELEMETRY", "1");

    /// <summary>Computes which ORT files would be loaded, without loading anything.</summary>
    /// <exception cref="CompressException">OrtNotLoadable when the assets file is unreadable or the files are missing.</exception>
    public static OrtInfo Resolve(OrtLoaderOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        string rid = options.RuntimeIdentifier ?? CurrentRuntimeIdentifier();
        string? version = null;
        List<string> roots = [];
        List<string> nativePackages = [];
        string? managedPackage = null;
        string source = "fallback";
        if (!string.IsNullOrEmpty(options.AssetsFile) && File.Exists(options.AssetsFile))
        {
            AssetsInfo assets = ReadAssets(options.AssetsFile);
            if (assets.Version != null)
            {
                (version, roots, nativePackages, managedPackage) = (assets.Version, assets.Roots, assets.NativePackages, assets.ManagedPackage);
                source = "app";
            }
        }
        string defaultRoot = options.PackagesRoot ?? DefaultPackagesRoot();
        if (version == null)
        {
            version = options.FallbackVersion ?? CompiledVersion;
            roots = [defaultRoot];
        }
        else if (!roots.Contains(defaultRoot))
        {
            roots.Add(defaultRoot);
        }

        string lowerVersion = version.ToLowerInvariant();
        managedPackage ??= "microsoft.ml.onnxruntime.managed/" + lowerVersion;
        if (!nativePackages.Contains("microsoft.ml.onnxruntime/" + lowerVersion))
        {
            nativePackages.Add("microsoft.ml.onnxruntime/" + lowerVersion);
        }
        string? managedDir = null;
        string? nativeFile = null;
        string? usedRoot = null;
        foreach (string root in roots)
        {
            managedDir ??= BestLibFolder(Path.Combine(root, managedPackage, "lib"));
            foreach (string package in nativePackages)
            {
                string native = Path.Combine(root, package, "runtimes", rid, "native", NativeFileName(rid));
                if (nativeFile == null && File.Exists(native))
                {
                    nativeFile = native;
                    usedRoot = root;
                }
            }
        }
        string where = $"{source} version {version} in {string.Join(Path.PathSeparator, roots)}";
        if (managedDir == null)
        {
            throw new CompressException(DiagnosticCodes.OrtNotLoadable, where,
                $"package microsoft.ml.onnxruntime.managed/{lowerVersion} with a usable lib folder was not found; restore the app or set the packages folder");
        }
        if (nativeFile == null)
        {
            throw new CompressException(DiagnosticCodes.OrtNotLoadable, where,
                $"package microsoft.ml.onnxruntime/{lowerVersion} has no native library for '{rid}' ({NativeFileName(rid)})");
        }
        return new OrtInfo
        {
            Version = version,
            Source = source,
            ManagedPath = Path.Combine(managedDir, ManagedAssemblyName + ".dll"),
            NativePath = nativeFile,
            RuntimeIdentifier = rid,
            PackagesRoot = usedRoot,
        };
    }

    /// <summary>linux-x64, linux-arm64, win-x64, win-arm64, osx-arm64 or osx-x64 for this process.</summary>
    public static string CurrentRuntimeIdentifier()
    {
        string os = OperatingSystem.IsWindows() ? "win" : OperatingSystem.IsMacOS() ? "osx" : "linux";
        string arch = RuntimeInformation.ProcessArchitecture switch
        {
            Architecture.Arm64 => "arm64",
            Architecture.X86 => "x86",
            Architecture.Arm => "arm",
            _ => "x64",
        };
        return os + "-" + arch;
    }

    internal static string NativeFileName(string rid) =>
        rid.StartsWith("win", StringComparison.Ordinal) ? "onnxruntime.dll"
        : rid.StartsWith("osx", StringComparison.Ordinal) ? "libonnxruntime.dylib"
        : "libonnxruntime.so";

    private static string DefaultPackagesRoot()
    {
        string? env = Environment.GetEnvironmentVariable("NUGET_PACKAGES");
        if (!string.IsNullOrEmpty(env))
        {
            return env;
        }
        return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
    }

    /// <summary>What a project.assets.json says about ORT: the version (of Microsoft.ML.OnnxRuntime.Managed, else of
    /// the native package), its package folders, and the package paths of every native ORT package (CPU, GPU, DirectML, ...).</summary>
    internal sealed record AssetsInfo(string? Version, List<string> Roots, List<string> NativePackages, string? ManagedPackage);

    internal static AssetsInfo ReadAssets(string assetsFile)
    {
        try
        {
            using FileStream stream = File.OpenRead(assetsFile);
            using JsonDocument doc = JsonDocument.Parse(stream);
            List<string> roots = [];
            if (doc.RootElement.TryGetProperty("packageFolders", out JsonElement folders) && folders.ValueKind == JsonValueKind.Object)
            {
                foreach (JsonProperty folder in folders.EnumerateObject())
                {
                    roots.Add(folder.Name.TrimEnd('/', '\\'));
                }
            }
            string? managed = null, managedPath = null, native = null;
            List<string> nativePaths = [];
            if (doc.RootElement.TryGetProperty("libraries", out JsonElement libraries) && libraries.ValueKind == JsonValueKind.Object)
            {
                foreach (JsonProperty library in libraries.EnumerateObject())
                {
                    int slash = library.Name.IndexOf('/', StringComparison.Ordinal);
                    if (slash <= 0 || !library.Name.StartsWith(ManagedAssemblyName, StringComparison.OrdinalIgnoreCase))
                    {
                        continue;
                    }
                    string id = library.Name[..slash];
                    string version = library.Name[(slash + 1)..];
                    string path = library.Value.ValueKind == JsonValueKind.Object && library.Value.TryGetProperty("path", out JsonElement p)
                        && p.GetString() is { Length: > 0 } given ? given : library.Name.ToLowerInvariant();
                    if (id.Equals(ManagedAssemblyName + ".Managed", StringComparison.OrdinalIgnoreCase))
                    {
                        (managed, managedPath) = (version, path);
                    }
                    else if (id.Equals(ManagedAssemblyName, StringComparison.OrdinalIgnoreCase))
                    {
                        native = version;
                        nativePaths.Insert(0, path);
                    }
                    else if (!id.EndsWith(".Extensions", StringComparison.OrdinalIgnoreCase))
                    {
                        // Microsoft.ML.OnnxRuntime.Gpu(.Linux/.Windows), .DirectML, ...: other native builds.
                        native ??= version;
                        nativePaths.Add(path);
                    }
                }
            }
            return new AssetsInfo(managed ?? native, roots, nativePaths, managedPath);
        }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException or InvalidOperationException)
        {
            throw new CompressException(e, DiagnosticCodes.OrtNotLoadable, assetsFile, "the assets file could not be read: " + e.Message);
        }
    }

    /// <summary>The best lib/&lt;tfm&gt; folder holding Microsoft.ML.OnnxRuntime.dll for this runtime: the highest
    /// plain netN.M not newer than the running .NET, else netstandard2.1, else netstandard2.0.</summary>
    internal static string? BestLibFolder(string libDir)
    {
        if (!Directory.Exists(libDir))
        {
            return null;
        }
        int runningMajor = Environment.Version.Major;
        string? best = null;
        Version bestVersion = new(0, 0);
        foreach (string dir in Directory.GetDirectories(libDir))
        {
            if (!File.Exists(Path.Combine(dir, ManagedAssemblyName + ".dll")))
            {
                continue;
            }
            string tfm = Path.GetFileName(dir);
            Version? rank = null;
            if (tfm.StartsWith("netstandard", StringComparison.Ordinal) && System.Version.TryParse(tfm["netstandard".Length..], out Version? ns))
            {
                rank = new Version(0, ns.Major * 10 + ns.Minor);
            }
            else if (tfm.StartsWith("net", StringComparison.Ordinal) && !tfm.Contains('-', StringComparison.Ordinal)
                && System.Version.TryParse(tfm[3..], out Version? net) && net.Major >= 5 && net.Major <= runningMajor)
            {
                rank = new Version(net.Major, net.Minor);
            }
            if (rank != null && rank > bestVersion)
            {
                bestVersion = rank;
                best = dir;
            }
        }
        return best;
    }

    private static string? HostManagedPath()
    {
        if (AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES") is string tpa)
        {
            foreach (string path in tpa.Split(Path.PathSeparator))
            {
                if (Path.GetFileName(path).Equals(ManagedAssemblyName + ".dll", StringComparison.OrdinalIgnoreCase))
                {
                    return path;
                }
            }
        }
        return AssemblyLoadContext.Default.Assemblies.FirstOrDefault(a => a.GetName().Name == ManagedAssemblyName)?.Location;
    }

    private static string? FileVersionOf(string path)
    {
        try
        {
            return System.Diagnostics.FileVersionInfo.GetVersionInfo(path).ProductVersion;
        }
        catch (IOException)
        {
            return null;
        }
    }

    private static Assembly? OnResolving(AssemblyLoadContext context, AssemblyName name) =>
        name.Name == ManagedAssemblyName ? managedAssembly : null;

    private static IntPtr ResolveNative(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (nativeHandle != IntPtr.Zero && (libraryName == "onnxruntime" || libraryName.StartsWith("libonnxruntime", StringComparison.Ordinal)
            || libraryName.StartsWith("onnxruntime.", StringComparison.Ordinal)))
        {
            return nativeHandle;
        }
        return IntPtr.Zero;
    }
}
