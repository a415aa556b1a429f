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

    /// <summary>
    /// Called once neither model is run any more (after the latency runs, before the embedding metrics, which need only
    /// the pooled vectors), so the caller can close both sessions and free their memory for the metrics; the runners
    /// are not used after it. Null: nothing is called.
    /// </summary>
    public Action? SessionsDone { get; init; }
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
        Streamed run = RunBoth(original, compressed, data, names, p, primary, options);
        run.ThrowFirstFailure();
        Core.IO.MemoryTrace.Mark(original.ModelPath, "validation: samples run and compared");
        // The metrics below need neither session; what the concurrent runs grew ONNX Runtime's arenas to, and the
        // dropped outputs, go back first (the latency runs after them take one run's worth again).
        ShrinkArenas(original, compressed, data);
        Core.IO.MemoryTrace.Mark(original.ModelPath, "validation: arenas shrunk");

        int n = data.Count;
        double[] cosSum = new double[names.Length];
        double[] relSum = new double[names.Length];
        int[] relCount = new int[names.Length];
        float[] maxAbs = new float[names.Length];
        int agree = 0, correctA = 0, correctB = 0;
        // Summed in sample order (the runs finish in any order), so the metrics do not depend on thread timing.
        for (int s = 0; s < n; s++)
        {
            for (int o = 0; o < names.Length; o++)
            {
                int k = s * names.Length + o;
                cosSum[o] += run.Cosine[k];
                if (!double.IsNaN(run.RelativeL2[k]))
                {
                    relSum[o] += run.RelativeL2[k];
                    relCount[o]++;
                }
                maxAbs[o] = Math.Max(maxAbs[o], run.MaxAbs[k]);
            }
            if (run.TopA[s] == run.TopB[s])
            {
                agree++;
            }
            if (data.Labels != null)
            {
                correctA += run.TopA[s] == data.Labels[s] ? 1 : 0;
                correctB += run.TopB[s] == data.Labels[s] ? 1 : 0;
            }
        }
        OutputMetrics[] outputs = [.. names.Select((name, o) => new OutputMetrics
        {
            Name = name,
            MeanCosineSimilarity = cosSum[o] / n,
            MaxAbsError = maxAbs[o],
            MeanRelativeL2Error = relCount[o] == 0 ? 0 : relSum[o] / relCount[o],
        })];
        (OutputKind kind, string kindReason) = EmbeddingMetrics.Choose(options.Metric, primary, run.FirstShape, data.Labels != null,
            run.Probabilities.All(x => x));
        options.Progress?.Phase("measuring latency");
        (double latA, double latB, int latRuns, double slower) = options.LatencyRuns > 0 ? Latency(original, compressed, data, options) : (0, 0, 0, 0);
        Core.IO.MemoryTrace.Mark(original.ModelPath, "validation: latency measured");
        // Nothing below runs a model: the caller may close the sessions before the pairwise metrics allocate (2,000
        // samples: 32 MB of similarities and ranks).
        options.SessionsDone?.Invoke();
        options.Progress?.Phase("comparing outputs");
        EmbeddingMetrics? embedding = kind == OutputKind.Embedding || options.EmbeddingMetrics
            ? EmbeddingMetrics.Compare(run.PooledA!, run.PooledB!, run.Pooling) : null;
        run.DropPooled();
        Core.IO.MemoryTrace.Mark(original.ModelPath, "validation: embedding metrics computed");
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
            OriginalReferenceMaxAbsError = run.ReferenceA,
            CompressedReferenceMaxAbsError = run.ReferenceB,
            OriginalImagesPerSecond = run.SecondsA > 0 ? n / run.SecondsA : 0,
            CompressedImagesPerSecond = run.SecondsB > 0 ? n / run.SecondsB : 0,
            BatchSize = 1,
            ParallelRuns = run.Workers,
            OriginalLatencyMs = latA,
            CompressedLatencyMs = latB,
            LatencyRatio = latA > 0 ? latB / latA : 0,
            LatencyRuns = latRuns,
            CompressedSlowerFraction = slower,
            Threads = original.Options.IntraOpThreads,
        };
    }

    /// <summary>
    /// What <see cref="RunBoth"/> measured per sample (outputs are compared as each sample runs and then dropped: only
    /// these numbers and, for embedding metrics, one pooled vector per sample and model are kept), and the first
    /// failure of each kind.
    /// </summary>
    private sealed class Streamed(int samples, int outputs)
    {
        public readonly double[] Cosine = new double[samples * outputs];
        /// <summary>NaN where the original output is all zeros (relative error undefined; MaxAbs still covers it).</summary>
        public readonly double[] RelativeL2 = new double[samples * outputs];
        public readonly float[] MaxAbs = new float[samples * outputs];
        public readonly int[] TopA = new int[samples];
        public readonly int[] TopB = new int[samples];
        /// <summary>Whether each of the first 16 samples' primary outputs holds probabilities (the metric's choice).</summary>
        public bool[] Probabilities = [];
        public long[] FirstShape = [];
        public float[][]? PooledA;
        public float[][]? PooledB;
        public string Pooling = "";
        public float? ReferenceA;
        public float? ReferenceB;
        public double SecondsA;
        public double SecondsB;
        public int Workers = 1;

        // The first (lowest sample) failure of each kind, thrown in the order the checks ran when each model's outputs
        // were all held (the original's run, label range, the compressed model's run, non-finite outputs of each,
        // shape mismatches, reference outputs), so the error does not depend on thread timing or on the streaming.
        private readonly (int Sample, Exception? Error)[] _failures = [.. Enumerable.Repeat((int.MaxValue, (Exception?)null), (int)Failure.Count)];

        public void Fail(Failure kind, int sample, Exception e)
        {
            lock (_failures)
            {
                if (sample < _failures[(int)kind].Sample)
                {
                    _failures[(int)kind] = (sample, e);
                }
            }
        }

        public int FirstFailed(Failure kind)
        {
            lock (_failures)
            {
                return _failures[(int)kind].Sample;
            }
        }

        public void ThrowFirstFailure()
        {
            foreach ((int _, Exception? e) in _failures)
            {
                if (e != null)
                {
                    System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e);
                }
            }
        }

        public void AddReference(bool original, float? value)
        {
            if (value is not float v)
            {
                return;
            }
            lock (_failures)
            {
                if (original)
                {
                    ReferenceA = Math.Max(ReferenceA ?? 0f, v);
                }
                else
                {
                    ReferenceB = Math.Max(ReferenceB ?? 0f, v);
                }
            }
        }

        public void DropPooled()
        {
            PooledA = null;
            PooledB = null;
        }
    }

    /// <summary>Bytes allocated between two full collections during <see cref="RunBoth"/>.</summary>
    private const long CollectEveryBytes = 8L << 20;

    private enum Failure
    {
        RunOriginal, LabelRange, RunCompressed, NonFiniteOriginal, NonFiniteCompressed, Mismatch, ReferenceOriginal, ReferenceCompressed, Count,
    }

    /// <summary>
    /// Runs each sample through the original and then the compressed model (batch 1; <see cref="ModelRunnerOptions.Parallelism"/>
    /// samples at a time on the two sessions) and compares the outputs there and then, so neither model's outputs over the
    /// whole data set are ever held (a per-token output of 2,000 sentences is hundreds of MB per model). Sample 0 runs on
    /// both once untimed first. Each model's throughput is its share of the summed run times applied to the wall time.
    /// </summary>
    private static Streamed RunBoth(ModelRunner original, ModelRunner compressed, Dataset data, string[] names, int p, string primary, ValidatorOptions options)
    {
        int n = data.Count;
        var r = new Streamed(n, names.Length);
        int[]? orderA = original.OrderFor(data);
        int[]? orderB = compressed.OrderFor(data);
        int maskInput = ActivationCollector.MaskInput(data.InputNames);
        var gate = new object();
        bool pool = false;
        bool perToken = false, masked = false;
        long sumTicksA = 0, sumTicksB = 0;

        // One sample: both runs, then every comparison of its outputs; false stops the worker (the original failed).
        bool Sample(int s, bool timed)
        {
            IReadOnlyList<TensorData> inputs;
            lock (gate)
            {
                inputs = data.GetSample(s);
            }
            TensorData[] a, b;
            long t0 = Stopwatch.GetTimestamp();
            try
            {
                a = original.RunSampleAt(data, s, inputs, orderA, names);
            }
            catch (Exception e)
            {
                r.Fail(Failure.RunOriginal, s, e);
                return false;
            }
            long t1 = Stopwatch.GetTimestamp();
            if (timed)
            {
                options.Progress?.Advance();
            }
            CollectDroppedOutputs();
            bool runB = s < r.FirstFailed(Failure.RunCompressed);
            b = [];
            long t2 = Stopwatch.GetTimestamp();
            if (runB)
            {
                try
                {
                    b = compressed.RunSampleAt(data, s, inputs, orderB, names);
                }
                catch (Exception e)
                {
                    r.Fail(Failure.RunCompressed, s, e);
                    runB = false;
                }
            }
            long t3 = Stopwatch.GetTimestamp();
            CollectDroppedOutputs();
            if (timed)
            {
                Interlocked.Add(ref sumTicksA, t1 - t0);
                Interlocked.Add(ref sumTicksB, t3 - t2);
                options.Progress?.Advance();
            }
            if (data.Labels != null && s < data.Labels.Count)
            {
                int classes = a[p].Data.Length;
                if (data.Labels[s] < 0 || data.Labels[s] >= classes)
                {
                    r.Fail(Failure.LabelRange, s, CompressException.ForFile(data.Source, DiagnosticCodes.LabelOutOfRange, data.Source, s, data.Labels[s],
                        $"output '{primary}' has {classes} classes (labels 0 to {classes - 1})"));
                }
            }
            for (int o = 0; o < names.Length; o++)
            {
                if (!TensorStats.AllFinite(a[o].Data))
                {
                    r.Fail(Failure.NonFiniteOriginal, s, CompressException.ForFile(original.ModelPath, DiagnosticCodes.NonFiniteOutputs, original.ModelPath, names[o], s));
                }
            }
            if (s < 16)
            {
                r.Probabilities[s] = EmbeddingMetrics.IsProbabilities(a[p].Data);
            }
            IReadOnlyList<TensorData>? refs = null;
            if (data.HasReferenceOutputs)
            {
                lock (gate)
                {
                    refs = data.GetReferenceOutputs(s);
                }
                try
                {
                    r.AddReference(original: true, SampleReferenceError(original, refs, a, names));
                }
                catch (CompressException e)
                {
                    r.Fail(Failure.ReferenceOriginal, s, e);
                }
            }
            r.TopA[s] = ArgMax(a[p].Data);
            if (!runB)
            {
                return true;
            }
            for (int o = 0; o < names.Length; o++)
            {
                if (!TensorStats.AllFinite(b[o].Data))
                {
                    r.Fail(Failure.NonFiniteCompressed, s, CompressException.ForFile(compressed.ModelPath, DiagnosticCodes.NonFiniteOutputs, compressed.ModelPath, names[o], s));
                }
            }
            for (int o = 0; o < names.Length; o++)
            {
                if (a[o].Data.Length != b[o].Data.Length)
                {
                    r.Fail(Failure.Mismatch, s, CompressException.ForFile(compressed.ModelPath, DiagnosticCodes.OutputMismatch, compressed.ModelPath, names[o],
                        $"shaped {b[o].ShapeText} where the original's is {a[o].ShapeText}", "compare"));
                    return true;
                }
                ErrorMetricsResult m = ErrorMetrics.Compare(a[o].Data, b[o].Data);
                int k = s * names.Length + o;
                r.Cosine[k] = m.CosineSimilarity;
                r.RelativeL2[k] = m.ExpectedNorm > 0 ? m.RelativeL2 : double.NaN;
                r.MaxAbs[k] = m.MaxAbsDifference;
            }
            if (refs != null)
            {
                try
                {
                    r.AddReference(original: false, SampleReferenceError(compressed, refs, b, names));
                }
                catch (CompressException e)
                {
                    r.Fail(Failure.ReferenceCompressed, s, e);
                }
            }
            r.TopB[s] = ArgMax(b[p].Data);
            if (pool)
            {
                float[]? mask = null;
                if (a[p].Shape.Length == 3 && a[p].Shape[1] > 1)
                {
                    perToken = true;
                    if (maskInput >= 0 && inputs[maskInput] is { Shape.Length: 2 } m && m.Shape[1] == a[p].Shape[1])
                    {
                        mask = m.Data;
                        masked = true;
                    }
                }
                r.PooledA![s] = EmbeddingMetrics.Pool(a[p], mask);
                r.PooledB![s] = EmbeddingMetrics.Pool(b[p], mask);
            }
            return true;
        }

        // Every sample allocates its outputs (and input conversions) and drops them at once. Without a collection
        // every so often that garbage piles up as if it were kept: outputs over 85 KB land on the large-object heap,
        // which only a full collection frees, and the young generation's budget follows the CPU's cache (on a 105 MB
        // L3 about 80 MiB of dropped outputs stood in the heap). A full collection of this small heap takes a few ms.
        long collectedAt = GC.GetTotalAllocatedBytes(precise: false);
        void CollectDroppedOutputs()
        {
            long last = Interlocked.Read(ref collectedAt);
            long now = GC.GetTotalAllocatedBytes(precise: false);
            if (now - last >= CollectEveryBytes && Interlocked.CompareExchange(ref collectedAt, now, last) == last)
            {
                GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: false);
            }
        }

        if (n == 0)
        {
            return r;
        }
        r.Probabilities = new bool[Math.Min(16, n)];
        // Untimed first runs (one-time costs stay out of the throughput); sample 0's shape decides whether pooled
        // embeddings are kept: only when the metric may be embedding (probabilities can only make it classification).
        {
            IReadOnlyList<TensorData> first = data.GetSample(0);
            TensorData[] a0;
            try
            {
                a0 = original.RunSampleAt(data, 0, first, orderA, names);
            }
            catch (Exception e)
            {
                r.Fail(Failure.RunOriginal, 0, e);
                return r;
            }
            r.FirstShape = a0[p].Shape;
            try
            {
                compressed.RunSampleAt(data, 0, first, orderB, names);
            }
            catch (Exception e)
            {
                r.Fail(Failure.RunCompressed, 0, e);
            }
        }
        pool = options.EmbeddingMetrics || EmbeddingMetrics.Choose(options.Metric, primary, r.FirstShape, data.Labels != null).Kind == OutputKind.Embedding;
        if (pool)
        {
            r.PooledA = new float[n][];
            r.PooledB = new float[n][];
        }

        int workers = Math.Clamp(Math.Min(original.Options.Parallelism, compressed.Options.Parallelism), 1, n);
        int next = -1;
        void Work()
        {
            while (true)
            {
                int i = Interlocked.Increment(ref next);
                if (i >= n || i > r.FirstFailed(Failure.RunOriginal) || !Sample(i, timed: true))
                {
                    return;
                }
            }
        }
        TimeSpan elapsed = ModelRunner.OnThreads(workers, Work);
        double total = sumTicksA + sumTicksB;
        r.SecondsA = total > 0 ? elapsed.TotalSeconds * sumTicksA / total : 0;
        r.SecondsB = total > 0 ? elapsed.TotalSeconds * sumTicksB / total : 0;
        r.Workers = workers;
        r.Pooling = !perToken ? "none (one vector per sample)"
            : masked ? $"mean over the tokens of input '{data.InputNames[maskInput]}'" : "mean over all tokens";
        return r;
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
        float? max = null;
        for (int s = 0; s < data.Count && data.HasReferenceOutputs; s++)
        {
            if (SampleReferenceError(model, data.GetReferenceOutputs(s), run.Outputs[s], names) is float e)
            {
                max = Math.Max(max ?? 0f, e);
            }
        }
        return max;
    }

    /// <summary>One sample's largest |output - reference| (null: no reference outputs for it).</summary>
    /// <exception cref="CompressException">OutputMismatch when an output is shaped unlike its reference.</exception>
    private static float? SampleReferenceError(ModelRunner model, IReadOnlyList<TensorData>? refs, TensorData[] outputs, string[] names)
    {
        if (refs == null)
        {
            return null;
        }
        float? max = null;
        for (int k = 0; k < refs.Count; k++)
        {
            string? name = names.Contains(refs[k].Name) ? refs[k].Name : k < model.Outputs.Count ? model.Outputs[k].Name : null;
            int o = name == null ? -1 : Array.IndexOf(names, name);
            if (o < 0)
            {
                continue;
            }
            TensorData actual = outputs[o];
            if (actual.Data.Length != refs[k].Data.Length)
            {
                throw CompressException.ForFile(model.ModelPath, DiagnosticCodes.OutputMismatch, model.ModelPath, name,
                    $"shaped {actual.ShapeText} where the reference output is {refs[k].ShapeText}", "reference");
            }
            float e = ErrorMetrics.MaxAbsDifference(refs[k].Data, actual.Data);
            max = Math.Max(max ?? 0f, e);
        }
        return max;
    }

    /// <summary>Shrinks both sessions' arenas (<see cref="ModelRunner.ShrinkArena"/>, on sample 0) and collects the dropped outputs.</summary>
    private static void ShrinkArenas(ModelRunner original, ModelRunner compressed, Dataset data)
    {
        try
        {
            original.ShrinkArena(original.SampleFor(data, 0));
            compressed.ShrinkArena(compressed.SampleFor(data, 0));
        }
        catch (CompressException)
        {
            // Sample 0 ran on both already; a failure here only leaves the arenas as they were.
        }
        Core.IO.ProcessMemory.Release();
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
