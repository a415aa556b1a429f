using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using CompressOnBuild.Core;
using CompressOnBuild.Core.IO;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Validation;

namespace CompressOnBuild.Cli;

/// <summary>One compressed candidate: where it was written, what the pass did, and how it measured.</summary>
internal sealed record Attempt(
    string Path,
    IReadOnlyList<string> ExcludedNodes,
    PassResult? Quantization,
    PruningSummary? Pruning,
    long CompressedBytes,
    string CompressedSha256,
    ValidationResult? Validation,
    List<BudgetOutcome> Budgets,
    double CompressSeconds,
    double ValidateSeconds)
{
    public bool Passed => Budgets.All(b => b.Passed);

    /// <summary>For static int8: the calibration method this attempt used.</summary>
    public string? CalibrationMethod { get; init; }

    /// <summary>Layers kept dense by pruning (the same as <see cref="ExcludedNodes"/> unless the tuner backs off pruning alone).</summary>
    public IReadOnlyList<string> DenseNodes { get; init; } = [];

    /// <summary>Histograms of the quantized weights before and after, for the HTML report; null when nothing was quantized.</summary>
    public System.Text.Json.Nodes.JsonObject? WeightHistograms { get; init; }

    /// <summary>The graph ONNX Runtime optimized for this candidate's validation session, written by that session
    /// (the optimized-graph check reads it instead of opening the candidate again); null when nothing was quantized.</summary>
    public string? OptimizedPath { get; init; }
}

/// <summary>Compresses and validates one item: load, check, pass, save beside the output, validate, check budgets, (tune), publish atomically.</summary>
internal static class Compressor
{
    /// <summary>
    /// Compresses one item. Its diagnostics (errors thrown, warnings collected) name the user's files: paths inside the
    /// private work folder are mapped back to the item's Output or Model (<see cref="WorkFolders.UserPaths(string, string, string)"/>).
    /// </summary>
    public static void Run(ItemResult result, GlobalOptions global, Func<OrtInfo> ensureOrt, CompressionCacheAdapter? cache, ProgressReporter? progress = null)
    {
        ItemSettings s = result.Settings;
        try
        {
            RunItem(result, global, ensureOrt, cache, progress);
        }
        catch (CompressException e)
        {
            throw WorkFolders.UserPaths(e, s.Model, s.Output);
        }
        finally
        {
            for (int i = 0; i < result.Diagnostics.Count; i++)
            {
                Diagnostic d = result.Diagnostics[i];
                result.Diagnostics[i] = d with
                {
                    File = WorkFolders.UserPaths(d.File, s.Model, s.Output),
                    Message = WorkFolders.UserPaths(d.Message, s.Model, s.Output),
                };
            }
        }
    }

    // Optimized from the first call: tier-0 code reports every local (and spilled temporary) as live to the end of the
    // method, which would keep the parsed original model reachable through validation after the context dropped it.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static void RunItem(ItemResult result, GlobalOptions global, Func<OrtInfo> ensureOrt, CompressionCacheAdapter? cache, ProgressReporter? progress)
    {
        ItemSettings s = result.Settings;
        string modelFull = Path.GetFullPath(s.Model);
        string outputFull = Path.GetFullPath(s.Output);
        if (SamePath(modelFull, outputFull))
        {
            throw CompressException.ForFile(s.Model, DiagnosticCodes.OutputIsSource, s.Output);
        }
        // Never replace a device, FIFO or folder at the output path (as root, a rename would replace /dev/full).
        AtomicFile.CheckReplaceable(outputFull);
        AtomicFile.CheckReplaceable(outputFull + ".data");

        if (File.Exists(s.Model) && StreamingQuantizer.ShouldStream(s.Model, StreamingThreshold()))
        {
            RunStreaming(result, global, ensureOrt, modelFull, outputFull, progress);
            return;
        }
        ReleaseMemory(); // the size probe parsed the protobuf of a small model

        progress?.Phase("loading the model");
        MemoryTrace.Mark(s.Model, "start");
        ModelProto original = ModelIO.Load(s.Model, out bool externalData);
        MemoryTrace.Mark(s.Model, "loaded");
        ModelChecker.Validate(original, s.Model);
        (result.OriginalBytes, result.OriginalSha256) = HashModel(original);
        MemoryTrace.Mark(s.Model, "hashed");

        OrtInfo ort = ensureOrt();
        string? key = cache == null ? null : CompressionCacheAdapter.Key(result, ort);
        result.CacheKey = key;
        if (key != null && cache!.TryRestore(key, result, outputFull, global.BudgetFailureIsWarning))
        {
            result.FromCache = true;
            return;
        }

        // Candidates are written into a private work folder beside the output (same file name, so external data
        // references stay valid), validated there, and only the chosen one is moved into place.
        string outDir = Path.GetDirectoryName(outputFull)!;
        string work = Path.Combine(outDir, ".cob-" + Guid.NewGuid().ToString("N")[..12]);
        FileStream workLock = CreateWorkFolder(outDir, work, s.Output);
        AttemptContext? context = null;
        try
        {
            var runnerOptions = new ModelRunnerOptions { IntraOpThreads = 1 };
            // One attempt (no tuning): ONNX Runtime loads the model while the parsed original is dropped (loading takes
            // about twice the model's size for a moment); the synthetic-input hints need only the graph and the dims.
            ModelProto hints = s.Tune ? original : WithoutTensorData(original);
            ModelProto? kept = s.Tune ? original : null;
            original = null!;
            ReleaseMemory();
            // One attempt: the original's session is opened once, for validation (after the pass): its inputs are read
            // from the graph, and synthetic inputs are probed on that session when it opens. Tuning runs the original
            // from the start (every attempt compares against it), so it opens it now.
            ModelRunner? originalRunner = null;
            if (s.Tune)
            {
                originalRunner = OpenOriginal(s, modelFull, new ModelRunnerOptions { IntraOpThreads = 1, SourceModel = true });
                MemoryTrace.Mark(s.Model, "original opened in ONNX Runtime");
            }
            // Owned by the context from here on (it opens, closes and reopens the session, and reloads the original, to keep the peak down).
            context = new AttemptContext(s, kept, originalRunner,
                () => OpenOriginal(s, modelFull, new ModelRunnerOptions { IntraOpThreads = 1, SourceModel = true }),
                runnerOptions, work, Path.GetFileName(outputFull), result.OriginalBytes, originalRunner?.Inputs ?? ModelInputs.FromModel(hints))
            {
                Progress = progress,
            };
            kept = null;
            // Activation smoothing's layer inputs are collected from the model file before the pass parses it (only one
            // model-sized thing alive at a time): the candidates are known from the graph alone.
            context.SmoothingCandidates = externalData || s.Tune ? null : SmoothingCandidates(hints);
            progress?.Phase("reading the validation data");
            if (originalRunner != null || s.ValidationData != null || s.CalibrationData != null)
            {
                context.Data = LoadData(result, hints, context.Inputs, originalRunner, out string source);
                result.ValidationSource = source;
            }
            else
            {
                // Synthetic inputs are probed on the original's session: made when validation opens it.
                ModelProto graph = hints;
                context.PendingData = runner =>
                {
                    Dataset? data = LoadData(result, graph, runner.Inputs, runner, out string source);
                    result.ValidationSource = source;
                    return data;
                };
            }
            hints = null!;

            Attempt chosen = context.Make(s.NodesToExclude);
            MemoryTrace.Mark(s.Model, "validated");
            AddPassDiagnostics(result, chosen.Quantization);
            if (!chosen.Passed && s.Tune)
            {
                Attempt untuned = chosen;
                result.Tuning = Tuner.Run(context, chosen);
                chosen = result.Tuning.Chosen;
                result.Diagnostics.AddRange(Tuner.Diagnostics(result, untuned));
            }

            // Nothing below runs either model: free the sessions (and the original) before the cache copy and publish.
            context.Dispose();
            result.Quantization = chosen.Quantization;
            result.Pruning = chosen.Pruning;
            if (chosen.Pruning is { SparsityDiffers: true } ps)
            {
                var ci = System.Globalization.CultureInfo.InvariantCulture;
                result.Diagnostics.Add(new Diagnostic(Severity.Warning, DiagnosticCodes.SparsityDiffers, s.Model,
                    DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.SparsityDiffers, s.Model, ps.Method,
                        string.Format(ci, "a sparsity of {0:0.0}% over the model's {1} prunable weights (requested {2:0.0}%)", ps.AchievedSparsity * 100, ps.PrunableWeights, ps.RequestedSparsity!.Value * 100),
                        ps.SparsityNotes.Count == 0 ? "the pruned layers could not reach it" : string.Join("; ", ps.SparsityNotes))));
            }
            if (chosen.Pruning is { ZipBytesBefore: > 0 })
            {
                result.CompressedZipBytes = PruningSummary.ZipBytes(File.ReadAllBytes(chosen.Path));
            }
            result.WeightHistograms = chosen.WeightHistograms;
            result.CompressedBytes = chosen.CompressedBytes;
            result.CompressedSha256 = chosen.CompressedSha256;
            result.Validation = chosen.Validation;
            result.Budgets.AddRange(chosen.Budgets);
            result.CompressSeconds = chosen.CompressSeconds;
            result.ValidateSeconds = chosen.ValidateSeconds;
            Verdict.AddWarnings(result, chosen.Path, chosen.OptimizedPath);
            if (key != null)
            {
                // Cached whatever the verdict: a later build with other budgets re-checks these measurements.
                cache!.Store(key, result, chosen.Path, Budgets.Measure(chosen.Validation, result.OriginalBytes, chosen.CompressedBytes), Report.Build(result, ort));
            }

            MemoryTrace.Mark(s.Model, "cached");
            if (result.BudgetsPassed || global.BudgetFailureIsWarning)
            {
                if (Publish(chosen.Path, outputFull))
                {
                    result.CompressedSha256 = HashFile(outputFull);
                }
                result.Shipped = true;
            }
            else
            {
                // A model that broke its budget must not ship, not even a stale earlier output.
                DeleteIfExists(outputFull);
                ModelPair.RemoveStaleData(outputFull);
            }
        }
        finally
        {
            context?.Dispose();
            workLock.Dispose();
            try
            {
                if (Directory.Exists(work))
                {
                    Directory.Delete(work, recursive: true);
                }
            }
            catch (IOException)
            {
                // The work folder has a unique hidden name; a leftover never shadows an output.
            }
        }
    }

    /// <summary>
    /// Models of 1.5 GB and more (external data): int8 dynamic, int8 static (calibrated on the model file first), int4 weights or float16, one weight at a time, so memory stays near one weight
    /// plus a bounded working set; validated in ORT like any other model. Not cached (hashing gigabytes on every build
    /// would cost more than the cache saves); other schemes, pruning and tuning are refused for such models.
    /// </summary>
    private static void RunStreaming(ItemResult result, GlobalOptions global, Func<OrtInfo> ensureOrt, string modelFull, string outputFull,
        ProgressReporter? progress)
    {
        ItemSettings s = result.Settings;
        string why = s.Quantization is not (QuantizationScheme.Int8Dynamic or QuantizationScheme.Int4Weights or QuantizationScheme.Float16 or QuantizationScheme.Int8Static)
                ? "Quantization=" + s.QuantizationText
            : s.Int4Method == Int4Method.Gptq ? "Quantization=" + s.QuantizationText + " (GPTQ needs every layer's activations in memory)"
            : s.Pruning.Method != PruningMethod.None ? "Pruning=" + s.Pruning
            : s.Tune ? "Tune=true" : "";
        if (why.Length > 0)
        {
            throw CompressException.ForFile(s.Model, DiagnosticCodes.NotSupportedYet, s.Model, why + " (models over 1.5 GB are compressed by streaming: Int8Dynamic, Int8Static, Int4Weights or Float16)", "true");
        }
        ensureOrt();
        result.OriginalBytes = ModelIO.TotalBytesWithExternalData(s.Model);
        string outDir = Path.GetDirectoryName(outputFull)!;
        string work = Path.Combine(outDir, ".cob-" + Guid.NewGuid().ToString("N")[..12]);
        using (CreateWorkFolder(outDir, work, s.Output))
        {
            try
            {
                string candidate = Path.Combine(work, Path.GetFileName(outputFull));
                var watch = Stopwatch.StartNew();
                progress?.Phase("quantizing (streaming)");
                string[] notQuantized = s.OpTypesToQuantize == null ? [.. s.NodesToExclude]
                    : [.. s.NodesToExclude.Union(s.OpTypeExclusions(ModelIO.LoadLazy(s.Model).Model), StringComparer.Ordinal)];
                result.Quantization = s.Quantization switch
                {
                    QuantizationScheme.Int4Weights => PassResult.From(StreamingQuantizer.CompressInt4Weights(s.Model, candidate,
                        new Int4Options { ExcludedNodes = notQuantized, BlockSize = s.Int4BlockSize, Symmetric = s.Int4Symmetric, MseScales = false }, // min/max ranges: the streaming kernel's
                        s.Model, m => AddProvenance(m, s, s.NodesToExclude))),
                    QuantizationScheme.Float16 => PassResult.From(StreamingQuantizer.CompressFloat16(s.Model, candidate,
                        new Float16Options { ExcludedNodes = notQuantized }, s.Model, m => AddProvenance(m, s, s.NodesToExclude))),
                    QuantizationScheme.Int8Static => PassResult.From(CompressStaticStreaming(s, candidate, notQuantized, work, progress)),
                    _ => PassResult.From(StreamingQuantizer.CompressInt8Dynamic(s.Model, candidate,
                        new QuantizationOptions { ExcludedNodes = notQuantized }, s.Model, m => AddProvenance(m, s, s.NodesToExclude))),
                };
                result.CompressSeconds = watch.Elapsed.TotalSeconds;
                MemoryTrace.Mark(s.Model, "compressed (streaming)");
                AddPassDiagnostics(result, result.Quantization);
                if (result.Quantization is { NothingDone: false, Unchanged: false } q
                    && q.Skipped.Where(StreamingQuantizer.IsStreamingLimit).ToList() is { Count: > 0 } limited)
                {
                    // Layers the in-memory pass would have quantized: the summary says which and why, not only the report.
                    result.Diagnostics.Add(new Diagnostic(Severity.Warning, DiagnosticCodes.StreamingLeftFloat, s.Model,
                        DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.StreamingLeftFloat, s.Model, limited.Count, s.QuantizationText, Verdict.Reasons(limited))));
                }
                result.CompressedBytes = FileBytesWithExternalData(candidate);
                result.CompressedSha256 = HashFile(candidate);
                watch.Restart();
                var runnerOptions = new ModelRunnerOptions { IntraOpThreads = 1 };
                using (ModelRunner originalRunner = OpenOriginal(s, modelFull, new ModelRunnerOptions { IntraOpThreads = 1, SourceModel = true }))
                using (var compressed = new ModelRunner(candidate, runnerOptions))
                {
                    Dataset? data = LoadData(result, ModelIO.LoadLazy(s.Model).Model, originalRunner.Inputs, originalRunner, out string source);
                    result.ValidationSource = source;
                    // Neither session is needed after the latency runs: closed before the pairwise metrics.
                    result.Validation = data == null ? null : Validator.Compare(originalRunner, compressed, data, ValidationOptions(s, progress, () =>
                    {
                        compressed.Dispose();
                        originalRunner.Dispose();
                        ProcessMemory.Release();
                    }));
                }
                result.ValidateSeconds = watch.Elapsed.TotalSeconds;
                MemoryTrace.Mark(s.Model, "validated");
                result.Budgets.AddRange(Budgets.Evaluate(s, result.Validation, result.OriginalBytes, result.CompressedBytes));
                // No optimized-graph check here: ORT would write a second copy of a model this large.
                Verdict.AddWarnings(result, candidatePath: null);
                if (result.BudgetsPassed || global.BudgetFailureIsWarning)
                {
                    if (Publish(candidate, outputFull))
                    {
                        result.CompressedSha256 = HashFile(outputFull);
                    }
                    result.Shipped = true;
                }
                else
                {
                    DeleteIfExists(outputFull);
                    ModelPair.RemoveStaleData(outputFull);
                }
            }
            finally
            {
                try
                {
                    Directory.Delete(work, recursive: true);
                }
                catch (IOException)
                {
                }
            }
        }
    }

    /// <summary>
    /// Static int8 of a model over the streaming threshold: the calibration tensors are planned on the lazily loaded
    /// graph, calibrated in ONNX Runtime on a copy of the .onnx that reads the weights from the model's own folder
    /// (that session is closed before the pass), then <see cref="StreamingQuantizer.CompressInt8Static"/> quantizes one
    /// weight at a time from the external data.
    /// </summary>
    private static Int8StaticSummary CompressStaticStreaming(ItemSettings s, string candidate, string[] notQuantized, string work, ProgressReporter? progress)
    {
        if (!CalibrationOptions.TryParseMethod(s.CalibrationMethod, out CalibrationMethod method, out double percentile, out _))
        {
            throw new InvalidOperationException($"Calibration method '{s.CalibrationMethod}' was not validated."); // ItemSettings validates it
        }
        // Planned without exclusions, as the in-memory path calibrates (one set of ranges serves any exclusions).
        var planOptions = new Int8StaticOptions { ActivationType = s.ActivationType, PerChannel = s.PerChannel };
        (IReadOnlyList<string> tensors, IReadOnlyList<string> outputs) = StreamingQuantizer.Int8StaticTensorsToCalibrate(s.Model, planOptions, s.Model);
        ReleaseMemory();
        progress?.Phase("calibrating (" + s.CalibrationMethod + ")");
        CalibrationResult calibration = Calibrator.RunOnFile(s.Model, [.. outputs], tensors,
            inputs => DatasetLoader.Load(s.CalibrationData!, null, inputs, Preprocessing.Parse(s.Preprocessing), s.CalibrationSamples, text: s.Text),
            new CalibrationOptions { Method = method, Percentile = percentile, MaxSamples = s.CalibrationSamples }, s.Model, work);
        ReleaseMemory(); // the calibration session is closed: its native memory goes back before the pass reads weights
        MemoryTrace.Mark(s.Model, "calibrated (streaming)");
        progress?.Phase("quantizing (streaming)");
        return StreamingQuantizer.CompressInt8Static(s.Model, candidate, calibration,
            new Int8StaticOptions { ExcludedNodes = notQuantized, ActivationType = s.ActivationType, PerChannel = s.PerChannel },
            s.Model, m => AddProvenance(m, s, s.NodesToExclude));
    }

    /// <summary>
    /// How an item is validated. Latency: 31 interleaved runs (at least 100 ms per model so tiny models get enough runs)
    /// when a MaxLatencyRatio budget needs it, else a cheap 15 (at least 20 ms) for the slower-model warning CMPR0416.
    /// </summary>
    internal static ValidatorOptions ValidationOptions(ItemSettings s, ProgressReporter? progress = null, Action? sessionsDone = null)
    {
        bool latencyBudget = s.Budgets.Any(b => b.Name == "MaxLatencyRatio");
        return new()
        {
            Progress = progress,
            LatencyRuns = latencyBudget ? 31 : 15, WarmupRuns = latencyBudget ? 3 : 2, MinLatencyMilliseconds = latencyBudget ? 100 : 20,
            Metric = s.Metric, EmbeddingMetrics = Budgets.NeedsEmbeddingMetrics(s), SessionsDone = sessionsDone,
        };
    }

    /// <summary>Size from which the streaming path is used; COMPRESSONBUILD_STREAMING_THRESHOLD_BYTES overrides it (tests).</summary>
    private static long StreamingThreshold() =>
        long.TryParse(Environment.GetEnvironmentVariable("COMPRESSONBUILD_STREAMING_THRESHOLD_BYTES"), System.Globalization.NumberStyles.None,
            System.Globalization.CultureInfo.InvariantCulture, out long t) && t > 0 ? t : StreamingQuantizer.DefaultStreamingThresholdBytes;

    /// <summary>
    /// The original model in ONNX Runtime. A model ONNX Runtime refuses to load is the user's input, not our bug:
    /// CMPR0103 (exit 2) with ONNX Runtime's reason.
    /// </summary>
    private static ModelRunner OpenOriginal(ItemSettings s, string modelFull, ModelRunnerOptions options)
    {
        try
        {
            return new ModelRunner(modelFull, options);
        }
        catch (CompressException e) when (e.Code is DiagnosticCodes.OrtRunFailed or DiagnosticCodes.SourceRejectedByOrt)
        {
            throw CompressException.ForFile(s.Model, e, DiagnosticCodes.ModelInvalid, s.Model,
                "ONNX Runtime cannot load it: " + (e.InnerException?.Message ?? e.Message));
        }
    }

    /// <summary>Budgets that need both models run on inputs (everything but the size budgets).</summary>
    internal static bool NeedsMeasurement(Budget b) => b.Name is not ("MinCompressionRatio" or "MaxSizeKB");

    /// <summary>
    /// The item's data (ValidationData, else CalibrationData), else synthetic inputs the original model runs on
    /// (<see cref="SyntheticInputs"/>). Null when no synthetic inputs ran the original: then a budget that needs the
    /// measurement is CMPR0411 (exit 2), otherwise CMPR0410 is a warning and the model is compressed unvalidated.
    /// </summary>
    /// <remarks><paramref name="inputs"/>: the original's inputs; <paramref name="originalRunner"/> may be null only
    /// when the item has data (ValidationData or CalibrationData): synthetic inputs are probed on the original.</remarks>
    internal static Dataset? LoadData(ItemResult result, ModelProto graph, ModelInputs inputs, ModelRunner? originalRunner, out string source)
    {
        ItemSettings s = result.Settings;
        if (s.ValidationData != null || s.CalibrationData != null)
        {
            return LoadData(s, inputs, 0, out source);
        }
        ArgumentNullException.ThrowIfNull(originalRunner);
        SyntheticOutcome synthetic = SyntheticInputs.Create(graph, originalRunner, s.Inputs, samples: 16, seed: 20261123, s.Model);
        source = "random inputs (no ValidationData given" + (synthetic.Shapes.Length > 0 ? "; shapes " + synthetic.Shapes : "") + ")";
        if (synthetic.Data != null)
        {
            return synthetic.Data;
        }
        string tried = synthetic.Failures.Count == 0 ? "none"
            : $"{synthetic.Failures.Count} configuration(s); the last: {synthetic.Failures[^1]}";
        if (s.Budgets.FirstOrDefault(NeedsMeasurement) is { } budget)
        {
            throw CompressException.ForFile(s.Model, DiagnosticCodes.SyntheticInputsNeeded, s.Model, tried, budget.Name);
        }
        result.Diagnostics.Add(new Diagnostic(Severity.Warning, DiagnosticCodes.SyntheticInputsFailed, s.Model,
            DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.SyntheticInputsFailed, s.Model, tried)));
        source = "none: the original model ran on no synthetic inputs tried";
        return null;
    }

    /// <summary>True when CalibrationData and ValidationData are the same file or folder, or hold the same bytes.</summary>
    internal static bool CalibratesOnValidationData(ItemSettings s) =>
        s.CalibrationData != null && s.ValidationData != null
        && (SamePath(Path.GetFullPath(s.CalibrationData), Path.GetFullPath(s.ValidationData))
            || CompressionCacheAdapter.Fingerprint(s.CalibrationData) == CompressionCacheAdapter.Fingerprint(s.ValidationData));

    /// <summary>What the item is validated on, as the report and summary name it.</summary>
    internal static string DataSource(ItemSettings s) =>
        s.ValidationData ?? (s.CalibrationData != null ? "calibration data (no ValidationData given): " + s.CalibrationData : "random inputs (no ValidationData given)");

    /// <summary>The validation data, or deterministic random inputs when the item has none.</summary>
    internal static Dataset LoadData(ItemSettings s, ModelInputs inputs, int maxSamplesOverride, out string source)
    {
        if (s.ValidationData != null)
        {
            Preprocessing pre = Preprocessing.Parse(s.Preprocessing);
            int max = maxSamplesOverride > 0 ? (s.ValidationSamples > 0 ? Math.Min(s.ValidationSamples, maxSamplesOverride) : maxSamplesOverride) : s.ValidationSamples;
            source = s.ValidationData;
            return DatasetLoader.Load(s.ValidationData, s.Labels, inputs, pre, max, text: s.Text);
        }
        if (s.CalibrationData != null)
        {
            // Agreement-type budgets fall back to the calibration inputs (no labels): better than random inputs.
            int max = maxSamplesOverride > 0 ? maxSamplesOverride : 0;
            source = DataSource(s);
            return DatasetLoader.Load(s.CalibrationData, null, inputs, Preprocessing.Parse(s.Preprocessing), max, text: s.Text);
        }
        source = DataSource(s);
        return RandomInputs.Create(inputs, samples: 16, seed: 20261123);
    }

    private static void AddPassDiagnostics(ItemResult result, PassResult? summary)
    {
        ItemSettings s = result.Settings;
        if (summary == null)
        {
            return;
        }
        if (summary.Unchanged)
        {
            string code = summary.AlreadyFloat16 ? DiagnosticCodes.AlreadyFloat16 : DiagnosticCodes.AlreadyQuantized;
            result.Diagnostics.Add(new Diagnostic(Severity.Warning, code, s.Model, DiagnosticCodes.FormatWithoutCode(code, s.Model, summary.UnchangedReason)));
        }
        if (summary.Details["clampedValues"] is { } clamped && clamped.GetValue<long>() > 0)
        {
            result.Diagnostics.Add(new Diagnostic(Severity.Warning, DiagnosticCodes.Float16Clamped, s.Model,
                DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.Float16Clamped, s.Model, clamped.GetValue<long>())));
        }
        if (summary.Unchanged)
        {
        }
        else if (summary.NothingDone)
        {
            // The passes' own per-layer reasons (also in the report's skippedNodes), not a guess.
            result.Diagnostics.Add(new Diagnostic(Severity.Warning, DiagnosticCodes.NothingToQuantize, s.Model,
                DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.NothingToQuantize, s.Model, s.QuantizationText,
                    Verdict.Reasons(summary.Skipped) ?? OpRegistry.NoWeightsReason(s.Quantization))));
        }
    }

    /// <summary>The private work folder beside the output; a folder that cannot be written is CMPR0106 (exit 2).</summary>
    private static FileStream CreateWorkFolder(string outDir, string work, string output)
    {
        try
        {
            WorkFolders.CleanStale(outDir);
            return WorkFolders.Create(work);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw CompressException.ForFile(output, e, DiagnosticCodes.OutputWriteFailed, output, e.Message);
        }
    }

    /// <summary>Publishes the candidate; true when the shipped .onnx was rewritten to content-unique data names (new hash).</summary>
    private static bool Publish(string candidatePath, string outputFull)
    {
        try
        {
            // The .onnx and its data files as one atomic step (see ModelPair).
            return ModelPair.Publish(candidatePath, outputFull, copy: false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw CompressException.ForFile(outputFull, e, DiagnosticCodes.OutputWriteFailed, outputFull, e.Message);
        }
    }

    internal static void AddProvenance(ModelProto model, ItemSettings s, IReadOnlyList<string> excluded)
    {
        void Set(string key, string value)
        {
            StringStringEntryProto? existing = model.MetadataProps.FirstOrDefault(p => p.Key == key);
            if (existing != null)
            {
                existing.Value = value;
            }
            else
            {
                model.MetadataProps.Add(new StringStringEntryProto { Key = key, Value = value });
            }
        }
        Set("compressonbuild.version", ToolInfo.Version);
        string options = "Quantization=" + s.Quantization + ";Pruning=" + s.Pruning;
        if (excluded.Count > 0)
        {
            options += ";NodesToExclude=" + string.Join(",", excluded);
        }
        Set("compressonbuild.options", options);
    }

    /// <summary>
    /// Size and SHA-256 of the model's serialized bytes, hashed as they are serialized (no second copy of the model
    /// in memory).
    /// </summary>
    internal static (long Bytes, string Sha256) HashModel(ModelProto model)
    {
        using var hash = new HashingStream();
        using (var output = new Google.Protobuf.CodedOutputStream(hash, leaveOpen: true))
        {
            model.WriteTo(output);
        }
        return (hash.Length, hash.HexDigest());
    }

    /// <summary>
    /// The layer inputs Int8Dynamic's activation smoothing may ask for: input 0 of the main graph's MatMul nodes and
    /// Gemm nodes (not transA) whose other operand is constant (an initializer, or computed from constants only), and
    /// the graph's outputs (so none is added twice). Read from the graph alone (tensor values are not needed).
    /// </summary>
    internal static (string[] Inputs, string[] Outputs) SmoothingCandidates(ModelProto graph)
    {
        var constant = new HashSet<string>(graph.Graph.Initializer.Select(t => t.Name), StringComparer.Ordinal);
        var inputs = new List<string>();
        foreach (NodeProto n in graph.Graph.Node)
        {
            if ((n.OpType == "MatMul" || (n.OpType == "Gemm" && !n.Attribute.Any(a => a.Name == "transA" && a.I != 0)))
                && n.Domain.Length == 0 && n.Input.Count >= 2 && constant.Contains(n.Input[1]) && !constant.Contains(n.Input[0]))
            {
                inputs.Add(n.Input[0]);
            }
            if (n.Input.All(i => i.Length == 0 || constant.Contains(i)) && !n.Attribute.Any(a => a.G != null || a.Graphs.Count > 0)
                && n.OpType is not ("RandomNormal" or "RandomUniform" or "RandomNormalLike" or "RandomUniformLike" or "Multinomial"))
            {
                foreach (string o in n.Output.Where(o => o.Length > 0))
                {
                    constant.Add(o);
                }
            }
        }
        return ([.. inputs.Distinct(StringComparer.Ordinal)], [.. graph.Graph.Output.Select(o => o.Name)]);
    }

    /// <summary>A copy of <paramref name="model"/> whose tensors keep their names, types and dims but no values.</summary>
    private static ModelProto WithoutTensorData(ModelProto model)
    {
        ModelProto copy = model.Clone(); // raw_data bytes are shared with the original, not copied
        foreach (TensorProto t in ModelWalker.Tensors(copy))
        {
            t.ClearRawData();
            t.FloatData.Clear();
            t.Int32Data.Clear();
            t.Int64Data.Clear();
            t.DoubleData.Clear();
            t.Uint64Data.Clear();
            t.StringData.Clear();
        }
        return copy;
    }

    /// <summary>SHA-256 (lower-case hex) of a file, read in chunks.</summary>
    internal static string HashFile(string path)
    {
        using FileStream fs = new(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan);
        return Convert.ToHexStringLower(SHA256.HashData(fs));
    }

/// <summary>See <see cref="ProcessMemory.Release"/>.</summary>
    internal static void ReleaseMemory() => ProcessMemory.Release();

    public static long FileBytesWithExternalData(string path)
    {
        long size = new FileInfo(path).Length;
        string data = path + ".data";
        return File.Exists(data) ? size + new FileInfo(data).Length : size;
    }

    private static void DeleteIfExists(string path)
    {
        if (File.Exists(path))
        {
            File.Delete(path);
        }
    }

    private static bool SamePath(string a, string b)
    {
        StringComparison cmp = OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
        return string.Equals(SafePath.RealPath(a), SafePath.RealPath(b), cmp);
    }
}

/// <summary>
/// What every attempt of one item shares: the original model and its runner, the data, the work folder.
/// <para>
/// Memory: the original model is held three ways (parsed here, as an ONNX Runtime session, and as the candidate's
/// tensors that are still float), and each is about the model's size. Without tuning (one attempt) the session is
/// closed while the candidate is compressed, and the parsed original is dropped before the two sessions are opened
/// for validation, so no two of them are alive at once; <see cref="Original"/> and <see cref="OriginalRunner"/>
/// reload on demand. With tuning both stay, since every attempt needs them.
/// </para>
/// </summary>
internal sealed class AttemptContext(ItemSettings settings, ModelProto? original, ModelRunner? originalRunner, Func<ModelRunner> reopenOriginal,
    ModelRunnerOptions runnerOptions, string workDirectory, string fileName, long originalBytes, ModelInputs inputs) : IDisposable
{
    private int _count;
    private ModelProto? _original = original;
    private ModelRunner? _originalRunner = originalRunner;

    /// <summary>The original model, parsed and checked (reloaded from the item's Model if it was dropped).</summary>
    public ModelProto Original => _original ??= Reload();

    /// <summary>The item's model parsed again, and checked (the checker also sorts an unsorted graph) as when first loaded.</summary>
    private ModelProto Reload()
    {
        ModelProto model = ModelIO.Load(settings.Model);
        ModelChecker.Validate(model, settings.Model);
        return model;
    }

    /// <summary>The original model's ONNX Runtime session (reopened if an attempt closed it).</summary>
    public ModelRunner OriginalRunner => _originalRunner ??= reopenOriginal();

    /// <summary>The original model's inputs: as its session reports them when it was open from the start (tuning),
    /// else read from its graph (<see cref="ModelInputs.FromModel"/>, which lists them as ONNX Runtime does).</summary>
    public ModelInputs Inputs { get; } = inputs;

    /// <summary>The inputs both models are compared on, set once by the caller; null when the original ran on no synthetic inputs (CMPR0410).</summary>
    public Dataset? Data { get; set; }

    /// <summary>
    /// Makes <see cref="Data"/> on the original's session when validation first opens it (synthetic inputs are probed
    /// on the original; one attempt opens that session only to validate); null once made, or when the caller set Data.
    /// </summary>
    public Func<ModelRunner, Dataset?>? PendingData { get; set; }

    /// <summary>One attempt only (no tuning): the original's session and parsed model are released between phases.</summary>
    private bool SingleAttempt => !settings.Tune;

    /// <summary>The parsed original, which the context then no longer holds (the next use of <see cref="Original"/> reloads it).</summary>
    private ModelProto TakeOriginal()
    {
        ModelProto model = Original;
        _original = null;
        return model;
    }

    /// <summary>Closes the original's session (kept are its inputs); the next use of <see cref="OriginalRunner"/> reopens it.</summary>
    private void CloseOriginalRunner()
    {
        if (_originalRunner != null)
        {
            _originalRunner.Dispose();
            _originalRunner = null;
        }
    }

    /// <summary>Closes the original's session and drops the parsed original.</summary>
    public void Dispose()
    {
        CloseOriginalRunner();
        _original = null;
        Compressor.ReleaseMemory();
    }
    private readonly Dictionary<string, CalibrationResult> _calibrations = new(StringComparer.Ordinal);

    private Dataset? _calibrationData;

    /// <summary>Progress lines for the item's long phases; null: none.</summary>
    public ProgressReporter? Progress { get; init; }
    private Dictionary<string, Activation>? _activations;

    private Dataset CalibrationData() =>
        _calibrationData ??= DatasetLoader.Load(settings.CalibrationData!, null, Inputs, Preprocessing.Parse(settings.Preprocessing),
            settings.CalibrationSamples, text: settings.Text);

    /// <summary>
    /// Calibration activations, collected once per item and shared by the attempts (they come from models whose
    /// activations are the original's: pruning reads them before it changes anything); null without CalibrationData.
    /// <paramref name="shared"/> false: collected from the model asked about on every call, never through the shared
    /// cache (GPTQ after pruning: a pruned model's layer inputs differ from the original's under the same names).
    /// </summary>
    private ActivationSource? Activations(bool shared = true)
    {
        if (settings.CalibrationData == null)
        {
            return null;
        }
        if (!shared)
        {
            return (model, names) => BlameTheSource(() => ActivationCollector.Collect(model, names, CalibrationData(), settings.CalibrationSamples,
                runnerOptions, workDirectory), CalibrationData());
        }
        return (model, names) =>
        {
            _activations ??= [];
            string[] missing = names.Where(n => !_activations.ContainsKey(n)).ToArray();
            if (missing.Length > 0)
            {
                foreach ((string k, Activation v) in BlameTheSource(() => ActivationCollector.Collect(model, missing, CalibrationData(),
                    settings.CalibrationSamples, runnerOptions, workDirectory), CalibrationData()))
                {
                    _activations[k] = v;
                }
            }
            return names.ToDictionary(n => n, n => _activations[n], StringComparer.Ordinal);
        };
    }

    private Dataset? _smoothingData;

    /// <summary>
    /// The layer inputs activation smoothing may ask for and the graph's outputs (<see cref="Compressor.SmoothingCandidates"/>),
    /// set when they can be collected from the model file before the pass (one attempt, no external data); else null.
    /// </summary>
    public (string[] Inputs, string[] Outputs)? SmoothingCandidates { get; set; }

    /// <summary>Smoothing statistics collected from the model file before the pass (<see cref="CollectSmoothingFromFile"/>).</summary>
    private Dictionary<string, ActivationRows?>? _smoothingCollected;

    /// <summary>Sensitivity probes measured for this item (<see cref="HarmMeasure.Reuse"/>), shared by Tune's attempts.</summary>
    private readonly Dictionary<string, double> _probeHarms = new(StringComparer.Ordinal);

    /// <summary>The samples smoothing measures on and how many: CalibrationData, else evenly spaced validation inputs; null without data.</summary>
    private (Dataset On, int Samples)? SmoothingData()
    {
        if (settings.CalibrationData == null && settings.ValidationData == null)
        {
            return null;
        }
        int samples = Math.Min(settings.CalibrationSamples, QuantizationOptions.SmoothingSamples);
        Dataset on = settings.CalibrationData != null ? CalibrationData()
            : _smoothingData ??= Compressor.LoadData(settings, Inputs, samples, out _);
        return (on, samples);
    }

    /// <summary>
    /// Int8Dynamic's activation smoothing reads the layer inputs of <see cref="QuantizationOptions.SmoothingSamples"/>
    /// samples (at most CalibrationSamples): of CalibrationData, else evenly spaced validation inputs; null without
    /// data (no smoothing). Only their statistics are kept (<see cref="ActivationRows"/>: channel maxima and
    /// <see cref="QuantizationOptions.SmoothingMeasuredRows"/> rows per input). Served from the collection made before
    /// the pass when it holds every name asked for.
    /// </summary>
    private ActivationRowSource? SmoothingRows()
    {
        if (SmoothingData() is not (Dataset on, int samples))
        {
            return null;
        }
        return (model, names) =>
        {
            if (_smoothingCollected is { } pre && names.All(pre.ContainsKey))
            {
                // Asked once per pass: the collection is the pass's from here (it drops it after measuring).
                _smoothingCollected = null;
                return names.ToDictionary(n => n, n => pre[n], StringComparer.Ordinal);
            }
            return BlameTheSource(() => ActivationCollector.CollectRows(model, names, on, samples, QuantizationOptions.SmoothingMeasuredRows, runnerOptions, workDirectory), on);
        };
    }

    /// <summary>
    /// Collects the smoothing candidates' activations from the model file while no parsed model is held (the ONNX Runtime
    /// session of the collection model is then the only model-sized thing in memory). A collection ONNX Runtime refuses
    /// is left to the pass's own (which blames the source where the original fails too).
    /// </summary>
    private void CollectSmoothingFromFile()
    {
        if (SmoothingCandidates is not { Inputs.Length: > 0 } c || _smoothingCollected != null || SmoothingData() is not (Dataset on, int samples))
        {
            return;
        }
        try
        {
            _smoothingCollected = ActivationCollector.CollectRowsFromFile(settings.Model, c.Outputs, c.Inputs, on, samples, QuantizationOptions.SmoothingMeasuredRows,
                runnerOptions, workDirectory);
        }
        catch (CompressException e) when (e.Code == DiagnosticCodes.OrtRunFailed)
        {
            _smoothingCollected = null;
        }
        Compressor.ReleaseMemory(); // the collection session is closed
        MemoryTrace.Mark(settings.Model, "smoothing activations collected");
    }

    /// <summary>
    /// Runs a collection over the user's model copied with extra outputs. ONNX Runtime failing there is CMPR0402 (our
    /// bug, exit 3) only if the original runs on the same data; when the original fails too, its own CMPR0110 (bad
    /// input, exit 2) is what surfaces.
    /// </summary>
    /// <summary>
    /// Opens a session on a model we wrote: ONNX Runtime refusing it is CMPR0402 (our bug, exit 3) only if it loads the
    /// original; a source model it refuses (one attempt opens the original only to validate) is CMPR0103 (bad input, exit 2).
    /// </summary>
    private T BlameTheSource<T>(Func<T> open)
    {
        try
        {
            return open();
        }
        catch (CompressException e) when (e.Code == DiagnosticCodes.OrtRunFailed)
        {
            _ = OriginalRunner;
            throw;
        }
    }

    private T BlameTheSource<T>(Func<T> collect, Dataset on)
    {
        try
        {
            return collect();
        }
        catch (CompressException e) when (e.Code == DiagnosticCodes.OrtRunFailed)
        {
            OriginalRunner.RunDataset(on);
            throw;
        }
    }

    /// <summary>
    /// Calibration samples the default sensitivity allocation of Magnitude / SparseGPT measures harm on (and SparseGPT's
    /// probes build their Hessians from): a bounded, evenly spaced subset, so the layers x grid probes stay affordable on
    /// large models; the pruning itself still uses CalibrationSamples.
    /// </summary>
    internal const int AllocationProbeSamples = 32;

    /// <summary>
    /// Work one allocation probe may cost, in floating-point operations of the prunable layers over its samples: models
    /// small enough measure their harm on more calibration samples than <see cref="AllocationProbeSamples"/> (up to
    /// CalibrationSamples), where 32 samples leave the one-layer harms too noisy to rank layers by (measured on mnist-8:
    /// 32 samples chose 70% / 29% for its second convolution and output layer, 256 chose 53% / 50%, 0.39 vs 0.25 points).
    /// </summary>
    internal const double AllocationProbeFlops = 2.56e9;

    /// <summary>
    /// Samples the default sensitivity allocation measures on: CalibrationSamples when they fit
    /// <see cref="AllocationProbeFlops"/> at the model's floating-point operations per sample (2 per multiply-add of the
    /// prunable layers), never fewer than
    /// <see cref="AllocationProbeSamples"/> (or CalibrationSamples when smaller). The work per sample is only estimated
    /// when every input is a float tensor with fixed dimensions beyond the first (token ids or variable lengths: the
    /// MatMuls run once per position, which the weights alone do not tell) and every Conv's output size is known;
    /// otherwise <see cref="AllocationProbeSamples"/>.
    /// </summary>
    internal static int AllocationSamples(ModelProto model, int calibrationSamples, string displayName)
    {
        int floor = Math.Min(calibrationSamples, AllocationProbeSamples);
        var initializers = new HashSet<string>(model.Graph.Initializer.Select(i => i.Name), StringComparer.Ordinal);
        bool fixedFloatInputs = model.Graph.Input.Where(i => !initializers.Contains(i.Name)).All(i =>
            i.Type?.TensorType is { } t && t.ElemType is (int)TensorProto.Types.DataType.Float or (int)TensorProto.Types.DataType.Float16 or (int)TensorProto.Types.DataType.Double
            && t.Shape is { } shape && shape.Dim.Skip(1).All(d => d.HasDimValue && d.DimValue > 0));
        if (!fixedFloatInputs)
        {
            return floor;
        }
        (_, long flops, bool exact) = Pruner.Measure(model, displayName);
        if (!exact || flops <= 0)
        {
            return floor;
        }
        return (int)Math.Clamp(Math.Floor(AllocationProbeFlops / flops), floor, Math.Max(floor, calibrationSamples));
    }

    /// <summary>
    /// The harm measure pruning gets, or null. Sensitivity: KL divergence (or relative squared error) vs the original's
    /// outputs on the calibration inputs (CalibrationSamples of them), or without CalibrationData on an evenly spaced
    /// subset of CalibrationSamples validation inputs. Magnitude / SparseGPT:&lt;s&gt; without ":uniform", with
    /// CalibrationData: the same on <see cref="AllocationSamples"/> calibration inputs, with their layer inputs for
    /// SparseGPT's probes. Either way the probes run on one session of a copy of the model whose prunable weights are
    /// overridable (released after pruning, <see cref="HarmMeasure.Release"/>).
    /// </summary>
    private HarmMeasure? PruningHarm(ModelProto original)
    {
        PruningOptions p = settings.Pruning;
        Dataset on;
        if (p.Method == PruningMethod.Sensitivity)
        {
            on = settings.CalibrationData != null ? CalibrationData()
                : settings.ValidationData != null ? Compressor.LoadData(settings, Inputs, settings.CalibrationSamples, out _)
                : throw CompressException.ForFile(settings.Model, DiagnosticCodes.InvalidOption, settings.Model, "Pruning", p.ToString(),
                    "Sensitivity measures each layer's harm on data: set CalibrationData (or ValidationData)");
        }
        else if (p.AllocatesBySensitivity && settings.CalibrationData != null)
        {
            on = DatasetLoader.Load(settings.CalibrationData, null, Inputs, Preprocessing.Parse(settings.Preprocessing),
                AllocationSamples(original, settings.CalibrationSamples, settings.Model), text: settings.Text);
        }
        else
        {
            return null;
        }
        // Probe models go to the item's work folder (next to the output, removed afterwards), never to the source
        // model's folder: ModelIO.Load inlined any external data, so no relative data path has to resolve.
        string[] weights = [.. original.Graph.Node.Where(n => n.OpType is "MatMul" or "Gemm" or "Conv").SelectMany(n => n.Input.Take(2)).Distinct(StringComparer.Ordinal)];
        // Tune's attempts rerun the allocation on the same original and data: each probe's harm is measured once per item.
        HarmMeasure harm = BlameTheSource(() => SensitivityHarm.Create(OriginalRunner, on, runnerOptions, workDirectory, original, weights), on) with { Reuse = _probeHarms };
        return p.Method == PruningMethod.SparseGpt
            ? harm with { Activations = (model, names) => BlameTheSource(() => ActivationCollector.Collect(model, names, on, on.Count, runnerOptions, workDirectory), on) }
            : harm;
    }

    /// <summary>The calibration method in use: the item's, unless the tuner is trying another ("MinMax", "Percentile:99.9", "Mse", "Entropy").</summary>
    public string CalibrationMethodText { get; set; } = settings.CalibrationMethod;

    /// <summary>Activation ranges for static int8, measured once per item and method on the calibration data (the float model).</summary>
    /// <remarks>
    /// With pruning, <paramref name="pruned"/> is the pruned float model and the ranges are measured on it (its
    /// activations are what the int8 model will see), cached per method and per set of layers kept dense
    /// (<paramref name="variant"/>).
    /// </remarks>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)] // see Make
    public CalibrationResult Calibration(ModelProto? pruned = null, string variant = "")
    {
        string text = CalibrationMethodText;
        string key = pruned == null ? text : text + "|pruned|" + variant;
        if (_calibrations.TryGetValue(key, out CalibrationResult? cached))
        {
            return cached;
        }
        if (!CalibrationOptions.TryParseMethod(text, out CalibrationMethod method, out double percentile, out _))
        {
            throw new InvalidOperationException($"Calibration method '{text}' was not validated."); // ItemSettings and the Tuner only pass valid ones
        }
        Progress?.Phase("calibrating (" + text + ")");
        Dataset data = CalibrationData();
        // One attempt: calibration's own session runs while nothing holds the parsed original (taken from the context
        // and dropped by the calibrator once written; the pass reloads it).
        CalibrationResult result = BlameTheSource(() => Calibrator.Run(() =>
            {
                ModelProto calibrated = pruned ?? (SingleAttempt ? TakeOriginal() : Original);
                return (Int8StaticQuantizer.CalibrationModel(calibrated), Int8StaticQuantizer.TensorsToCalibrate(calibrated, StaticOptions([])));
            },
            data, new CalibrationOptions { Method = method, Percentile = percentile, MaxSamples = settings.CalibrationSamples }, settings.Model));
        Compressor.ReleaseMemory(); // the calibration session is closed: its native memory goes back before the pass allocates
        MemoryTrace.Mark(settings.Model, "calibrated");
        _calibrations[key] = result;
        return result;
    }

    /// <summary>Opens the compressed model's session (writing ORT's optimized graph to <paramref name="optimizedPath"/> when
    /// set), then hands back what ONNX Runtime freed after loading (the parsed file).</summary>
    private ModelRunner OpenCompressed(string path, string? optimizedPath)
    {
        ModelRunner runner = BlameTheSource(() => new ModelRunner(path, runnerOptions.WithOptimizedModelPath(optimizedPath)));
        MemoryTrace.Mark(settings.Model, "compressed opened in ONNX Runtime");
        ProcessMemory.Release();
        return runner;
    }

    /// <summary>The item's static int8 settings with <paramref name="excluded"/> kept float.</summary>
    private Int8StaticOptions StaticOptions(IReadOnlyCollection<string> excluded) => new()
    {
        ExcludedNodes = excluded, ActivationType = settings.ActivationType, PerChannel = settings.PerChannel,
    };

    public ItemSettings Settings => settings;
    /// <summary>The inputs tuning compares on (tuning requires data: CheckMeasurable).</summary>
    public Dataset TuningData => Data ?? throw new InvalidOperationException("no data to tune on");
    public ModelRunnerOptions RunnerOptions => runnerOptions;

    /// <summary>
    /// Compresses the original with <paramref name="excluded"/> kept float (and dense), saves, validates and measures
    /// the budgets. <paramref name="pruningExcluded"/> (default: <paramref name="excluded"/>) are the layers kept dense;
    /// <paramref name="prune"/> or <paramref name="quantize"/> false leaves that pass out (the tuner's diagnosis of
    /// which pass does the harm).
    /// </summary>
    // Optimized from the first call (see RunItem): the original and the candidate must not stay reachable from this
    // frame while the sessions validate.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public Attempt Make(IReadOnlyList<string> excluded, Dataset? on = null, IReadOnlyList<string>? pruningExcluded = null, bool prune = true, bool quantize = true)
    {
        var watch = Stopwatch.StartNew();
        Progress?.Phase("compressing (" + settings.QuantizationText + (settings.Pruning.Method == PruningMethod.None ? "" : ", " + settings.Pruning) + ")");
        // Before the original's session closes: the harm measure runs the original once for its reference outputs.
        HarmMeasure? harm = prune && settings.Pruning.Method != PruningMethod.None ? PruningHarm(Original) : null;
        if (SingleAttempt)
        {
            // Nothing runs the original while compressing (calibration and GPTQ open their own sessions).
            CloseOriginalRunner();
            Compressor.ReleaseMemory();
            MemoryTrace.Mark(settings.Model, "original session closed");
        }
        if (quantize && settings.Quantization == QuantizationScheme.Int8Static && !(prune && settings.Pruning.Method != PruningMethod.None))
        {
            // Calibrated on the float original before the pass parses it (cached: the pass below finds this result).
            _ = Calibration();
        }
        if (SingleAttempt && quantize && settings.Quantization == QuantizationScheme.Int8Dynamic && !(prune && settings.Pruning.Method != PruningMethod.None))
        {
            CollectSmoothingFromFile();
        }
        bool reloaded = _original == null;
        ModelProto original = Original;
        if (reloaded)
        {
            // Parsing left garbage and the collector's free space (tens of MB): returned before the pass works on top of it.
            Compressor.ReleaseMemory();
        }
        ModelProto candidate = original.Clone();
        PruningSummary? pruning = null;
        IReadOnlyList<string> dense = pruningExcluded ?? excluded;
        if (prune && settings.Pruning.Method != PruningMethod.None)
        {
            // SparseGPT and Channels ask for layer inputs on the model they are pruning (sequential, and only a few
            // activations in memory at a time): never through the shared cache of the original's activations.
            pruning = Pruner.Apply(candidate, settings.Pruning with { ExcludedNodes = dense }, settings.Model,
                Activations(shared: settings.Pruning.Method is not (PruningMethod.SparseGpt or PruningMethod.Channels)), harm);
            harm?.Release?.Invoke();
            harm = null;
        }
        // OpTypesToQuantize narrows the quantization pass only (pruning still sees every layer).
        string[] notQuantized = [.. excluded.Union(settings.OpTypeExclusions(original), StringComparer.Ordinal)];
        PassResult? summary = !quantize ? null : settings.Quantization switch
        {
            QuantizationScheme.Int8Dynamic => PassResult.From(Int8DynamicQuantizer.Apply(candidate,
                new QuantizationOptions { ExcludedNodes = notQuantized, SmoothingRows = SmoothingRows() }, settings.Model)),
            QuantizationScheme.Float16 => PassResult.From(Float16Converter.Apply(candidate, new Float16Options { ExcludedNodes = notQuantized }, settings.Model)),
            QuantizationScheme.Int8Static => PassResult.From(Int8StaticQuantizer.Apply(candidate,
                Calibration(pruning == null ? null : candidate, string.Join(";", dense)),
                StaticOptions(notQuantized), settings.Model)),
            QuantizationScheme.Int4Weights => PassResult.From(Int4WeightQuantizer.Apply(candidate,
                new Int4Options { ExcludedNodes = notQuantized, BlockSize = settings.Int4BlockSize, Symmetric = settings.Int4Symmetric, MseScales = settings.Int4MseScales, GptqActOrder = settings.Int4ActOrder,
                    Method = settings.Int4Method, Activations = settings.Int4Method == Int4Method.Gptq ? Activations(shared: pruning == null) : null }, settings.Model)),
            _ => null,
        };
        _smoothingCollected = null;
        Compressor.AddProvenance(candidate, settings, excluded);
        // The pass replaced the candidate's weights: the float copies and temporaries it made go before the histograms
        // and the save allocate.
        Compressor.ReleaseMemory();
        MemoryTrace.Mark(settings.Model, "compressed");
        // While the original and the candidate are both in memory (the shipped model is the candidate, saved as is).
        JsonObject? histograms = summary is { Nodes.Count: > 0 } q ? WeightHistograms.Build(original, candidate, q.Nodes.Select(n => n.Weight)) : null;
        Progress?.Phase("saving the compressed model");
        string path = Path.Combine(workDirectory, (++_count).ToString(System.Globalization.CultureInfo.InvariantCulture), fileName);
        ModelIO.Save(candidate, path);
        double compressSeconds = watch.Elapsed.TotalSeconds;
        long bytes = Compressor.FileBytesWithExternalData(path);
        string sha = Compressor.HashFile(path);
        MemoryTrace.Mark(settings.Model, "saved");
        candidate = null!;
        original = null!;
        if (SingleAttempt)
        {
            _original = null;
            Compressor.ReleaseMemory();
            MemoryTrace.Mark(settings.Model, "original released");
        }

        watch.Restart();
        // The session that needs the most memory above its loaded size while it loads opens first, so that moment does
        // not sit on top of the other session. ONNX Runtime holds the parsed file and the session's copy of the weights
        // for a moment (MiniLM's original: 128 MiB while loading, 87 MiB loaded), so the larger model goes first: the
        // original, unless the compressed model is float16, whose session turns the weights into float32 ones while it
        // loads (holding both). With tuning the original's session is open already.
        // The compressed model's validation session also writes the graph it optimized, for the optimized-graph check
        // (float fallbacks of a quantized model, Verdict): the graph the app's session runs, without opening the
        // candidate a second time.
        string? optimizedPath = summary is { Nodes.Count: > 0 } ? Path.Combine(Path.GetDirectoryName(path)!, "ort-optimized.onnx") : null;
        bool compressedFirst = quantize && settings.Quantization == QuantizationScheme.Float16;
        ModelRunner? opened = compressedFirst ? OpenCompressed(path, optimizedPath) : null;
        ModelRunner originalRunner;
        try
        {
            originalRunner = OriginalRunner;
        }
        catch
        {
            opened?.Dispose();
            throw;
        }
        MemoryTrace.Mark(settings.Model, "original opened in ONNX Runtime");
        ProcessMemory.Release();
        using ModelRunner compressed = opened ?? OpenCompressed(path, optimizedPath);
        if (PendingData is { } pending)
        {
            PendingData = null;
            Progress?.Phase("making synthetic inputs");
            Data = pending(originalRunner);
        }
        Dataset? inputs = on ?? Data;
        // With one attempt neither session is needed after the latency runs: closed before the pairwise metrics.
        Action? sessionsDone = !SingleAttempt ? null : () =>
        {
            compressed.Dispose();
            CloseOriginalRunner();
            ProcessMemory.Release();
            MemoryTrace.Mark(settings.Model, "validation sessions closed");
        };
        ValidationResult? validation = inputs == null ? null
            : Validator.Compare(originalRunner, compressed, inputs, Compressor.ValidationOptions(settings, Progress, sessionsDone));
        List<BudgetOutcome> budgets = Budgets.Evaluate(settings, validation, originalBytes, bytes);
        return new Attempt(path, excluded, summary, pruning, bytes, sha, validation, budgets, compressSeconds, watch.Elapsed.TotalSeconds)
        {
            CalibrationMethod = settings.Quantization == QuantizationScheme.Int8Static && quantize ? CalibrationMethodText : null,
            DenseNodes = dense,
            WeightHistograms = histograms,
            OptimizedPath = optimizedPath,
        };
    }
}
