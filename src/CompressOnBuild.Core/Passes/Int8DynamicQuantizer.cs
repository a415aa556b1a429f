using System.Globalization;
using System.Numerics.Tensors;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Dynamic int8 weight quantization. Every MatMul and Gemm in the main graph whose weight (input B) is a constant
/// float32 matrix becomes one com.microsoft DynamicQuantizeMatMul node: ONNX Runtime quantizes the activation to
/// uint8 per call (per tensor, asymmetric) and multiplies it with the stored 8-bit weight in an integer GEMM,
/// then applies activation scale x per-column weight scale and adds the bias in float. Graph inputs and outputs
/// stay float32.
/// <para>
/// Weights are symmetric per output channel: scale_j = max|W[:, j]| / 127, levels in [-127, 127], round half
/// to even, zero point 0. On x64 CPUs without AVX-VNNI / AVX512-VNNI, ORT's uint8 x int8 kernel multiplies with
/// vpmaddubsw, which adds two adjacent u8*s8 products into a saturating int16: 255*127*2 = 64770 &gt; 32767, so a
/// bright activation next to a large weight is silently clipped. The default encoding therefore stores the same
/// 255 levels as uint8 with zero point 128 (<see cref="WeightEncoding.UInt8"/>): ORT runs u8 x u8 by widening
/// to int16 first (vpmaddwd), exact on every CPU, with no loss of resolution. <see cref="WeightEncoding.Int8"/>
/// (fastest on VNNI) and <see cref="WeightEncoding.Int8ReducedRange"/> (7-bit, ORT's reduce_range) are options.
/// The Passes tests measure all three on the corpus.
/// </para>
/// Gemm: alpha is folded into the weight before quantizing, transB is applied to the stored weight, transA
/// becomes a Transpose node, and beta*C becomes the bias input when C is a constant of N elements (or one);
/// any other C is added by an Add node (after a Mul when beta != 1).
/// </summary>
public static class Int8DynamicQuantizer
{
    public const string MicrosoftDomain = "com.microsoft";

    public const string QuantizedOpType = "DynamicQuantizeMatMul";

    private static readonly HashSet<string> QuantizedOps = new(StringComparer.Ordinal)
    {
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
        "MatMulNBits", "MatMulBnb4", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QAttention",
        "DynamicQuantizeLSTM", "QEmbedLayerNormalization", "GatherBlockQuantized", "QuantizeBFP", "DequantizeBFP",
    };

    /// <summary>Quantizes <paramref name="model"/> in place (the caller passes a copy) and reports what it did.</summary>
    /// <exception cref="CompressException">CMPR0202 when a weight to quantize holds NaN or infinity.</exception>
    public static QuantizationSummary Apply(ModelProto model, QuantizationOptions options, string modelDisplayName)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(modelDisplayName);
        long before = model.CalculateSize();

        string? already = DescribeQuantizedOps(model);
        if (already != null)
        {
            return new QuantizationSummary
            {
                ModelDisplayName = modelDisplayName,
                WeightEncoding = options.WeightEncoding,
                AlreadyQuantized = true,
                AlreadyQuantizedReason = already,
                ModelBytesBefore = before,
                ModelBytesAfter = before,
            };
        }
        if (model.Graph == null)
        {
            throw new CompressException(DiagnosticCodes.ModelInvalid, modelDisplayName, "it has no graph") { File = modelDisplayName };
        }

        // Weights behind Reshape/Transpose/... of initializers become plain initializers first (see PassGraph).
        int folded = new PassGraph(model).FoldConstantShapeOps(modelDisplayName);
        var rewriter = new Rewriter(model, options, modelDisplayName);
        rewriter.Run();
        if (rewriter.Quantized.Count > 0)
        {
            PassGraph.DropInitializerInputs(model);
            PassGraph.StripDebugTraces(model);
        }
        long after = rewriter.Quantized.Count == 0 && folded == 0 ? before : model.CalculateSize();
        return new QuantizationSummary
        {
            ModelDisplayName = modelDisplayName,
            WeightEncoding = options.WeightEncoding,
            Quantized = rewriter.Quantized,
            Skipped = rewriter.Skipped,
            ModelBytesBefore = before,
            ModelBytesAfter = after,
            FloatWeightBytes = rewriter.FloatWeightBytes,
            QuantizedWeightBytes = rewriter.QuantizedWeightBytes,
        };
    }

    /// <summary>"2 QuantizeLinear, 2 DequantizeLinear nodes" when the model already runs quantized operators, else null.</summary>
    public static string? DescribeQuantizedOps(ModelProto model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var counts = new SortedDictionary<string, int>(StringComparer.Ordinal);
        void Visit(NodeProto n)
        {
            if (IsQuantizedOp(n.OpType))
            {
                counts[n.OpType] = counts.GetValueOrDefault(n.OpType) + 1;
            }
        }
        foreach ((GraphProto graph, _) in ModelWalker.Graphs(model))
        {
            foreach (NodeProto n in graph.Node)
            {
                Visit(n);
            }
        }
        foreach (FunctionProto f in model.Functions)
        {
            foreach (NodeProto n in f.Node)
            {
                Visit(n);
            }
        }
        return counts.Count == 0
            ? null
            : string.Join(", ", counts.Select(kv => kv.Value.ToString(CultureInfo.InvariantCulture) + " " + kv.Key)) + (counts.Values.Sum() == 1 ? " node" : " nodes");
    }

    private static bool IsQuantizedOp(string opType) =>
        QuantizedOps.Contains(opType) || opType.StartsWith("QLinear", StringComparison.Ordinal) || opType.StartsWith("QOrdered", StringComparison.Ordinal);

    public static string Label(NodeProto node) =>
        node.Name.Length > 0 ? node.Name : node.Output.Count > 0 ? node.Output[0] : node.OpType;

    /// <summary>A constant float matrix feeding a MatMul/Gemm, and the nodes that computed it from initializers.</summary>
    private sealed class ConstantValue
    {
        public required TensorProto Tensor { get; init; }

        public required long[] Dims { get; init; }

        /// <summary>Initializer or Constant node the data came from.</summary>
        public required string SourceName { get; init; }

        public List<NodeProto> Chain { get; } = [];

        public List<string> ChainInputs { get; } = [];
    }

    private sealed class Candidate
    {
        public required NodeProto Node { get; init; }

        public required ConstantValue Weight { get; init; }

        public bool TransA { get; init; }

        public bool TransB { get; init; }

        public float Alpha { get; init; } = 1f;

        public float Beta { get; init; } = 1f;

        public bool IsConv { get; init; }
    }

    /// <summary>
    /// Default-domain operators whose schema from opset 7 to 11 only gained optional inputs/attributes, negative axes
    /// or types, so a model using them may have its opset raised to 11 for DynamicQuantizeLinear. Ops that changed
    /// meaning in that span (Slice, Pad, Clip, Upsample/Resize, TopK, Dropout, Scan, ...) are deliberately absent.
    /// </summary>
    private static readonly HashSet<string> SameMeaningUpToOpset11 = new(StringComparer.Ordinal)
    {
        "Conv", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Add", "Sub", "Mul", "Div",
        "Reshape", "Flatten", "Gemm", "MatMul", "Transpose", "Concat", "Softmax", "LogSoftmax", "Sigmoid", "Tanh",
        "LeakyRelu", "Identity", "Constant", "Squeeze", "Unsqueeze", "Sum", "Exp", "Log", "Sqrt", "Abs", "Neg",
        "Shape", "Gather", "Cast", "BatchNormalization", "Max", "Min", "Floor", "Ceil", "Elu", "Selu", "PRelu",
    };

    private sealed class Rewriter(ModelProto model, QuantizationOptions options, string displayName)
    {
        private readonly GraphProto _graph = model.Graph;
        private readonly Dictionary<string, TensorProto> _initializers = new(StringComparer.Ordinal);
        private readonly HashSet<string> _graphInputs = new(StringComparer.Ordinal);
        private readonly Dictionary<string, NodeProto> _producers = new(StringComparer.Ordinal);
        private readonly HashSet<string> _names = new(StringComparer.Ordinal);
        private readonly HashSet<string> _touchedInitializers = new(StringComparer.Ordinal);
        private readonly List<NodeProto> _touchedNodes = [];
        private readonly Dictionary<string, (string Quantized, string Scale, string ZeroPoint, int K, int N)> _done = new(StringComparer.Ordinal);
        private readonly Dictionary<string, (string Q, string Scale, string ZeroPoint)> _dynamicQuantized = new(StringComparer.Ordinal);
        private string? _convBlocked;
        private bool _convQuantized;

        public List<QuantizedNode> Quantized { get; } = [];

        public List<SkippedNode> Skipped { get; } = [];

        public long FloatWeightBytes { get; private set; }

        public long QuantizedWeightBytes { get; private set; }

        private EncodingLevels Levels => EncodingLevels.Of(options.WeightEncoding, displayName);

        private float LevelsPerSide => Levels.LevelsPerSide;

        public void Run()
        {
            _ = Levels; // reject an unknown encoding before touching anything
            foreach (TensorProto t in _graph.Initializer)
            {
                _initializers[t.Name] = t;
                _names.Add(t.Name);
            }
            foreach (ValueInfoProto v in _graph.Input)
            {
                _graphInputs.Add(v.Name);
                _names.Add(v.Name);
            }
            foreach (NodeProto n in _graph.Node)
            {
                foreach (string o in n.Output)
                {
                    _producers[o] = n;
                    _names.Add(o);
                }
                _names.Add(n.Name);
            }
            foreach ((GraphProto g, _) in ModelWalker.Graphs(model))
            {
                foreach (NodeProto n in g.Node)
                {
                    _names.UnionWith(n.Output);
                }
            }

            _convBlocked = options.QuantizeConv ? ConvBlockedReason() : null;
            List<Candidate> candidates = FindCandidates();
            RejectSharedWeights(candidates);
            foreach (Candidate c in candidates)
            {
                // Every weight is checked before the graph changes, so a bad one leaves the model untouched.
                ThrowIfNotFinite(c.Weight);
            }
            foreach (Candidate c in candidates)
            {
                if (c.IsConv)
                {
                    RewriteConv(c);
                }
                else
                {
                    Rewrite(c);
                }
            }
            if (Quantized.Count > 0)
            {
                RemoveUnused();
            }
            if (Quantized.Any(q => q.OpType != "Conv"))
            {
                EnsureOpset(MicrosoftDomain, 1);
            }
            if (_convQuantized)
            {
                EnsureOpset("", 11);
            }
        }

        private List<Candidate> FindCandidates()
        {
            var result = new List<Candidate>();
            var excluded = new HashSet<string>(options.ExcludedNodes, StringComparer.Ordinal);
            foreach ((GraphProto g, int depth) in ModelWalker.Graphs(model))
            {
                if (depth == 0)
                {
                    continue;
                }
                foreach (NodeProto n in g.Node.Where(n => n.OpType is "MatMul" or "Gemm" or "Conv" && ModelChecker.NormalizeDomain(n.Domain).Length == 0))
                {
                    Skipped.Add(new SkippedNode(Label(n), n.OpType, $"it is inside the subgraph '{g.Name}'; only the main graph is quantized"));
                }
            }
            foreach (NodeProto node in _graph.Node)
            {
                if (ModelChecker.NormalizeDomain(node.Domain).Length != 0)
                {
                    continue;
                }
                if (node.OpType is not ("MatMul" or "Gemm" or "Conv") || node.Input.Count < 2)
                {
                    continue;
                }
                string label = Label(node);
                void Skip(string reason) => Skipped.Add(new SkippedNode(label, node.OpType, reason));
                if (excluded.Contains(label))
                {
                    Skip("excluded by the options");
                    continue;
                }
                if (node.OpType == "Conv")
                {
                    if (ConvCandidate(node, Skip) is { } conv)
                    {
                        result.Add(conv);
                    }
                    continue;
                }
                if (!TryResolveConstant(node.Input[1], out ConstantValue? weight, out string? why))
                {
                    Skip(why!);
                    continue;
                }
                if (weight!.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
                {
                    Skip($"weight '{node.Input[1]}' is {TensorUtil.DataTypeName(weight.Tensor.DataType)}, not float32");
                    continue;
                }
                if (weight.Dims.Length != 2)
                {
                    Skip($"weight '{node.Input[1]}' has rank {weight.Dims.Length}; only 2-D weights are quantized");
                    continue;
                }
                long elements = weight.Dims[0] * weight.Dims[1];
                if (elements < options.MinimumWeightElements || elements == 0)
                {
                    Skip($"weight '{node.Input[1]}' has {elements} elements, fewer than the minimum {options.MinimumWeightElements}");
                    continue;
                }
                if (elements > int.MaxValue / 2)
                {
                    Skip($"weight '{node.Input[1]}' has {elements} elements, too many for one tensor here");
                    continue;
                }
                if (node.OpType == "MatMul")
                {
                    result.Add(new Candidate { Node = node, Weight = weight });
                    continue;
                }
                result.Add(new Candidate
                {
                    Node = node,
                    Weight = weight,
                    TransA = PassGraph.IntAttr(node, "transA", 0) != 0,
                    TransB = PassGraph.IntAttr(node, "transB", 0) != 0,
                    Alpha = PassGraph.FloatAttr(node, "alpha", 1f),
                    Beta = PassGraph.FloatAttr(node, "beta", 1f),
                });
            }
            return result;
        }

        private Candidate? ConvCandidate(NodeProto node, Action<string> skip)
        {
            if (!options.QuantizeConv)
            {
                skip("Conv quantization is turned off in the options");
                return null;
            }
            if (!TryResolveConstant(node.Input[1], out ConstantValue? weight, out string? why))
            {
                skip(why!);
                return null;
            }
            if (weight!.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
            {
                skip($"weight '{node.Input[1]}' is {TensorUtil.DataTypeName(weight.Tensor.DataType)}, not float32");
                return null;
            }
            if (_convBlocked != null)
            {
                skip(_convBlocked);
                return null;
            }
            long elements = weight.Dims.Aggregate(1L, (a, b) => a * b);
            if (weight.Dims.Length < 3 || weight.Dims[0] <= 0)
            {
                skip($"weight '{node.Input[1]}' has rank {weight.Dims.Length}; Conv weights are [M, C/group, k...]");
                return null;
            }
            if (elements < options.MinimumWeightElements || elements > int.MaxValue / 2)
            {
                skip($"weight '{node.Input[1]}' has {elements} elements, outside the range this pass quantizes (minimum {options.MinimumWeightElements})");
                return null;
            }
            if (node.Input.Count > 2 && node.Input[2].Length > 0)
            {
                if (!TryResolveConstant(node.Input[2], out ConstantValue? bias, out _)
                    || bias!.Tensor.DataType != (int)TensorProto.Types.DataType.Float
                    || bias.Dims.Aggregate(1L, (a, b) => a * b) != weight.Dims[0])
                {
                    skip($"Conv bias '{node.Input[2]}' is not a constant float32 vector of {weight.Dims[0]} elements");
                    return null;
                }
            }
            return new Candidate { Node = node, Weight = weight, IsConv = true };
        }

        /// <summary>Null when Conv can use opset-11 DynamicQuantizeLinear; otherwise why not.</summary>
        private string? ConvBlockedReason()
        {
            OperatorSetIdProto? onnx = model.OpsetImport.FirstOrDefault(o => ModelChecker.NormalizeDomain(o.Domain).Length == 0);
            long version = onnx?.Version ?? 0;
            if (version >= 11)
            {
                return null;
            }
            foreach ((GraphProto g, _) in ModelWalker.Graphs(model))
            {
                foreach (NodeProto n in g.Node)
                {
                    if (ModelChecker.NormalizeDomain(n.Domain).Length == 0
                        && (!SameMeaningUpToOpset11.Contains(n.OpType) || (n.OpType == "BatchNormalization" && version < 9)))
                    {
                        return $"Conv needs default opset 11 (DynamicQuantizeLinear), the model has {version}, and raising it could change what its {n.OpType} nodes mean";
                    }
                }
            }
            if (model.Functions.Count > 0)
            {
                return $"Conv needs default opset 11 (DynamicQuantizeLinear), the model has {version}, and it defines functions whose operators would change version too";
            }
            return null;
        }

        /// <summary>A weight shared with anything that stays float would be stored twice; keep those nodes float.</summary>
        private void RejectSharedWeights(List<Candidate> candidates)
        {
            var quantizable = candidates.ToLookup(c => c.Node.Input[1], StringComparer.Ordinal);
            var mainUses = new Dictionary<string, List<(NodeProto Node, int Index)>>(StringComparer.Ordinal);
            foreach (NodeProto n in _graph.Node)
            {
                for (int i = 0; i < n.Input.Count; i++)
                {
                    if (n.Input[i].Length > 0)
                    {
                        (mainUses.TryGetValue(n.Input[i], out var list) ? list : mainUses[n.Input[i]] = []).Add((n, i));
                    }
                }
            }
            HashSet<string> outerUses = OuterUses();
            var rejected = new HashSet<Candidate>();
            foreach (IGrouping<string, Candidate> group in quantizable)
            {
                ConstantValue w = group.First().Weight;
                var checkedNames = new List<string> { group.Key };
                checkedNames.AddRange(w.ChainInputs);
                checkedNames.Add(w.SourceName);
                string? conflict = null;
                foreach (string name in checkedNames.Distinct(StringComparer.Ordinal))
                {
                    if (outerUses.Contains(name))
                    {
                        conflict = $"weight '{name}' is also a graph output or used inside a subgraph";
                        break;
                    }
                    foreach ((NodeProto user, int index) in mainUses.GetValueOrDefault(name) ?? [])
                    {
                        bool ok = name == group.Key
                            ? index == 1 && group.Any(c => ReferenceEquals(c.Node, user))
                            : w.Chain.Any(c => ReferenceEquals(c, user));
                        if (!ok)
                        {
                            conflict = $"weight '{name}' is shared with {user.OpType} '{Label(user)}', which stays float";
                            break;
                        }
                    }
                    if (conflict != null)
                    {
                        break;
                    }
                }
                if (conflict != null)
                {
                    foreach (Candidate c in group)
                    {
                        rejected.Add(c);
                        Skipped.Add(new SkippedNode(Label(c.Node), c.Node.OpType, conflict));
                    }
                }
            }
            candidates.RemoveAll(rejected.Contains);
        }

        private void ThrowIfNotFinite(ConstantValue w)
        {
            if (!TensorStats.AllFinite(Floats(w.Tensor)))
            {
                throw new CompressException(DiagnosticCodes.NonFiniteWeights, displayName, w.SourceName) { File = displayName };
            }
        }

        private HashSet<string> OuterUses() => PassGraph.OuterUses(model);

        private bool TryResolveConstant(string name, out ConstantValue? value, out string? why)
        {
            value = null;
            why = null;
            if (_initializers.TryGetValue(name, out TensorProto? init))
            {
                // Before IR 4 every initializer had to be listed as a graph input too, so there that listing does
                // not make it a run-time input; from IR 4 on it does (the initializer is only a default).
                if (_graphInputs.Contains(name) && model.IrVersion >= 4)
                {
                    why = $"weight '{name}' is also a graph input, so callers can replace it at run time";
                    return false;
                }
                value = new ConstantValue { Tensor = init, Dims = [.. init.Dims], SourceName = name };
                return true;
            }
            if (!_producers.TryGetValue(name, out NodeProto? producer))
            {
                why = $"weight '{name}' is not a constant";
                return false;
            }
            string domain = ModelChecker.NormalizeDomain(producer.Domain);
            if (domain.Length == 0 && producer.OpType == "Constant")
            {
                AttributeProto? attr = producer.Attribute.FirstOrDefault(a => a.Name == "value" && a.T != null);
                if (attr == null)
                {
                    why = $"weight '{name}' comes from a Constant without a tensor value";
                    return false;
                }
                value = new ConstantValue { Tensor = attr.T, Dims = [.. attr.T.Dims], SourceName = name };
                value.Chain.Add(producer);
                return true;
            }
            if (domain.Length == 0 && producer.OpType == "Reshape" && producer.Input.Count == 2
                && TryResolveConstant(producer.Input[0], out ConstantValue? data, out why)
                && TryResolveConstant(producer.Input[1], out ConstantValue? shape, out why))
            {
                if (shape!.Tensor.DataType != (int)TensorProto.Types.DataType.Int64)
                {
                    why = $"weight '{name}' is reshaped with a non-int64 shape";
                    return false;
                }
                long[]? dims = PassGraph.ReshapeDims(data!.Dims, Int64s(shape.Tensor), PassGraph.IntAttr(producer, "allowzero", 0) != 0);
                if (dims == null)
                {
                    why = $"weight '{name}' comes from a Reshape whose shape does not fit its data";
                    return false;
                }
                value = new ConstantValue { Tensor = data.Tensor, Dims = dims, SourceName = data.SourceName };
                value.Chain.AddRange(data.Chain);
                value.Chain.AddRange(shape.Chain);
                value.Chain.Add(producer);
                value.ChainInputs.AddRange(data.ChainInputs);
                value.ChainInputs.AddRange(shape.ChainInputs);
                value.ChainInputs.AddRange(producer.Input);
                return true;
            }
            why ??= $"weight '{name}' is computed at run time by {producer.OpType} '{Label(producer)}'";
            return false;
        }

        private void Rewrite(Candidate c)
        {
            NodeProto node = c.Node;
            string weightName = node.Input[1];
            int k = (int)(c.TransB ? c.Weight.Dims[1] : c.Weight.Dims[0]);
            int n = (int)(c.TransB ? c.Weight.Dims[0] : c.Weight.Dims[1]);
            string key = weightName + (c.TransB ? "|T" : "") + (c.Alpha != 1f ? "|a" + c.Alpha.ToString("R", CultureInfo.InvariantCulture) : "");
            if (!_done.TryGetValue(key, out var stored))
            {
                (stored, float error) = QuantizeWeight(c, weightName, k, n);
                _done[key] = stored;
                _weightErrors[key] = error;
            }
            float maxError = _weightErrors[key];

            int index = _graph.Node.IndexOf(node);
            var inserted = new List<NodeProto>();
            string a = node.Input[0];
            if (c.TransA)
            {
                string transposed = Unique(a + "_transposed");
                var t = new NodeProto { OpType = "Transpose", Name = "" };
                t.Input.Add(a);
                t.Output.Add(transposed);
                t.Attribute.Add(new AttributeProto { Name = "perm", Type = AttributeProto.Types.AttributeType.Ints, Ints = { 1, 0 } });
                inserted.Add(t);
                a = transposed;
            }

            var q = new NodeProto { OpType = QuantizedOpType, Domain = MicrosoftDomain, Name = node.Name.Length > 0 ? node.Name : Unique(Label(node) + "_quant") };
            q.Input.Add(a);
            q.Input.Add(stored.Quantized);
            q.Input.Add(stored.Scale);
            q.Input.Add(stored.ZeroPoint);
            q.Output.Add(node.Output[0]);
            inserted.Add(q);

            if (node.OpType == "Gemm" && node.Input.Count > 2 && node.Input[2].Length > 0 && c.Beta != 0f)
            {
                string cName = node.Input[2];
                if (TryBias(cName, c.Beta, n, out string? bias))
                {
                    q.Input.Add(bias!);
                }
                else
                {
                    string product = Unique(Label(node) + "_matmul");
                    q.Output[0] = product;
                    string addend = cName;
                    if (c.Beta != 1f)
                    {
                        string betaName = Unique(Label(node) + "_beta");
                        AddInitializer(TensorUtil.FromFloats(betaName, [c.Beta]));
                        addend = Unique(cName + "_scaled");
                        var mul = new NodeProto { OpType = "Mul", Name = "" };
                        mul.Input.Add(cName);
                        mul.Input.Add(betaName);
                        mul.Output.Add(addend);
                        inserted.Add(mul);
                    }
                    var add = new NodeProto { OpType = "Add", Name = "" };
                    add.Input.Add(product);
                    add.Input.Add(addend);
                    add.Output.Add(node.Output[0]);
                    inserted.Add(add);
                }
            }

            if (node.OpType == "MatMul")
            {
                FoldBiasAdd(node, q, n);
            }

            ReplaceNode(index, inserted);
            Touch(weightName, c.Weight);
            Quantized.Add(new QuantizedNode(Label(node), node.OpType, weightName, k, n, maxError));
        }

        /// <summary>
        /// MatMul followed by its only consumer Add(y, constant bias of N elements) (the usual exported Linear
        /// layer): the bias becomes DynamicQuantizeMatMul's bias input and the Add goes. A [1, .., 1, N] bias is
        /// folded only when the activation's rank is known to be at least the bias rank (so broadcasting cannot
        /// have raised the output rank).
        /// </summary>
        private void FoldBiasAdd(NodeProto matmul, NodeProto quantized, int n)
        {
            string y = matmul.Output[0];
            if (OuterUses().Contains(y))
            {
                return;
            }
            List<NodeProto> users = _graph.Node.Where(x => x.Input.Contains(y)).ToList();
            if (users.Count != 1)
            {
                return;
            }
            NodeProto add = users[0];
            if (add.OpType != "Add" || ModelChecker.NormalizeDomain(add.Domain).Length != 0 || add.Input.Count != 2 || add.Input[0] == add.Input[1])
            {
                return;
            }
            string other = add.Input[0] == y ? add.Input[1] : add.Input[0];
            if (!TryResolveConstant(other, out ConstantValue? cv, out _) || cv!.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
            {
                return;
            }
            long[] dims = cv.Dims;
            bool fits = (dims.Length == 1 && dims[0] == n)
                || (dims.Length >= 2 && dims[^1] == n && dims[..^1].All(d => d == 1) && KnownRank(matmul.Input[0]) >= dims.Length);
            if (!fits)
            {
                return;
            }
            string bias = Unique(other + "_bias");
            AddInitializer(TensorUtil.FromFloats(bias, Floats(cv.Tensor), n));
            QuantizedWeightBytes += (long)n * 4;
            quantized.Input.Add(bias);
            quantized.Output[0] = add.Output[0];
            _graph.Node.Remove(add);
            RemoveValueInfo(y);
            _touchedInitializers.Add(other);
            _touchedInitializers.Add(cv.SourceName);
            _touchedInitializers.UnionWith(cv.ChainInputs);
            _touchedNodes.AddRange(cv.Chain);
        }

        /// <summary>The rank of a value when the graph states it (input/value_info shape, Reshape to a constant shape, Flatten); else -1.</summary>
        private int KnownRank(string name)
        {
            ValueInfoProto? info = _graph.Input.Concat(_graph.ValueInfo).FirstOrDefault(v => v.Name == name);
            if (info?.Type?.TensorType?.Shape is { } shape)
            {
                return shape.Dim.Count;
            }
            if (_producers.TryGetValue(name, out NodeProto? producer) && ModelChecker.NormalizeDomain(producer.Domain).Length == 0)
            {
                if (producer.OpType == "Flatten")
                {
                    return 2;
                }
                if (producer.OpType == "Reshape" && producer.Input.Count == 2 && TryResolveConstant(producer.Input[1], out ConstantValue? s, out _))
                {
                    return (int)s!.Dims.Aggregate(1L, (a, b) => a * b);
                }
            }
            return -1;
        }

        /// <summary>
        /// Quantizes one weight in channel-major order (row j of the [N, K] view is output channel j): per-channel
        /// max-abs, quantize, dequantize to measure the error; then stores it as [K, N] for DynamicQuantizeMatMul.
        /// </summary>
        private ((string, string, string, int, int) Stored, float MaxError) QuantizeWeight(Candidate c, string weightName, int k, int n)
        {
            float[] data = Floats(c.Weight.Tensor);
            float[] channelMajor = c.TransB ? data : PassGraph.Transpose(data, k, n);
            if (c.Alpha != 1f)
            {
                TensorPrimitives.Multiply(channelMajor, c.Alpha, channelMajor);
            }
            (byte zero, byte min, byte max, bool unsigned, _) = Levels;
            var maxAbs = new float[n];
            TensorStats.RowMaxAbs(channelMajor, n, k, maxAbs);
            var scales = new float[n];
            var quantized = new byte[(long)n * k];
            var roundTrip = new float[k];
            float maxError = 0f;
            for (int j = 0; j < n; j++)
            {
                float scale = maxAbs[j] / LevelsPerSide;
                // An all-zero (or all-denormal) channel: any positive scale maps it to the zero point.
                scales[j] = scale >= 1e-30f && float.IsFinite(scale) ? scale : 1f;
                ReadOnlySpan<float> row = channelMajor.AsSpan(j * k, k);
                Span<byte> qRow = quantized.AsSpan(j * k, k);
                if (unsigned)
                {
                    QuantizationKernels.Quantize(row, scales[j], zero, qRow, min, max);
                    QuantizationKernels.Dequantize(qRow, scales[j], zero, roundTrip);
                }
                else
                {
                    Span<sbyte> sRow = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, sbyte>(qRow);
                    QuantizationKernels.Quantize(row, scales[j], (sbyte)zero, sRow, (sbyte)min, (sbyte)max);
                    QuantizationKernels.Dequantize(sRow, scales[j], (sbyte)zero, roundTrip);
                }
                maxError = MathF.Max(maxError, ErrorMetrics.MaxAbsDifference(row, roundTrip));
            }
            byte[] kMajor = PassGraph.Transpose(quantized, n, k);
            var zeros = new byte[n];
            Array.Fill(zeros, zero);

            string baseName = weightName + (c.TransB ? "_t" : "");
            string qName = Unique(baseName + "_quantized");
            string sName = Unique(baseName + "_scale");
            string zName = Unique(baseName + "_zero_point");
            if (unsigned)
            {
                AddInitializer(TensorUtil.FromUInt8(qName, kMajor, k, n));
                AddInitializer(TensorUtil.FromUInt8(zName, zeros, n));
            }
            else
            {
                AddInitializer(TensorUtil.FromInt8(qName, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, sbyte>(kMajor), k, n));
                AddInitializer(TensorUtil.FromInt8(zName, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, sbyte>(zeros.AsSpan()), n));
            }
            AddInitializer(TensorUtil.FromFloats(sName, scales, n));
            FloatWeightBytes += (long)data.Length * 4;
            QuantizedWeightBytes += kMajor.Length + zeros.Length + (long)scales.Length * 4;
            return ((qName, sName, zName, k, n), maxError);
        }

        /// <summary>
        /// Conv -> DynamicQuantizeLinear(X) -> ConvInteger(uint8 x uint8, weight zero point 128) -> Cast(float)
        /// -> Mul(x_scale * w_scale[M, 1, ...]) [-> Add(bias[M, 1, ...])].
        /// </summary>
        private void RewriteConv(Candidate c)
        {
            NodeProto node = c.Node;
            string label = Label(node);
            string weightName = node.Input[1];
            long[] dims = c.Weight.Dims;
            int m = (int)dims[0];
            int perChannel = (int)(dims.Aggregate(1L, (a, b) => a * b) / m);
            long[] channelShape = [m, .. Enumerable.Repeat(1L, dims.Length - 2)];

            if (!_done.TryGetValue("conv|" + weightName, out var stored))
            {
                float[] data = Floats(c.Weight.Tensor);
                var maxAbs = new float[m];
                TensorStats.RowMaxAbs(data, m, perChannel, maxAbs);
                var scales = new float[m];
                var q = new byte[data.Length];
                var roundTrip = new float[perChannel];
                float maxError = 0f;
                for (int j = 0; j < m; j++)
                {
                    float scale = maxAbs[j] / 127f;
                    scales[j] = scale >= 1e-30f && float.IsFinite(scale) ? scale : 1f;
                    ReadOnlySpan<float> row = data.AsSpan(j * perChannel, perChannel);
                    Span<byte> qRow = q.AsSpan(j * perChannel, perChannel);
                    QuantizationKernels.Quantize(row, scales[j], (byte)128, qRow, 1, 255);
                    QuantizationKernels.Dequantize(qRow, scales[j], (byte)128, roundTrip);
                    maxError = MathF.Max(maxError, ErrorMetrics.MaxAbsDifference(row, roundTrip));
                }
                stored = (Unique(weightName + "_quantized"), Unique(weightName + "_scale"), Unique(weightName + "_zero_point"), perChannel, m);
                AddInitializer(TensorUtil.FromUInt8(stored.Quantized, q, dims));
                AddInitializer(TensorUtil.FromFloats(stored.Scale, scales, channelShape));
                AddInitializer(TensorUtil.FromUInt8(stored.ZeroPoint, [128]));
                _done["conv|" + weightName] = stored;
                FloatWeightBytes += (long)data.Length * 4;
                QuantizedWeightBytes += q.Length + 1 + (long)m * 4;
                _convErrors[weightName] = maxError;
            }

            // The helper nodes stay unnamed (names are optional; on small models they were 3-4% of the file).
            var inserted = new List<NodeProto>();
            string x = node.Input[0];
            if (!_dynamicQuantized.TryGetValue(x, out var xq))
            {
                xq = (Unique(x + "_quantized"), Unique(x + "_scale"), Unique(x + "_zero_point"));
                var dql = new NodeProto { OpType = "DynamicQuantizeLinear", Name = "" };
                dql.Input.Add(x);
                dql.Output.Add(xq.Q);
                dql.Output.Add(xq.Scale);
                dql.Output.Add(xq.ZeroPoint);
                inserted.Add(dql);
                _dynamicQuantized[x] = xq;
            }
            string integerOut = Unique(label + "_int32");
            var conv = new NodeProto { OpType = "ConvInteger", Name = node.Name.Length > 0 ? node.Name : Unique(label + "_quant") };
            conv.Input.Add(xq.Q);
            conv.Input.Add(stored.Quantized);
            conv.Input.Add(xq.ZeroPoint);
            conv.Input.Add(stored.ZeroPoint);
            conv.Output.Add(integerOut);
            conv.Attribute.AddRange(node.Attribute.Select(a => a.Clone()));
            inserted.Add(conv);

            string floatOut = Unique(label + "_float");
            var cast = new NodeProto { OpType = "Cast", Name = "" };
            cast.Input.Add(integerOut);
            cast.Output.Add(floatOut);
            cast.Attribute.Add(new AttributeProto { Name = "to", Type = AttributeProto.Types.AttributeType.Int, I = (long)TensorProto.Types.DataType.Float });
            inserted.Add(cast);

            string combined = Unique(label + "_output_scale");
            var scaleMul = new NodeProto { OpType = "Mul", Name = "" };
            scaleMul.Input.Add(xq.Scale);
            scaleMul.Input.Add(stored.Scale);
            scaleMul.Output.Add(combined);
            inserted.Add(scaleMul);

            bool hasBias = node.Input.Count > 2 && node.Input[2].Length > 0;
            string scaledOut = hasBias ? Unique(label + "_scaled") : node.Output[0];
            var rescale = new NodeProto { OpType = "Mul", Name = "" };
            rescale.Input.Add(floatOut);
            rescale.Input.Add(combined);
            rescale.Output.Add(scaledOut);
            inserted.Add(rescale);

            if (hasBias)
            {
                TryResolveConstant(node.Input[2], out ConstantValue? bias, out _);
                string biasName = Unique(node.Input[2] + "_channels");
                AddInitializer(TensorUtil.FromFloats(biasName, Floats(bias!.Tensor), channelShape));
                QuantizedWeightBytes += (long)m * 4;
                var add = new NodeProto { OpType = "Add", Name = "" };
                add.Input.Add(scaledOut);
                add.Input.Add(biasName);
                add.Output.Add(node.Output[0]);
                inserted.Add(add);
                Touch(node.Input[2], bias);
            }

            int index = _graph.Node.IndexOf(node);
            ReplaceNode(index, inserted);
            Touch(weightName, c.Weight);
            _convQuantized = true;
            Quantized.Add(new QuantizedNode(label, "Conv", weightName, perChannel, m, _convErrors[weightName]));
        }

        private readonly Dictionary<string, float> _convErrors = new(StringComparer.Ordinal);
        private readonly Dictionary<string, float> _weightErrors = new(StringComparer.Ordinal);

        /// <summary>beta * C as a [N] bias input when C is a constant with N elements (or one); else false.</summary>
        private bool TryBias(string cName, float beta, int n, out string? bias)
        {
            bias = null;
            if (!TryResolveConstant(cName, out ConstantValue? cv, out _) || cv!.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
            {
                return false;
            }
            long count = 1;
            foreach (long d in cv.Dims)
            {
                count *= d;
            }
            bool vector = count == n && (cv.Dims.Length == 1 || (cv.Dims.Length == 2 && cv.Dims[0] == 1));
            if (!vector && count != 1)
            {
                return false;
            }
            float[] values = PassGraph.BiasValues(Floats(cv.Tensor), vector, n, beta);
            bias = Unique(cName + "_bias");
            AddInitializer(TensorUtil.FromFloats(bias, values, n));
            QuantizedWeightBytes += (long)n * 4;
            Touch(cName, cv);
            return true;
        }

        /// <summary>Replaces the node at <paramref name="index"/> with <paramref name="inserted"/>, in order.</summary>
        private void ReplaceNode(int index, List<NodeProto> inserted)
        {
            _graph.Node.RemoveAt(index);
            for (int i = 0; i < inserted.Count; i++)
            {
                _graph.Node.Insert(index + i, inserted[i]);
            }
        }

        /// <summary>Marks the constant read as <paramref name="name"/> and what computed it for removal once unused.</summary>
        private void Touch(string name, ConstantValue value)
        {
            _touchedNodes.AddRange(value.Chain);
            _touchedInitializers.Add(value.SourceName);
            _touchedInitializers.UnionWith(value.ChainInputs);
            _touchedInitializers.Add(name);
        }

        /// <summary>Drops the float weights, Constant/Reshape nodes and value_info that nothing uses any more.</summary>
        private void RemoveUnused()
        {
            bool changed = true;
            while (changed)
            {
                changed = false;
                HashSet<string> used = OuterUses();
                foreach (NodeProto n in _graph.Node)
                {
                    used.UnionWith(n.Input);
                }
                foreach (NodeProto n in _touchedNodes.ToList())
                {
                    if (_graph.Node.Contains(n) && !n.Output.Any(used.Contains))
                    {
                        _graph.Node.Remove(n);
                        foreach (string o in n.Output)
                        {
                            RemoveValueInfo(o);
                        }
                        changed = true;
                    }
                }
                for (int i = _graph.Initializer.Count - 1; i >= 0; i--)
                {
                    string name = _graph.Initializer[i].Name;
                    if (_touchedInitializers.Contains(name) && !used.Contains(name) && (!_graphInputs.Contains(name) || model.IrVersion < 4))
                    {
                        _graph.Initializer.RemoveAt(i);
                        RemoveValueInfo(name);
                        for (int j = _graph.Input.Count - 1; j >= 0; j--)
                        {
                            if (_graph.Input[j].Name == name)
                            {
                                _graph.Input.RemoveAt(j);
                            }
                        }
                        changed = true;
                    }
                }
            }
        }

        private void RemoveValueInfo(string name) => PassGraph.RemoveValueInfo(_graph, name);

        private void EnsureOpset(string domain, long version) => PassGraph.EnsureOpset(model, domain, version);

        private void AddInitializer(TensorProto t)
        {
            _graph.Initializer.Add(t);
            _initializers[t.Name] = t;
            if (model.IrVersion < 4)
            {
                // IR 3 wants every initializer declared as a graph input as well.
                _graph.Input.Add(PassGraph.ValueInfo(t.Name, t.DataType, t.Dims));
                _graphInputs.Add(t.Name);
            }
        }

        private string Unique(string name) => PassGraph.Unique(_names, name);

        /// <summary>Tensor data, or CMPR0103 naming the model and tensor when it cannot be read (external data not loaded, wrong length).</summary>
        private float[] Floats(TensorProto t)
        {
            try
            {
                return TensorUtil.ToFloatArray(t);
            }
            catch (Exception e) when (e is InvalidDataException or InvalidOperationException)
            {
                throw new CompressException(e, DiagnosticCodes.ModelInvalid, displayName, e.Message) { File = displayName };
            }
        }

        private long[] Int64s(TensorProto t)
        {
            try
            {
                return TensorUtil.ToInt64Array(t);
            }
            catch (Exception e) when (e is InvalidDataException or InvalidOperationException)
            {
                throw new CompressException(e, DiagnosticCodes.ModelInvalid, displayName, e.Message) { File = displayName };
            }
        }
    }
}
