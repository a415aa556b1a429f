using System.Globalization;
using CompressOnBuild.Core;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Validation;

/// <summary>
/// What the user says about the inputs of a model that has no data (InputShapes, InputValues): a full shape per input
/// name, and one value that fills an input (a sample rate, a flag).
/// </summary>
public sealed class InputOverrides
{
    /// <summary>No overrides.</summary>
    public static InputOverrides None { get; } = new(new Dictionary<string, long[]>(), new Dictionary<string, double>());

    /// <summary>Wraps parsed overrides.</summary>
    public InputOverrides(IReadOnlyDictionary<string, long[]> shapes, IReadOnlyDictionary<string, double> values)
    {
        Shapes = shapes;
        Values = values;
    }

    /// <summary>Input name -> shape (every dimension &gt;= 1; empty for a scalar).</summary>
    public IReadOnlyDictionary<string, long[]> Shapes { get; }

    /// <summary>Input name -> the value every element of that input gets.</summary>
    public IReadOnlyDictionary<string, double> Values { get; }

    /// <summary>True when nothing is set.</summary>
    public bool IsEmpty => Shapes.Count == 0 && Values.Count == 0;

    /// <summary>Parses <c>name:1x3x224x224;other:16000</c> (the last ':' splits, so TensorFlow names like <c>x:0</c> work;
    /// <c>name:</c> alone is a scalar). Null on success, else why the text is wrong.</summary>
    public static string? TryParseShapes(string text, out Dictionary<string, long[]> shapes)
    {
        ArgumentNullException.ThrowIfNull(text);
        shapes = new Dictionary<string, long[]>(StringComparer.Ordinal);
        foreach (string part in text.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int colon = part.LastIndexOf(':');
            if (colon <= 0)
            {
                return $"'{part}' is not <input name>:<dims>, e.g. input:1x3x224x224";
            }
            string name = part[..colon].Trim();
            string dims = part[(colon + 1)..].Trim();
            var shape = new List<long>();
            if (dims.Length > 0)
            {
                foreach (string d in dims.Split('x', 'X'))
                {
                    if (!long.TryParse(d.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long v) || v < 1 || v > int.MaxValue)
                    {
                        return $"'{part}': dimension '{d}' is not a whole number from 1 to {int.MaxValue} (dims are separated by 'x')";
                    }
                    shape.Add(v);
                }
            }
            if (!shapes.TryAdd(name, [.. shape]))
            {
                return $"input '{name}' is given twice";
            }
        }
        return shapes.Count == 0 ? "no input is given; use <input name>:<dims>[;...], e.g. input:1x3x224x224" : null;
    }

    /// <summary>Parses <c>sr=16000;flag=1</c> (the last '=' splits). Null on success, else why the text is wrong.</summary>
    public static string? TryParseValues(string text, out Dictionary<string, double> values)
    {
        ArgumentNullException.ThrowIfNull(text);
        values = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (string part in text.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = part.LastIndexOf('=');
            if (eq <= 0)
            {
                return $"'{part}' is not <input name>=<number>, e.g. sr=16000";
            }
            string name = part[..eq].Trim();
            string number = part[(eq + 1)..].Trim();
            if (!double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !double.IsFinite(v))
            {
                return $"'{part}': '{number}' is not a finite number (use '.' as the decimal separator)";
            }
            if (!values.TryAdd(name, v))
            {
                return $"input '{name}' is given twice";
            }
        }
        return values.Count == 0 ? "no input is given; use <input name>=<number>[;...], e.g. sr=16000" : null;
    }

    /// <summary>Canonical text of the shapes ("a:1x3;b:16", sorted by name) for reports and cache keys.</summary>
    public static string FormatShapes(IEnumerable<KeyValuePair<string, long[]>> shapes) =>
        string.Join(";", shapes.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => p.Key + ":" + string.Join("x", p.Value)));
}

/// <summary>The outcome of <see cref="SyntheticInputs.Create"/>: the data set, or why no configuration ran the original model.</summary>
public sealed class SyntheticOutcome
{
    internal SyntheticOutcome(Dataset? data, string shapes, IReadOnlyList<string> failures)
    {
        Data = data;
        Shapes = shapes;
        Failures = failures;
    }

    /// <summary>The inputs the original model ran on; null when no configuration ran.</summary>
    public Dataset? Data { get; }

    /// <summary>The shapes used ("x:1x3x16x16;sr:"), or the last ones tried when nothing ran.</summary>
    public string Shapes { get; }

    /// <summary>Per configuration tried and refused by ONNX Runtime: the shapes and ONNX Runtime's message.</summary>
    public IReadOnlyList<string> Failures { get; }
}

/// <summary>
/// Synthetic inputs a model can run, for items without data. Every element type ONNX Runtime takes as a tensor input
/// (bool, int8..uint64, float16, bfloat16, float, double, string). Dimensions come from the user (InputShapes), else the
/// model (fixed dims; dims the first consumer fixes: a Conv's input channels and kernel extent, a MatMul/Gemm's inner
/// dimension, an LSTM/GRU/RNN's input size; one value per named dim_param shared across inputs), else a sequence of
/// sizes tried in order (1, then 16, then 64, then 224 for the spatial dims of 4-D inputs / 1024 for others; a leading
/// dim of a rank &gt;= 2 input is the batch and stays 1) until the ORIGINAL model runs on the first sample. Values:
/// InputValues when given; indices into a constant table (Gather, GatherElements: token ids, positions) below the
/// table's size; other integer inputs 1 (masks, shapes, counts: positive and small), integer scalars the level's size
/// (1, 16, 64, 1024); uint8 0..255 and int8 -128..127 (pixels); bool random; floats uniform [0, 1).
/// </summary>
public static class SyntheticInputs
{
    /// <summary>Largest element count of one synthetic input; larger configurations are not tried.</summary>
    public const long MaxElements = 1L << 24;

    private static readonly long[] Levels = [1, 16, 64, 1024];

    /// <summary>
    /// Builds <paramref name="samples"/> samples for <paramref name="original"/> (probing it on the first sample of each
    /// configuration); <paramref name="model"/> is the same model as a graph (for dim and value hints).
    /// </summary>
    /// <exception cref="CompressException">CMPR0108 when an override names an input the model does not have, CMPR0109
    /// when an InputShapes shape contradicts the model's rank or fixed dims.</exception>
    public static SyntheticOutcome Create(ModelProto model, ModelRunner original, InputOverrides overrides, int samples, int seed, string displayName)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(original);
        ArgumentNullException.ThrowIfNull(overrides);
        ModelInputs inputs = original.Inputs;
        foreach (string name in overrides.Shapes.Keys.Concat(overrides.Values.Keys))
        {
            if (inputs.Find(name) == null)
            {
                throw CompressException.ForFile(displayName, DiagnosticCodes.UnknownInputName, displayName, name, string.Join(", ", inputs.Select(i => i.Name)));
            }
        }
        var hints = new GraphHints(model);
        InputPlan[] plans = [.. inputs.Select(i => Plan(i, hints, overrides, displayName))];

        var failures = new List<string>();
        var tried = new HashSet<string>(StringComparer.Ordinal);
        string lastShapes = "";
        foreach (int level in Enumerable.Range(0, Levels.Length))
        {
            long[][] shapes = Shapes(plans, level);
            string text = InputOverrides.FormatShapes(plans.Select((p, k) => KeyValuePair.Create(p.Info.Name, shapes[k])));
            string signature = text + "|" + string.Join(",", plans.Select(p => p.ScalarValue(level)));
            if (!tried.Add(signature))
            {
                continue;
            }
            lastShapes = text;
            if (shapes.Any(s => s.Aggregate(1L, (a, d) => a * d) > MaxElements))
            {
                failures.Add($"{text}: more than {MaxElements} elements in one input, not tried");
                continue;
            }
            try
            {
                // The probe is the first sample alone (the same values the full set starts with).
                original.Run(Build(plans, shapes, level, 1, seed).GetSample(0));
                return new SyntheticOutcome(Build(plans, shapes, level, samples, seed), text, failures);
            }
            catch (CompressException e) when (e.Code is DiagnosticCodes.OrtRunFailed or DiagnosticCodes.SourceRejectedByOrt)
            {
                failures.Add($"{text}: {e.InnerException?.Message ?? e.Message}");
            }
        }
        return new SyntheticOutcome(null, lastShapes, failures);
    }

    /// <summary>Level 0 inputs from the runner's metadata alone (no graph hints, no probing).</summary>
    public static Dataset CreateUnprobed(ModelInputs inputs, int samples, int seed)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        InputPlan[] plans = [.. inputs.Select(i => Plan(i, null, InputOverrides.None, ""))];
        return Build(plans, Shapes(plans, 0), 0, samples, seed);
    }

    /// <summary>How one input is filled: fixed or hinted dims, dim_param names, value role.</summary>
    private sealed class InputPlan(TensorInfo info)
    {
        public TensorInfo Info { get; } = info;

        /// <summary>Per dim: a fixed size, or 0 for a free dim.</summary>
        public long[] Fixed { get; init; } = [];

        /// <summary>Per dim: the smallest size a consumer takes (a Conv kernel's extent), or 0.</summary>
        public long[] Min { get; init; } = [];

        /// <summary>Per dim: its dim_param name, or null.</summary>
        public string?[] Params { get; init; } = [];

        public double? Value { get; init; }

        /// <summary>Exclusive upper bound of index values (Gather into a constant table), or 0.</summary>
        public long IndexBound { get; init; }

        /// <summary>Integer scalars without a role get the level's size; anything else the same value at every level.</summary>
        public string ScalarValue(int level) =>
            Value == null && IndexBound == 0 && Fixed.Length == 0 && Info.IsInteger ? Levels[level].ToString(CultureInfo.InvariantCulture) : "";
    }

    private static InputPlan Plan(TensorInfo info, GraphHints? hints, InputOverrides overrides, string displayName)
    {
        TypeProto.Types.Tensor? declared = hints?.Declared(info.Name);
        int rank = info.Shape.Count;
        var fixedDims = new long[rank];
        var names = new string?[rank];
        for (int d = 0; d < rank; d++)
        {
            fixedDims[d] = info.Shape[d] > 0 ? info.Shape[d] : 0;
            if (declared?.Shape is { } shape && d < shape.Dim.Count && shape.Dim[d].ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimParam)
            {
                names[d] = shape.Dim[d].DimParam;
            }
        }
        if (overrides.Shapes.TryGetValue(info.Name, out long[]? given))
        {
            bool rankKnown = declared == null || declared.Shape != null;
            if (rankKnown && given.Length != rank
                || Enumerable.Range(0, Math.Min(rank, given.Length)).Any(d => fixedDims[d] > 0 && fixedDims[d] != given[d]))
            {
                throw CompressException.ForFile(displayName, DiagnosticCodes.InputShapeMismatch, displayName, info.Name, string.Join("x", given),
                    rankKnown ? info.Describe() : "an unknown rank");
            }
            return new InputPlan(info)
            {
                Fixed = [.. given], Params = new string?[given.Length], Min = new long[given.Length],
                Value = overrides.Values.TryGetValue(info.Name, out double v) ? v : null,
                IndexBound = hints?.IndexBound(info.Name) ?? 0,
            };
        }
        var minDims = new long[rank];
        hints?.InferDims(info.Name, fixedDims, minDims);
        return new InputPlan(info)
        {
            Fixed = fixedDims, Params = names, Min = minDims,
            Value = overrides.Values.TryGetValue(info.Name, out double value) ? value : null,
            IndexBound = hints?.IndexBound(info.Name) ?? 0,
        };
    }

    private static long[][] Shapes(InputPlan[] plans, int level)
    {
        // A named dim gets one value everywhere: a fixed or hinted size wherever the name has one, else the level's.
        var named = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (InputPlan p in plans)
        {
            for (int d = 0; d < p.Fixed.Length; d++)
            {
                if (p.Params[d] is { } name && p.Fixed[d] > 0)
                {
                    named.TryAdd(name, p.Fixed[d]);
                }
            }
        }
        var result = new long[plans.Length][];
        for (int k = 0; k < plans.Length; k++)
        {
            InputPlan p = plans[k];
            int rank = p.Fixed.Length;
            var shape = new long[rank];
            for (int d = 0; d < rank; d++)
            {
                if (p.Fixed[d] > 0)
                {
                    shape[d] = p.Fixed[d];
                    continue;
                }
                long size = rank >= 2 && d == 0 ? 1 : level == Levels.Length - 1 && rank == 4 && d >= 2 ? 224 : Levels[level];
                size = Math.Max(size, p.Min[d]);
                if (p.Params[d] is { } name)
                {
                    size = named.TryGetValue(name, out long shared) ? shared : named[name] = size;
                }
                shape[d] = size;
            }
            result[k] = shape;
        }
        return result;
    }

    private static Dataset Build(InputPlan[] plans, long[][] shapes, int level, int samples, int seed)
    {
        var rng = new Random(seed);
        var all = new List<TensorData[]>(samples);
        var sources = new List<string>(samples);
        for (int s = 0; s < samples; s++)
        {
            var tensors = new TensorData[plans.Length];
            for (int i = 0; i < plans.Length; i++)
            {
                InputPlan p = plans[i];
                long count = shapes[i].Aggregate(1L, (a, d) => checked(a * d));
                var data = new float[count];
                Func<float> next = Generator(p, level, rng);
                for (long k = 0; k < count; k++)
                {
                    data[k] = next();
                }
                tensors[i] = new TensorData(data, shapes[i]) { Name = p.Info.Name };
            }
            all.Add(tensors);
            sources.Add($"random sample {s} (seed {seed})");
        }
        return new Dataset("random inputs", plans.Select(p => p.Info.Name).ToList(), all, sources, labels: null, references: null);
    }

    private static Func<float> Generator(InputPlan p, int level, Random rng)
    {
        if (p.Value is { } v)
        {
            return () => (float)v;
        }
        if (p.IndexBound > 0 && (p.Info.IsInteger || p.Info.ElementType == TensorElementType.Other))
        {
            int bound = (int)Math.Min(p.IndexBound, int.MaxValue);
            return () => rng.Next(bound);
        }
        return p.Info.ElementType switch
        {
            TensorElementType.UInt8 => () => rng.Next(256),
            TensorElementType.Int8 => () => rng.Next(-128, 128),
            TensorElementType.Bool => () => rng.Next(2),
            _ when p.Info.IsInteger => p.Fixed.Length == 0 ? () => Levels[level] : () => 1,
            _ => () => (float)rng.NextDouble(),
        };
    }

    /// <summary>What the graph tells about its inputs: declared types, the sizes their first consumers need, index ranges.</summary>
    private sealed class GraphHints
    {
        private readonly Dictionary<string, ValueInfoProto> _inputs = new(StringComparer.Ordinal);
        private readonly Dictionary<string, List<(NodeProto Node, int Slot)>> _uses = new(StringComparer.Ordinal);
        private readonly Dictionary<string, TensorProto> _constants = new(StringComparer.Ordinal);

        public GraphHints(ModelProto model)
        {
            foreach (ValueInfoProto v in model.Graph.Input)
            {
                _inputs.TryAdd(v.Name, v);
            }
            foreach ((GraphProto g, _) in ModelWalker.Graphs(model))
            {
                foreach (TensorProto t in g.Initializer)
                {
                    _constants.TryAdd(t.Name, t);
                }
                foreach (NodeProto n in g.Node)
                {
                    if (n.OpType == "Constant" && n.Output.Count == 1 && n.Attribute.FirstOrDefault(a => a.Name == "value")?.T is { } t2)
                    {
                        _constants.TryAdd(n.Output[0], t2);
                    }
                    for (int slot = 0; slot < n.Input.Count; slot++)
                    {
                        if (n.Input[slot].Length > 0)
                        {
                            (_uses.TryGetValue(n.Input[slot], out var list) ? list : _uses[n.Input[slot]] = []).Add((n, slot));
                        }
                    }
                }
            }
        }

        public TypeProto.Types.Tensor? Declared(string name) => _inputs.TryGetValue(name, out ValueInfoProto? v) ? v.Type?.TensorType : null;

        /// <summary>Uses of <paramref name="name"/>, looking through ops that keep values (casts, reshapes).</summary>
        private IEnumerable<(NodeProto Node, int Slot)> Uses(string name, bool throughReshapes)
        {
            var seen = new HashSet<string>(StringComparer.Ordinal) { name };
            var queue = new Queue<string>([name]);
            while (queue.Count > 0)
            {
                foreach ((NodeProto n, int slot) in _uses.GetValueOrDefault(queue.Dequeue()) ?? [])
                {
                    bool passes = n.Output.Count == 1 && (n.OpType is "Cast" or "Identity"
                        || throughReshapes && slot == 0 && n.OpType is "Unsqueeze" or "Squeeze" or "Reshape" or "Flatten" or "Expand");
                    if (passes)
                    {
                        if (seen.Add(n.Output[0]))
                        {
                            queue.Enqueue(n.Output[0]);
                        }
                        continue;
                    }
                    yield return (n, slot);
                }
            }
        }

        /// <summary>Exclusive bound of the values <paramref name="name"/> may hold as indices into constant tables (the smallest), or 0.</summary>
        public long IndexBound(string name)
        {
            long bound = 0;
            foreach ((NodeProto n, int slot) in Uses(name, throughReshapes: true))
            {
                if (slot == 1 && n.OpType is "Gather" or "GatherElements" && _constants.TryGetValue(n.Input[0], out TensorProto? table) && table.Dims.Count > 0)
                {
                    long axis = n.Attribute.FirstOrDefault(a => a.Name == "axis")?.I ?? 0;
                    axis = axis < 0 ? axis + table.Dims.Count : axis;
                    if (axis >= 0 && axis < table.Dims.Count && table.Dims[(int)axis] > 0)
                    {
                        bound = bound == 0 ? table.Dims[(int)axis] : Math.Min(bound, table.Dims[(int)axis]);
                    }
                }
            }
            return bound;
        }

        /// <summary>Fills free dims (0) of <paramref name="dims"/> that the input's direct consumers fix, and the
        /// smallest sizes they take into <paramref name="min"/>.</summary>
        public void InferDims(string name, long[] dims, long[] min)
        {
            int rank = dims.Length;
            foreach ((NodeProto n, int slot) in Uses(name, throughReshapes: false))
            {
                TensorProto? w = n.Input.Count > 1 && _constants.TryGetValue(n.Input[1], out TensorProto? t) ? t : null;
                if (slot != 0 || w == null)
                {
                    continue;
                }
                void Set(int d, long size)
                {
                    if (d >= 0 && d < rank && dims[d] == 0 && size > 0)
                    {
                        dims[d] = size;
                    }
                }
                switch (n.OpType)
                {
                    case "Conv" when w.Dims.Count == rank && rank >= 3:
                        long group = n.Attribute.FirstOrDefault(a => a.Name == "group")?.I ?? 1;
                        Set(1, w.Dims[1] * Math.Max(1, group));
                        long[] dilations = n.Attribute.FirstOrDefault(a => a.Name == "dilations")?.Ints.ToArray() ?? [];
                        for (int d = 2; d < rank; d++)
                        {
                            long extent = (w.Dims[d] - 1) * (d - 2 < dilations.Length ? dilations[d - 2] : 1) + 1;
                            min[d] = Math.Max(min[d], extent);
                        }
                        break;
                    case "MatMul" when w.Dims.Count >= 2 && rank >= 1:
                        Set(rank - 1, w.Dims[^2]);
                        break;
                    case "Gemm" when w.Dims.Count == 2 && rank == 2:
                        bool transA = (n.Attribute.FirstOrDefault(a => a.Name == "transA")?.I ?? 0) != 0;
                        bool transB = (n.Attribute.FirstOrDefault(a => a.Name == "transB")?.I ?? 0) != 0;
                        Set(transA ? 0 : 1, transB ? w.Dims[1] : w.Dims[0]);
                        break;
                    case "LSTM" or "GRU" or "RNN" when w.Dims.Count == 3 && rank == 3:
                        Set(2, w.Dims[2]);
                        break;
                }
            }
        }
    }
}
