using System.Globalization;
using System.Text.Json.Nodes;
using CompressOnBuild.Core;
using CompressOnBuild.Core.Cache;
using CompressOnBuild.Validation;

namespace CompressOnBuild.Cli;

/// <summary>
/// The out-of-process worker behind the MSBuild task (and a tool on its own): <c>compress</c> and <c>inspect</c>.
/// Diagnostics go to stdout in MSBuild's canonical form ("file : error CMPR0401 : text"), one summary line per model
/// starts with "CompressOnBuild: ". Exit codes: 0 ok, 1 budget broken, 2 bad input or usage, 3 internal error.
/// </summary>
public static class Program
{
    private static readonly Lock OutputGate = new();

    public static int Main(string[] args)
    {
        // Before anything can load ONNX Runtime: a build step leaves no telemetry files behind.
        OrtTelemetry.DisableForThisProcess();
        Core.IO.FileSizeLimit.ReportInsteadOfDying();
        // Before ONNX Runtime allocates: each session's big buffers are returned to the system when it closes.
        Core.IO.ProcessMemory.FixMmapThreshold();
        var stdout = Console.Out;
        return Run(args, stdout);
    }

    private static readonly string[] Commands = ["compress", "inspect", "cache"];

    public static int Run(string[] args, TextWriter output)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(output);
        try
        {
            List<string> expanded = CommandLine.ExpandResponseFiles(args);
            if (expanded.Count == 0 || expanded[0] is "-h" or "--help" or "help")
            {
                output.WriteLine(Help.Text);
                return expanded.Count == 0 ? 2 : 0;
            }
            if (expanded[0] is "--version")
            {
                output.WriteLine(ToolInfo.Version);
                return 0;
            }
            string command = expanded[0];
            List<string> rest = expanded.Skip(1).ToList();
            if (rest.Count > 0 && rest[0] is "-h" or "--help")
            {
                output.WriteLine(Help.Text);
                return 0;
            }
            return command switch
            {
                "compress" => Compress(rest, output),
                "inspect" => Inspect.Run(rest, output),
                "cache" => CacheCommand(rest, output),
                _ => throw CommandLine.Usage($"unknown command '{command}'; "
                    + (OptionTable.Suggest(command, Commands) is { } near ? $"did you mean '{near}'? " : "")
                    + "use 'compress', 'inspect' or 'cache' (see --help)"),
            };
        }
        catch (CompressException e)
        {
            WriteDiagnostic(output, new Diagnostic(Severity.Error, e.Code, e.File ?? "CompressOnBuild", StripCode(e)));
            return e.ExitCode;
        }
#pragma warning disable CA1031 // The worker must turn every crash into a coded error for the build.
        catch (Exception e)
#pragma warning restore CA1031
        {
            WriteDiagnostic(output, new Diagnostic(Severity.Error, DiagnosticCodes.InternalError, "CompressOnBuild",
                DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.InternalError, "(command line)", e.GetType().Name + ": " + e.Message)));
            return 3;
        }
    }

    private static int Compress(List<string> args, TextWriter output)
    {
        (GlobalOptions global, List<ItemRequest> requests) = CommandLine.ParseCompress(args);

        // Validate every item before any work, so option mistakes surface together and fast.
        var results = new List<ItemResult?>();
        int exit = 0;
        var seenOutputs = new Dictionary<string, string>(OperatingSystem.IsLinux() ? StringComparer.Ordinal : StringComparer.OrdinalIgnoreCase);
        foreach (ItemRequest req in requests)
        {
            try
            {
                ItemSettings settings = ItemSettings.From(req);
                Budgets.CheckMeasurable(settings);
                string outFull = Path.GetFullPath(settings.Output);
                if (seenOutputs.TryGetValue(outFull, out string? other))
                {
                    throw CompressException.ForFile(settings.Model, DiagnosticCodes.OutputConflict, other, settings.Model, settings.Output);
                }
                seenOutputs[outFull] = settings.Model;
                results.Add(new ItemResult { Settings = settings });
            }
            catch (CompressException e)
            {
                WriteDiagnostic(output, new Diagnostic(Severity.Error, e.Code, e.File ?? req.Model, StripCode(e)));
                exit = Worst(exit, e.ExitCode);
                results.Add(null);
            }
        }
        if (exit != 0)
        {
            return exit;
        }

        OrtInfo? ort = null;
        var ortGate = new Lock();
        OrtInfo EnsureOrt()
        {
            lock (ortGate)
            {
                return ort ??= OrtLoader.Initialize(new OrtLoaderOptions
                {
                    AssetsFile = global.OnnxRuntimeAssets,
                    PackagesRoot = global.NuGetPackages,
                });
            }
        }

        CompressionCache? sharedCache = global.CacheDir == null ? null : new CompressionCache(global.CacheDir);
        CompressionCacheAdapter? cache = sharedCache == null ? null : new CompressionCacheAdapter(sharedCache, d => WriteDiagnostic(output, d));
        var codes = new int[results.Count];
        Parallel.For(0, results.Count, new ParallelOptions { MaxDegreeOfParallelism = global.MaxParallelism }, i =>
        {
            ItemResult r = results[i]!;
            codes[i] = ProcessItem(r, global, EnsureOrt, cache, () => ort, output);
        });
        sharedCache?.Trim(global.CacheMaxBytes);
        if (global.SummaryMarkdown != null)
        {
            var sb = new System.Text.StringBuilder("## CompressOnBuild\n\n" + ReportRenderers.MarkdownHeader + "\n");
            foreach (ItemResult? r in results)
            {
                if (r?.ReportJson != null)
                {
                    sb.AppendLine(ReportRenderers.MarkdownRow(r.ReportJson));
                }
            }
            Core.Onnx.AtomicFile.WriteAllBytes(global.SummaryMarkdown, System.Text.Encoding.UTF8.GetBytes(sb.ToString()));
        }
        return codes.Aggregate(0, Worst);
    }

    private static int ProcessItem(ItemResult r, GlobalOptions global, Func<OrtInfo> ensureOrt, CompressionCacheAdapter? cache, Func<OrtInfo?> currentOrt, TextWriter output)
    {
        ItemSettings s = r.Settings;
        try
        {
            Compressor.Run(r, global, ensureOrt, cache);
            if (Compressor.CalibratesOnValidationData(s))
            {
                r.Diagnostics.Insert(0, new Diagnostic(Severity.Warning, DiagnosticCodes.CalibrationIsValidationData, s.Model,
                    DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.CalibrationIsValidationData, s.Model, s.ValidationData)));
            }
            int code = 0;
            lock (OutputGate)
            {
                foreach (Diagnostic d in r.Diagnostics)
                {
                    WriteDiagnostic(output, d);
                }
                // Also on a cache hit: the budgets were re-checked against the cached measurements with this build's limits.
                foreach (BudgetOutcome b in r.Budgets.Where(b => !b.Passed))
                {
                    (string measured, string limit) = Budgets.FormatBroken(b.Name, b.Measured ?? double.NaN, b.Limit);
                    var d = new Diagnostic(global.BudgetFailureIsWarning ? Severity.Warning : Severity.Error, DiagnosticCodes.BudgetBroken, s.Model,
                        DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.BudgetBroken, s.Model, b.Name, measured, limit));
                    r.Diagnostics.Add(d);
                    WriteDiagnostic(output, d);
                }
                if (!r.BudgetsPassed && !global.BudgetFailureIsWarning)
                {
                    code = 1;
                }
                string summary = Report.SummaryLine(r) + (r.FromCache ? " (cached)" : "");
                output.WriteLine("CompressOnBuild: " + summary);
            }
            JsonObject report = r.FromCache ? Report.Replay(r.CachedReport!, r, r.CacheKey!) : Report.Build(r, currentOrt());
            r.ReportJson = report;
            if (s.Report != null)
            {
                Report.Write(s.Report, report);
                ReportRenderers.WriteBeside(s.Report, report);
            }
            return code;
        }
        catch (CompressException e)
        {
            lock (OutputGate)
            {
                WriteDiagnostic(output, new Diagnostic(Severity.Error, e.Code, e.File ?? s.Model, StripCode(e)));
            }
            return e.ExitCode;
        }
#pragma warning disable CA1031 // One model's crash becomes a coded error; the others still run.
        catch (Exception e)
#pragma warning restore CA1031
        {
            lock (OutputGate)
            {
                WriteDiagnostic(output, new Diagnostic(Severity.Error, DiagnosticCodes.InternalError, s.Model,
                    DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.InternalError, s.Model, e.GetType().Name + ": " + WorkFolders.UserPaths(e.Message, s.Model, s.Output))));
            }
            return 3;
        }
    }

    /// <summary><c>cache --cache-dir &lt;dir&gt; [--clean]</c>: prints the cache's size, or empties it.</summary>
    private static int CacheCommand(List<string> args, TextWriter output)
    {
        string? dir = null;
        bool clean = false;
        for (int i = 0; i < args.Count; i++)
        {
            switch (args[i])
            {
                case "--cache-dir" when i + 1 < args.Count: dir = args[++i]; break;
                case "--clean": clean = true; break;
                default: throw CommandLine.Usage($"cache: unexpected argument '{args[i]}' (cache --cache-dir <dir> [--clean])");
            }
        }
        if (dir == null)
        {
            throw CommandLine.Usage("cache --cache-dir <dir> [--clean]");
        }
        var cache = new CompressionCache(dir);
        if (clean)
        {
            int n = cache.Clear();
            output.WriteLine($"CompressOnBuild: removed {n} cache entr{(n == 1 ? "y" : "ies")} from {cache.Root}");
        }
        else
        {
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"CompressOnBuild: cache {cache.Root}: {cache.SizeBytes() / 1024.0 / 1024.0:0.0} MiB"));
        }
        return 0;
    }

    /// <summary>3 (internal) beats 2 (bad input) beats 1 (budget) beats 0.</summary>
    private static int Worst(int a, int b) => Math.Max(a, b);

    private static string StripCode(CompressException e)
    {
        string prefix = e.Code + ": ";
        return e.Message.StartsWith(prefix, StringComparison.Ordinal) ? e.Message[prefix.Length..] : e.Message;
    }

    internal static void WriteDiagnostic(TextWriter output, Diagnostic d)
    {
        // MSBuild canonical error format: "origin : error CODE : text".
        string text = d.Message.Replace('\r', ' ').Replace('\n', ' ');
        lock (OutputGate)
        {
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{d.File} : {d.Severity.ToText()} {d.Code} : {text}"));
        }
    }
}
