using System.Globalization;
using System.Runtime.InteropServices;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Quantization;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;
using DataType = CompressOnBuild.Onnx.TensorProto.Types.DataType;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// float32 -> float16 conversion of a model's weights and compute. Every main-graph node whose operator the pass
/// knows (a table of which inputs and outputs share the float type T) and whose T is float32 computes in
/// float16; its float32 weights (initializers, Constant nodes) are stored as float16, finite values beyond
/// +-65504 clamped and counted. Graph inputs and outputs stay float32: Cast nodes convert at the edges. Nodes that
/// stay float32 - blocked operators (<see cref="Float16Options.BlockedOps"/>), excluded nodes, operators not in
/// the table, nodes holding subgraphs, other domains - get Casts back to float32 on the inputs that became
/// float16. If/Loop/Scan bodies are converted the same way, each keeping float32 inputs and outputs. value_info entries of converted values are retyped. Casts are shared per value.
/// </summary>
public static class Float16Converter
{
    /// <summary>Which inputs and outputs of an operator carry its float type T (null = all).</summary>
    private sealed record OpTypes(int[]? Inputs, int[]? Outputs);

    private static readonly OpTypes All = new(null, null);
    private static readonly OpTypes FirstInput = new([0], null);
    private static readonly OpTypes FirstInputFirstOutput = new([0], [0]);

    private static readonly Dictionary<string, OpTypes> KnownOps = BuildTable();

    private static Dictionary<string, OpTypes> BuildTable()
    {
        var t = new Dictionary<string, OpTypes>(StringComparer.Ordinal);
        foreach (string op in new[]
        {
            "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid", "HardSwish", "Softsign", "Softplus",
            "ThresholdedRelu", "Shrink", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Erf", "Exp", "Log", "Sin",
            "Cos", "Identity", "Softmax", "LogSoftmax", "Gelu", "Mish", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean",
            "PRelu", "Conv", "ConvTranspose", "MatMul", "Gemm", "InstanceNormalization", "BatchNormalization", "Concat",
            "GlobalAveragePool", "GlobalMaxPool", "AveragePool", "LpPool", "LRN", "Clip",
        })
        {
            t[op] = All;
        }
        foreach (string op in new[]
        {
            "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather", "GatherElements", "GatherND", "Expand",
            "Tile", "DepthToSpace", "SpaceToDepth", "Split", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceSumSquare",
            "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceProd", "CumSum",
        })
        {
            t[op] = FirstInput;
        }
        foreach (string op in new[] { "MaxPool", "Dropout", "Resize", "Upsample", "Pow", "TopK" })
        {
            t[op] = FirstInputFirstOutput;
        }
        t["LayerNormalization"] = new([0, 1, 2], [0]);
        t["Pad"] = new([0, 2], [0]);
        t["Where"] = new([1, 2], [0]);
        return t;
    }

    /// <summary>
    /// Recurrent operators and their weight inputs (W, R, B and LSTM's P). ONNX Runtime's CPU LSTM/GRU/RNN kernels are
    /// float32-only, so these nodes keep computing in float32, but their constant weights are stored as float16 with a
    /// Cast back in front (ORT folds it at load): the file still halves.
    /// </summary>
    private static readonly Dictionary<string, int[]> RecurrentWeightInputs = new(StringComparer.Ordinal)
    {
        ["LSTM"] = [1, 2, 3, 7], ["GRU"] = [1, 2, 3], ["RNN"] = [1, 2, 3],
    };

    /// <summary>Operators whose output type is fixed whatever their inputs are.</summary>
    private static readonly Dictionary<string, int> FixedOutputTypes = new(StringComparer.Ordinal)
    {
        ["Shape"] = (int)DataType.Int64, ["Size"] = (int)DataType.Int64, ["NonZero"] = (int)DataType.Int64,
        ["ArgMax"] = (int)DataType.Int64, ["ArgMin"] = (int)DataType.Int64, ["Equal"] = (int)DataType.Bool,
        ["Less"] = (int)DataType.Bool, ["Greater"] = (int)DataType.Bool, ["LessOrEqual"] = (int)DataType.Bool,
        ["GreaterOrEqual"] = (int)DataType.Bool, ["Not"] = (int)DataType.Bool, ["And"] = (int)DataType.Bool,
        ["Or"] = (int)DataType.Bool, ["Xor"] = (int)DataType.Bool, ["IsNaN"] = (int)DataType.Bool, ["IsInf"] = (int)DataType.Bool,
    };

    /// <summary>Converts <paramref name="model"/> in place (the caller passes a copy) and reports what it did.</summary>
    /// <exception cref="CompressException">CMPR0103 when the model has no graph or a weight cannot be read.</exception>
    public static Float16Summary Apply(ModelProto model, Float16Options options, string displayName) => Apply(model, options, displayName, null);

    /// <summary>
    /// <see cref="Apply(ModelProto, Float16Options, string)"/>, where <paramref name="deferTensor"/> may take over a
    /// float32 weight's conversion: it returns the float16 tensor that replaces it (its data written later, e.g. by
    /// the streaming path, which also counts that tensor's clamped values), or null to convert it here.
    /// </summary>
    internal static Float16Summary Apply(ModelProto model, Float16Options options, string displayName, Func<TensorProto, TensorProto?>? deferTensor)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(displayName);
        if (model.Graph == null)
        {
            throw CompressException.ForFile(displayName, DiagnosticCodes.ModelInvalid, displayName, "it has no graph");
        }
        long before = model.CalculateSize();
        Float16Summary Unchanged(string reason, bool fp16 = false, bool quantized = false) => new()
        {
            ModelDisplayName = displayName,
            AlreadyFloat16 = fp16,
            AlreadyQuantized = quantized,
            UnchangedReason = reason,
            ModelBytesBefore = before,
            ModelBytesAfter = before,
        };

        if (QuantizedOperators.Describe(model) is { } quantizedOps)
        {
            return Unchanged(quantizedOps, quantized: true);
        }
        (int fp32Tensors, int fp16Tensors) = CountWeightTypes(model);
        if (fp32Tensors == 0 && fp16Tensors > 0)
        {
            return Unchanged(string.Create(CultureInfo.InvariantCulture, $"{fp16Tensors} FLOAT16 weight tensors and no FLOAT32 weights"), fp16: true);
        }
        var graph = new PassGraph(model);
        if (graph.OnnxOpset < 6)
        {
            return Unchanged($"default opset {graph.OnnxOpset} is older than 6, whose Cast this pass needs");
        }
        // If/Loop/Scan bodies are converted like the main graph, each with float32 at its edges; the weights only a
        // body reads move into it first.
        int moved = graph.LocalizeSubgraphConstants();
        int folded = 0, nodes = 0, tensors = 0, casts = 0;
        long elements = 0, clamped = 0;
        var kept = new List<SkippedNode>();
        foreach (PassGraph scope in graph.WithSubgraphs())
        {
            folded += scope.FoldConstantShapeOps(displayName);
            var converter = new Converter(scope, options, displayName, deferTensor);
            converter.Run();
            nodes += converter.ConvertedNodes;
            tensors += converter.ConvertedTensors;
            elements += converter.ConvertedElements;
            clamped += converter.Clamped;
            casts += converter.Casts;
            kept.AddRange(converter.Kept);
        }
        bool changed = moved + folded + nodes + tensors > 0;
        if (changed)
        {
            PassGraph.DropInitializerInputs(model);
            PassGraph.StripDebugTraces(model);
        }
        return new Float16Summary
        {
            ModelDisplayName = displayName,
            ConvertedNodes = nodes,
            KeptFloat32 = kept,
            ConvertedTensors = tensors,
            ConvertedElements = elements,
            ClampedValues = clamped,
            CastsInserted = casts,
            ModelBytesBefore = before,
            ModelBytesAfter = changed ? model.CalculateSize() : before,
        };
    }

    /// <summary>Initializers and Constant tensors of FLOAT and FLOAT16 type over all graphs.</summary>
    private static (int Fp32, int Fp16) CountWeightTypes(ModelProto model)
    {
        int fp32 = 0, fp16 = 0;
        foreach (TensorProto t in ModelWalker.Tensors(model))
        {
            if (t.DataType == (int)DataType.Float)
            {
                fp32++;
            }
            else if (t.DataType == (int)DataType.Float16)
            {
                fp16++;
            }
        }
        return (fp32, fp16);
    }

    private sealed class Converter(PassGraph g, Float16Options options, string displayName, Func<TensorProto, TensorProto?>? deferTensor)
    {
        private readonly Dictionary<string, int> _types = new(StringComparer.Ordinal);
        private readonly HashSet<NodeProto> _converted = new(ReferenceEqualityComparer.Instance);

        /// <summary>Values that hold float16 after the pass, mapped to the name the float16 data has.</summary>
        private readonly Dictionary<string, string> _half = new(StringComparer.Ordinal);

        /// <summary>Renamed float16 outputs mapped back to the original (float32) name.</summary>
        private readonly Dictionary<string, string> _renamed = new(StringComparer.Ordinal);

        /// <summary>Recurrent nodes that stay float32 but whose constant weights are stored as float16 (a Cast feeds them).</summary>
        private readonly HashSet<NodeProto> _halfWeightsOnly = new(ReferenceEqualityComparer.Instance);

        public int ConvertedNodes => _converted.Count;

        public List<SkippedNode> Kept { get; } = [];

        public int ConvertedTensors { get; private set; }

        public long ConvertedElements { get; private set; }

        public long Clamped { get; private set; }

        public int Casts { get; private set; }

        public void Run()
        {
            InferTypes();
            ChooseNodes();
            if (_converted.Count == 0 && _halfWeightsOnly.Count == 0)
            {
                return;
            }
            HashSet<string> outer = g.OuterUses();
            ConvertConstants(outer);
            foreach (NodeProto node in _converted)
            {
                OpTypes types = KnownOps[node.OpType];
                for (int i = 0; i < node.Output.Count; i++)
                {
                    string o = node.Output[i];
                    if (o.Length == 0 || !IsT(types.Outputs, i))
                    {
                        continue;
                    }
                    if (outer.Contains(o))
                    {
                        // The graph output / subgraph keeps the float32 name; the float16 result gets a new one.
                        string renamed = g.Unique(o + "_fp16");
                        node.Output[i] = renamed;
                        _half[o] = renamed;
                        _renamed[renamed] = o;
                    }
                    else
                    {
                        _half[o] = o;
                    }
                }
            }
            Rewire();
            RetypeValueInfo();
        }

        private static bool IsT(int[]? positions, int index) => positions == null || Array.IndexOf(positions, index) >= 0;

        private int TypeOf(string name) => _types.GetValueOrDefault(name);

        private void InferTypes()
        {
            GraphProto graph = g.Graph;
            foreach (ValueInfoProto v in graph.Input.Concat(graph.Output).Concat(graph.ValueInfo))
            {
                if (v.Type?.TensorType is { ElemType: > 0 } tt)
                {
                    _types[v.Name] = tt.ElemType;
                }
            }
            foreach (TensorProto t in graph.Initializer)
            {
                _types[t.Name] = t.DataType;
            }
            foreach (NodeProto n in graph.Node)
            {
                int type = 0;
                string domain = ModelChecker.NormalizeDomain(n.Domain);
                if (domain.Length == 0)
                {
                    if (n.OpType == "Constant")
                    {
                        type = ConstantType(n);
                    }
                    else if (n.OpType == "Cast")
                    {
                        type = (int)PassGraph.IntAttr(n, "to", 0);
                    }
                    else if (n.OpType == "ConstantOfShape")
                    {
                        type = n.Attribute.FirstOrDefault(a => a.Name == "value")?.T?.DataType ?? (int)DataType.Float;
                    }
                    else if (FixedOutputTypes.TryGetValue(n.OpType, out int fixedType))
                    {
                        type = fixedType;
                    }
                    else if (KnownOps.TryGetValue(n.OpType, out OpTypes? ops))
                    {
                        type = TType(n, ops);
                        for (int i = 0; i < n.Output.Count; i++)
                        {
                            if (IsT(ops.Outputs, i) && type != 0)
                            {
                                _types.TryAdd(n.Output[i], type);
                            }
                        }
                        continue;
                    }
                }
                if (type != 0 && n.Output.Count > 0)
                {
                    _types.TryAdd(n.Output[0], type);
                }
            }
        }

        private int TType(NodeProto n, OpTypes ops)
        {
            for (int i = 0; i < n.Input.Count; i++)
            {
                if (n.Input[i].Length > 0 && IsT(ops.Inputs, i) && TypeOf(n.Input[i]) is var t and > 0)
                {
                    return t;
                }
            }
            for (int i = 0; i < n.Output.Count; i++)
            {
                if (IsT(ops.Outputs, i) && TypeOf(n.Output[i]) is var t and > 0)
                {
                    return t;
                }
            }
            return 0;
        }

        private static int ConstantType(NodeProto n)
        {
            foreach (AttributeProto a in n.Attribute)
            {
                switch (a.Name)
                {
                    case "value" when a.T != null:
                        return a.T.DataType;
                    case "value_float" or "value_floats":
                        return (int)DataType.Float;
                    case "value_int" or "value_ints":
                        return (int)DataType.Int64;
                    default:
                        break;
                }
            }
            return 0;
        }

        private void ChooseNodes()
        {
            var excluded = new HashSet<string>(options.ExcludedNodes, StringComparer.Ordinal);
            foreach (NodeProto n in g.Graph.Node)
            {
                string label = OnnxNames.Label(n);
                bool floatNode = n.Input.Concat(n.Output).Any(v => TypeOf(v) == (int)DataType.Float);
                void Keep(string reason)
                {
                    if (floatNode && n.OpType is not ("Constant" or "Cast"))
                    {
                        Kept.Add(new SkippedNode(label, n.OpType, reason));
                    }
                }
                if (ModelChecker.NormalizeDomain(n.Domain).Length != 0)
                {
                    Keep($"operator domain '{n.Domain}' is not converted");
                    continue;
                }
                if (RecurrentWeightInputs.ContainsKey(n.OpType) && floatNode && !options.BlockedOps.Contains(n.OpType) && !excluded.Contains(label))
                {
                    Keep("computes in float32 (ONNX Runtime's CPU kernel has no float16 form); its constant weights are stored as float16 and cast to float32 when the model loads");
                    _halfWeightsOnly.Add(n);
                    continue;
                }
                if (!KnownOps.TryGetValue(n.OpType, out OpTypes? ops))
                {
                    Keep("no float16 form known to this pass");
                    continue;
                }
                if (TType(n, ops) != (int)DataType.Float)
                {
                    continue; // integer shape arithmetic, double, or unknown: not ours
                }
                if (options.BlockedOps.Contains(n.OpType))
                {
                    Keep("blocked operator (kept float32)");
                    continue;
                }
                if (excluded.Contains(label))
                {
                    Keep("excluded by the options");
                    continue;
                }
                if (n.Attribute.Any(a => a.G != null || a.Graphs.Count > 0))
                {
                    Keep("holds a subgraph (the node stays float32; its bodies are converted on their own)");
                    continue;
                }
                _converted.Add(n);
            }
        }

        /// <summary>Float32 initializers and Constant outputs that converted nodes read as T become float16 in place.</summary>
        private void ConvertConstants(HashSet<string> outer)
        {
            var wanted = new HashSet<string>(StringComparer.Ordinal);
            var readAsOther = new HashSet<string>(StringComparer.Ordinal);
            foreach (NodeProto n in g.Graph.Node)
            {
                bool converted = _converted.Contains(n);
                OpTypes? ops = converted ? KnownOps[n.OpType] : null;
                int[]? halfWeights = _halfWeightsOnly.Contains(n) ? RecurrentWeightInputs[n.OpType] : null;
                for (int i = 0; i < n.Input.Count; i++)
                {
                    if (n.Input[i].Length == 0)
                    {
                        continue;
                    }
                    bool half = converted ? IsT(ops!.Inputs, i) : halfWeights != null && Array.IndexOf(halfWeights, i) >= 0;
                    (half ? wanted : readAsOther).Add(n.Input[i]);
                }
            }
            // Positions and IR 3 input declarations looked up once (an IndexOf per weight is quadratic on large graphs).
            var position = new Dictionary<TensorProto, int>(ReferenceEqualityComparer.Instance);
            for (int i = 0; i < g.Graph.Initializer.Count; i++)
            {
                position.TryAdd(g.Graph.Initializer[i], i);
            }
            ILookup<string, ValueInfoProto> declarations = g.Graph.Input.ToLookup(v => v.Name, StringComparer.Ordinal);
            foreach (string name in wanted)
            {
                // A constant read by float32 consumers as well would need a Cast back (exact) - fine; one that the
                // graph outputs or a subgraph reads keeps its float32 value.
                if (outer.Contains(name) || TypeOf(name) != (int)DataType.Float)
                {
                    continue;
                }
                if (g.IsConstantInitializer(name))
                {
                    TensorProto t = g.Initializers[name];
                    TensorProto half = ToHalf(t);
                    int index = position[t];
                    g.Graph.Initializer[index] = half;
                    position[half] = index;
                    g.Initializers[name] = half;
                    if (g.Model.IrVersion < 4)
                    {
                        foreach (ValueInfoProto v in declarations[name])
                        {
                            v.Type.TensorType.ElemType = (int)DataType.Float16;
                        }
                    }
                    _half[name] = name;
                }
                else if (g.Producers.TryGetValue(name, out NodeProto? producer) && producer.OpType == "Constant"
                    && ModelChecker.NormalizeDomain(producer.Domain).Length == 0)
                {
                    TensorProto? value = ConstantTensor(producer);
                    if (value == null)
                    {
                        continue;
                    }
                    producer.Attribute.Clear();
                    producer.Attribute.Add(new AttributeProto { Name = "value", Type = AttributeProto.Types.AttributeType.Tensor, T = ToHalf(value) });
                    _half[name] = name;
                }
            }
        }

        private static TensorProto? ConstantTensor(NodeProto constant)
        {
            foreach (AttributeProto a in constant.Attribute)
            {
                if (a.Name == "value" && a.T != null)
                {
                    return a.T;
                }
                if (a.Name == "value_float")
                {
                    return TensorUtil.FromFloats("", [a.F]);
                }
                if (a.Name == "value_floats")
                {
                    return TensorUtil.FromFloats("", a.Floats.ToArray(), a.Floats.Count);
                }
            }
            return null;
        }

        private TensorProto ToHalf(TensorProto t)
        {
            if (deferTensor?.Invoke(t) is { } deferred)
            {
                ConvertedTensors++;
                ConvertedElements += t.Dims.Aggregate(1L, (a, d) => a * d);
                return deferred;
            }
            float[] data = PassGraph.Floats(t, displayName);
            var half = new Half[data.Length];
            Clamped += Float16Kernels.ConvertSaturating(data, half);
            ConvertedTensors++;
            ConvertedElements += data.Length;
            TensorProto result = TensorUtil.FromRaw(t.Name, DataType.Float16, MemoryMarshal.AsBytes(half.AsSpan()), [.. t.Dims]);
            result.DocString = t.DocString;
            return result;
        }

        /// <summary>Points every input at the float16 or float32 form it needs, emitting shared Casts just before first use.</summary>
        private void Rewire()
        {
            var toHalf = new Dictionary<string, string>(StringComparer.Ordinal);
            var toFloat = new Dictionary<string, string>(StringComparer.Ordinal);
            var nodes = new List<NodeProto>(g.Graph.Node.Count * 2);
            foreach (NodeProto n in g.Graph.Node)
            {
                bool converted = _converted.Contains(n);
                OpTypes? ops = converted ? KnownOps[n.OpType] : null;
                for (int i = 0; i < n.Input.Count; i++)
                {
                    string v = n.Input[i];
                    if (v.Length == 0)
                    {
                        continue;
                    }
                    bool wantsHalf = converted && IsT(ops!.Inputs, i);
                    bool isHalf = _half.TryGetValue(v, out string? halfName);
                    if (wantsHalf && isHalf)
                    {
                        n.Input[i] = halfName!;
                    }
                    else if (wantsHalf)
                    {
                        n.Input[i] = CastOnce(toHalf, v, "_fp16", DataType.Float16);
                    }
                    else if (isHalf && halfName == v)
                    {
                        n.Input[i] = CastOnce(toFloat, v, "_fp32", DataType.Float);
                    }
                    // isHalf with a renamed float16 value: the original name still carries float32 (cast below).
                }
                nodes.Add(n);
                if (converted)
                {
                    foreach (string o in n.Output)
                    {
                        if (_renamed.TryGetValue(o, out string? original))
                        {
                            nodes.Add(g.Cast(o, original, DataType.Float));
                            Casts++;
                        }
                    }
                }
            }
            g.Graph.Node.Clear();
            g.Graph.Node.AddRange(nodes);

            // One Cast per value and target type, emitted before its first use.
            string CastOnce(Dictionary<string, string> casts, string v, string suffix, DataType to)
            {
                if (!casts.TryGetValue(v, out string? cast))
                {
                    cast = g.Unique(v + suffix);
                    nodes.Add(g.Cast(v, cast, to));
                    Casts++;
                    casts[v] = cast;
                }
                return cast;
            }
        }

        private void RetypeValueInfo()
        {
            foreach (ValueInfoProto v in g.Graph.ValueInfo)
            {
                if (_half.TryGetValue(v.Name, out string? name) && name == v.Name && v.Type?.TensorType is { } tt && tt.ElemType == (int)DataType.Float)
                {
                    tt.ElemType = (int)DataType.Float16;
                }
            }
        }
    }
}
