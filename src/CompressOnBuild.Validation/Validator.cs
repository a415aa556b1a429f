using System.Diagnostics;
using CompressOnBuild.Core;
using CompressOnBuild.Kernels;

namespace CompressOnBuild.Validation;

/// <summary>Settings for <see cref="Validator"/>.</summary>
public sealed class ValidatorOptions
{
    /// <summary>Output used for top-1 metrics; default: the model's first tensor output.</summary>
    public string? OutputName { get; init; }

    /// <summary>Timed single-sample runs per model for the latency medians (interleaved). Default 20; 0 skips latency.</summary>
    public int LatencyRuns { get; init; } = 20;

    /// <summary>Untimed runs per model before timing. Default 3.</summary>
    public int WarmupRuns { get; init; } = 3;

    /// <summary>
    /// Latency runs continue past <see cref="LatencyRuns"/> (up to 100 times as many) until each model has been timed
    /// for this long in total, so the medians of tiny models rest on more than a few milliseconds. Default 0 (exactly
    /// <see cref="LatencyRuns"/> runs).
    /// </summary>
    public double MinLatencyMilliseconds { get; init; }

    /// <summary>How the primary output is judged; <see cref="OutputKind.Auto"/> (default) chooses from its shape (see <see cref="EmbeddingMetrics.Choose"/>).</summary>
    public OutputKind Metric { get; init; }

    /// <summary>Progress lines for long validations (phase "validating", samples of both models); null: none.</summary>
    public ProgressReporter? Progress { get; init; }

    /// <summary>Measure the embedding metrics even when the output is judged as classification (an embedding budget asks for them).</summary>
    public bool EmbeddingMetrics { get; init; }
}

/// <summary>Compares a compressed model with its original on a data set (see <see cref="ValidationResult"/>).</summary>
public static class Validator
{
    /// <summary>
    /// Runs both models over <paramref name="data"/>, one sample per run (batch 1, several runs at a time), and computes top-1 accuracy (when labelled), top-1 agreement,
    /// output error metrics, throughput and interleaved single-sample latency.
    /// </summary>
    /// <exception cref="CompressException">NonFiniteOutputs (NaN/Inf in either model, with the sample index), OutputMismatch,
    /// OrtRunFailed, DataEmpty.</exception>
    public static ValidationResult Compare(ModelRunner original, ModelRunner compressed, Dataset data, ValidatorOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(original);
        ArgumentNullException.ThrowIfNull(compressed);
        ArgumentNullException.ThrowIfNull(data);
        options ??= new ValidatorOptions();
        if (data.Count == 0)
        {
            throw CompressException.ForFile(data.Source, DiagnosticCodes.DataEmpty, data.Source);
        }
        string primary = PrimaryOutput(original, options.OutputName);
        if (!compressed.Outputs.Any(o => o.Name == primary))
        {
            throw CompressException.ForFile(compressed.ModelPath, DiagnosticCodes.OutputMismatch, compressed.ModelPath, primary, "missing", "top-1");
        }
        string[] names = [.. original.Outputs
            .Where(o => o.ElementType != TensorElementType.Other && compressed.Outputs.Any(c => c.Name == o.Name && c.ElementType != TensorElementType.Other))
            .Select(o => o.Name)];
        int p = Array.IndexOf(names, primary);

        // Batch 1, as an app runs a model: in a batch, operators that span the batch axis (a reduction over all axes,
        // BatchNormalization in training mode, Flatten over axis 0) and dynamic quantization (one scale per run) give
        // other outputs than one sample alone does.
        options.Progress?.Phase("validating (original and compressed model)", 2 * data.Count);
        DatasetRun runA = original.RunDataset(data, names, batchSize: 1, progress: options.Progress);
        CheckLabelRange(data, runA, p, primary);
        DatasetRun runB = compressed.RunDataset(data, names, batchSize: 1, progress: options.Progress);
        CheckFinite(original.ModelPath, runA, names);
        CheckFinite(compressed.ModelPath, runB, names);

        int n = data.Count;
        double[] cosSum = new double[names.Length];
        double[] relSum = new double[names.Length];
        int[] relCount = new int[names.Length];
        float[] maxAbs = new float[names.Length];
        int agree = 0, correctA = 0, correctB = 0;
        for (int s = 0; s < n; s++)
        {
            for (int o = 0; o < names.Length; o++)
            {
                TensorData a = runA.Outputs[s][o];
                TensorData b = runB.Outputs[s][o];
                if (a.Data.Length != b.Data.Length)
                {
                    throw CompressException.ForFile(compressed.ModelPath, DiagnosticCodes.OutputMismatch, compressed.ModelPath, names[o],
                        $"shaped {b.ShapeText} where the original's is {a.ShapeText}", "compare");
                }
                ErrorMetricsResult m = ErrorMetrics.Compare(a.Data, b.Data);
                cosSum[o] += m.CosineSimilarity;
                if (m.ExpectedNorm > 0)
                {
                    // Relative error is undefined for an all-zero original output; such samples are left out here
                    // (MaxAbsError still covers them).
                    relSum[o] += m.RelativeL2;
                    relCount[o]++;
                }
                maxAbs[o] = Math.Max(maxAbs[o], m.MaxAbsDifference);
            }
            int topA = ArgMax(runA.Outputs[s][p].Data);
            int topB = ArgMax(runB.Outputs[s][p].Data);
            if (topA == topB)
            {
                agree++;
            }
            if (data.Labels != null)
            {
                correctA += topA == data.Labels[s] ? 1 : 0;
                correctB += topB == data.Labels[s] ? 1 : 0;
            }
        }
        OutputMetrics[] outputs = [.. names.Select((name, o) => new OutputMetrics
        {
            Name = name,
            MeanCosineSimilarity = cosSum[o] / n,
            MaxAbsError = maxAbs[o],
            MeanRelativeL2Error = relCount[o] == 0 ? 0 : relSum[o] / relCount[o],
        })];
        (OutputKind kind, string kindReason) = EmbeddingMetrics.Choose(options.Metric, primary, runA.Outputs[0][p].Shape, data.Labels != null,
            runA.Outputs.Take(16).All(o => EmbeddingMetrics.IsProbabilities(o[p].Data)));
        options.Progress?.Phase("comparing outputs");
        EmbeddingMetrics? embedding = kind == OutputKind.Embedding || options.EmbeddingMetrics ? Embeddings(runA, runB, p, data) : null;
        options.Progress?.Phase("measuring latency");
        (double latA, double latB, int latRuns, double slower) = options.LatencyRuns > 0 ? Latency(original, compressed, data, options) : (0, 0, 0, 0);
        double? accA = data.Labels == null ? null : 100.0 * correctA / n;
        double? accB = data.Labels == null ? null : 100.0 * correctB / n;
        return new ValidationResult
        {
            SampleCount = n,
            OutputName = primary,
            HasLabels = data.Labels != null,
            OriginalAccuracy = accA,
            CompressedAccuracy = accB,
            AccuracyDrop = accA - accB,
            Top1Agreement = (double)agree / n,
            MeanCosineSimilarity = kind == OutputKind.Embedding ? embedding!.MeanCosine : outputs[p].MeanCosineSimilarity,
            Metric = kind,
            MetricReason = kindReason,
            Embedding = embedding,
            MaxAbsError = outputs.Max(o => o.MaxAbsError),
            Outputs = outputs,
            OriginalReferenceMaxAbsError = ReferenceError(original, data, runA, names),
            CompressedReferenceMaxAbsError = ReferenceError(compressed, data, runB, names),
            OriginalImagesPerSecond = runA.SamplesPerSecond,
            CompressedImagesPerSecond = runB.SamplesPerSecond,
            BatchSize = Math.Max(runA.BatchSize, runB.BatchSize),
            ParallelRuns = Math.Min(runA.Parallelism, runB.Parallelism),
            OriginalLatencyMs = latA,
            CompressedLatencyMs = latB,
            LatencyRatio = latA > 0 ? latB / latA : 0,
            LatencyRuns = latRuns,
            CompressedSlowerFraction = slower,
            Threads = original.Options.IntraOpThreads,
        };
    }

    /// <summary>Embedding metrics of output <paramref name="p"/>: per-token outputs averaged over the tokens the data's
    /// attention mask (an input named like "mask", [1, tokens]) marks, else over all tokens.</summary>
    private static EmbeddingMetrics Embeddings(DatasetRun runA, DatasetRun runB, int p, Dataset data)
    {
        int maskInput = ActivationCollector.MaskInput(data.InputNames);
        var a = new float[data.Count][];
        var b = new float[data.Count][];
        bool perToken = false, masked = false;
        for (int s = 0; s < data.Count; s++)
        {
            TensorData oa = runA.Outputs[s][p];
            float[]? mask = null;
            if (oa.Shape.Length == 3 && oa.Shape[1] > 1)
            {
                perToken = true;
                if (maskInput >= 0 && data.GetSample(s)[maskInput] is { Shape.Length: 2 } m && m.Shape[1] == oa.Shape[1])
                {
                    mask = m.Data;
                    masked = true;
                }
            }
            a[s] = EmbeddingMetrics.Pool(oa, mask);
            b[s] = EmbeddingMetrics.Pool(runB.Outputs[s][p], mask);
        }
        string pooling = !perToken ? "none (one vector per sample)"
            : masked ? $"mean over the tokens of input '{data.InputNames[maskInput]}'" : "mean over all tokens";
        return EmbeddingMetrics.Compare(a, b, pooling);
    }

    /// <summary>Runs one model over <paramref name="data"/>: top-1 per sample, accuracy when labelled, reference error.</summary>
    /// <exception cref="CompressException">NonFiniteOutputs, OutputMismatch, OrtRunFailed, DataEmpty.</exception>
    public static ModelEvaluation Evaluate(ModelRunner model, Dataset data, string? outputName = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(data);
        if (data.Count == 0)
        {
            throw CompressException.ForFile(data.Source, DiagnosticCodes.DataEmpty, data.Source);
        }
        string primary = PrimaryOutput(model, outputName);
        string[] names = [.. model.Outputs.Where(o => o.ElementType != TensorElementType.Other).Select(o => o.Name)];
        int p = Array.IndexOf(names, primary);
        DatasetRun run = model.RunDataset(data, names, batchSize: 1);
        CheckLabelRange(data, run, p, primary);
        CheckFinite(model.ModelPath, run, names);
        int[] top1 = [.. run.Outputs.Select(o => ArgMax(o[p].Data))];
        double? accuracy = data.Labels == null ? null : 100.0 * top1.Where((t, i) => t == data.Labels[i]).Count() / data.Count;
        return new ModelEvaluation
        {
            SampleCount = data.Count,
            OutputName = primary,
            Top1 = top1,
            Accuracy = accuracy,
            ReferenceMaxAbsError = ReferenceError(model, data, run, names),
            ImagesPerSecond = run.SamplesPerSecond,
        };
    }

    /// <summary>
    /// Every label must name one of the primary output's classes: a label past the last class can never match, so
    /// both models would score 0% and every accuracy budget would pass unnoticed (CMPR0307).
    /// </summary>
    private static void CheckLabelRange(Dataset data, DatasetRun run, int primary, string outputName)
    {
        if (data.Labels == null)
        {
            return;
        }
        for (int s = 0; s < data.Labels.Count && s < run.Outputs.Count; s++)
        {
            int classes = run.Outputs[s][primary].Data.Length;
            if (data.Labels[s] < 0 || data.Labels[s] >= classes)
            {
                throw CompressException.ForFile(data.Source, DiagnosticCodes.LabelOutOfRange, data.Source, s, data.Labels[s],
                    $"output '{outputName}' has {classes} classes (labels 0 to {classes - 1})");
            }
        }
    }

    /// <summary>Index of the largest value (first on ties); NaN never wins.</summary>
    internal static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++)
        {
            if (values[i] > values[best])
            {
                best = i;
            }
        }
        return best;
    }

    private static string PrimaryOutput(ModelRunner model, string? requested)
    {
        if (requested != null)
        {
            TensorInfo? found = model.Outputs.FirstOrDefault(o => o.Name == requested);
            if (found == null || found.ElementType == TensorElementType.Other)
            {
                throw CompressException.ForFile(model.ModelPath, DiagnosticCodes.OutputMismatch, model.ModelPath, requested,
                    found == null ? "missing (outputs: " + string.Join(", ", model.Outputs.Select(o => o.Name)) + ")" : "not a numeric tensor", "top-1");
            }
            return requested;
        }
        return model.Outputs.FirstOrDefault(o => o.ElementType != TensorElementType.Other)?.Name
            ?? throw CompressException.ForFile(model.ModelPath, DiagnosticCodes.OutputMismatch, model.ModelPath, "(first output)", "not a numeric tensor", "top-1");
    }

    private static void CheckFinite(string modelPath, DatasetRun run, string[] names)
    {
        for (int s = 0; s < run.Outputs.Count; s++)
        {
            for (int o = 0; o < names.Length; o++)
            {
                if (!TensorStats.AllFinite(run.Outputs[s][o].Data))
                {
                    throw CompressException.ForFile(modelPath, DiagnosticCodes.NonFiniteOutputs, modelPath, names[o], s);
                }
            }
        }
    }

    /// <summary>Largest |output - reference| where the data set has output_*.pb files (matched to the model's outputs
    /// by name, else by position).</summary>
    private static float? ReferenceError(ModelRunner model, Dataset data, DatasetRun run, string[] names)
    {
        if (!data.HasReferenceOutputs)
        {
            return null;
        }
        float? max = null;
        for (int s = 0; s < data.Count; s++)
        {
            IReadOnlyList<TensorData>? refs = data.GetReferenceOutputs(s);
            if (refs == null)
            {
                continue;
            }
            for (int k = 0; k < refs.Count; k++)
            {
                string? name = names.Contains(refs[k].Name) ? refs[k].Name : k < model.Outputs.Count ? model.Outputs[k].Name : null;
                int o = name == null ? -1 : Array.IndexOf(names, name);
                if (o < 0)
                {
                    continue;
                }
                TensorData actual = run.Outputs[s][o];
                if (actual.Data.Length != refs[k].Data.Length)
                {
                    throw CompressException.ForFile(model.ModelPath, DiagnosticCodes.OutputMismatch, model.ModelPath, name,
                        $"shaped {actual.ShapeText} where the reference output is {refs[k].ShapeText}", "reference");
                }
                float e = ErrorMetrics.MaxAbsDifference(refs[k].Data, actual.Data);
                max = Math.Max(max ?? 0f, e);
            }
        }
        return max;
    }

    private static (double A, double B, int Runs, double SlowerFraction) Latency(ModelRunner a, ModelRunner b, Dataset data, ValidatorOptions options)
    {
        using ModelRunner.LatencyProbe pa = a.PrepareLatency(a.SampleFor(data, 0), [PrimaryOutput(a, null)]);
        using ModelRunner.LatencyProbe pb = b.PrepareLatency(b.SampleFor(data, 0), [PrimaryOutput(b, null)]);
        for (int i = 0; i < Math.Max(0, options.WarmupRuns); i++)
        {
            pa.Run();
            pb.Run();
        }
        // LatencyRuns at least; tiny models run on until each has been timed for MinLatencyMilliseconds (at most
        // 100 x LatencyRuns), since a median of 31 runs of a 20 us model moves by 10% with the machine's load.
        var ta = new List<double>();
        var tb = new List<double>();
        double sumA = 0, sumB = 0;
        int cap = options.LatencyRuns * 100;
        for (int r = 0; r < options.LatencyRuns || (Math.Min(sumA, sumB) < options.MinLatencyMilliseconds && r < cap); r++)
        {
            // Alternate which model goes first so neither always runs on a warmer cache.
            if (r % 2 == 0)
            {
                ta.Add(pa.Run());
                tb.Add(pb.Run());
            }
            else
            {
                tb.Add(pb.Run());
                ta.Add(pa.Run());
            }
            sumA += ta[^1];
            sumB += tb[^1];
        }
        // Each pair ran back to back, so load that slows both cancels out of the pair's comparison.
        double slower = (double)ta.Zip(tb).Count(p => p.Second > p.First) / ta.Count;
        return (Median([.. ta]), Median([.. tb]), ta.Count, slower);
    }

    internal static double Median(double[] values)
    {
        double[] sorted = [.. values.Order()];
        int m = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[m] : (sorted[m - 1] + sorted[m]) / 2;
    }
}
