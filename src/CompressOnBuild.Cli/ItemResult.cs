using CompressOnBuild.Core.Passes;
using CompressOnBuild.Validation;

namespace CompressOnBuild.Cli;

internal sealed record BudgetOutcome(string Name, double Limit, double? Measured, bool Passed, string Unit, string? Note);

/// <summary>How a diagnostic is reported: an error fails the run (and the build), a warning does not.</summary>
internal enum Severity
{
    Error,
    Warning,
}

internal static class SeverityText
{
    /// <summary>The lower-case word of the canonical "file : error CMPRnnnn : text" line and of report.json.</summary>
    public static string ToText(this Severity severity) => severity == Severity.Warning ? "warning" : "error";

    /// <summary>The severity of a stored <see cref="ToText"/> word (cache entries).</summary>
    public static Severity Parse(string text) =>
        text.Equals("warning", StringComparison.OrdinalIgnoreCase) ? Severity.Warning : Severity.Error;
}

internal sealed record Diagnostic(Severity Severity, string Code, string File, string Message);

/// <summary>Everything learned while compressing one item; serialized to report.json and summarized on stdout.</summary>
internal sealed class ItemResult
{
    public required ItemSettings Settings { get; init; }
    public List<Diagnostic> Diagnostics { get; } = [];
    public long OriginalBytes { get; set; }
    public long CompressedBytes { get; set; }
    public string? OriginalSha256 { get; set; }
    public string? CompressedSha256 { get; set; }
    public PassResult? Quantization { get; set; }
    public PruningSummary? Pruning { get; set; }

    /// <summary>Deflate size of the chosen compressed model (set with pruning, whose summary compares zip sizes).</summary>
    public long? CompressedZipBytes { get; set; }
    public System.Text.Json.Nodes.JsonObject? WeightHistograms { get; set; }
    public ValidationResult? Validation { get; set; }

    /// <summary>Layers ONNX Runtime runs in float after its optimizer although they were quantized (null: not checked).</summary>
    public IReadOnlyList<string>? FloatFallbacks { get; set; }
    public string ValidationSource { get; set; } = "none";
    public List<BudgetOutcome> Budgets { get; } = [];
    public TuningResult? Tuning { get; set; }
    public System.Text.Json.Nodes.JsonNode? ReportJson { get; set; }
    public double CompressSeconds { get; set; }
    public double ValidateSeconds { get; set; }
    public bool FromCache { get; set; }
    /// <summary>On a cache hit: the measured parts of the summary line (<see cref="Report.SummaryParts"/>) of the build that filled the entry.</summary>
    public IReadOnlyList<string>? CachedSummaryParts { get; set; }

    /// <summary>On a cache hit: the cached report.json, replayed for this build by <see cref="Report.Replay"/>.</summary>
    public System.Text.Json.Nodes.JsonObject? CachedReport { get; set; }
    public bool Shipped { get; set; }
    public string? CacheKey { get; set; }

    public double CompressionRatio => CompressedBytes > 0 ? (double)OriginalBytes / CompressedBytes : 0;

    public bool BudgetsPassed => Budgets.All(b => b.Passed);
}
