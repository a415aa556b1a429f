using CompressOnBuild.Core;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Core.IO;
using Google.Protobuf;

namespace CompressOnBuild.Validation;

/// <summary>
/// Collects intermediate activations for calibration-driven passes (pruning's activation-aware ranking and
/// least-squares reconstruction): the requested tensors are exposed as extra graph outputs of a temporary copy of
/// the model, which ONNX Runtime runs over the first samples of a data set. Values are concatenated along the
/// batch axis (<see cref="Activation.Shape"/>[0] = rows of all runs).
/// </summary>
public static class ActivationCollector
{
    /// <summary>
    /// An <see cref="ActivationSource"/> for <see cref="Pruner.Apply"/> over the first <paramref name="maxSamples"/>
    /// samples of <paramref name="calibration"/> (its input names must match the model's).
    /// </summary>
    /// <param name="workDirectory">Where the temporary model is written; for models with external data, the
    /// directory of the original model so relative data paths resolve. Default: the system temp folder.</param>
    public static ActivationSource Create(Dataset calibration, int maxSamples = 512, ModelRunnerOptions? options = null, string? workDirectory = null)
    {
        ArgumentNullException.ThrowIfNull(calibration);
        return (model, names) => Collect(model, names, calibration, maxSamples, options, workDirectory);
    }

    /// <remarks>
    /// The temporary model computes only what the requested tensors need: its outputs are those tensors, and nodes
    /// that do not lead to them are left out (unless a node holds a subgraph, whose outer-scope references are not
    /// followed: then every node stays; also when a graph input is asked for). Each tensor's values go into one array sized from the first batch. On data
    /// with an attention mask (an input named like "mask", [batch, tokens]), tensors laid out [batch, tokens, ...] get
    /// the mask as <see cref="Activation.RowMask"/>.
    /// </remarks>
    public static Dictionary<string, Activation> Collect(ModelProto model, IReadOnlyList<string> tensorNames, Dataset data, int maxSamples = 512,
        ModelRunnerOptions? options = null, string? workDirectory = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tensorNames);
        ArgumentNullException.ThrowIfNull(data);
        if (data.Count == 0)
        {
            throw new CompressException(DiagnosticCodes.DataEmpty, data.Source);
        }
        return CollectFrom(WriteReduced(model, tensorNames, workDirectory), tensorNames, data, maxSamples, options);
    }

    /// <summary>
    /// What <see cref="Collect"/> would return, reduced to <see cref="ActivationRows"/> (each tensor's channel maxima over
    /// every row and <paramref name="maxRows"/> evenly spaced rows) while the runs go: only those are ever held, never
    /// the tensors' values. When a tensor has more rows than <paramref name="maxRows"/>, the samples run a second time
    /// (the rows kept depend on the total). A tensor whose runs are not whole rows of one width maps to null.
    /// </summary>
    public static Dictionary<string, ActivationRows?> CollectRows(ModelProto model, IReadOnlyList<string> tensorNames, Dataset data, int maxSamples, int maxRows,
        ModelRunnerOptions? options = null, string? workDirectory = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tensorNames);
        ArgumentNullException.ThrowIfNull(data);
        if (data.Count == 0)
        {
            throw new CompressException(DiagnosticCodes.DataEmpty, data.Source);
        }
        return SampleRowsFrom(WriteReduced(model, tensorNames, workDirectory), tensorNames, data, maxSamples, maxRows, options);
    }

    /// <summary>
    /// The model reduced to what <paramref name="tensorNames"/> need, with them as its outputs, written to a temporary
    /// file in <paramref name="workDirectory"/> (default: the system temp folder).
    /// </summary>
    private static string WriteReduced(ModelProto model, IReadOnlyList<string> tensorNames, string? workDirectory)
    {
        ModelProto copy = model.Clone();
        KeepOnlyWhatLeadsTo(copy.Graph, tensorNames);
        // Each name once, unless it is already an output (a set: a scan of the outputs per name was quadratic).
        var present = new HashSet<string>(copy.Graph.Output.Select(o => o.Name), StringComparer.Ordinal);
        foreach (string name in tensorNames.Where(present.Add))
        {
            copy.Graph.Output.Add(FloatOutput(name));
        }
        string path = TemporaryPath(workDirectory);
        using (var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
        {
            copy.WriteTo(file); // streamed: no second in-memory copy of the model
        }
        return path;
    }

    private static string TemporaryPath(string? workDirectory) =>
        Path.Combine(workDirectory ?? Path.GetTempPath(), $"cob-activations-{Environment.ProcessId}-{Guid.NewGuid():N}.onnx");

    /// <summary>
    /// <see cref="Collect"/> without the parsed model in memory: the model file at <paramref name="modelPath"/> (no external
    /// data) is copied with <paramref name="tensorNames"/> appended as graph outputs, so the caller can hold no parsed
    /// copy of the model while ONNX Runtime loads and runs this one. Every node runs (nothing is pruned from the graph).
    /// <paramref name="existingOutputs"/>: the model's graph outputs (not added twice).
    /// </summary>
    public static Dictionary<string, Activation> CollectFromFile(string modelPath, IReadOnlyCollection<string> existingOutputs, IReadOnlyList<string> tensorNames,
        Dataset data, int maxSamples = 512, ModelRunnerOptions? options = null, string? workDirectory = null)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        ArgumentNullException.ThrowIfNull(existingOutputs);
        ArgumentNullException.ThrowIfNull(tensorNames);
        ArgumentNullException.ThrowIfNull(data);
        if (data.Count == 0)
        {
            throw new CompressException(DiagnosticCodes.DataEmpty, data.Source);
        }
        return CollectFrom(WriteWithOutputs(modelPath, existingOutputs, tensorNames, workDirectory), tensorNames, data, maxSamples, options);
    }

    /// <summary>
    /// <see cref="CollectRows"/> from the model file, as <see cref="CollectFromFile"/> runs it (no parsed model held, every
    /// node runs): each tensor's channel maxima over every row and <paramref name="maxRows"/> evenly spaced rows.
    /// </summary>
    public static Dictionary<string, ActivationRows?> CollectRowsFromFile(string modelPath, IReadOnlyCollection<string> existingOutputs, IReadOnlyList<string> tensorNames,
        Dataset data, int maxSamples, int maxRows, ModelRunnerOptions? options = null, string? workDirectory = null)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        ArgumentNullException.ThrowIfNull(existingOutputs);
        ArgumentNullException.ThrowIfNull(tensorNames);
        ArgumentNullException.ThrowIfNull(data);
        if (data.Count == 0)
        {
            throw new CompressException(DiagnosticCodes.DataEmpty, data.Source);
        }
        return SampleRowsFrom(WriteWithOutputs(modelPath, existingOutputs, tensorNames, workDirectory), tensorNames, data, maxSamples, maxRows, options);
    }

    /// <summary>A copy of the model file with <paramref name="tensorNames"/> appended as graph outputs, in a temporary file.</summary>
    private static string WriteWithOutputs(string modelPath, IReadOnlyCollection<string> existingOutputs, IReadOnlyList<string> tensorNames, string? workDirectory)
    {
        string path = TemporaryPath(workDirectory);
        using (var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
        {
            using (var source = new FileStream(modelPath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan))
            {
                source.CopyTo(file);
            }
            // Protobuf merges a message field that occurs twice (repeated fields are appended), so a ModelProto holding
            // only graph { output: [...] } written after the model adds those outputs to its graph.
            var extra = new ModelProto { Graph = new GraphProto() };
            foreach (string name in tensorNames.Where(n => !existingOutputs.Contains(n)))
            {
                extra.Graph.Output.Add(FloatOutput(name));
            }
            extra.WriteTo(file);
        }
        return path;
    }

    private static ValueInfoProto FloatOutput(string name) => new()
    {
        // Element type only; ORT infers the shape.
        Name = name,
        Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float } },
    };

    /// <summary>Runs the collection model at <paramref name="path"/> (deleted afterwards) over the data.</summary>
    private static Dictionary<string, Activation> CollectFrom(string path, IReadOnlyList<string> tensorNames, Dataset data, int maxSamples, ModelRunnerOptions? options)
    {
        try
        {
            using var runner = new ModelRunner(path, options);
            MemoryTrace.Mark(data.Source, "activation collection model opened in ONNX Runtime");
            int[] order = [.. runner.Inputs.Select(i => IndexOf(data.InputNames, i.Name, data.Source))];
            int maskInput = MaskInput(data.InputNames);
            int samples = maxSamples > 0 ? Math.Min(maxSamples, data.Count) : data.Count;
            int batch = runner.HasDynamicBatch && data.CanBatch ? Math.Max(1, runner.Options.BatchSize) : 1;
            var values = new float[tensorNames.Count][];
            var masks = new float[]?[tensorNames.Count];
            var shapes = new long[tensorNames.Count][];
            var filled = new long[tensorNames.Count];
            var maskFilled = new long[tensorNames.Count];
            for (int start = 0; start < samples; start += batch)
            {
                int n = Math.Min(batch, samples - start);
                IReadOnlyList<TensorData> inputs = n == 1 ? data.GetSample(start) : data.GetBatch(start, n);
                TensorData[] outputs = runner.Run([.. order.Select(i => inputs[i])], tensorNames);
                TensorData? mask = maskInput >= 0 && inputs[maskInput] is { Shape.Length: 2 } m ? m : null;
                for (int i = 0; i < tensorNames.Count; i++)
                {
                    TensorData t = outputs[i];
                    if (t.Shape.Length == 0)
                    {
                        throw new CompressException(DiagnosticCodes.DataShape, data.Source, tensorNames[i], "the activation is a scalar; per-feature statistics need a batch axis");
                    }
                    if (values[i] == null)
                    {
                        // Every batch gives the same values per sample (same per-sample shape): size the array once.
                        long perRow = t.Data.Length / Math.Max(1, t.Shape[0]);
                        values[i] = new float[(int)Math.Min(Array.MaxLength, perRow * Math.Max(1, t.Shape[0]) * samples / Math.Max(1, n))];
                        if (mask != null && t.Shape.Length >= 3 && t.Shape[0] == mask.Shape[0] && t.Shape[1] == mask.Shape[1])
                        {
                            masks[i] = new float[values[i].Length / (t.Data.Length / mask.Data.Length)];
                        }
                    }
                    if (filled[i] + t.Data.Length > values[i].Length)
                    {
                        Array.Resize(ref values[i], (int)Math.Min(Array.MaxLength, Math.Max(filled[i] + t.Data.Length, 2L * values[i].Length)));
                    }
                    Array.Copy(t.Data, 0, values[i], filled[i], t.Data.Length);
                    filled[i] += t.Data.Length;
                    if (masks[i] != null)
                    {
                        if (mask == null || t.Shape.Length < 3 || t.Shape[0] != mask.Shape[0] || t.Shape[1] != mask.Shape[1])
                        {
                            masks[i] = null;
                        }
                        else
                        {
                            if (maskFilled[i] + mask.Data.Length > masks[i]!.Length)
                            {
                                Array.Resize(ref masks[i], (int)Math.Max(maskFilled[i] + mask.Data.Length, 2L * masks[i]!.Length));
                            }
                            Array.Copy(mask.Data, 0, masks[i]!, maskFilled[i], mask.Data.Length);
                            maskFilled[i] += mask.Data.Length;
                        }
                    }
                    shapes[i] = shapes[i] is { } s ? [s[0] + t.Shape[0], .. t.Shape[1..]] : t.Shape;
                }
            }
            var result = new Dictionary<string, Activation>(StringComparer.Ordinal);
            for (int i = 0; i < tensorNames.Count; i++)
            {
                float[] v = filled[i] == values[i].Length ? values[i] : values[i][..(int)filled[i]];
                float[]? rowMask = masks[i] is { } m && maskFilled[i] == shapes[i][0] * shapes[i][1] ? (maskFilled[i] == m.Length ? m : m[..(int)maskFilled[i]]) : null;
                result[tensorNames[i]] = new Activation(v, shapes[i]) { RowMask = rowMask };
            }
            return result;
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>
    /// Runs the collection model at <paramref name="path"/> (deleted afterwards) over the data, feeding each run's values
    /// to one <see cref="ActivationRowSampler"/> per tensor; a second time when a sampler needs it.
    /// </summary>
    private static Dictionary<string, ActivationRows?> SampleRowsFrom(string path, IReadOnlyList<string> tensorNames, Dataset data, int maxSamples, int maxRows,
        ModelRunnerOptions? options)
    {
        try
        {
            using var runner = new ModelRunner(path, options);
            MemoryTrace.Mark(data.Source, "activation collection model opened in ONNX Runtime");
            int[] order = [.. runner.Inputs.Select(i => IndexOf(data.InputNames, i.Name, data.Source))];
            int samples = maxSamples > 0 ? Math.Min(maxSamples, data.Count) : data.Count;
            int batch = runner.HasDynamicBatch && data.CanBatch ? Math.Max(1, runner.Options.BatchSize) : 1;
            ActivationRowSampler[] samplers = [.. tensorNames.Select(_ => new ActivationRowSampler(maxRows))];
            void Pass(bool second)
            {
                for (int start = 0; start < samples; start += batch)
                {
                    int n = Math.Min(batch, samples - start);
                    IReadOnlyList<TensorData> inputs = n == 1 ? data.GetSample(start) : data.GetBatch(start, n);
                    TensorData[] outputs = runner.Run([.. order.Select(i => inputs[i])], tensorNames);
                    for (int i = 0; i < tensorNames.Count; i++)
                    {
                        TensorData t = outputs[i];
                        if (t.Shape.Length == 0)
                        {
                            throw new CompressException(DiagnosticCodes.DataShape, data.Source, tensorNames[i], "the activation is a scalar; per-feature statistics need a batch axis");
                        }
                        if (second)
                        {
                            samplers[i].Take(t.Data, t.Shape);
                        }
                        else
                        {
                            samplers[i].Count(t.Data, t.Shape);
                        }
                    }
                }
            }
            Pass(second: false);
            if (samplers.Any(s => s.NeedsSecondPass))
            {
                // The evenly spaced rows depend on how many there are: the same runs again, keeping those.
                Pass(second: true);
            }
            var result = new Dictionary<string, ActivationRows?>(StringComparer.Ordinal);
            for (int i = 0; i < tensorNames.Count; i++)
            {
                result[tensorNames[i]] = samplers[i].Result();
            }
            return result;
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>
    /// The input holding the data's attention mask: the first whose name contains "mask" (case-insensitive), as the
    /// exporters name it (attention_mask) and as the validation's mean pooling reads it; -1 when none.
    /// </summary>
    internal static int MaskInput(IReadOnlyList<string> inputNames)
    {
        for (int i = 0; i < inputNames.Count; i++)
        {
            if (inputNames[i].Contains("mask", StringComparison.OrdinalIgnoreCase))
            {
                return i;
            }
        }
        return -1;
    }

    /// <summary>
    /// Makes <paramref name="tensors"/> the graph's only outputs and removes the nodes they do not depend on; leaves the
    /// graph alone when a node holds a subgraph (its outer-scope references are not traced) or a tensor asked for is
    /// a graph input (a graph of no nodes is not run).
    /// </summary>
    private static void KeepOnlyWhatLeadsTo(GraphProto graph, IReadOnlyList<string> tensors)
    {
        var asked = new HashSet<string>(tensors, StringComparer.Ordinal);
        if (graph.Node.Any(n => n.Attribute.Any(a => a.G != null || a.Graphs.Count > 0)) || graph.Input.Any(i => asked.Contains(i.Name)))
        {
            return;
        }
        var producer = new Dictionary<string, NodeProto>(StringComparer.Ordinal);
        foreach (NodeProto n in graph.Node)
        {
            foreach (string o in n.Output.Where(o => o.Length > 0))
            {
                producer[o] = n;
            }
        }
        var needed = new HashSet<NodeProto>(ReferenceEqualityComparer.Instance);
        var pending = new Stack<string>(tensors);
        while (pending.Count > 0)
        {
            if (producer.TryGetValue(pending.Pop(), out NodeProto? n) && needed.Add(n))
            {
                foreach (string i in n.Input.Where(i => i.Length > 0))
                {
                    pending.Push(i);
                }
            }
        }
        var kept = graph.Node.Where(needed.Contains).ToList();
        graph.Node.Clear();
        graph.Node.AddRange(kept);
        // Initializers no kept node reads go too (ONNX Runtime rejects an initializer it made no value for), with their
        // graph-input entries (IR < 4); the real inputs stay so the same feeds fit.
        var read = new HashSet<string>(kept.SelectMany(n => n.Input), StringComparer.Ordinal);
        var unused = new HashSet<string>(graph.Initializer.Select(t => t.Name).Where(name => !read.Contains(name)), StringComparer.Ordinal);
        var initializers = graph.Initializer.Where(t => !unused.Contains(t.Name)).ToList();
        graph.Initializer.Clear();
        graph.Initializer.AddRange(initializers);
        var inputs = graph.Input.Where(i => !unused.Contains(i.Name)).ToList();
        graph.Input.Clear();
        graph.Input.AddRange(inputs);
        var outputs = graph.Output.Where(o => asked.Contains(o.Name)).ToList();
        graph.Output.Clear();
        graph.Output.AddRange(outputs);
    }

    private static int IndexOf(IReadOnlyList<string> names, string name, string source)
    {
        for (int i = 0; i < names.Count; i++)
        {
            if (names[i] == name)
            {
                return i;
            }
        }
        throw new CompressException(DiagnosticCodes.DataShape, source, name, "the calibration data has no values for this model input");
    }
}
