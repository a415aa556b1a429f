using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using DataType = CompressOnBuild.Onnx.TensorProto.Types.DataType;

namespace CompressOnBuild.Core.Graph;

/// <summary>
/// Raises a model's default opset for a pass that needs newer operators (QDQ per-channel axis: 13; QuantizeLinear:
/// 10; DynamicQuantizeLinear: 11), rewriting the nodes whose meaning changed on the way (<see cref="OpsetChanges"/>)
/// into their new form with the same values: Clip min/max, Pad pads/value, Slice starts/ends/axes, TopK k,
/// Squeeze/Unsqueeze/ReduceSum axes and Split split move from attributes to constant inputs; Softmax, LogSoftmax and
/// Hardmax keep their old "coerce to 2-D at axis" meaning through Flatten -> op(axis 1) -> Reshape(Shape(x)) unless
/// the axis is already the last one; an inference Dropout (mask unused) becomes Identity; BatchNormalization loses
/// <c>spatial</c> (only spatial=1 can be raised). Anything else that changed (Upsample, Resize, spatial=0, a Clip or
/// Pad on a tensor whose element type is not known) blocks the raise, and the caller keeps the opset it has.
/// </summary>
public static class OpsetRaise
{
    /// <summary>
    /// Null when every default-domain node of <paramref name="model"/> (nested graphs included) means the same after
    /// a raise to <paramref name="target"/>, as it is or rewritten; otherwise why not, naming the first node in the way.
    /// <paramref name="purpose"/> starts the reason.
    /// </summary>
    public static string? BlockingReason(ModelProto model, long target, string purpose)
    {
        ArgumentNullException.ThrowIfNull(model);
        long version = Version(model);
        if (version >= target)
        {
            return null;
        }
        if (model.Functions.Count > 0)
        {
            return $"{purpose}, the model has {version}, and it defines functions whose operators would change version too";
        }
        foreach ((GraphProto g, _) in ModelWalker.Graphs(model))
        {
            var types = new ElementTypes(model, g);
            foreach (NodeProto n in g.Node.Where(OnnxNames.IsDefaultDomain))
            {
                if (n.OpType == "BatchNormalization" && PassGraph.IntAttr(n, "spatial", 1) != 1)
                {
                    return $"{purpose}, the model has {version}, and its BatchNormalization '{OnnxNames.Label(n)}' uses spatial=0, which opset 9 removed";
                }
                if (!OpsetChanges.SameMeaning(n.OpType, version, target) && Rewritable(n, version, types, g) is { } why)
                {
                    return $"{purpose}, the model has {version}, and {why}";
                }
            }
        }
        return null;
    }

    /// <summary>The highest of <paramref name="targets"/> (at most the model's opset is returned as is) that <see cref="BlockingReason"/> allows, else null.</summary>
    public static long? Highest(ModelProto model, IEnumerable<long> targets)
    {
        long version = Version(model);
        foreach (long t in targets.OrderDescending())
        {
            if (t <= version || BlockingReason(model, t, "") == null)
            {
                return Math.Max(t, version);
            }
        }
        return null;
    }

    /// <summary>
    /// Raises the default opset to <paramref name="target"/> after rewriting the nodes whose meaning changed;
    /// returns the operator types rewritten. Call only when <see cref="BlockingReason"/> returned null.
    /// </summary>
    public static IReadOnlyList<string> Raise(ModelProto model, long target)
    {
        ArgumentNullException.ThrowIfNull(model);
        long version = Version(model);
        var rewritten = new SortedSet<string>(StringComparer.Ordinal);
        if (version >= target)
        {
            return [];
        }
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach ((GraphProto g, _) in ModelWalker.Graphs(model))
        {
            names.UnionWith(g.Input.Select(i => i.Name));
            names.UnionWith(g.Initializer.Select(i => i.Name));
            names.UnionWith(g.Node.SelectMany(n => n.Output));
            names.UnionWith(g.Node.Select(n => n.Name));
        }
        foreach ((GraphProto g, _) in ModelWalker.Graphs(model).ToList())
        {
            var types = new ElementTypes(model, g);
            var nodes = new List<NodeProto>(g.Node.Count);
            foreach (NodeProto n in g.Node)
            {
                if (!OnnxNames.IsDefaultDomain(n))
                {
                    nodes.Add(n);
                    continue;
                }
                if (n.OpType == "BatchNormalization")
                {
                    PassGraph.RemoveAll(n.Attribute, a => a.Name == "spatial");
                }
                if (OpsetChanges.SameMeaning(n.OpType, version, target))
                {
                    nodes.Add(n);
                    continue;
                }
                var rewriter = new NodeRewriter(n, names, types, g, nodes);
                rewriter.Rewrite(version);
                rewritten.Add(n.OpType);
            }
            g.Node.Clear();
            g.Node.AddRange(nodes);
        }
        PassGraph.EnsureOpset(model, "", target);
        return [.. rewritten];
    }

    private static long Version(ModelProto model) =>
        model.OpsetImport.FirstOrDefault(o => ModelChecker.NormalizeDomain(o.Domain).Length == 0)?.Version ?? 0;

    /// <summary>Null when <paramref name="n"/> (whose meaning changes between <paramref name="from"/> and the target) has a rewrite; else why not.</summary>
    private static string? Rewritable(NodeProto n, long from, ElementTypes types, GraphProto g)
    {
        string label = $"its {n.OpType} '{OnnxNames.Label(n)}'";
        switch (n.OpType)
        {
            case "Softmax" or "LogSoftmax" or "Hardmax" or "Squeeze" or "Unsqueeze" or "ReduceSum" or "Split" or "Slice" or "TopK":
                return null;
            case "Clip":
                return from >= 11 || n.Attribute.All(a => a.Name is not ("min" or "max")) || types.Of(n.Input[0]) is not null
                    ? null : $"{label} has min/max attributes on a tensor whose element type is not known (opset 11 makes them inputs of that type)";
            case "Pad":
                return from >= 11 || PassGraph.FloatAttr(n, "value", 0f) == 0f || types.Of(n.Input[0]) is not null
                    ? null : $"{label} pads with a value on a tensor whose element type is not known (opset 11 makes it an input of that type)";
            case "Dropout":
                return n.Output.Count < 2 || n.Output[1].Length == 0 || !IsRead(g, n.Output[1])
                    ? null : $"{label} has its mask output read (opset 12 changed its ratio to an input)";
            default:
                return $"raising it could change what its {n.OpType} nodes mean";
        }
    }

    /// <summary>Whether <paramref name="name"/> is a graph output or a node input; a node with subgraphs counts as a reader (they may use outer names).</summary>
    private static bool IsRead(GraphProto g, string name) =>
        g.Output.Any(o => o.Name == name) || g.Node.Any(n => n.Input.Contains(name) || ModelWalker.Subgraphs(n).Any());

    /// <summary>Element types of tensors in one graph: declared, initializers, or carried through type-preserving nodes.</summary>
    private sealed class ElementTypes
    {
        private static readonly HashSet<string> SameAsInput = new(StringComparer.Ordinal)
        {
            "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu", "Sigmoid",
            "Tanh", "Clip", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
            "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Identity", "Dropout", "Pad", "Slice",
            "Softmax", "LogSoftmax", "Abs", "Neg", "Exp", "Log", "Sqrt", "Pow", "Max", "Min", "Sum", "Elu", "Selu",
            "HardSigmoid", "InstanceNormalization", "LRN", "Upsample", "Resize", "ReduceMean", "ReduceSum", "ReduceMax",
        };

        private readonly Dictionary<string, int> _declared = new(StringComparer.Ordinal);
        private readonly Dictionary<string, NodeProto> _producers = new(StringComparer.Ordinal);

        public ElementTypes(ModelProto model, GraphProto g)
        {
            foreach (ValueInfoProto v in g.Input.Concat(g.ValueInfo).Concat(g.Output).Concat(model.Graph.Input).Concat(model.Graph.ValueInfo))
            {
                if (v.Type?.TensorType is { ElemType: > 0 } t)
                {
                    _declared.TryAdd(v.Name, t.ElemType);
                }
            }
            foreach (TensorProto t in g.Initializer.Concat(model.Graph.Initializer))
            {
                _declared.TryAdd(t.Name, t.DataType);
            }
            foreach (NodeProto n in g.Node)
            {
                foreach (string o in n.Output)
                {
                    _producers.TryAdd(o, n);
                }
            }
        }

        public DataType? Of(string name)
        {
            for (int depth = 0; depth < 256; depth++)
            {
                if (_declared.TryGetValue(name, out int t))
                {
                    return (DataType)t;
                }
                if (!_producers.TryGetValue(name, out NodeProto? p) || !OnnxNames.IsDefaultDomain(p) || p.Input.Count == 0)
                {
                    return null;
                }
                if (p.OpType == "Cast")
                {
                    return (DataType)PassGraph.IntAttr(p, "to", 0);
                }
                if (p.OpType == "DequantizeLinear")
                {
                    return DataType.Float; // float32 up to opset 19 (a pass may have quantized the graph before raising it)
                }
                if (p.OpType == "Constant")
                {
                    return p.Attribute.FirstOrDefault(a => a.Name == "value")?.T is { } value ? (DataType)value.DataType : null;
                }
                if (!SameAsInput.Contains(p.OpType) || p.Output[0] != name)
                {
                    return null;
                }
                name = p.Input[0];
            }
            return null;
        }
    }

    /// <summary>Writes one node's new-opset form (and the constants it reads) into <c>nodes</c>.</summary>
    private sealed class NodeRewriter(NodeProto n, HashSet<string> names, ElementTypes types, GraphProto g, List<NodeProto> nodes)
    {
        private string Unique(string name) => PassGraph.Unique(names, name);

        private string Constant(TensorProto value)
        {
            var c = new NodeProto { OpType = "Constant", Name = Unique(OnnxNames.Label(n) + "_" + value.Name) };
            value.Name = "";
            c.Attribute.Add(new AttributeProto { Name = "value", Type = AttributeProto.Types.AttributeType.Tensor, T = value });
            string output = Unique(c.Name);
            c.Output.Add(output);
            nodes.Add(c);
            return output;
        }

        private string Int64s(string what, long[] values, bool scalar = false) =>
            Constant(scalar ? TensorUtil.FromInt64(what, values) : TensorUtil.FromInt64(what, values, values.Length));

        private string Scalar(string what, float value, DataType type)
        {
            TensorProto t = type switch
            {
                DataType.Float => TensorUtil.FromFloats(what, [value]),
                DataType.Double => new TensorProto { Name = what, DataType = (int)DataType.Double, DoubleData = { value } },
                DataType.Float16 => TensorUtil.FromRaw(what, DataType.Float16, BitConverter.GetBytes((Half)value)),
                _ => throw new InvalidOperationException($"no scalar of type {type}"),
            };
            if (type == DataType.Float)
            {
                t.Dims.Clear();
            }
            return Constant(t);
        }

        /// <summary>Removes attribute <paramref name="name"/> and returns it, or null.</summary>
        private AttributeProto? Take(string name)
        {
            AttributeProto? a = n.Attribute.FirstOrDefault(a => a.Name == name);
            if (a != null)
            {
                n.Attribute.Remove(a);
            }
            return a;
        }

        /// <summary>Puts <paramref name="value"/> at input <paramref name="index"/>, filling skipped optional inputs with "".</summary>
        private void SetInput(int index, string value)
        {
            while (n.Input.Count <= index)
            {
                n.Input.Add("");
            }
            n.Input[index] = value;
        }

        public void Rewrite(long from)
        {
            switch (n.OpType)
            {
                case "Clip" when from < 11:
                {
                    AttributeProto? min = Take("min"), max = Take("max");
                    if (min != null || max != null)
                    {
                        DataType type = types.Of(n.Input[0])!.Value;
                        string low = min == null ? "" : Scalar("min", min.F, type);
                        if (max != null)
                        {
                            SetInput(2, Scalar("max", max.F, type));
                        }
                        if (low.Length > 0 || max != null)
                        {
                            SetInput(1, low);
                        }
                    }
                    break;
                }
                case "Pad" when from < 11:
                {
                    AttributeProto pads = Take("pads") ?? throw new InvalidOperationException("Pad without pads");
                    AttributeProto? value = Take("value");
                    SetInput(1, Int64s("pads", [.. pads.Ints]));
                    if (value != null && value.F != 0f)
                    {
                        SetInput(2, Scalar("value", value.F, types.Of(n.Input[0])!.Value));
                    }
                    break;
                }
                case "Slice" when from < 10:
                {
                    AttributeProto starts = Take("starts")!, ends = Take("ends")!;
                    AttributeProto? axes = Take("axes");
                    SetInput(1, Int64s("starts", [.. starts.Ints]));
                    SetInput(2, Int64s("ends", [.. ends.Ints]));
                    if (axes != null)
                    {
                        SetInput(3, Int64s("axes", [.. axes.Ints]));
                    }
                    break;
                }
                case "TopK" when from < 10:
                    SetInput(1, Int64s("k", [Take("k")!.I]));
                    break;
                case "Squeeze" or "Unsqueeze" or "ReduceSum" when from < 13:
                    if (Take("axes") is { } axesAttribute)
                    {
                        SetInput(1, Int64s("axes", [.. axesAttribute.Ints]));
                    }
                    break;
                case "Split" when from < 13:
                    if (Take("split") is { } split)
                    {
                        SetInput(1, Int64s("split", [.. split.Ints]));
                    }
                    break;
                case "Dropout" when from < 12:
                    // Inference: the output is the input. The mask output is unread (checked by BlockingReason).
                    n.OpType = "Identity";
                    n.Attribute.Clear();
                    while (n.Output.Count > 1)
                    {
                        n.Output.RemoveAt(n.Output.Count - 1);
                    }
                    while (n.Input.Count > 1)
                    {
                        n.Input.RemoveAt(n.Input.Count - 1);
                    }
                    break;
                case "Softmax" or "LogSoftmax" or "Hardmax" when from < 13:
                    if (!RewriteSoftmax())
                    {
                        return; // RewriteSoftmax added its own nodes
                    }
                    break;
            }
            nodes.Add(n);
        }

        /// <summary>
        /// Before 13 the op normalized over all axes from <c>axis</c> on (input coerced to 2-D); from 13 over
        /// <c>axis</c> alone. The same when <c>axis</c> is the last axis; otherwise Flatten(axis) -> op(axis 1) ->
        /// Reshape to the input's shape. Returns true when the node goes on as it is.
        /// </summary>
        private bool RewriteSoftmax()
        {
            long axis = PassGraph.IntAttr(n, "axis", 1);
            int? rank = Rank(n.Input[0]);
            if (rank is { } r && (axis == r - 1 || axis == -1))
            {
                return true;
            }
            string x = n.Input[0], y = n.Output[0];
            string label = OnnxNames.Label(n);
            string flat = Unique(label + "_2d");
            var flatten = new NodeProto { OpType = "Flatten", Name = Unique(label + "_flatten") };
            flatten.Input.Add(x);
            flatten.Output.Add(flat);
            flatten.Attribute.Add(PassGraph.IntAttribute("axis", axis));
            nodes.Add(flatten);
            string normalized = Unique(label + "_2d_out");
            n.Input[0] = flat;
            n.Output[0] = normalized;
            Take("axis");
            n.Attribute.Add(PassGraph.IntAttribute("axis", 1));
            nodes.Add(n);
            string shape = Unique(label + "_shape");
            var shapeNode = new NodeProto { OpType = "Shape", Name = Unique(label + "_shape_of_input") };
            shapeNode.Input.Add(x);
            shapeNode.Output.Add(shape);
            nodes.Add(shapeNode);
            var reshape = new NodeProto { OpType = "Reshape", Name = Unique(label + "_restore") };
            reshape.Input.Add(normalized);
            reshape.Input.Add(shape);
            reshape.Output.Add(y);
            nodes.Add(reshape);
            return false;
        }

        /// <summary>The rank of <paramref name="name"/> when declared, or 2 after Gemm/Flatten; else null.</summary>
        private int? Rank(string name)
        {
            ValueInfoProto? v = g.Input.Concat(g.ValueInfo).Concat(g.Output).FirstOrDefault(v => v.Name == name);
            if (v?.Type?.TensorType?.Shape is { } shape)
            {
                return shape.Dim.Count;
            }
            NodeProto? producer = g.Node.FirstOrDefault(p => p.Output.Contains(name));
            return producer != null && OnnxNames.IsDefaultDomain(producer) && producer.OpType is "Gemm" or "Flatten" ? 2 : null;
        }
    }
}
