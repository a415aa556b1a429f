using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using CompressOnBuild.Validation;

namespace CompressOnBuild.Cli;

/// <summary>
/// report.json (schema documented in docs/report-schema.md; bump <see cref="SchemaVersion"/> on any incompatible change)
/// and the one-line summary printed per model.
/// </summary>
internal static class Report
{
    public const int SchemaVersion = 1;

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static JsonObject Build(ItemResult r, OrtInfo? ort)
    {
        ItemSettings s = r.Settings;
        var options = new JsonObject();
        foreach ((string k, string v) in s.EffectiveOptions)
        {
            options[k] = v;
        }
        var report = new JsonObject
        {
            ["schemaVersion"] = SchemaVersion,
            ["tool"] = new JsonObject { ["name"] = "CompressOnBuild", ["version"] = ToolInfo.Version },
            ["onnxRuntime"] = ort == null ? null : new JsonObject
            {
                ["version"] = ort.Version,
                ["source"] = ort.Source,
                ["managedPath"] = ort.ManagedPath,
                ["nativePath"] = ort.NativePath,
            },
            ["model"] = new JsonObject
            {
                ["source"] = s.Model,
                ["output"] = s.Output,
                ["sourceBytes"] = r.OriginalBytes,
                ["sourceSha256"] = r.OriginalSha256,
                ["compressedBytes"] = r.CompressedBytes,
                ["compressedSha256"] = r.CompressedSha256,
                ["compressionRatio"] = Round(r.CompressionRatio, 4),
            },
            ["options"] = options,
            ["quantization"] = r.Quantization == null ? null : Quantization(r.Quantization, r.FloatFallbacks, r.Tuning?.KeptByTune ?? []),
            ["validation"] = r.Validation == null ? null : Validation(r.Validation, r.ValidationSource, Verdict.OnSyntheticInputs(s)),
            ["pruning"] = r.Pruning == null ? null : Pruning(r.Pruning),
            ["weightHistograms"] = r.WeightHistograms?.DeepClone(),
            ["tuning"] = r.Tuning == null ? null : Tuning(r.Tuning),
            ["budgets"] = BudgetsJson(r),
            ["verdict"] = r.BudgetsPassed ? "passed" : "failed",
            ["diagnostics"] = DiagnosticsJson(r),
            ["timing"] = new JsonObject
            {
                ["compressSeconds"] = Round(r.CompressSeconds, 3),
                ["validateSeconds"] = Round(r.ValidateSeconds, 3),
                // The worker process's peak resident memory so far (all items of the run up to this one).
                ["workerPeakRssBytes"] = PeakRss(),
            },
            ["cache"] = new JsonObject { ["key"] = r.CacheKey, ["hit"] = r.FromCache },
        };
        return report;
    }

    private static JsonArray BudgetsJson(ItemResult r) => new(r.Budgets.Select(b => (JsonNode)new JsonObject
    {
        ["name"] = b.Name,
        ["limit"] = b.Limit,
        ["measured"] = b.Measured is { } m ? Round(m, 6) : null,
        ["passed"] = b.Passed,
    }).ToArray());

    private static JsonArray DiagnosticsJson(ItemResult r) => new(r.Diagnostics.Select(d => (JsonNode)new JsonObject
    {
        ["severity"] = d.Severity.ToText(),
        ["code"] = d.Code,
        ["message"] = d.Message,
    }).ToArray());

    private static JsonObject Pruning(CompressOnBuild.Core.Passes.PruningSummary p) => new()
    {
        ["method"] = p.Method,
        ["requestedSparsity"] = p.RequestedSparsity is double r ? Round(r, 4) : null,
        ["achievedSparsity"] = Round(p.AchievedSparsity, 4),
        ["requestedChannelFraction"] = p.RequestedChannelFraction is double cf ? Round(cf, 4) : null,
        ["channelsBefore"] = p.ChannelsBefore,
        ["channelsRemoved"] = p.ChannelsRemoved,
        ["layerSparsity"] = p.LayerSparsity is double ls ? Round(ls, 4) : null,
        ["allocation"] = p.Allocation,
        ["prunableWeights"] = p.PrunableWeights,
        ["prunableNonzerosAfter"] = p.PrunableNonzerosAfter,
        ["sparsityNotes"] = new JsonArray(p.SparsityNotes.Select(n => (JsonNode)JsonValue.Create(n)!).ToArray()),
        ["parametersBefore"] = p.ParametersBefore,
        ["parametersAfter"] = p.ParametersAfter,
        ["flopsBefore"] = p.FlopsBefore,
        ["flopsAfter"] = p.FlopsAfter,
        ["flopsExact"] = p.FlopsExact,
        ["modelBytesBefore"] = p.ModelBytesBefore,
        ["modelBytesAfter"] = p.ModelBytesAfter,
        ["zipBytesBefore"] = p.ZipBytesBefore,
        ["zipBytesAfter"] = p.ZipBytesAfter,
        ["reconstructed"] = new JsonArray(p.Reconstructed.Select(n => (JsonNode)JsonValue.Create(n)!).ToArray()),
        ["layers"] = new JsonArray(p.Pruned.Select(l => (JsonNode)new JsonObject
        {
            ["node"] = l.Node,
            ["opType"] = l.OpType,
            ["weight"] = l.Weight,
            ["sparsity"] = Round(l.Sparsity, 4),
            ["nonzerosBefore"] = l.NonzerosBefore,
            ["nonzerosAfter"] = l.NonzerosAfter,
            ["outputsBefore"] = l.OutputsBefore,
            ["outputsAfter"] = l.OutputsAfter,
        }).ToArray()),
        ["skippedNodes"] = new JsonArray(p.Skipped.Select(n => (JsonNode)new JsonObject { ["node"] = n.Node, ["opType"] = n.OpType, ["reason"] = n.Reason }).ToArray()),
        ["sensitivity"] = p.Sensitivity == null ? null : Sensitivity(p.Sensitivity),
    };

    private static JsonObject Sensitivity(CompressOnBuild.Core.Passes.SensitivityAnalysis a) => new()
    {
        ["measure"] = a.Measure,
        ["samples"] = a.Samples,
        ["targetSparsity"] = a.TargetSparsity,
        ["elements"] = a.Elements,
        ["targetZeros"] = a.TargetZeros,
        ["chosenZeros"] = a.ChosenZeros,
        ["predictedHarm"] = Round(a.PredictedHarm, 10),
        ["uniformPredictedHarm"] = Round(a.UniformPredictedHarm, 10),
        ["measuredHarm"] = a.MeasuredHarm is double mh ? Round(mh, 10) : null,
        ["uniformMeasuredHarm"] = a.UniformMeasuredHarm is double uh ? Round(uh, 10) : null,
        ["uniformCandidate"] = a.UniformCandidate,
        ["fellBackToUniform"] = a.FellBackToUniform,
        ["probes"] = a.Probes,
        ["reusedProbes"] = a.ReusedProbes,
        ["seconds"] = Round(a.Seconds, 3),
        ["layers"] = new JsonArray(a.Layers.Select(l => (JsonNode)new JsonObject
        {
            ["node"] = l.Node,
            ["weight"] = l.Weight,
            ["elements"] = l.Elements,
            ["chosenSparsity"] = Round(l.ChosenSparsity, 6),
            ["chosenZeros"] = l.ChosenZeros,
            ["predictedHarm"] = Round(l.PredictedHarm, 10),
            ["curve"] = new JsonArray(l.Curve.Select(c => (JsonNode)new JsonObject
            {
                ["sparsity"] = c.Sparsity,
                ["zeros"] = c.Zeros,
                ["harm"] = Round(c.Harm, 10),
            }).ToArray()),
        }).ToArray()),
    };

    private static JsonObject Tuning(TuningResult t) => new()
    {
        ["timeBudgetSeconds"] = t.TimeBudgetSeconds,
        ["timeBudgetSource"] = t.TimeBudgetSource,
        ["elapsedSeconds"] = Round(t.ElapsedSeconds, 3),
        ["met"] = t.Met,
        ["timedOut"] = t.TimedOut,
        ["harm"] = t.Harm,
        ["diagnosis"] = new JsonArray(t.Diagnosis.Select(a => (JsonNode)new JsonObject
        {
            ["passes"] = a.Pruning != null ? "pruning only" : "quantization only",
            ["accuracyDrop"] = a.Validation?.AccuracyDrop is { } d ? Round(d, 4) : null,
            ["top1Agreement"] = a.Validation is { } v ? Round(v.Top1Agreement, 6) : null,
            ["budgetsPassed"] = a.Passed,
        }).ToArray()),
        ["keptByTune"] = new JsonArray(t.KeptByTune.Select(n => (JsonNode)JsonValue.Create(n)!).ToArray()),
        ["sensitivitySamples"] = t.SensitivitySamples,
        ["sensitivity"] = new JsonArray(t.Sensitivity.Select(x => (JsonNode)new JsonObject
        {
            ["node"] = x.Node,
            ["agreementWhenOnlyThisNodeIsQuantized"] = Round(x.Agreement, 6),
            ["cosineWhenOnlyThisNodeIsQuantized"] = Round(x.Cosine, 6),
        }).ToArray()),
        ["trials"] = new JsonArray(t.Trials.Select(a => (JsonNode)new JsonObject
        {
            ["excludedNodes"] = new JsonArray(a.ExcludedNodes.Select(n => (JsonNode)JsonValue.Create(n)!).ToArray()),
            ["denseNodes"] = new JsonArray(a.DenseNodes.Select(n => (JsonNode)JsonValue.Create(n)!).ToArray()),
            ["calibrationMethod"] = a.CalibrationMethod,
            ["compressedBytes"] = a.CompressedBytes,
            ["accuracy"] = a.Validation?.CompressedAccuracy is { } acc ? Round(acc, 4) : null,
            ["accuracyDrop"] = a.Validation?.AccuracyDrop is { } d ? Round(d, 4) : null,
            ["top1Agreement"] = a.Validation is { } v ? Round(v.Top1Agreement, 6) : null,
            ["budgetsPassed"] = a.Passed,
            ["chosen"] = ReferenceEquals(a, t.Chosen),
        }).ToArray()),
    };

    private static JsonObject Quantization(PassResult q, IReadOnlyList<string>? floatFallbacks, IReadOnlyList<string> keptByTune)
    {
        var o = new JsonObject
        {
            ["scheme"] = q.Scheme,
            ["alreadyQuantized"] = q.Unchanged,
            ["alreadyQuantizedReason"] = q.UnchangedReason,
        };
        foreach ((string k, JsonNode? v) in q.Details)
        {
            o[k] = v?.DeepClone();
        }
        o["quantizedNodes"] = new JsonArray(q.Nodes.Select(n => (JsonNode)new JsonObject
        {
            ["node"] = n.Node,
            ["opType"] = n.OpType,
            ["weight"] = n.Weight,
            ["rows"] = n.Rows,
            ["columns"] = n.Columns,
            ["maxAbsWeightError"] = n.MaxAbsWeightError,
        }).ToArray());
        var tuned = new HashSet<string>(keptByTune, StringComparer.Ordinal);
        o["skippedNodes"] = new JsonArray(q.Skipped.Select(n => (JsonNode)new JsonObject
        {
            ["node"] = n.Node,
            ["opType"] = n.OpType,
            // The pass sees Tune's back-off as an exclusion like the user's; the report says who kept the layer float.
            ["reason"] = tuned.Contains(n.Node) ? "kept float by Tune (it broke a budget when quantized)" : n.Reason,
            ["keptByTune"] = tuned.Contains(n.Node),
        }).ToArray());
        o["floatFallbacks"] = floatFallbacks == null ? null : new JsonArray([.. floatFallbacks.Select(n => (JsonNode)n)]);
        return o;
    }

    private static JsonObject Validation(ValidationResult v, string source, bool synthetic) => new()
    {
        ["data"] = source,
        ["syntheticInputs"] = synthetic,
        ["note"] = synthetic ? Verdict.SyntheticNote(v.SampleCount) : null,
        ["samples"] = v.SampleCount,
        ["output"] = v.OutputName,
        ["hasLabels"] = v.HasLabels,
        ["originalAccuracy"] = v.OriginalAccuracy is { } a ? Round(a, 4) : null,
        ["compressedAccuracy"] = v.CompressedAccuracy is { } b ? Round(b, 4) : null,
        ["accuracyDrop"] = v.AccuracyDrop is { } d ? Round(d, 4) : null,
        ["metric"] = v.Metric == OutputKind.Embedding ? "embedding" : "classification",
        ["metricReason"] = v.MetricReason,
        ["top1Agreement"] = Round(v.Top1Agreement, 6),
        ["meanCosineSimilarity"] = Round(v.MeanCosineSimilarity, 6),
        ["embedding"] = v.Embedding is not { } e ? null : new JsonObject
        {
            ["pooling"] = e.Pooling,
            ["meanCosine"] = Round(e.MeanCosine, 6),
            ["minCosine"] = Round(e.MinCosine, 6),
            ["pairwiseSamples"] = e.PairwiseSamples,
            ["clearNeighborMargin"] = EmbeddingMetrics.ClearMargin,
            ["clearNeighborSamples"] = e.ClearNeighborSamples,
            ["neighborAgreement"] = e.NeighborAgreement is { } na ? Round(na, 6) : null,
            ["neighborAgreementAllSamples"] = e.NeighborAgreementAll is { } nall ? Round(nall, 6) : null,
            ["similarityCorrelation"] = e.SimilarityCorrelation is { } sc ? Round(sc, 6) : null,
        },
        ["maxAbsError"] = Finite(v.MaxAbsError),
        ["outputs"] = new JsonArray(v.Outputs.Select(o => (JsonNode)new JsonObject
        {
            ["name"] = o.Name,
            ["meanCosineSimilarity"] = Round(o.MeanCosineSimilarity, 6),
            ["maxAbsError"] = Finite(o.MaxAbsError),
            ["meanRelativeL2Error"] = Round(o.MeanRelativeL2Error, 6),
        }).ToArray()),
        ["originalSamplesPerSecond"] = Round(v.OriginalImagesPerSecond, 1),
        ["compressedSamplesPerSecond"] = Round(v.CompressedImagesPerSecond, 1),
        ["batchSize"] = v.BatchSize,
        ["batching"] = Batching(v),
        ["parallelRuns"] = v.ParallelRuns,
        ["latency"] = v.LatencyRuns == 0 ? null : new JsonObject
        {
            ["originalMs"] = Round(v.OriginalLatencyMs, 4),
            ["compressedMs"] = Round(v.CompressedLatencyMs, 4),
            ["ratio"] = Round(v.LatencyRatio, 4),
            ["runs"] = v.LatencyRuns,
            ["compressedSlowerShare"] = Round(v.CompressedSlowerFraction, 4),
            ["threads"] = v.Threads,
        },
    };

    /// <summary>How the samples were run, in the words of the summary line ("batch 1").</summary>
    internal static string Batching(ValidationResult v) => v.BatchSize == 1 ? "batch 1" : $"batched {v.BatchSize}";

    private static double Round(double v, int digits) => double.IsFinite(v) ? Math.Round(v, digits) : 0;

    private static double? Finite(float v) => float.IsFinite(v) ? v : null;

    /// <summary>Deflate size of the shipped (pruned and quantized) model, the figure that matters for .zip/.apk artifacts.</summary>
    private static long ZipOfOutput(ItemResult r) => r.CompressedZipBytes ?? r.Pruning?.ZipBytesAfter ?? 0;

    public static void Write(string path, JsonObject report) =>
        Core.Onnx.AtomicFile.WriteAllBytes(path, JsonSerializer.SerializeToUtf8Bytes(report, Indented));

    private static long PeakRss()
    {
        using var self = System.Diagnostics.Process.GetCurrentProcess();
        return self.PeakWorkingSet64;
    }

    /// <summary>
    /// The summary line: "model -> output: " (this build's paths), what was measured, the budgets' verdict, and
    /// where the readable report is. On a cache hit the measured parts come from the cache
    /// (<see cref="ItemResult.CachedSummaryParts"/>) and everything else is rendered for this build.
    /// </summary>
    public static string SummaryLine(ItemResult r)
    {
        var parts = new List<string>(r.CachedSummaryParts ?? SummaryParts(r));
        if (r.Budgets.Count > 0)
        {
            int broken = r.Budgets.Count(b => !b.Passed);
            parts.Add(broken == 0 ? $"{r.Budgets.Count} budget(s) met" : $"{broken} of {r.Budgets.Count} budget(s) BROKEN");
        }
        if (HtmlPath(r.Settings) is { } html)
        {
            parts.Add("report " + html);
        }
        return $"{r.Settings.Model} -> {r.Settings.Output}: " + string.Join("; ", parts);
    }

    /// <summary>The HTML report written beside report.json, or null without --report.</summary>
    public static string? HtmlPath(ItemSettings s) =>
        s.Report == null ? null : (s.Report.EndsWith(".json", StringComparison.OrdinalIgnoreCase) ? s.Report[..^5] : s.Report) + ".html";

    /// <summary>The measured parts of the summary line: no paths and no budget verdict, so a cache hit can replay them.</summary>
    public static List<string> SummaryParts(ItemResult r)
    {
        var ci = CultureInfo.InvariantCulture;
        var parts = new List<string>
        {
            string.Format(ci, "{0}, {1:0.0} KB -> {2:0.0} KB ({3:0.00}x)",
                (r.Settings.Pruning.Method == Core.Passes.PruningMethod.None ? "" : "pruned " + r.Settings.Pruning + " + ")
                + (r.Settings.Quantization == QuantizationScheme.None ? "no quantization" : r.Settings.Quantization.ToString()),
                r.OriginalBytes / 1024.0, r.CompressedBytes / 1024.0, r.CompressionRatio),
        };
        if (r.Validation is { } v)
        {
            if (v.OriginalAccuracy is { } a && v.CompressedAccuracy is { } b && v.AccuracyDrop is { } d)
            {
                parts.Add(string.Format(ci, "top-1 {0:0.00}% -> {1:0.00}% (drop {2:0.00} points)", a, b, d));
            }
            string on = Verdict.OnSyntheticInputs(r.Settings) ? Verdict.SyntheticNote(v.SampleCount)
                : string.Format(ci, "on {0} {1}", v.SampleCount, r.Settings.ValidationData != null ? "samples" : "calibration samples");
            if (v.Metric == OutputKind.Embedding && v.Embedding is { } e)
            {
                parts.Add(string.Format(ci, "embedding cosine {0:0.0000} (min {1:0.0000}){2}{3} {4} ({5})", e.MeanCosine, e.MinCosine,
                    e.NeighborAgreement is { } na ? string.Format(ci, ", clear-neighbour agreement {0:0.00}% ({1} samples)", na * 100, e.ClearNeighborSamples) : "",
                    e.SimilarityCorrelation is { } sc ? string.Format(ci, ", similarity rank correlation {0:0.0000}", sc) : "",
                    on, Batching(v)));
            }
            else
            {
                parts.Add(string.Format(ci, "agreement {0:0.00}%, cosine {1:0.0000} {2} ({3})", v.Top1Agreement * 100, v.MeanCosineSimilarity, on, Batching(v)));
            }
            // The numbers above judge one output; an app may read the others, so their cosines are printed too (lowest first).
            List<OutputMetrics> others = [.. v.Outputs.Where(o => o.Name != v.OutputName).OrderBy(o => o.MeanCosineSimilarity)];
            if (others.Count > 0)
            {
                parts.Add(string.Format(ci, "other output{0}: {1}{2}", others.Count == 1 ? "" : "s",
                    string.Join(", ", others.Take(3).Select(o => string.Format(ci, "'{0}' cosine {1:0.0000}", o.Name, o.MeanCosineSimilarity))),
                    others.Count > 3 ? string.Format(ci, " and {0} more in the report", others.Count - 3) : ""));
            }
            if (v.LatencyRuns > 0 && (Verdict.ClearlySlower(v) || r.Settings.Budgets.Any(b => b.Name == "MaxLatencyRatio")))
            {
                parts.Add(string.Format(ci, "latency ratio {0:0.00}", v.LatencyRatio));
            }
        }
        if (r.Pruning is { } pr && pr.ZipBytesBefore > 0)
        {
            parts.Add(string.Format(ci, "sparsity {0:0.0}% of {1} prunable weights{2}{3}", pr.AchievedSparsity * 100, pr.PrunableWeights,
                pr.RequestedSparsity is double req ? string.Format(ci, " (requested {0:0.0}%)", req * 100) : "",
                pr.Allocation switch
                {
                    "sensitivity" when pr.Sensitivity is { } a => string.Format(ci, ", per-layer sparsities by measured sensitivity ({0} probes{4} on {1} samples, {2:0.0} s; {3})", a.Probes, a.Samples, a.Seconds, LayerList(pr),
                        a.ReusedProbes > 0 ? string.Format(ci, ", {0} of them reused from an earlier attempt,", a.ReusedProbes) : ""),
                    "uniform" when pr.Sensitivity is { FellBackToUniform: true } a => string.Format(ci,
                        ", uniform per-layer sparsity ({0}): the sensitivity allocation measured no better (harm {1:G3} vs {2:G3} on {3} samples)",
                        a.UniformCandidate, a.MeasuredHarm, a.UniformMeasuredHarm, a.Samples),
                    "uniform" => ", uniform per-layer sparsity",
                    _ => "",
                }));
            if (pr.RequestedChannelFraction is double cf && pr.ChannelsBefore > 0)
            {
                parts.Add(string.Format(ci, "channels {0:0.0}% of {1} removed (requested {2:0.0}%), FLOPs {3:0.00}x", pr.ChannelFractionRemoved * 100, pr.ChannelsBefore, cf * 100,
                    pr.FlopsBefore > 0 ? (double)pr.FlopsAfter / pr.FlopsBefore : 1.0));
            }
            parts.Add(string.Format(ci, "zip {0:0.0} KB -> {1:0.0} KB, parameters {2} -> {3}", pr.ZipBytesBefore / 1024.0, ZipOfOutput(r) / 1024.0, pr.ParametersBefore, pr.ParametersAfter));
        }
        if (r.Tuning is { } t)
        {
            parts.Add(string.Format(ci, "tuned in {0:0.0}s of {1:0} s over {2} trials{3}: {4} layer(s) kept {5}{6}", t.ElapsedSeconds, t.TimeBudgetSeconds, t.Trials.Count,
                t.Harm is { } h ? ", harm from " + h : "", t.KeptByTune.Count, t.Harm == "pruning" ? "dense" : "float",
                t.Met ? "" : t.TimedOut ? ", TIMED OUT, budgets NOT met" : ", budgets NOT met"));
        }
        return parts;
    }

    /// <summary>"layer 12%, ..." for up to 6 pruned layers (most and least pruned first), the rest in the report.</summary>
    private static string LayerList(CompressOnBuild.Core.Passes.PruningSummary p)
    {
        var ci = System.Globalization.CultureInfo.InvariantCulture;
        List<CompressOnBuild.Core.Passes.PrunedLayer> sorted = [.. p.Pruned.OrderBy(l => l.Sparsity)];
        IEnumerable<CompressOnBuild.Core.Passes.PrunedLayer> shown = sorted.Count <= 6 ? sorted : sorted.Take(3).Concat(sorted.TakeLast(3));
        return string.Join(", ", shown.Select(l => string.Format(ci, "{0} {1:0}%", l.Node, l.Sparsity * 100)))
            + (sorted.Count > 6 ? string.Format(ci, " (least and most pruned of {0} layers; all in the report)", sorted.Count) : "");
    }

    /// <summary>
    /// A cached report made for this build: the paths, options, budgets, verdict and diagnostics are this build's;
    /// the measurements are the cached ones.
    /// </summary>
    public static JsonObject Replay(JsonObject cached, ItemResult r, string key)
    {
        JsonObject report = cached.DeepClone().AsObject();
        ItemSettings s = r.Settings;
        report["model"]!["source"] = s.Model;
        report["model"]!["output"] = s.Output;
        var options = new JsonObject();
        foreach ((string k, string v) in s.EffectiveOptions)
        {
            options[k] = v;
        }
        report["options"] = options;
        if (report["validation"] is JsonObject validation && (s.ValidationData != null || s.CalibrationData != null))
        {
            // A data path is this build's (the same bytes may sit elsewhere); synthetic inputs keep the cached description.
            validation["data"] = r.ValidationSource;
        }
        report["budgets"] = BudgetsJson(r);
        report["verdict"] = r.BudgetsPassed ? "passed" : "failed";
        report["diagnostics"] = DiagnosticsJson(r);
        report["cache"] = new JsonObject { ["key"] = key, ["hit"] = true };
        return report;
    }
}
