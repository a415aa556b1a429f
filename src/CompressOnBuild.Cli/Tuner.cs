using System.Diagnostics;
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
    bool TimedOut);

/// <summary>
/// Accuracy-aware back-off for a scheme that broke a budget. For static int8 the other calibration methods
/// (Percentile 99.99 and 99.9, Entropy, MSE, MinMax) are tried first. Then: measure how much each quantized layer alone hurts
/// (only that layer quantized, on a subset of the validation data), then keep the most sensitive layers in float one
/// by one, validating each configuration on the full data, until every budget holds. The first configuration that
/// holds is the smallest one the search reaches, and is chosen; the search stops at the time budget and then keeps
/// the best configuration found (which still fails the build if it breaks a budget).
/// </summary>
internal static class Tuner
{
    private const int SensitivitySampleLimit = 1000;

    private static readonly string[] CalibrationMethods = ["Percentile:99.99", "Percentile:99.9", "Entropy", "Mse", "MinMax"];

    public static TuningResult Run(AttemptContext ctx, Attempt first)
    {
        var watch = Stopwatch.StartNew();
        double budget = ctx.Settings.TuneTimeBudgetSeconds;
        bool OutOfTime() => watch.Elapsed.TotalSeconds >= budget;
        var trials = new List<Attempt> { first };
        IReadOnlyList<string> userExcluded = ctx.Settings.NodesToExclude;

        // Static int8: other calibration methods first; they cost one calibration pass each and keep every layer int8.
        if (ctx.Settings.Quantization == QuantizationScheme.Int8Static)
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
                    return new TuningResult(budget, watch.Elapsed.TotalSeconds, 0, [], trials, trial, true, false);
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
        // Layers the scheme changed: quantized and/or pruned. Backing a layer off keeps it float and dense.
        List<string> candidates = (first.Quantization?.Nodes.Select(q => q.Node) ?? [])
            .Concat(first.Pruning?.Pruned.Select(p => p.Node) ?? [])
            .Distinct(StringComparer.Ordinal).ToList();
        if (candidates.Count == 0)
        {
            return new TuningResult(budget, watch.Elapsed.TotalSeconds, 0, [], trials, first, first.Passed, false);
        }

        Dataset subset = ctx.Data.Count > SensitivitySampleLimit
            ? Compressor.LoadData(ctx.Settings, ctx.OriginalRunner.Inputs, SensitivitySampleLimit, out _)
            : ctx.Data;
        var sensitivity = new List<NodeSensitivity>();
        foreach (string node in candidates)
        {
            if (OutOfTime())
            {
                break;
            }
            // Quantize only this node: everything else (and the user's exclusions) stays float.
            var exclude = candidates.Where(c => c != node).Concat(userExcluded).ToList();
            Attempt only = ctx.Make(exclude, subset);
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
            var exclude = userExcluded.Concat(order.Take(k)).ToList();
            Attempt trial = ctx.Make(exclude);
            trials.Add(trial);
            if (trial.Passed)
            {
                return new TuningResult(budget, watch.Elapsed.TotalSeconds, subset.Count, sensitivity, trials, trial, true, false);
            }
            if (Score(trial) > Score(best))
            {
                best = trial;
            }
        }
        return new TuningResult(budget, watch.Elapsed.TotalSeconds, subset.Count, sensitivity, trials, best, false, OutOfTime());
    }

    /// <summary>More budgets met is better; then higher agreement.</summary>
    private static double Score(Attempt a) => a.Budgets.Count(b => b.Passed) * 10 + (a.Validation?.Top1Agreement ?? 0);
}
