using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using CompressOnBuild.Core;
using CompressOnBuild.Core.Cache;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Validation;

namespace CompressOnBuild.Cli;

/// <summary>
/// Connects items to the shared <see cref="CompressionCache"/>. An entry is keyed on what produces the compressed
/// model and its measurements: the tool's own code, the ONNX Runtime version, the model (with external data), the
/// options that change the model or how it is measured, the output file name (external data files are named after
/// it), and the bytes of the validation data, labels and calibration data. Budget limits are not part of the key
/// (except with Tune, whose search they steer): the entry holds the compressed model (also one that broke a budget)
/// and its measurements, and every build re-checks its own budgets and severity against them, so a budget-only
/// change costs no compression. Paths are never replayed: the entry stores no path of the build that filled it.
/// </summary>
internal sealed class CompressionCacheAdapter(CompressionCache cache, Action<Diagnostic> warn)
{
    private const string ModelFile = "model.onnx";
    private const string OutcomeFile = "outcome.json";
    private const string ReportFile = "report.json";

    // Placeholders for this build's paths inside cached diagnostics.
    private const string ModelToken = "\u001fmodel\u001f";
    private const string OutputToken = "\u001foutput\u001f";

    private static readonly string ToolFingerprint = CompressionCache.HashKey(
        new[] { typeof(Program), typeof(ModelIO), typeof(Validator), typeof(Kernels.KernelSelector) }
            .Select(t => t.Assembly.ManifestModule.ModuleVersionId.ToString()));

    public static string Key(ItemResult r, OrtInfo ort)
    {
        ItemSettings s = r.Settings;
        var parts = new List<string>
        {
            "compressonbuild-cache-v2",
            ToolFingerprint,
            "ort:" + ort.Version + ":" + ort.Source,
            "model:" + r.OriginalSha256,
            "output-name:" + Path.GetFileName(s.Output),
            // Latency is measured only when a MaxLatencyRatio budget asks for it.
            "latency-runs:" + Compressor.ValidationOptions(s).LatencyRuns.ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
        foreach ((string k, string v) in s.EffectiveOptions)
        {
            if (k is "ValidationData" or "Labels" or "CalibrationData" or "Tokenizer" || (!s.Tune && OptionTable.ItemByName(k) is { Role: CacheKeyRole.Budget }))
            {
                continue;
            }
            parts.Add("option:" + k + "=" + v);
        }
        parts.Add("validation-data:" + (s.ValidationData == null ? "-" : Fingerprint(s.ValidationData)));
        parts.Add("labels:" + (s.Labels == null ? "-" : Fingerprint(s.Labels)));
        parts.Add("calibration-data:" + (s.CalibrationData == null ? "-" : Fingerprint(s.CalibrationData)));
        if (s.Text != null)
        {
            // Only items with text data add this part, so the keys of every other item stay as they were.
            parts.Add("tokenizer:" + Fingerprint(s.Text.TokenizerPath));
        }
        return CompressionCache.HashKey(parts);
    }

    /// <summary>Hash of a file, or of every file under a folder (see <see cref="DataFingerprint"/>).</summary>
    public static string Fingerprint(string path) => DataFingerprint.Of(path);

    /// <summary>
    /// Restores a cached result for this build: its budgets are checked against the cached measurements with this
    /// build's limits, and the model ships (or an earlier output is removed) by this build's verdict and severity.
    /// </summary>
    public bool TryRestore(string key, ItemResult r, string outputFull, bool budgetFailureIsWarning)
    {
        string? dir = cache.TryGet(key);
        if (cache.LastCorruptEntry != null)
        {
            warn(new Diagnostic(Severity.Warning, DiagnosticCodes.CacheEntryCorrupt, r.Settings.Model,
                DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.CacheEntryCorrupt, cache.LastCorruptEntry)));
        }
        if (dir == null)
        {
            return false;
        }
        // A verified entry whose outcome or report does not parse (written by another version, or damaged in a
        // way its hashes cannot show) is discarded and the model compressed again, never an internal error.
        JsonNode? outcome;
        JsonNode? cachedReport;
        var measurements = new Dictionary<string, double?>(StringComparer.Ordinal);
        List<string> summaryParts;
        try
        {
            outcome = JsonNode.Parse(File.ReadAllBytes(Path.Combine(dir, OutcomeFile)));
            cachedReport = JsonNode.Parse(File.ReadAllBytes(Path.Combine(dir, ReportFile)));
            foreach ((string name, JsonNode? value) in outcome!["measurements"]!.AsObject())
            {
                measurements[name] = value?.GetValue<double>();
            }
            summaryParts = outcome["summaryParts"]!.AsArray().Select(p => p!.GetValue<string>()).ToList();
            _ = cachedReport!.AsObject();
        }
        catch (Exception e) when (e is JsonException or IOException or NullReferenceException or InvalidOperationException or FormatException)
        {
            outcome = null;
            cachedReport = null;
            summaryParts = [];
        }
        if (outcome == null || cachedReport == null)
        {
            cache.Discard(dir);
            warn(new Diagnostic(Severity.Warning, DiagnosticCodes.CacheEntryCorrupt, r.Settings.Model,
                DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.CacheEntryCorrupt, dir)));
            return false;
        }
        ItemSettings s = r.Settings;
        r.OriginalBytes = outcome["originalBytes"]!.GetValue<long>();
        r.CompressedBytes = outcome["compressedBytes"]!.GetValue<long>();
        r.CompressedSha256 = outcome["compressedSha256"]?.GetValue<string>();
        r.CachedSummaryParts = summaryParts;
        r.ValidationSource = Compressor.DataSource(s);
        r.Budgets.AddRange(Budgets.Evaluate(s, measurements));
        foreach (JsonNode? d in outcome["diagnostics"]!.AsArray())
        {
            r.Diagnostics.Add(new Diagnostic(SeverityText.Parse(d!["severity"]!.GetValue<string>()), d["code"]!.GetValue<string>(),
                Untemplate(d["file"]!.GetValue<string>(), s), Untemplate(d["message"]!.GetValue<string>(), s)));
        }
        r.CachedReport = cachedReport.AsObject();

        if (r.BudgetsPassed || budgetFailureIsWarning)
        {
            // The .onnx and its data files land as one step: data under content-unique names first, the .onnx last.
            ModelPair.Publish(Path.Combine(dir, ModelFile), outputFull, copy: true);
            r.Shipped = true;
        }
        else
        {
            // A model that broke its budget must not ship, not even a stale earlier output.
            if (File.Exists(outputFull))
            {
                File.Delete(outputFull);
            }
            ModelPair.RemoveStaleData(outputFull);
        }
        return true;
    }

    /// <summary>
    /// Stores the compressed model <paramref name="candidate"/> (whether or not it met the budgets) with its
    /// measurements, the measured parts of the summary line, the pass diagnostics and the report.
    /// </summary>
    public void Store(string key, ItemResult r, string candidate, IReadOnlyDictionary<string, double?> measurements, JsonObject report)
    {
        ItemSettings s = r.Settings;
        cache.Put(key, dir =>
        {
            File.Copy(candidate, Path.Combine(dir, ModelFile));
            // Data files keep their content-unique names (the key covers the output name they derive from).
            foreach (string data in ModelPair.DataFiles(candidate))
            {
                File.Copy(data, Path.Combine(dir, Path.GetFileName(data)));
            }
            var measured = new JsonObject();
            foreach ((string name, double? value) in measurements)
            {
                measured[name] = value is { } v && double.IsFinite(v) ? v : null;
            }
            var outcome = new JsonObject
            {
                ["originalBytes"] = r.OriginalBytes,
                ["compressedBytes"] = r.CompressedBytes,
                ["compressedSha256"] = r.CompressedSha256,
                ["summaryParts"] = new JsonArray(Report.SummaryParts(r).Select(p => (JsonNode)JsonValue.Create(p)).ToArray()),
                ["measurements"] = measured,
                ["diagnostics"] = new JsonArray(r.Diagnostics.Select(d => (JsonNode)new JsonObject
                {
                    ["severity"] = d.Severity.ToText(), ["code"] = d.Code, ["file"] = Template(d.File, s), ["message"] = Template(d.Message, s),
                }).ToArray()),
            };
            File.WriteAllBytes(Path.Combine(dir, OutcomeFile), JsonSerializer.SerializeToUtf8Bytes(outcome));
            File.WriteAllBytes(Path.Combine(dir, ReportFile), JsonSerializer.SerializeToUtf8Bytes(report));
        });
    }

    /// <summary>This build's model and output paths (full and as given, longest first) become placeholders.</summary>
    private static string Template(string text, ItemSettings s)
    {
        var paths = new[] { (Path.GetFullPath(s.Model), ModelToken), (Path.GetFullPath(s.Output), OutputToken), (s.Model, ModelToken), (s.Output, OutputToken) }
            .Where(p => p.Item1.Length > 0).OrderByDescending(p => p.Item1.Length);
        foreach ((string path, string token) in paths)
        {
            text = text.Replace(path, token, StringComparison.Ordinal);
        }
        return text;
    }

    private static string Untemplate(string text, ItemSettings s) =>
        text.Replace(ModelToken, s.Model, StringComparison.Ordinal).Replace(OutputToken, s.Output, StringComparison.Ordinal);
}
