using System.Globalization;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Validation;

namespace CompressOnBuild.Cli;

/// <summary>
/// What a verdict must not hide: a measurement on synthetic inputs, a pass that did nothing (and why), an output that
/// is not smaller, quantized layers ONNX Runtime runs in float, a compressed model that is slower. Each becomes a coded
/// warning on the item (replayed from the cache like every diagnostic).
/// </summary>
internal static class Verdict
{
    /// <summary>Median latency ratio above which a compressed model counts as slower.</summary>
    public const double SlowerRatio = 1.1;

    /// <summary>Share of the interleaved run pairs in which the compressed model must have been the slower one too, so
    /// that a ratio pushed up by a few disturbed runs on a loaded machine does not raise the warning.</summary>
    public const double SlowerPairShare = 0.75;

    /// <summary>Samples of synthetic (random) inputs, when the item has neither ValidationData nor CalibrationData.</summary>
    public static bool OnSyntheticInputs(ItemSettings s) => s.ValidationData == null && s.CalibrationData == null;

    /// <summary>"on 16 synthetic inputs: not representative of real data" (summary line and report).</summary>
    public static string SyntheticNote(int samples) => string.Format(CultureInfo.InvariantCulture,
        "on {0} synthetic inputs: not representative of real data", samples);

    /// <summary>Schemes whose weights move far enough that random inputs say little about real data.</summary>
    public static string? WeightChangingScheme(ItemSettings s) =>
        s.Pruning.Method != PruningMethod.None ? "Pruning=" + s.Pruning
        : s.Quantization is QuantizationScheme.Int4Weights or QuantizationScheme.Int8Static ? "Quantization=" + s.QuantizationText
        : null;

    /// <summary>True when the compressed model was clearly slower: median ratio above <see cref="SlowerRatio"/> and slower
    /// in at least <see cref="SlowerPairShare"/> of the interleaved pairs.</summary>
    public static bool ClearlySlower(ValidationResult v) =>
        v.LatencyRuns > 0 && v.LatencyRatio > SlowerRatio && v.CompressedSlowerFraction >= SlowerPairShare;

    /// <summary>
    /// Why a pass left layers alone, in aggregate for a one-line message: the distinct reasons (at most
    /// <paramref name="maxReasons"/>), each with the layers it applies to (at most three named); null when nothing was skipped.
    /// </summary>
    public static string? Reasons(IReadOnlyList<SkippedNode> skipped, int maxReasons = 3)
    {
        if (skipped.Count == 0)
        {
            return null;
        }
        var groups = skipped.GroupBy(n => n.Reason, StringComparer.Ordinal).ToList();
        var parts = new List<string>();
        foreach (IGrouping<string, SkippedNode> g in groups.Take(maxReasons))
        {
            string[] names = [.. g.Select(n => n.Node)];
            string who = names.Length <= 3 ? string.Join(", ", names) : string.Join(", ", names.Take(3)) + $" and {names.Length - 3} more";
            parts.Add($"{who}: {g.Key}");
        }
        string text = $"{skipped.Count} layer(s) left alone ({string.Join("; ", parts)}";
        if (groups.Count > maxReasons)
        {
            text += $"; {groups.Count - maxReasons} more reason(s) in the report";
        }
        return text + ")";
    }

    /// <summary>Warnings about the measurement and the outcome (see the class summary). <paramref name="candidatePath"/>:
    /// the compressed model file to check ONNX Runtime's optimized graph of, null to skip that check;
    /// <paramref name="optimizedPath"/>: the optimized graph its validation session wrote, if any (read instead of
    /// opening another session on the candidate).</summary>
    public static void AddWarnings(ItemResult r, string? candidatePath, string? optimizedPath = null)
    {
        ItemSettings s = r.Settings;
        void Warn(string code, params object?[] args) =>
            r.Diagnostics.Add(new Diagnostic(Severity.Warning, code, s.Model, DiagnosticCodes.FormatWithoutCode(code, [s.Model, .. args])));

        if (r.Pruning is { NothingPruned: true } p)
        {
            Warn(DiagnosticCodes.NothingPruned, s.Pruning.ToString(),
                Reasons(p.Skipped) ?? "it found no Conv, Gemm or MatMul with a constant float weight");
        }
        else if (r.Pruning is { ChannelsShortfall: true } c)
        {
            Warn(DiagnosticCodes.ChannelsShortfall, c.Method,
                string.Format(System.Globalization.CultureInfo.InvariantCulture, "{0} of the {1} output channels of its prunable layers ({2:0.0}%)", c.ChannelsRemoved, c.ChannelsBefore, c.ChannelFractionRemoved * 100),
                Reasons(c.Skipped) ?? "every group was pruned as far as the rounding allows");
        }
        if (r.Validation is { } v && OnSyntheticInputs(s) && WeightChangingScheme(s) is { } scheme)
        {
            Warn(DiagnosticCodes.SyntheticValidation, scheme, v.SampleCount);
        }
        // Pruning alone keeps the file size (zeros are values too) and pays off once zipped: no warning when the zip shrank.
        bool prunedZipSmaller = s.Quantization == QuantizationScheme.None && r.Pruning is { ZipBytesBefore: > 0 } z && z.ZipBytesAfter < z.ZipBytesBefore;
        if (r.CompressedBytes > 0 && r.OriginalBytes > 0 && r.CompressedBytes >= r.OriginalBytes && !prunedZipSmaller)
        {
            Warn(DiagnosticCodes.NotSmaller, r.CompressedBytes, r.OriginalBytes);
        }
        if (candidatePath != null && r.Quantization is { Nodes.Count: > 0 })
        {
            r.FloatFallbacks = [.. Optimized.Describe(candidatePath, optimizedPath)["floatFallbacks"]!.AsArray().Select(n => n!.GetValue<string>())];
            if (r.FloatFallbacks.Count > 0)
            {
                string names = string.Join(", ", r.FloatFallbacks.Take(5)) + (r.FloatFallbacks.Count > 5 ? $" and {r.FloatFallbacks.Count - 5} more" : "");
                Warn(DiagnosticCodes.FloatFallback, r.FloatFallbacks.Count, names);
            }
        }
        // With a MaxLatencyRatio budget the budget itself speaks (CMPR0401).
        if (r.Validation is { } lv && ClearlySlower(lv) && !s.Budgets.Any(b => b.Name == "MaxLatencyRatio"))
        {
            Warn(DiagnosticCodes.Slower, lv.LatencyRatio.ToString("0.00", CultureInfo.InvariantCulture),
                (lv.CompressedSlowerFraction * 100).ToString("0", CultureInfo.InvariantCulture), lv.LatencyRuns);
        }
    }
}
