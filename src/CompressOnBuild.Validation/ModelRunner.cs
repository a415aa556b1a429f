using System.Diagnostics;
using System.Runtime.CompilerServices;
using CompressOnBuild.Core;
using Microsoft.ML.OnnxRuntime;
using OrtElementType = Microsoft.ML.OnnxRuntime.Tensors.TensorElementType;

namespace CompressOnBuild.Validation;

/// <summary>ONNX Runtime graph optimization level (mirrors ORT's, so callers need no ORT types).</summary>
public enum GraphOptimization
{
    /// <summary>No graph optimizations.</summary>
    Disabled,
    /// <summary>Basic (constant folding, redundant node elimination).</summary>
    Basic,
    /// <summary>Extended (fusions).</summary>
    Extended,
    /// <summary>All, including layout optimizations.</summary>
    All,
}

/// <summary>Session settings for <see cref="ModelRunner"/>.</summary>
public sealed class ModelRunnerOptions
{
    /// <summary>Intra-op threads (fixed so timings are comparable between models). Default 1.</summary>
    public int IntraOpThreads { get; init; } = 1;

    /// <summary>Graph optimization level. Default <see cref="GraphOptimization.All"/>.</summary>
    public GraphOptimization Optimization { get; init; } = GraphOptimization.All;

    /// <summary>
    /// Samples per run of <see cref="ModelRunner.RunDataset"/> when every model input has a dynamic batch dimension
    /// and the caller asks for no batch size of its own. Default 64. Batching is for statistics that do not depend on
    /// it (calibration, activations): operators that span the batch axis and dynamic quantization give other outputs
    /// in a batch than alone, so <see cref="Validator"/> always runs batch 1.
    /// </summary>
    public int BatchSize { get; init; } = 64;

    /// <summary>
    /// Concurrent single-sample runs of one session in <see cref="ModelRunner.RunDataset"/> at batch 1 (each on its own
    /// thread, <see cref="IntraOpThreads"/> threads per run). Default: the number of processors.
    /// </summary>
    public int Parallelism { get; init; } = Environment.ProcessorCount;

    /// <summary>
    /// The user's source model: ONNX Runtime refusing to load or run it is bad input (CMPR0110, exit 2), where the
    /// same failure on a model we wrote is our bug (CMPR0402, exit 3).
    /// </summary>
    public bool SourceModel { get; init; }

    /// <summary>
    /// The folder ONNX Runtime reads the model's external data from (its session option
    /// <c>session.model_external_initializers_file_folder_path</c>); null: the model file's own folder. Lets a copy of a
    /// model's .onnx elsewhere (calibration's, with outputs added) use the source model's data files in place.
    /// </summary>
    public string? ExternalDataFolder { get; init; }

    /// <summary>
    /// When set, ONNX Runtime writes the graph it optimized for this session to this file while the session is
    /// created (SessionOptions.OptimizedModelFilePath): the graph the session runs, read without a second session
    /// (<see cref="OptimizedGraph.Load"/>). Null (default): nothing is written.
    /// </summary>
    public string? OptimizedModelPath { get; init; }

    /// <summary>These settings, with ONNX Runtime writing the optimized graph to <paramref name="path"/> (<see cref="OptimizedModelPath"/>).</summary>
    public ModelRunnerOptions WithOptimizedModelPath(string? path) => new()
    {
        IntraOpThreads = IntraOpThreads, Optimization = Optimization, BatchSize = BatchSize, Parallelism = Parallelism,
        SourceModel = SourceModel, ExternalDataFolder = ExternalDataFolder, OptimizedModelPath = path,
    };
}

/// <summary>Outputs of a run over a data set: per sample, the requested outputs (batch dimension 1), and timing.</summary>
public sealed class DatasetRun
{
    internal DatasetRun(List<TensorData[]> outputs, double seconds, int batchSize, int parallelism = 1)
    {
        Outputs = outputs;
        Seconds = seconds;
        BatchSize = batchSize;
        Parallelism = parallelism;
    }

    /// <summary>Per sample, one tensor per requested output.</summary>
    public IReadOnlyList<TensorData[]> Outputs { get; }

    /// <summary>Wall time of the runs in seconds.</summary>
    public double Seconds { get; }

    /// <summary>Samples per run actually used (1 when the model's batch dimension is fixed).</summary>
    public int BatchSize { get; }

    /// <summary>Runs that went on concurrently (batch 1 only; 1 for batched runs).</summary>
    public int Parallelism { get; }

    /// <summary>Samples per second.</summary>
    public double SamplesPerSecond => Seconds > 0 ? Outputs.Count / Seconds : 0;
}

/// <summary>
/// Runs an ONNX model in ONNX Runtime (CPU) on float data: converts inputs to the model's element type (float16,
/// uint8, int64, ...), returns outputs as float. ORT failures become <see cref="CompressException"/> (OrtRunFailed).
/// <see cref="OrtLoader.Initialize"/> must have run first in processes that do not ship ORT.
/// </summary>
public sealed class ModelRunner : IDisposable
{
    private readonly InferenceSession session;
    private readonly RunOptions runOptions = new();

    // Built once: every batch-1 run needs them, and they never change.
    private readonly string[] inputNames;
    private readonly string[] tensorOutputNames;

    /// <summary>Opens <paramref name="modelPath"/> (external data resolved next to it).</summary>
    public ModelRunner(string modelPath, ModelRunnerOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        ModelPath = modelPath;
        Options = options ?? new ModelRunnerOptions();
        if (!File.Exists(modelPath))
        {
            throw CompressException.ForFile(modelPath, DiagnosticCodes.ModelNotFound, modelPath);
        }
        try
        {
            session = Open(modelPath, Options);
            Inputs = new ModelInputs(session.InputNames.Select(n => Describe(n, session.InputMetadata[n])));
            // String outputs are not compared (every other tensor output is read back as float).
            Outputs = [.. session.OutputNames.Select(n => Describe(n, session.OutputMetadata[n]))
                .Select(o => o.ElementType == TensorElementType.String ? o with { ElementType = TensorElementType.Other } : o)];
            inputNames = [.. Inputs.Select(i => i.Name)];
            OverridableInitializers = new HashSet<string>(session.OverridableInitializerMetadata.Keys, StringComparer.Ordinal);
            tensorOutputNames = [.. Outputs.Where(o => o.ElementType != TensorElementType.Other).Select(o => o.Name)];
        }
        catch (OnnxRuntimeException e)
        {
            DisposeSession();
            throw CompressException.ForFile(modelPath, e, RunFailedCode, modelPath, e.Message);
        }
        catch (Exception e) when (IsLoadFailure(e))
        {
            DisposeSession();
            throw CompressException.ForFile(modelPath, e, DiagnosticCodes.OrtNotLoadable, modelPath, LoadFailureText(e));
        }
    }

    /// <summary>The code for an ONNX Runtime failure on this model (see <see cref="ModelRunnerOptions.SourceModel"/>).</summary>
    private string RunFailedCode => Options.SourceModel ? DiagnosticCodes.SourceRejectedByOrt : DiagnosticCodes.OrtRunFailed;

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void DisposeSession()
    {
        session?.Dispose();
        runOptions.Dispose();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static InferenceSession Open(string modelPath, ModelRunnerOptions options)
    {
        using SessionOptions so = new()
        {
            IntraOpNumThreads = Math.Max(1, options.IntraOpThreads),
            InterOpNumThreads = 1,
            ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
            LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
            GraphOptimizationLevel = options.Optimization switch
            {
                GraphOptimization.Disabled => GraphOptimizationLevel.ORT_DISABLE_ALL,
                GraphOptimization.Basic => GraphOptimizationLevel.ORT_ENABLE_BASIC,
                GraphOptimization.Extended => GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                _ => GraphOptimizationLevel.ORT_ENABLE_ALL,
            },
        };
        // Initializers in buffers of their own size, not in the arena (which grows in doubling chunks and would hold
        // up to twice the weights): the session's resident memory stays near the model's size.
        so.AddSessionConfigEntry("session.use_device_allocator_for_initializers", "1");
        if (options.ExternalDataFolder != null)
        {
            so.AddSessionConfigEntry("session.model_external_initializers_file_folder_path", options.ExternalDataFolder);
        }
        if (options.OptimizedModelPath != null)
        {
            so.OptimizedModelFilePath = options.OptimizedModelPath;
        }
        Interlocked.Increment(ref sessionsOpened);
        return new InferenceSession(modelPath, so);
    }

    // ORT missing, unloadable, or older than the API used here (the OrtValue API of ORT 1.16+): the JIT throws the
    // Missing*/TypeLoad exceptions when it compiles a method that uses what the loaded ORT lacks, so every ORT call
    // sits in a NoInlining method below a try.
    private static bool IsLoadFailure(Exception e) => e is DllNotFoundException or TypeInitializationException or EntryPointNotFoundException
        or BadImageFormatException or MissingMethodException or MissingFieldException or TypeLoadException or FileNotFoundException or FileLoadException;

    private static string LoadFailureText(Exception e) => e is MissingMethodException or MissingFieldException or TypeLoadException
        ? $"the loaded ONNX Runtime ({OrtLoader.Current?.Version ?? "unknown version"}) lacks an API CompressOnBuild uses (ORT 1.16 or newer is needed): {e.Message}"
        : e.Message;

    private static long sessionsOpened;

    /// <summary>
    /// ONNX Runtime sessions this process has opened (every <see cref="ModelRunner"/> and <see cref="OptimizedGraph.Optimize"/>):
    /// on graphs of 10^5 nodes opening one costs more than the pass, so the worker opens each model once (tests count them).
    /// </summary>
    public static long SessionsOpened => Interlocked.Read(ref sessionsOpened);

    internal static void CountSession() => Interlocked.Increment(ref sessionsOpened);

    /// <summary>The model file.</summary>
    public string ModelPath { get; }

    /// <summary>Initializers ONNX Runtime lets a run replace (<see cref="RunWithInitializers"/>).</summary>
    public IReadOnlySet<string> OverridableInitializers { get; } = new HashSet<string>();

    /// <summary>Session settings.</summary>
    public ModelRunnerOptions Options { get; }

    /// <summary>Model inputs as ORT reports them (-1 for symbolic dimensions).</summary>
    public ModelInputs Inputs { get; }

    /// <summary>Model outputs as ORT reports them.</summary>
    public IReadOnlyList<TensorInfo> Outputs { get; }

    /// <summary>True when every input has a dynamic first dimension, so samples can be stacked.</summary>
    public bool HasDynamicBatch => Inputs.All(i => i.HasDynamicBatch);

    /// <summary>Runs once. <paramref name="inputs"/> are in <see cref="Inputs"/> order; returns the requested
    /// outputs (default: all tensor outputs) as float.</summary>
    public TensorData[] Run(IReadOnlyList<TensorData> inputs, IReadOnlyList<string>? outputNames = null)
    {
        try
        {
            return RunCore(inputs, outputNames);
        }
        catch (Exception e) when (IsLoadFailure(e))
        {
            throw CompressException.ForFile(ModelPath, e, DiagnosticCodes.OrtNotLoadable, ModelPath, LoadFailureText(e));
        }
    }

    /// <summary>
    /// As <see cref="Run(IReadOnlyList{TensorData}, IReadOnlyList{string})"/>, with the float initializers named in
    /// <paramref name="overrides"/> (<see cref="TensorData.Name"/>) replaced for this run; the model must list them as
    /// graph inputs too (ONNX Runtime's overridable initializers), so one session serves many weight variants.
    /// </summary>
    public TensorData[] RunWithInitializers(IReadOnlyList<TensorData> inputs, IReadOnlyList<string>? outputNames, IReadOnlyList<TensorData> overrides)
    {
        ArgumentNullException.ThrowIfNull(overrides);
        try
        {
            return RunCore(inputs, outputNames, overrides);
        }
        catch (Exception e) when (IsLoadFailure(e))
        {
            throw CompressException.ForFile(ModelPath, e, DiagnosticCodes.OrtNotLoadable, ModelPath, LoadFailureText(e));
        }
    }

    /// <summary>
    /// Runs <paramref name="inputs"/> once (outputs dropped) with ONNX Runtime's arena shrinkage on for that run
    /// (run option memory.enable_memory_arena_shrinkage): afterwards the session's CPU arena hands back every chunk no
    /// run holds, i.e. what earlier concurrent runs grew it to. Outputs of later runs are unchanged (only where their
    /// scratch memory comes from).
    /// </summary>
    public void ShrinkArena(IReadOnlyList<TensorData> inputs)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        try
        {
            ShrinkArenaCore(inputs);
        }
        catch (Exception e) when (IsLoadFailure(e))
        {
            throw CompressException.ForFile(ModelPath, e, DiagnosticCodes.OrtNotLoadable, ModelPath, LoadFailureText(e));
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ShrinkArenaCore(IReadOnlyList<TensorData> inputs)
    {
        using var shrink = new RunOptions();
        shrink.AddRunConfigEntry("memory.enable_memory_arena_shrinkage", "cpu:0");
        RunCore(inputs, outputNames: null, overrides: null, shrink);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private TensorData[] RunCore(IReadOnlyList<TensorData> inputs, IReadOnlyList<string>? outputNames, IReadOnlyList<TensorData>? overrides = null, RunOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        if (inputs.Count != Inputs.Count)
        {
            throw new ArgumentException($"{inputs.Count} inputs given, the model has {Inputs.Count}.", nameof(inputs));
        }
        IReadOnlyList<string> names = outputNames is { Count: > 0 } ? outputNames : tensorOutputNames;
        List<OrtValue> values = new(inputs.Count + (overrides?.Count ?? 0));
        try
        {
            for (int i = 0; i < inputs.Count; i++)
            {
                values.Add(ToOrtValue(inputs[i], Inputs[i].ElementType));
            }
            IReadOnlyList<string> feedNames = inputNames;
            if (overrides is { Count: > 0 })
            {
                foreach (TensorData o in overrides)
                {
                    values.Add(ToOrtValue(o, TensorElementType.Float));
                }
                feedNames = [.. inputNames, .. overrides.Select(o => o.Name ?? throw new ArgumentException("every override needs its initializer's name", nameof(overrides)))];
            }
            using IDisposableReadOnlyCollection<OrtValue> results = session.Run(options ?? runOptions, feedNames, values, names);
            TensorData[] outputs = new TensorData[names.Count];
            int k = 0;
            foreach (OrtValue value in results)
            {
                outputs[k] = FromOrtValue(value, names[k]);
                k++;
            }
            return outputs;
        }
        catch (OnnxRuntimeException e)
        {
            throw CompressException.ForFile(ModelPath, e, RunFailedCode, ModelPath, e.Message);
        }
        finally
        {
            foreach (OrtValue v in values)
            {
                v.Dispose();
            }
        }
    }

    /// <summary>
    /// A run prepared for latency timing: <paramref name="inputs"/> become ORT values once, so each
    /// <see cref="LatencyProbe.Run"/> times ORT's session run alone, not the float conversions and output copies of
    /// <see cref="Run"/> (about 1 us per run, which pulled the latency ratios of 15-25 us models towards 1).
    /// </summary>
    public LatencyProbe PrepareLatency(IReadOnlyList<TensorData> inputs, IReadOnlyList<string> outputNames)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(outputNames);
        if (inputs.Count != Inputs.Count)
        {
            throw new ArgumentException($"{inputs.Count} inputs given, the model has {Inputs.Count}.", nameof(inputs));
        }
        try
        {
            return PrepareLatencyCore(inputs, outputNames);
        }
        catch (Exception e) when (IsLoadFailure(e))
        {
            throw CompressException.ForFile(ModelPath, e, DiagnosticCodes.OrtNotLoadable, ModelPath, LoadFailureText(e));
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private LatencyProbe PrepareLatencyCore(IReadOnlyList<TensorData> inputs, IReadOnlyList<string> outputNames)
    {
        var values = new List<OrtValue>(inputs.Count);
        try
        {
            for (int i = 0; i < inputs.Count; i++)
            {
                values.Add(ToOrtValue(inputs[i], Inputs[i].ElementType));
            }
        }
        catch
        {
            // A later input failed to convert: free the native tensors made so far.
            foreach (OrtValue v in values)
            {
                v.Dispose();
            }
            throw;
        }
        return new LatencyProbe(this, [.. Inputs.Select(i => i.Name)], values, [.. outputNames]);
    }

    /// <summary>One model's prepared latency run (see <see cref="PrepareLatency"/>); dispose it to free the inputs.</summary>
    public sealed class LatencyProbe : IDisposable
    {
        private readonly ModelRunner _runner;
        private readonly string[] _inputNames;
        private readonly List<OrtValue> _values;
        private readonly string[] _outputNames;

        internal LatencyProbe(ModelRunner runner, string[] inputNames, List<OrtValue> values, string[] outputNames)
        {
            _runner = runner;
            _inputNames = inputNames;
            _values = values;
            _outputNames = outputNames;
        }

        /// <summary>Runs the model once on the prepared inputs and drops the outputs; returns the elapsed milliseconds of the session run.</summary>
        public double Run()
        {
            try
            {
                return RunCore();
            }
            catch (OnnxRuntimeException e)
            {
                throw CompressException.ForFile(_runner.ModelPath, e, _runner.RunFailedCode, _runner.ModelPath, e.Message);
            }
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        private double RunCore()
        {
            long start = Stopwatch.GetTimestamp();
            using IDisposableReadOnlyCollection<OrtValue> results = _runner.session.Run(_runner.runOptions, _inputNames, _values, _outputNames);
            return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }

        /// <inheritdoc/>
        public void Dispose()
        {
            foreach (OrtValue v in _values)
            {
                v.Dispose();
            }
            _values.Clear();
        }
    }

    /// <summary>Runs every sample of <paramref name="data"/>. <paramref name="batchSize"/> 1 (as an app runs a model):
    /// one sample per run, <see cref="ModelRunnerOptions.Parallelism"/> runs at a time on the one session. Larger (default
    /// <see cref="ModelRunnerOptions.BatchSize"/>): batches when <see cref="HasDynamicBatch"/> and the data can be
    /// stacked, else one sample per run. The first sample or batch also runs once untimed before the timed pass.
    /// <paramref name="progress"/> counts the samples run.</summary>
    public DatasetRun RunDataset(Dataset data, IReadOnlyList<string>? outputNames = null, int? batchSize = null, ProgressReporter? progress = null)
    {
        ArgumentNullException.ThrowIfNull(data);
        int[]? order = InputOrder(data);
        int batch = HasDynamicBatch && data.CanBatch ? Math.Max(1, batchSize ?? Options.BatchSize) : 1;
        if (batch == 1)
        {
            return RunOneByOne(data, outputNames, order, progress);
        }
        List<TensorData[]> outputs = new(data.Count);
        TensorData[] RunAt(int start, int n)
        {
            try
            {
                return Run(Reorder(data.GetBatch(start, n), order), outputNames);
            }
            catch (CompressException e) when (e.Code == RunFailedCode)
            {
                throw CompressException.ForFile(ModelPath, e.InnerException ?? e, RunFailedCode, ModelPath,
                    $"on {data.GetSampleSource(start)}{(n > 1 ? $" (batch of {n})" : "")}: {e.InnerException?.Message ?? e.Message}");
            }
        }

        if (data.Count > 0)
        {
            // One untimed run first, so one-time costs (allocations, first-run kernels) stay out of the throughput.
            RunAt(0, Math.Min(batch, data.Count));
        }
        Stopwatch watch = Stopwatch.StartNew();
        for (int start = 0; start < data.Count; start += batch)
        {
            int n = Math.Min(batch, data.Count - start);
            TensorData[] result = RunAt(start, n);
            progress?.Advance(n);
            if (n == 1)
            {
                outputs.Add(result);
                continue;
            }
            if (result.Any(r => r.Shape.Length == 0 || r.Shape[0] != n))
            {
                // An output without the batch dimension: run this batch's samples one by one.
                for (int k = 0; k < n; k++)
                {
                    outputs.Add(RunAt(start + k, 1));
                }
                continue;
            }
            for (int k = 0; k < n; k++)
            {
                TensorData[] sample = new TensorData[result.Length];
                for (int o = 0; o < result.Length; o++)
                {
                    int per = result[o].Data.Length / n;
                    long[] shape = (long[])result[o].Shape.Clone();
                    shape[0] = 1;
                    sample[o] = new TensorData(result[o].Data.AsSpan(k * per, per).ToArray(), shape) { Name = result[o].Name };
                }
                outputs.Add(sample);
            }
        }
        watch.Stop();
        return new DatasetRun(outputs, watch.Elapsed.TotalSeconds, batch);
    }

    /// <summary>
    /// Batch 1 over the data set on up to <see cref="ModelRunnerOptions.Parallelism"/> threads (ORT sessions take
    /// concurrent runs). Samples are read one at a time under a lock (decoding data sets need not be thread-safe);
    /// on failure, the error of the lowest failing sample is thrown, so messages do not depend on thread timing.
    /// </summary>
    private DatasetRun RunOneByOne(Dataset data, IReadOnlyList<string>? outputNames, int[]? order, ProgressReporter? progress)
    {
        int n = data.Count;
        var results = new TensorData[n][];
        var gate = new object();
        TensorData[] RunAt(int index)
        {
            IReadOnlyList<TensorData> sample;
            lock (gate)
            {
                sample = Reorder(data.GetSample(index), order);
            }
            try
            {
                return Run(sample, outputNames);
            }
            catch (CompressException e) when (e.Code == RunFailedCode)
            {
                throw CompressException.ForFile(ModelPath, e.InnerException ?? e, RunFailedCode, ModelPath,
                    $"on {data.GetSampleSource(index)}: {e.InnerException?.Message ?? e.Message}");
            }
        }
        if (n == 0)
        {
            return new DatasetRun([], 0, 1);
        }
        // One untimed run first, so one-time costs (allocations, first-run kernels) stay out of the throughput.
        RunAt(0);
        int workers = Math.Clamp(Options.Parallelism, 1, n);
        int next = -1;
        int firstFailed = int.MaxValue;
        Exception? failure = null;
        void Work()
        {
            while (true)
            {
                int i = Interlocked.Increment(ref next);
                if (i >= n || i > Volatile.Read(ref firstFailed))
                {
                    return;
                }
                try
                {
                    results[i] = RunAt(i);
                    progress?.Advance();
                }
                catch (Exception e)
                {
                    lock (gate)
                    {
                        if (i < firstFailed)
                        {
                            firstFailed = i;
                            failure = e;
                        }
                    }
                    return;
                }
            }
        }
        TimeSpan elapsed = OnThreads(workers, Work);
        if (failure != null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
        return new DatasetRun([.. results], elapsed.TotalSeconds, 1, workers);
    }

    /// <summary>Runs <paramref name="work"/> on <paramref name="workers"/> threads (this one and workers - 1 background
    /// threads), waits for all of them and returns the wall time.</summary>
    internal static TimeSpan OnThreads(int workers, Action work)
    {
        Stopwatch watch = Stopwatch.StartNew();
        Thread[] threads = [.. Enumerable.Range(1, workers - 1).Select(_ => new Thread(() => work()) { IsBackground = true })];
        foreach (Thread t in threads)
        {
            t.Start();
        }
        work();
        foreach (Thread t in threads)
        {
            t.Join();
        }
        watch.Stop();
        return watch.Elapsed;
    }

    /// <summary>Where each model input is in the data set's tensors: by name when the data set names them all (in another
    /// order), null for the same order or positional use.</summary>
    private int[]? InputOrder(Dataset data)
    {
        if (data.InputNames.Count != Inputs.Count)
        {
            throw CompressException.ForFile(data.Source, DiagnosticCodes.DataShape, data.Source, string.Join(",", Inputs.Select(i => i.Name)),
                $"the data set feeds {data.InputNames.Count} inputs but model '{ModelPath}' has {Inputs.Count}");
        }
        int[] order = [.. Inputs.Select(i => IndexOf(data.InputNames, i.Name))];
        return order.Any(k => k < 0) || order.Select((k, i) => k == i).All(same => same) ? null : order;
    }

    private static int IndexOf(IReadOnlyList<string> names, string name)
    {
        for (int i = 0; i < names.Count; i++)
        {
            if (names[i] == name)
            {
                return i;
            }
        }
        return -1;
    }

    /// <summary>Where each model input is in <paramref name="data"/>'s tensors (null: same order); CMPR0303 when the counts differ.</summary>
    internal int[]? OrderFor(Dataset data) => InputOrder(data);

    /// <summary>
    /// Runs sample <paramref name="index"/> (<paramref name="sample"/>: its tensors in the data set's order,
    /// <paramref name="order"/> from <see cref="OrderFor"/>); an ONNX Runtime failure names the sample, as
    /// <see cref="RunDataset"/> does.
    /// </summary>
    internal TensorData[] RunSampleAt(Dataset data, int index, IReadOnlyList<TensorData> sample, int[]? order, IReadOnlyList<string>? outputNames)
    {
        try
        {
            return Run(Reorder(sample, order), outputNames);
        }
        catch (CompressException e) when (e.Code == RunFailedCode)
        {
            throw CompressException.ForFile(ModelPath, e.InnerException ?? e, RunFailedCode, ModelPath,
                $"on {data.GetSampleSource(index)}: {e.InnerException?.Message ?? e.Message}");
        }
    }

    /// <summary>Sample <paramref name="index"/> of <paramref name="data"/> in this model's input order.</summary>
    internal IReadOnlyList<TensorData> SampleFor(Dataset data, int index) => Reorder(data.GetSample(index), InputOrder(data));

    private static IReadOnlyList<TensorData> Reorder(IReadOnlyList<TensorData> tensors, int[]? order) =>
        order == null ? tensors : [.. order.Select(k => tensors[k])];

    private bool disposed;

    /// <summary>Closes the session (a second call does nothing).</summary>
    public void Dispose()
    {
        if (disposed)
        {
            return;
        }
        disposed = true;
        runOptions.Dispose();
        session.Dispose();
    }

    private static TensorInfo Describe(string name, NodeMetadata meta)
    {
        if (!meta.IsTensor)
        {
            return new TensorInfo(name, TensorElementType.Other, []);
        }
        TensorElementType type = meta.ElementDataType switch
        {
            OrtElementType.Float => TensorElementType.Float,
            OrtElementType.Float16 => TensorElementType.Float16,
            OrtElementType.Double => TensorElementType.Double,
            OrtElementType.UInt8 => TensorElementType.UInt8,
            OrtElementType.Int8 => TensorElementType.Int8,
            OrtElementType.Int32 => TensorElementType.Int32,
            OrtElementType.Int64 => TensorElementType.Int64,
            OrtElementType.UInt16 => TensorElementType.UInt16,
            OrtElementType.Int16 => TensorElementType.Int16,
            OrtElementType.UInt32 => TensorElementType.UInt32,
            OrtElementType.UInt64 => TensorElementType.UInt64,
            OrtElementType.Bool => TensorElementType.Bool,
            OrtElementType.BFloat16 => TensorElementType.BFloat16,
            OrtElementType.String => TensorElementType.String,
            _ => TensorElementType.Other,
        };
        return new TensorInfo(name, type, [.. meta.Dimensions.Select(d => (long)d)]);
    }

    private static OrtValue ToOrtValue(TensorData t, TensorElementType type)
    {
        float[] src = t.Data;
        switch (type)
        {
            case TensorElementType.Float16:
                Float16[] h = new Float16[src.Length];
                for (int i = 0; i < src.Length; i++)
                {
                    h[i] = new Float16(BitConverter.HalfToUInt16Bits((Half)src[i]));
                }
                return OrtValue.CreateTensorValueFromMemory(h, t.Shape);
            case TensorElementType.Double:
                return OrtValue.CreateTensorValueFromMemory(src.Select(v => (double)v).ToArray(), t.Shape);
            case TensorElementType.UInt8:
                return OrtValue.CreateTensorValueFromMemory(src.Select(v => (byte)Math.Clamp(MathF.Round(v), 0f, 255f)).ToArray(), t.Shape);
            case TensorElementType.Int8:
                return OrtValue.CreateTensorValueFromMemory(src.Select(v => (sbyte)Math.Clamp(MathF.Round(v), -128f, 127f)).ToArray(), t.Shape);
            case TensorElementType.Int32:
                return OrtValue.CreateTensorValueFromMemory(src.Select(v => (int)MathF.Round(v)).ToArray(), t.Shape);
            case TensorElementType.Int64:
                return OrtValue.CreateTensorValueFromMemory(src.Select(v => (long)MathF.Round(v)).ToArray(), t.Shape);
            case TensorElementType.Int16:
                return OrtValue.CreateTensorValueFromMemory(src.Select(v => (short)Math.Clamp(MathF.Round(v), short.MinValue, short.MaxValue)).ToArray(), t.Shape);
            case TensorElementType.UInt16:
                return OrtValue.CreateTensorValueFromMemory(src.Select(v => (ushort)Math.Clamp(MathF.Round(v), 0f, ushort.MaxValue)).ToArray(), t.Shape);
            case TensorElementType.UInt32:
                return OrtValue.CreateTensorValueFromMemory(src.Select(v => (uint)Math.Clamp(MathF.Round(v), 0f, uint.MaxValue)).ToArray(), t.Shape);
            case TensorElementType.UInt64:
                return OrtValue.CreateTensorValueFromMemory(src.Select(v => (ulong)Math.Max(MathF.Round(v), 0f)).ToArray(), t.Shape);
            case TensorElementType.Bool:
                return OrtValue.CreateTensorValueFromMemory(src.Select(v => v != 0).ToArray(), t.Shape);
            case TensorElementType.BFloat16:
                return OrtValue.CreateTensorValueFromMemory(src.Select(v => new BFloat16(ToBFloat16Bits(v))).ToArray(), t.Shape);
            case TensorElementType.String:
                return OrtValue.CreateFromStringTensor(new Microsoft.ML.OnnxRuntime.Tensors.DenseTensor<string>(
                    src.Select(v => v.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray(), [.. t.Shape.Select(d => checked((int)d))]));
            default:
                return OrtValue.CreateTensorValueFromMemory(src, t.Shape);
        }
    }

    /// <summary>float -> bfloat16 bits, rounded to nearest even (NaN kept a quiet NaN).</summary>
    internal static ushort ToBFloat16Bits(float v)
    {
        uint bits = BitConverter.SingleToUInt32Bits(v);
        if (float.IsNaN(v))
        {
            return (ushort)((bits >> 16) | 0x40);
        }
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }

    private TensorData FromOrtValue(OrtValue value, string name)
    {
        if (!value.IsTensor)
        {
            throw CompressException.ForFile(ModelPath, DiagnosticCodes.OutputMismatch, ModelPath, name, "not a tensor", "compare");
        }
        OrtTensorTypeAndShapeInfo info = value.GetTensorTypeAndShape();
        long[] shape = info.Shape;
        float[] data;
        switch (info.ElementDataType)
        {
            case OrtElementType.Float:
                data = value.GetTensorDataAsSpan<float>().ToArray();
                break;
            case OrtElementType.Float16:
                ReadOnlySpan<Float16> h = value.GetTensorDataAsSpan<Float16>();
                data = new float[h.Length];
                for (int i = 0; i < h.Length; i++)
                {
                    data[i] = (float)BitConverter.UInt16BitsToHalf(h[i].value);
                }
                break;
            case OrtElementType.Double:
                data = [.. value.GetTensorDataAsSpan<double>().ToArray().Select(v => (float)v)];
                break;
            case OrtElementType.Int64:
                data = [.. value.GetTensorDataAsSpan<long>().ToArray().Select(v => (float)v)];
                break;
            case OrtElementType.Int32:
                data = [.. value.GetTensorDataAsSpan<int>().ToArray().Select(v => (float)v)];
                break;
            case OrtElementType.UInt8:
                data = [.. value.GetTensorDataAsSpan<byte>().ToArray().Select(v => (float)v)];
                break;
            case OrtElementType.Int8:
                data = [.. value.GetTensorDataAsSpan<sbyte>().ToArray().Select(v => (float)v)];
                break;
            case OrtElementType.Int16:
                data = [.. value.GetTensorDataAsSpan<short>().ToArray().Select(v => (float)v)];
                break;
            case OrtElementType.UInt16:
                data = [.. value.GetTensorDataAsSpan<ushort>().ToArray().Select(v => (float)v)];
                break;
            case OrtElementType.UInt32:
                data = [.. value.GetTensorDataAsSpan<uint>().ToArray().Select(v => (float)v)];
                break;
            case OrtElementType.UInt64:
                data = [.. value.GetTensorDataAsSpan<ulong>().ToArray().Select(v => (float)v)];
                break;
            case OrtElementType.Bool:
                data = [.. value.GetTensorDataAsSpan<bool>().ToArray().Select(v => v ? 1f : 0f)];
                break;
            case OrtElementType.BFloat16:
                data = [.. value.GetTensorDataAsSpan<BFloat16>().ToArray().Select(v => BitConverter.Int32BitsToSingle(v.value << 16))];
                break;
            default:
                throw CompressException.ForFile(ModelPath, DiagnosticCodes.OutputMismatch, ModelPath, name, info.ElementDataType.ToString(), "compare");
        }
        return new TensorData(data, shape) { Name = name };
    }
}
