using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using CompressOnBuild.Core;
using CompressOnBuild.Core.Cache;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Validation;

namespace CompressOnBuild.Cli;

/// <summary>
/// Connects items to the shared <see cref="CompressionCache"/>. The key covers everything that can change the
/// result: the tool's own code, the ONNX Runtime version, the model (with external data), every option and budget,
/// the output file name (external data files are named after it), and the bytes of the validation data and labels.
/// The verdict is cached too: a model that broke a budget fails again without recomputing until an input changes.
/// </summary>
internal sealed class CompressionCacheAdapter(CompressionCache cache, Action<Diagnostic> warn)
{
    private const string ModelFile = "model.onnx";
    private const string OutcomeFile = "outcome.json";
    private const string ReportFile = "report.json";

    private static readonly string ToolFingerprint = CompressionCache.HashKey(
        new[] { typeof(Program), typeof(ModelIO), typeof(Validator), typeof(Kernels.KernelSelector) }
            .Select(t => t.Assembly.ManifestModule.ModuleVersionId.ToString()));

    public static string Key(ItemResult r, OrtInfo ort, bool budgetFailureIsWarning)
    {
        ItemSettings s = r.Settings;
        var parts = new List<string>
        {
            "compressonbuild-cache-v1",
            ToolFingerprint,
            "ort:" + ort.Version + ":" + ort.Source,
            "model:" + r.OriginalSha256,
            "output-name:" + Path.GetFileName(s.Output),
            // The verdict and whether a model that broke a budget ships depend on the severity.
            "budget-severity:" + (budgetFailureIsWarning ? Severity.Warning : Severity.Error).ToText(),
        };
        foreach ((string k, string v) in s.EffectiveOptions)
        {
            if (k is "ValidationData" or "Labels" or "CalibrationData" or "Tokenizer")
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

    public bool TryRestore(string key, ItemResult r, string outputFull)
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
        try
        {
            outcome = JsonNode.Parse(File.ReadAllBytes(Path.Combine(dir, OutcomeFile)));
            cachedReport = JsonNode.Parse(File.ReadAllBytes(Path.Combine(dir, ReportFile)));
            _ = outcome!["shipped"]!.GetValue<bool>();
        }
        catch (Exception e) when (e is JsonException or IOException or NullReferenceException or InvalidOperationException or FormatException)
        {
            outcome = null;
            cachedReport = null;
        }
        if (outcome == null || cachedReport == null)
        {
            cache.Discard(dir);
            warn(new Diagnostic(Severity.Warning, DiagnosticCodes.CacheEntryCorrupt, r.Settings.Model,
                DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.CacheEntryCorrupt, dir)));
            return false;
        }
        bool shipped = outcome["shipped"]!.GetValue<bool>();
        if (shipped)
        {
            // The .onnx and its data files land as one step: data under content-unique names first, the .onnx last.
            ModelPair.Publish(Path.Combine(dir, ModelFile), outputFull, copy: true);
        }
        else
        {
            if (File.Exists(outputFull))
            {
                File.Delete(outputFull);
            }
            ModelPair.RemoveStaleData(outputFull);
        }
        r.OriginalBytes = outcome["originalBytes"]!.GetValue<long>();
        r.CompressedBytes = outcome["compressedBytes"]!.GetValue<long>();
        r.CompressedSha256 = outcome["compressedSha256"]?.GetValue<string>();
        r.CachedSummary = outcome["summary"]!.GetValue<string>();
        foreach (JsonNode? d in outcome["diagnostics"]!.AsArray())
        {
            r.Diagnostics.Add(new Diagnostic(SeverityText.Parse(d!["severity"]!.GetValue<string>()), d["code"]!.GetValue<string>(), d["file"]!.GetValue<string>(), d["message"]!.GetValue<string>()));
        }
        foreach (JsonNode? b in outcome["budgets"]!.AsArray())
        {
            r.Budgets.Add(new BudgetOutcome(b!["name"]!.GetValue<string>(), b["limit"]!.GetValue<double>(), b["measured"]?.GetValue<double>(),
                b["passed"]!.GetValue<bool>(), b["unit"]!.GetValue<string>(), null));
        }
        JsonNode report = cachedReport;
        report["cache"] = new JsonObject { ["key"] = key, ["hit"] = true };
        report["model"]!["source"] = r.Settings.Model;
        report["model"]!["output"] = r.Settings.Output;
        r.ReportJson = report;
        if (r.Settings.Report != null)
        {
            Report.Write(r.Settings.Report, report.AsObject());
            ReportRenderers.WriteBeside(r.Settings.Report, report);
        }
        return true;
    }

    public void Store(string key, ItemResult r, string? shippedOutput, JsonObject report)
    {
        cache.Put(key, dir =>
        {
            if (shippedOutput != null)
            {
                File.Copy(shippedOutput, Path.Combine(dir, ModelFile));
                // Data files keep their content-unique names (the key covers the output name they derive from).
                foreach (string data in ModelPair.DataFiles(shippedOutput))
                {
                    File.Copy(data, Path.Combine(dir, Path.GetFileName(data)));
                }
            }
            var outcome = new JsonObject
            {
                ["shipped"] = shippedOutput != null,
                ["originalBytes"] = r.OriginalBytes,
                ["compressedBytes"] = r.CompressedBytes,
                ["compressedSha256"] = r.CompressedSha256,
                ["summary"] = Report.SummaryLine(r),
                ["diagnostics"] = new JsonArray(r.Diagnostics.Select(d => (JsonNode)new JsonObject
                {
                    ["severity"] = d.Severity.ToText(), ["code"] = d.Code, ["file"] = d.File, ["message"] = d.Message,
                }).ToArray()),
                ["budgets"] = new JsonArray(r.Budgets.Select(b => (JsonNode)new JsonObject
                {
                    ["name"] = b.Name, ["limit"] = b.Limit, ["measured"] = b.Measured, ["passed"] = b.Passed, ["unit"] = b.Unit,
                }).ToArray()),
            };
            File.WriteAllBytes(Path.Combine(dir, OutcomeFile), JsonSerializer.SerializeToUtf8Bytes(outcome));
            File.WriteAllBytes(Path.Combine(dir, ReportFile), JsonSerializer.SerializeToUtf8Bytes(report));
        });
    }
}
