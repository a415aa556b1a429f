using System.Globalization;
using CompressOnBuild.Core;

namespace CompressOnBuild.Cli;

/// <summary>Options that apply to every item of one <c>compress</c> run.</summary>
internal sealed class GlobalOptions
{
    public string? CacheDir { get; set; }
    public string? OnnxRuntimeAssets { get; set; }
    public string? NuGetPackages { get; set; }
    public bool BudgetFailureIsWarning { get; set; }
    public int MaxParallelism { get; set; } = 1;
    public string? SummaryMarkdown { get; set; }

    /// <summary>The cache is trimmed (least recently used first) to this size after each run. Default 4 GiB.</summary>
    public long CacheMaxBytes { get; set; } = 4L << 30;
}

/// <summary>
/// Argument handling shared by every command: response files (<c>@file.rsp</c>, one argument per line, blank lines and
/// lines starting with '#' ignored) and the <c>compress</c> grammar: global options anywhere, then one or more items,
/// each a model path followed by its own options.
/// </summary>
internal static class CommandLine
{
    /// <summary>Option name (kebab-case) -> item metadata name, from the option table: the CLI and the MSBuild item
    /// take the same options.</summary>
    public static readonly IReadOnlyDictionary<string, string> ItemOptions =
        OptionTable.ItemOptions.ToDictionary(o => o.Cli, o => o.Name, StringComparer.Ordinal);

    /// <summary>The options of a whole run (option table rows with a CLI spelling).</summary>
    public static readonly IReadOnlyDictionary<string, OptionSpec> GlobalOptionSpecs =
        OptionTable.GlobalOptions.Where(o => o.Cli.Length > 0).ToDictionary(o => o.Cli, StringComparer.Ordinal);

    public static IEnumerable<string> GlobalOptionNames => GlobalOptionSpecs.Keys;

    /// <summary>Expands <c>@file</c> arguments (not recursively: a line starting with '@' inside a response file is an error).</summary>
    public static List<string> ExpandResponseFiles(IEnumerable<string> args)
    {
        var result = new List<string>();
        foreach (string arg in args)
        {
            if (arg.Length > 1 && arg[0] == '@')
            {
                string path = arg[1..];
                string[] lines;
                try
                {
                    lines = File.ReadAllLines(path);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
                {
                    throw CompressException.ForFile(path, e, DiagnosticCodes.ResponseFile, path, e.Message);
                }
                foreach (string raw in lines)
                {
                    string line = raw.Trim();
                    if (line.Length == 0 || line[0] == '#')
                    {
                        continue;
                    }
                    if (line[0] == '@')
                    {
                        throw CompressException.ForFile(path, DiagnosticCodes.ResponseFile, path, "nested response files are not supported");
                    }
                    result.Add(line);
                }
            }
            else
            {
                result.Add(arg);
            }
        }
        return result;
    }

    public static (GlobalOptions Global, List<ItemRequest> Items) ParseCompress(IReadOnlyList<string> args)
    {
        var global = new GlobalOptions();
        var items = new List<ItemRequest>();
        ItemRequest? current = null;
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            if (a.StartsWith("--", StringComparison.Ordinal))
            {
                string name = a;
                string? inlineValue = null;
                int eq = a.IndexOf('=', StringComparison.Ordinal);
                if (eq > 0)
                {
                    name = a[..eq];
                    inlineValue = a[(eq + 1)..];
                }
                string Value()
                {
                    if (inlineValue != null)
                    {
                        return inlineValue;
                    }
                    if (i + 1 >= args.Count)
                    {
                        throw Usage($"option '{name}' needs a value");
                    }
                    return args[++i];
                }
                if (GlobalOptionSpecs.TryGetValue(name, out OptionSpec? spec))
                {
                    string v = Value();
                    if (spec.Validate(v) is { } problem)
                    {
                        throw new CompressException(DiagnosticCodes.InvalidOption, "compress", name, v, problem);
                    }
                    switch (name)
                    {
                        case "--cache-dir": global.CacheDir = v; break;
                        case "--onnxruntime-assets": global.OnnxRuntimeAssets = v; break;
                        case "--nuget-packages": global.NuGetPackages = v; break;
                        case "--summary-markdown": global.SummaryMarkdown = v; break;
                        case "--cache-max-mb": global.CacheMaxBytes = long.Parse(v, CultureInfo.InvariantCulture) << 20; break;
                        case "--budget-severity": global.BudgetFailureIsWarning = v.Equals("Warning", StringComparison.OrdinalIgnoreCase); break;
                        case "--max-parallelism": global.MaxParallelism = int.Parse(v, CultureInfo.InvariantCulture); break;
                        default: throw new InvalidOperationException("global option " + name + " is in the option table but not applied");
                    }
                    continue;
                }
                if (ItemOptions.TryGetValue(name, out string? metadata))
                {
                    if (current == null)
                    {
                        throw Usage($"option '{name}' comes before any model path; put the model path first");
                    }
                    string v = Value();
                    if (current.Values.ContainsKey(metadata))
                    {
                        throw Usage($"option '{name}' is given twice for model '{current.Model}'");
                    }
                    current.Values[metadata] = v;
                    continue;
                }
                throw UnknownOption(name, current?.Model);
            }
            current = new ItemRequest(a);
            items.Add(current);
        }
        if (items.Count == 0)
        {
            throw Usage("no model given: compress <model.onnx> --output <out.onnx> [options]");
        }
        return (global, items);
    }

    public static CompressException Usage(string message) => new(DiagnosticCodes.Usage, message);

    /// <summary>CMPR0009 for an option the table does not know, with the closest known spelling when it looks like a typo.</summary>
    public static CompressException UnknownOption(string name, string? model)
    {
        string? suggestion = OptionTable.Suggest(name, ItemOptions.Keys.Concat(GlobalOptionNames));
        string hint = (suggestion != null ? $"Did you mean '{suggestion}'? " : "") + "Run 'compress --help' for the list.";
        return CompressException.ForFile(model, DiagnosticCodes.UnknownOption, model ?? "compress", name, hint);
    }
}

/// <summary>One model as given on the command line: its path and raw option values keyed by item metadata name.</summary>
internal sealed class ItemRequest(string model)
{
    public string Model { get; } = model;

    public Dictionary<string, string> Values { get; } = new(StringComparer.Ordinal);

    public string? Get(string metadata) => Values.TryGetValue(metadata, out string? v) && !string.IsNullOrWhiteSpace(v) ? v.Trim() : null;
}
