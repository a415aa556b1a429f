using System.Globalization;
using CompressOnBuild.Core;
using CompressOnBuild.Validation;

namespace CompressOnBuild.Cli;

/// <summary>Checks the item's budgets against what was measured. A measured value equal to its limit passes.</summary>
internal static class Budgets
{
    /// <summary>Budgets that compare the two models' outputs and so need real validation data.</summary>
    private static readonly HashSet<string> NeedData = new(StringComparer.Ordinal)
    {
        "MaxAccuracyDrop", "MinAgreement", "MinCosine", "MaxRelativeError", "MaxAbsoluteError", "MinNeighborAgreement", "MinSimilarityCorrelation",
    };

    /// <summary>Budgets measured on the embedding metrics (computed even when the output is judged as classification).</summary>
    public static bool NeedsEmbeddingMetrics(ItemSettings s) => s.Budgets.Any(b => b.Name is "MinNeighborAgreement" or "MinSimilarityCorrelation");

    /// <summary>Throws for budgets that cannot be measured with the given data (CMPR0406/0407) before any work is done.</summary>
    public static void CheckMeasurable(ItemSettings s)
    {
        foreach (Budget b in s.Budgets)
        {
            // Without ValidationData, agreement-type budgets are measured on the calibration inputs (the report says so).
            if (NeedData.Contains(b.Name) && s.ValidationData == null && (s.CalibrationData == null || b.Name == "MaxAccuracyDrop"))
            {
                throw CompressException.ForFile(s.Model, DiagnosticCodes.NoValidationData, s.Model, b.Name);
            }
            if (b.Name == "MaxAccuracyDrop" && s.Labels == null && !LabelsCanComeFromData(s.ValidationData!))
            {
                throw CompressException.ForFile(s.Model, DiagnosticCodes.LabelsRequired, s.Model, s.ValidationData);
            }
        }
        if (s.Tune && s.ValidationData == null && s.CalibrationData == null)
        {
            throw CompressException.ForFile(s.Model, DiagnosticCodes.NoValidationData, s.Model, "Tune");
        }
    }

    // Image folders (one subfolder per class) and .npz files carry their labels; IDX images need --labels.
    private static bool LabelsCanComeFromData(string path) =>
        Directory.Exists(path) || path.EndsWith(".npz", StringComparison.OrdinalIgnoreCase);

    /// <summary>Every budget name (the option table's budget rows).</summary>
    public static readonly string[] Names = [.. OptionTable.Budgets.Select(o => o.Name)];

    /// <summary>What each budget measures on one compressed model (null: not measured, e.g. accuracy without labels).</summary>
    public static Dictionary<string, double?> Measure(ValidationResult? v, long originalBytes, long compressedBytes)
    {
        var measured = new Dictionary<string, double?>(StringComparer.Ordinal);
        foreach (string name in Names)
        {
            measured[name] = name switch
            {
                "MaxAccuracyDrop" => v?.AccuracyDrop,
                "MinAgreement" => v?.Top1Agreement,
                "MinCosine" => v?.MeanCosineSimilarity,
                "MaxRelativeError" => v == null || v.Outputs.Count == 0 ? null : v.Outputs.Max(o => o.MeanRelativeL2Error),
                "MaxAbsoluteError" => v?.MaxAbsError,
                "MinCompressionRatio" => compressedBytes > 0 ? (double)originalBytes / compressedBytes : 0,
                "MaxSizeKB" => compressedBytes / 1024.0,
                "MaxLatencyRatio" => v?.LatencyRatio,
                "MinNeighborAgreement" => v?.Embedding?.NeighborAgreement,
                "MinSimilarityCorrelation" => v?.Embedding?.SimilarityCorrelation,
                _ => null,
            };
        }
        return measured;
    }

    /// <summary>Measures every budget of the item; a measured value equal to its limit passes.</summary>
    public static List<BudgetOutcome> Evaluate(ItemSettings settings, ValidationResult? v, long originalBytes, long compressedBytes)
    {
        Dictionary<string, double?> measured = Measure(v, originalBytes, compressedBytes);
        foreach (Budget b in settings.Budgets)
        {
            if (measured.GetValueOrDefault(b.Name) == null && v?.Embedding is { } e && b.Name is "MinNeighborAgreement" or "MinSimilarityCorrelation")
            {
                throw CompressException.ForFile(settings.Model, DiagnosticCodes.EmbeddingBudgetUnmeasurable, settings.Model, b.Name, e.PairwiseSamples < 3
                    ? $"it compares samples with each other and the data has {e.PairwiseSamples}"
                    : $"no sample's nearest neighbour is clear in the original model (cosine margin >= {EmbeddingMetrics.ClearMargin} over the second nearest) among {e.PairwiseSamples}");
            }
        }
        return Evaluate(settings, measured);
    }

    /// <summary>
    /// Checks the item's budgets against measurements (fresh, or replayed from the cache: a budget-only change
    /// re-checks the cached measurements instead of compressing again).
    /// </summary>
    public static List<BudgetOutcome> Evaluate(ItemSettings settings, IReadOnlyDictionary<string, double?> measurements)
    {
        var outcomes = new List<BudgetOutcome>();
        foreach (Budget b in settings.Budgets)
        {
            double? measured = measurements.TryGetValue(b.Name, out double? m0) ? m0 : null;
            if (measured == null)
            {
                if (b.Name == "MaxAccuracyDrop")
                {
                    throw CompressException.ForFile(settings.Model, DiagnosticCodes.LabelsRequired, settings.Model, settings.ValidationData);
                }
                if (b.Name is "MinNeighborAgreement" or "MinSimilarityCorrelation")
                {
                    throw CompressException.ForFile(settings.Model, DiagnosticCodes.EmbeddingBudgetUnmeasurable, settings.Model, b.Name,
                        "the validation run had too few samples, or none whose nearest neighbour is clear in the original model");
                }
                throw CompressException.ForFile(settings.Model, DiagnosticCodes.NoValidationData, settings.Model, b.Name);
            }
            double m = measured.Value;
            // Tolerate float noise at the boundary (a drop computed as 0.50000000001 from integer counts is 0.5).
            double eps = 1e-9 * Math.Max(1, Math.Abs(b.Limit));
            bool passed = !double.IsNaN(m) && (b.HigherIsBetter ? m >= b.Limit - eps : m <= b.Limit + eps);
            outcomes.Add(new BudgetOutcome(b.Name, b.Limit, m, passed, b.Unit, null));
        }
        return outcomes;
    }

    public static string FormatValue(string name, double value) => WithUnit(name, value.ToString(name switch
    {
        "MinAgreement" or "MinNeighborAgreement" => "0.####",
        "MaxAccuracyDrop" => "0.###",
        "MaxSizeKB" => "0.#",
        "MinCompressionRatio" => "0.##",
        _ => "G4",
    }, CultureInfo.InvariantCulture));

    /// <summary>
    /// The measured value and the limit of a broken budget as CMPR0401 prints them: the limit exactly as the user
    /// wrote it (shortest round-trip text, never rounded: 0.99999 must not read as 1), the measurement rounded as
    /// usual unless that rounding would make it read like the limit or like a pass, then with all its digits.
    /// </summary>
    public static (string Measured, string Limit) FormatBroken(string name, double measured, double limit)
    {
        string limitText = WithUnit(name, limit.ToString("R", CultureInfo.InvariantCulture));
        string measuredText = FormatValue(name, measured);
        if (!double.IsNaN(measured) && measured != limit)
        {
            string rounded = measuredText.Split(' ')[0].TrimEnd('x');
            double shown = double.Parse(rounded, CultureInfo.InvariantCulture);
            bool higherIsBetter = OptionTable.ItemByName(name)?.HigherIsBetter ?? name.StartsWith("Min", StringComparison.Ordinal);
            bool looksPassing = higherIsBetter ? shown >= limit : shown <= limit;
            if (looksPassing)
            {
                measuredText = WithUnit(name, measured.ToString("R", CultureInfo.InvariantCulture));
            }
        }
        return (measuredText, limitText);
    }

    /// <summary>The number with the budget's unit from the option table ("0.5 points", "812 KB", "3.9x").</summary>
    private static string WithUnit(string name, string number) => OptionTable.ItemByName(name)?.Unit switch
    {
        null or "" => number,
        "x" => number + "x",
        string unit => number + " " + unit,
    };
}
