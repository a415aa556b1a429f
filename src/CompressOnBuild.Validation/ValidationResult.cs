namespace CompressOnBuild.Validation;

/// <summary>Error metrics of one model output, compressed against original, over all samples.</summary>
public sealed class OutputMetrics
{
    /// <summary>Output name.</summary>
    public required string Name { get; init; }

    /// <summary>Mean over samples of the cosine similarity between the two outputs (1 = same direction).</summary>
    public required double MeanCosineSimilarity { get; init; }

    /// <summary>Largest |original - compressed| over all elements and samples.</summary>
    public required float MaxAbsError { get; init; }

    /// <summary>Mean over samples of ||original - compressed||2 / ||original||2 (samples whose original output is all
    /// zero are left out; 0 when every sample is). Always finite.</summary>
    public required double MeanRelativeL2Error { get; init; }
}

/// <summary>
/// Original against compressed model on one data set. Serialized by the CLI into report.json (System.Text.Json);
/// percentages are 0..100, fractions 0..1.
/// </summary>
public sealed class ValidationResult
{
    /// <summary>Number of samples both models ran.</summary>
    public required int SampleCount { get; init; }

    /// <summary>The output used for top-1 (classification) metrics.</summary>
    public required string OutputName { get; init; }

    /// <summary>True when the data set had labels, so the accuracies are set.</summary>
    public required bool HasLabels { get; init; }

    /// <summary>Top-1 accuracy of the original model against the labels, percent; null without labels.</summary>
    public double? OriginalAccuracy { get; init; }

    /// <summary>Top-1 accuracy of the compressed model against the labels, percent; null without labels.</summary>
    public double? CompressedAccuracy { get; init; }

    /// <summary>Original minus compressed accuracy, percentage points (positive = the compressed model is worse).</summary>
    public double? AccuracyDrop { get; init; }

    /// <summary>Fraction of samples where both models have the same top-1 class (0..1).</summary>
    public required double Top1Agreement { get; init; }

    /// <summary>Mean cosine similarity of <see cref="OutputName"/> over samples (for embeddings: of the pooled
    /// embeddings, <see cref="EmbeddingMetrics.MeanCosine"/>).</summary>
    public required double MeanCosineSimilarity { get; init; }

    /// <summary>How <see cref="OutputName"/> was judged: classification (top-1) or embedding.</summary>
    public OutputKind Metric { get; init; } = OutputKind.Classification;

    /// <summary>Why that kind was chosen (shape, name, labels, or the user's Metric option).</summary>
    public string MetricReason { get; init; } = "";

    /// <summary>Embedding metrics of <see cref="OutputName"/>; null when it is judged as classification and no embedding budget asked for them.</summary>
    public EmbeddingMetrics? Embedding { get; init; }

    /// <summary>Largest |original - compressed| over all compared outputs.</summary>
    public required float MaxAbsError { get; init; }

    /// <summary>Per output metrics (every tensor output both models have).</summary>
    public required IReadOnlyList<OutputMetrics> Outputs { get; init; }

    /// <summary>Largest |original - reference| against the data set's output_*.pb files; null when there are none.</summary>
    public float? OriginalReferenceMaxAbsError { get; init; }

    /// <summary>Largest |compressed - reference| against the data set's output_*.pb files; null when there are none.</summary>
    public float? CompressedReferenceMaxAbsError { get; init; }

    /// <summary>Samples (images) per second of the original model over the data set pass.</summary>
    public required double OriginalImagesPerSecond { get; init; }

    /// <summary>Samples (images) per second of the compressed model over the data set pass.</summary>
    public required double CompressedImagesPerSecond { get; init; }

    /// <summary>Samples per run in the data set pass: 1, as an app runs the model (batching can change outputs).</summary>
    public required int BatchSize { get; init; }

    /// <summary>Single-sample runs that went on concurrently in the data set pass (throughput is measured so).</summary>
    public int ParallelRuns { get; init; } = 1;

    /// <summary>Median single-sample latency of the original model, milliseconds (interleaved with the compressed model).</summary>
    public required double OriginalLatencyMs { get; init; }

    /// <summary>Median single-sample latency of the compressed model, milliseconds.</summary>
    public required double CompressedLatencyMs { get; init; }

    /// <summary>Compressed over original median latency (below 1 = faster).</summary>
    public required double LatencyRatio { get; init; }

    /// <summary>Timed runs per model behind the latency medians.</summary>
    public required int LatencyRuns { get; init; }

    /// <summary>Fraction of the interleaved run pairs (original, compressed back to back) in which the compressed model
    /// took longer; 0 without latency runs. Near 0.5 when the two are equally fast, whatever the machine's load.</summary>
    public double CompressedSlowerFraction { get; init; }

    /// <summary>Intra-op threads of both sessions.</summary>
    public required int Threads { get; init; }
}

/// <summary>One model alone on a data set (baselines, inspect).</summary>
public sealed class ModelEvaluation
{
    /// <summary>Number of samples.</summary>
    public required int SampleCount { get; init; }

    /// <summary>Output used for top-1.</summary>
    public required string OutputName { get; init; }

    /// <summary>Top-1 class per sample.</summary>
    public required IReadOnlyList<int> Top1 { get; init; }

    /// <summary>Top-1 accuracy in percent; null without labels.</summary>
    public double? Accuracy { get; init; }

    /// <summary>Largest |output - reference| against output_*.pb files; null when there are none.</summary>
    public float? ReferenceMaxAbsError { get; init; }

    /// <summary>Samples per second.</summary>
    public required double ImagesPerSecond { get; init; }
}
