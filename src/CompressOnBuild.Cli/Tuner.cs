using System.Diagnostics;
using System.Globalization;
using CompressOnBuild.Validation;

namespace CompressOnBuild.Cli;

internal sealed record NodeSensitivity(string Node, double Agreement, double Cosine);

internal sealed record TuningResult(
    double TimeBudgetSeconds,
    double ElapsedSeconds,
    int SensitivitySamples,
    IReadOnlyList<NodeSensitivity> Sensitivity,
    IReadOnlyList<Attempt> Trials,
    Attempt Chosen,
    bool Met,
    bool TimedOut)
{
    /// <summary>How the time budget was set: "TuneTimeBudgetSeconds" or the scaled default's explanation.</summary>
    public string TimeBudgetSource { get; init; } = "TuneTimeBudgetSeconds";

    /// <summary>
    /// With pruning and quantization: which pass broke the budgets, measured first with each pass alone
    /// ("pruning", "quantization", "both" or "either alone passes"); null with one pass.
    /// </summary>
    public string? Harm { get; init; }

    /// <summary>The single-pass attempts behind <see cref="Harm"/> (diagnosis only, never shipped).</summary>
    public IReadOnlyList<Attempt> Diagnosis { get; init; } = [];

    /// <summary>Layers the chosen configuration keeps float or dense beyond the user's NodesToExclude.</summary>
    public IReadOnlyList<string> KeptByTune { get; init; } = [];

    /// <summary>Layers the scheme changed before tuning (the candidates for backing off).</summary>
    public int Candidates { get; init; }

    /// <summary>A time budget that would likely let the search finish (for the timed-out message).</summary>
    public double SuggestedBudgetSeconds { get; init; }
}

/// <summary>
/// Accuracy-aware back-off for a scheme that broke a budget. With pruning and quantization it first measures which
/// pass does the harm (each alone on the validation data) and backs off only that pass. For static int8 with the
/// quantization at fault the other calibration methods (Percentile 99.99 and 99.9, Entropy, MSE, MinMax) are tried
/// next. Then: measure how much each layer alone hurts (only that layer changed, on a subset of the validation
/// data), then keep the most sensitive layers float (or dense) one by one, validating each configuration on the full
/// data, until every budget holds. The first configuration that holds is chosen; the search stops at the time budget
/// and then keeps the best configuration found (which still fails the build if it breaks a budget). Without
/// TuneTimeBudgetSeconds the budget is 60 s or, when longer, the time of <see cref="DefaultTrials"/> trials like the first.
/// </summary>
internal static class Tuner
{
    private const int SensitivitySampleLimit = 1000;

    /// <summary>Trials the default time budget allows for (scaled with the first attempt's cost), between 60 s and one hour.</summary>
    internal const int DefaultTrials = 20;

    private static readonly string[] CalibrationMethods = ["Percentile:99.99", "Percentile:99.9", "Entropy", "Mse", "MinMax"];

    /// <summary>The time budget and how it was set.</summary>
    internal static (double Seconds, string Source) TimeBudget(ItemSettings s, Attempt first) =>
        TimeBudget(s.TuneTimeBudgetGiven ? s.TuneTimeBudgetSeconds : null, s.TuneTimeBudgetSeconds, first.CompressSeconds + first.ValidateSeconds);

    /// <summary>The given budget, else the default or, when longer, <see cref="DefaultTrials"/> trials of <paramref name="trialSeconds"/> (at most an hour).</summary>
    internal static (double Seconds, string Source) TimeBudget(double? given, double defaultSeconds, double trialSeconds)
    {
        if (given is { } g)
        {
            return (g, "TuneTimeBudgetSeconds");
        }
        double scaled = Math.Min(3600, Math.Ceiling(trialSeconds * DefaultTrials / 10) * 10);
        return scaled > defaultSeconds
            ? (scaled, string.Create(CultureInfo.InvariantCulture, $"default, scaled to {DefaultTrials} trials of {trialSeconds:0.0} s each on this data"))
            : (defaultSeconds, "default");
    }

    public static TuningResult Run(AttemptContext ctx, Attempt first)
    {
        var watch = Stopwatch.StartNew();
        (double budget, string budgetSource) = TimeBudget(ctx.Settings, first);
        bool OutOfTime() => watch.Elapsed.TotalSeconds >= budget;
        var trials = new List<Attempt> { first };
        IReadOnlyList<string> userExcluded = ctx.Settings.NodesToExclude;
        double trialSeconds = first.CompressSeconds + first.ValidateSeconds;

        // Which pass does the harm: with both, each alone first (two trials), so the search backs off the right one.
        string? harm = null;
        var diagnosis = new List<Attempt>();
        bool backOffPruning = first.Pruning != null, backOffQuantization = first.Quantization != null;
        if (first.Pruning != null && first.Quantization != null)
        {
            Attempt quantizedOnly = ctx.Make(userExcluded, prune: false);
            Attempt prunedOnly = ctx.Make(userExcluded, quantize: false);
            diagnosis.Add(quantizedOnly);
            diagnosis.Add(prunedOnly);
            (harm, backOffPruning, backOffQuantization) = (quantizedOnly.Passed, prunedOnly.Passed) switch
            {
                (true, false) => ("pruning", true, false),
                (false, true) => ("quantization", false, true),
                (false, false) => ("both", true, true),
                _ => ("either alone passes", true, true),
            };
        }

        TuningResult Done(Attempt chosen, bool met, int sensitivitySamples, IReadOnlyList<NodeSensitivity> sensitivity, int candidates)
        {
            bool timedOut = !met && OutOfTime();
            int planned = trials.Count + candidates + (ctx.Settings.Quantization == QuantizationScheme.Int8Static ? CalibrationMethods.Length : 0);
            double suggested = Math.Min(86400, Math.Max(budget * 2, Math.Ceiling(trialSeconds * planned * 1.5 / 10) * 10));
            return new TuningResult(budget, watch.Elapsed.TotalSeconds, sensitivitySamples, sensitivity, trials, chosen, met, timedOut)
            {
                TimeBudgetSource = budgetSource,
                Harm = harm,
                Diagnosis = diagnosis,
                KeptByTune = chosen.ExcludedNodes.Union(chosen.DenseNodes, StringComparer.Ordinal).Except(userExcluded, StringComparer.Ordinal).ToList(),
                Candidates = candidates,
                SuggestedBudgetSeconds = suggested,
            };
        }

        // Static int8 at fault: other calibration methods first; they cost one calibration pass each and keep every layer int8.
        if (ctx.Settings.Quantization == QuantizationScheme.Int8Static && backOffQuantization)
        {
            string original = ctx.CalibrationMethodText;
            Attempt bestCalibrated = first;
            foreach (string method in CalibrationMethods.Where(m => m != original))
            {
                if (OutOfTime())
                {
                    break;
                }
                ctx.CalibrationMethodText = method;
                Attempt trial = ctx.Make(userExcluded);
                trials.Add(trial);
                if (trial.Passed)
                {
                    return Done(trial, true, 0, [], 0);
                }
                if (Score(trial) > Score(bestCalibrated))
                {
                    bestCalibrated = trial;
                }
            }
            // Layer back-off continues with the best calibration found.
            ctx.CalibrationMethodText = bestCalibrated.CalibrationMethod ?? original;
            first = bestCalibrated;
        }
        // Layers the guilty pass changed. Backing a layer off keeps it float and dense, or only dense when pruning alone is at fault.
        bool pruningOnly = harm == "pruning";
        List<string> candidates = ((backOffQuantization ? first.Quantization?.Nodes.Select(q => q.Node) : null) ?? [])
            .Concat((backOffPruning ? first.Pruning?.Pruned.Select(p => p.Node) : null) ?? [])
            .Distinct(StringComparer.Ordinal).ToList();
        if (candidates.Count == 0)
        {
            return Done(first, first.Passed, 0, [], 0);
        }
        Attempt Configure(IEnumerable<string> backedOff, Dataset? on = null)
        {
            List<string> off = userExcluded.Concat(backedOff).ToList();
            return pruningOnly ? ctx.Make(userExcluded, on, pruningExcluded: off) : ctx.Make(off, on);
        }

        Dataset subset = ctx.TuningData.Count > SensitivitySampleLimit
            ? Compressor.LoadData(ctx.Settings, ctx.OriginalRunner.Inputs, SensitivitySampleLimit, out _)
            : ctx.TuningData;
        var sensitivity = new List<NodeSensitivity>();
        foreach (string node in candidates)
        {
            if (OutOfTime())
            {
                break;
            }
            // Change only this node: every other candidate (and the user's exclusions) stays as in the original.
            Attempt only = Configure(candidates.Where(c => c != node), subset);
            sensitivity.Add(new NodeSensitivity(node, only.Validation!.Top1Agreement, only.Validation.MeanCosineSimilarity));
        }
        // Most harmful first: lowest agreement, then lowest cosine. Unmeasured nodes (time ran out) go last.
        List<string> order = sensitivity.OrderBy(x => x.Agreement).ThenBy(x => x.Cosine).Select(x => x.Node)
            .Concat(candidates.Where(c => sensitivity.All(x => x.Node != c))).ToList();

        Attempt best = first;
        if (trials.Count > 1 && Score(trials[0]) > Score(best))
        {
            best = trials[0];
        }
        for (int k = 1; k <= order.Count && !OutOfTime(); k++)
        {
            Attempt trial = Configure(order.Take(k));
            trials.Add(trial);
            if (trial.Passed)
            {
                return Done(trial, true, subset.Count, sensitivity, candidates.Count);
            }
            if (Score(trial) > Score(best))
            {
                best = trial;
            }
        }
        return Done(best, false, subset.Count, sensitivity, candidates.Count);
    }

    /// <summary>
    /// The tuner's warnings: CMPR0421 when it ran out of time, CMPR0422 when the budgets hold only because most
    /// changed layers were given back and no MinCompressionRatio/MaxLatencyRatio budget says what is acceptable.
    /// </summary>
    public static IEnumerable<Diagnostic> Diagnostics(ItemResult r, Attempt untuned)
    {
        if (r.Tuning is not { } t)
        {
            yield break;
        }
        ItemSettings s = r.Settings;
        var ci = CultureInfo.InvariantCulture;
        if (t.TimedOut)
        {
            yield return new Diagnostic(Severity.Warning, DiagnosticCodes.TuneTimedOut, s.Model, DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.TuneTimedOut, s.Model,
                t.ElapsedSeconds.ToString("0", ci), "time budget " + t.TimeBudgetSeconds.ToString("0", ci) + " s: " + t.TimeBudgetSource, t.SuggestedBudgetSeconds.ToString("0", ci)));
        }
        bool goalStated = s.Budgets.Any(b => b.Name is "MinCompressionRatio" or "MaxLatencyRatio");
        if (t.Met && !goalStated && t.Candidates > 0 && t.KeptByTune.Count * 2 > t.Candidates)
        {
            double ratio = t.Chosen.CompressedBytes > 0 ? (double)r.OriginalBytes / t.Chosen.CompressedBytes : 0;
            double untunedRatio = untuned.CompressedBytes > 0 ? (double)r.OriginalBytes / untuned.CompressedBytes : 0;
            string size = string.Format(ci, "{0:0.00}x smaller", ratio);
            string detail = string.Format(ci, "the untuned model was {0:0.00}x smaller", untunedRatio)
                + (t.Chosen.Validation is { LatencyRuns: > 0 } cv ? string.Format(ci, "; latency ratio {0:0.00}", cv.LatencyRatio) : "");
            yield return new Diagnostic(Severity.Warning, DiagnosticCodes.TunedResultBelowGoal, s.Model, DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.TunedResultBelowGoal, s.Model,
                t.KeptByTune.Count + " of " + t.Candidates, size, detail));
        }
    }

    /// <summary>More budgets met is better; then higher agreement.</summary>
    private static double Score(Attempt a) => a.Budgets.Count(b => b.Passed) * 10 + (a.Validation?.Top1Agreement ?? 0);
}
