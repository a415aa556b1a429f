using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// A MatMul/Gemm/Conv of the main graph whose weight is a constant float32 tensor (initializer, Constant, or a
/// Reshape of those, found with <see cref="PassGraph.TryConstantFloat"/>), with the weight's layout spelled out:
/// element (output o, reduction r) sits at <c>o * OutputStride + r * ReductionStride</c> (Conv: reduction index
/// r = c * KernelSize + s runs over input channel c and kernel position s).
/// </summary>
internal sealed class PrunableLayer
{
    public required NodeProto Node { get; init; }

    public required string Label { get; init; }

    public required string WeightName { get; init; }

    public required float[] Data { get; set; }

    public required long[] Dims { get; init; }

    public int Outputs { get; init; }

    /// <summary>Reduction length (K for MatMul/Gemm, C/group x kernel size for Conv).</summary>
    public int Reduction { get; init; }

    /// <summary>Conv: product of the kernel dims (1 for MatMul/Gemm).</summary>
    public int KernelSize { get; init; } = 1;

    public int OutputStride { get; init; }

    public int ReductionStride { get; init; }

    /// <summary>Optional ranking per element (activation-aware: |w| x input feature RMS); null ranks by |w|.</summary>
    public float[]? Scores { get; set; }

    public int Index(int output, int reduction) => output * OutputStride + reduction * ReductionStride;
}

/// <summary>
/// Finds prunable layers (skipping subgraphs, excluded nodes, shared and overridable weights, with reasons in the
/// <see cref="SkippedNode"/> style of the quantizers), writes pruned weights back, counts parameters and FLOPs.
/// </summary>
internal static class PrunableLayers
{
    /// <param name="everyLayer">
    /// True: every layer pruning could touch (the model's prunable weights), ignoring exclusions and the minimum
    /// size and not checking the weights for NaN/infinity; used to count, never to prune.
    /// </param>
    public static List<PrunableLayer> Find(PassGraph g, PruningOptions options, string displayName, List<SkippedNode> skipped, bool everyLayer = false)
    {
        var result = new List<PrunableLayer>();
        var excluded = new HashSet<string>(options.ExcludedNodes, StringComparer.Ordinal);
        foreach ((GraphProto sub, int depth) in ModelWalker.Graphs(g.Model))
        {
            if (depth == 0)
            {
                continue;
            }
            foreach (NodeProto n in sub.Node.Where(IsCandidateOp))
            {
                skipped.Add(new SkippedNode(OnnxNames.Label(n), n.OpType, $"it is inside the subgraph '{sub.Name}'; only the main graph is pruned"));
            }
        }
        Dictionary<string, List<(NodeProto Node, int Index)>> uses = Uses(g);
        HashSet<string> outer = g.OuterUses();
        foreach (NodeProto node in g.Graph.Node.Where(n => IsCandidateOp(n) && n.Input.Count >= 2))
        {
            string label = OnnxNames.Label(node);
            void Skip(string why) => skipped.Add(new SkippedNode(label, node.OpType, why));
            if (!everyLayer && excluded.Contains(label))
            {
                Skip("excluded by the options");
                continue;
            }
            string w = node.Input[1];
            if (!g.TryConstantFloat(w, displayName, out float[] data, out long[] dims, out List<NodeProto> chain, out List<string> sources, storedOrder: true))
            {
                Skip($"weight '{w}' is not a constant float32 tensor (or can be replaced at run time)");
                continue;
            }
            // Shared weights: zeroing or slicing them would change another user, so they are left alone.
            var names = new HashSet<string>(sources, StringComparer.Ordinal) { w };
            names.UnionWith(chain.SelectMany(c => c.Output));
            string? conflict = names.FirstOrDefault(outer.Contains) is { } o ? $"weight '{o}' is also a graph output or used inside a subgraph" : null;
            foreach (string name in names)
            {
                if (conflict != null)
                {
                    break;
                }
                foreach ((NodeProto user, _) in uses.GetValueOrDefault(name) ?? [])
                {
                    bool ok = ReferenceEquals(user, node) ? name == w && node.Input.Count(i => i == w) == 1 : chain.Any(c => ReferenceEquals(c, user));
                    if (!ok)
                    {
                        conflict = $"weight '{name}' is shared with {user.OpType} '{OnnxNames.Label(user)}'; shared weights are not pruned";
                        break;
                    }
                }
            }
            if (conflict != null)
            {
                Skip(conflict);
                continue;
            }
            if (!everyLayer && data.Length < options.MinimumWeightElements)
            {
                Skip($"weight '{w}' has {data.Length} elements, fewer than the minimum {options.MinimumWeightElements}");
                continue;
            }
            if (!everyLayer && !TensorStats.AllFinite(data))
            {
                throw CompressException.ForFile(displayName, DiagnosticCodes.NonFiniteWeights, displayName, w);
            }
            if (node.OpType == "Conv")
            {
                if (dims.Length < 3 || dims.Any(d => d <= 0))
                {
                    Skip($"weight '{w}' has shape [{string.Join(",", dims)}]; Conv weights are [M, C/group, k...]");
                    continue;
                }
                int kernel = (int)dims.Skip(2).Aggregate(1L, (a, b) => a * b);
                result.Add(new PrunableLayer
                {
                    Node = node, Label = label, WeightName = w, Data = data, Dims = dims,
                    Outputs = (int)dims[0], Reduction = (int)(dims[1] * kernel), KernelSize = kernel,
                    OutputStride = (int)(dims[1] * kernel), ReductionStride = 1,
                });
                continue;
            }
            if (dims.Length != 2)
            {
                Skip($"weight '{w}' has rank {dims.Length}; only 2-D MatMul/Gemm weights are pruned");
                continue;
            }
            bool transB = node.OpType == "Gemm" && PassGraph.IntAttr(node, "transB", 0) != 0;
            int rows = (int)dims[0], cols = (int)dims[1];
            result.Add(transB
                ? new PrunableLayer { Node = node, Label = label, WeightName = w, Data = data, Dims = dims, Outputs = rows, Reduction = cols, OutputStride = cols, ReductionStride = 1 }
                : new PrunableLayer { Node = node, Label = label, WeightName = w, Data = data, Dims = dims, Outputs = cols, Reduction = rows, OutputStride = 1, ReductionStride = cols });
        }
        return result;
    }

    /// <summary>Layers from which no other layer of <paramref name="layers"/> can be reached through the main graph.</summary>
    public static List<PrunableLayer> OutputLayers(PassGraph g, List<PrunableLayer> layers)
    {
        Dictionary<string, List<(NodeProto Node, int Index)>> consumers = Uses(g);
        var layerNodes = new HashSet<NodeProto>(layers.Select(l => l.Node), ReferenceEqualityComparer.Instance);
        var result = new List<PrunableLayer>();
        foreach (PrunableLayer l in layers)
        {
            var seen = new HashSet<NodeProto>(ReferenceEqualityComparer.Instance);
            var stack = new Stack<NodeProto>([l.Node]);
            bool reaches = false;
            while (stack.Count > 0 && !reaches)
            {
                foreach (string o in stack.Pop().Output)
                {
                    foreach ((NodeProto c, _) in consumers.GetValueOrDefault(o) ?? [])
                    {
                        if (layerNodes.Contains(c))
                        {
                            reaches = true;
                        }
                        else if (seen.Add(c))
                        {
                            stack.Push(c);
                        }
                    }
                }
            }
            if (!reaches)
            {
                result.Add(l);
            }
        }
        return result;
    }

    /// <summary>The nodes of the main graph that read each tensor, with the input slot (a node reading a tensor twice is listed twice).</summary>
    internal static Dictionary<string, List<(NodeProto Node, int Index)>> Uses(PassGraph g)
    {
        var uses = new Dictionary<string, List<(NodeProto Node, int Index)>>(StringComparer.Ordinal);
        foreach (NodeProto n in g.Graph.Node)
        {
            for (int i = 0; i < n.Input.Count; i++)
            {
                if (n.Input[i].Length > 0)
                {
                    (uses.TryGetValue(n.Input[i], out var list) ? list : uses[n.Input[i]] = []).Add((n, i));
                }
            }
        }
        return uses;
    }

    private static bool IsCandidateOp(NodeProto n) =>
        n.OpType is "MatMul" or "Gemm" or "Conv" && ModelChecker.NormalizeDomain(n.Domain).Length == 0;

    /// <summary>
    /// Replaces the constant behind <paramref name="name"/> (an initializer, a Constant, or the data of a Reshape of
    /// those) with <paramref name="data"/>; <paramref name="dims"/> null keeps the stored tensor's shape.
    /// </summary>
    public static void SetConstant(PassGraph g, string name, float[] data, long[]? dims = null)
    {
        if (g.IsConstantInitializer(name))
        {
            TensorProto old = g.Initializers[name];
            TensorProto t = TensorUtil.FromFloats(name, data, dims ?? [.. old.Dims]);
            g.ReplaceInitializer(old, t);
            if (dims != null)
            {
                g.RemoveValueInfo(name);
                foreach (ValueInfoProto input in g.Graph.Input.Where(i => i.Name == name).ToList())
                {
                    g.Graph.Input[g.Graph.Input.IndexOf(input)] = PassGraph.ValueInfo(name, t.DataType, t.Dims);
                }
            }
            return;
        }
        NodeProto producer = g.Producers[name];
        if (producer.OpType == "Constant")
        {
            AttributeProto attr = producer.Attribute.First(a => a.Name == "value");
            attr.T = TensorUtil.FromFloats(attr.T.Name, data, dims ?? [.. attr.T.Dims]);
            g.RemoveValueInfo(name);
            return;
        }
        if (dims != null)
        {
            throw new InvalidOperationException("reshaped weights cannot change shape: " + name);
        }
        SetConstant(g, producer.Input[0], data); // Reshape: same elements in the same order
    }

    public static long CountNonzeros(ReadOnlySpan<float> data) => data.Length - Sparsity.CountZeros(data);

    /// <summary>Nonzero weights + biases of every MatMul/Gemm/Conv with constant weights, and their FLOPs per sample.</summary>
    public static (long Parameters, long Flops, bool Exact) Measure(ModelProto model, string displayName)
    {
        var g = new PassGraph(model);
        Dictionary<string, long[]> shapes = PropagateShapes(g);
        long parameters = 0, flops = 0;
        bool exact = true;
        foreach (NodeProto n in g.Graph.Node.Where(n => IsCandidateOp(n) && n.Input.Count >= 2))
        {
            if (!g.TryConstantFloat(n.Input[1], displayName, out float[] w, out long[] dims, out _, out _))
            {
                continue;
            }
            long nz = CountNonzeros(w);
            parameters += nz;
            if (n.Input.Count > 2 && n.Input[2].Length > 0 && g.TryConstantFloat(n.Input[2], displayName, out float[] b, out _, out _, out _))
            {
                parameters += CountNonzeros(b);
            }
            long positions = 1;
            if (n.OpType == "Conv")
            {
                if (shapes.TryGetValue(n.Output[0], out long[]? s) && s.Length == dims.Length)
                {
                    positions = s.Skip(2).Aggregate(1L, (a, c) => a * c);
                }
                else
                {
                    exact = false;
                }
            }
            flops += 2 * nz * positions;
        }
        return (parameters, flops, exact);
    }

    /// <summary>
    /// Output spatial dims of a Conv/MaxPool/AveragePool over input spatial dims <paramref name="inDims"/> with kernel
    /// <paramref name="kernel"/>, the padding before each axis, and the strides and dilations (pads, auto_pad, strides,
    /// dilations as in ONNX).
    /// </summary>
    internal static (long[] OutDims, long[] Begin, long[] Strides, long[] Dilations) SlidingWindow(NodeProto n, long[] inDims, long[] kernel)
    {
        int sp = inDims.Length;
        long[] Ints(string name, long fill, int count) =>
            n.Attribute.FirstOrDefault(a => a.Name == name) is { Ints.Count: > 0 } a ? [.. a.Ints] : Enumerable.Repeat(fill, count).ToArray();
        long[] strides = Ints("strides", 1, sp), dil = Ints("dilations", 1, sp), pads = Ints("pads", 0, 2 * sp);
        string autoPad = n.Attribute.FirstOrDefault(a => a.Name == "auto_pad")?.S.ToStringUtf8() ?? "NOTSET";
        var begin = new long[sp];
        var outDims = new long[sp];
        for (int i = 0; i < sp; i++)
        {
            long span = dil[i] * (kernel[i] - 1) + 1;
            if (autoPad is "SAME_UPPER" or "SAME_LOWER")
            {
                outDims[i] = (inDims[i] + strides[i] - 1) / strides[i];
                long total = Math.Max(0, (outDims[i] - 1) * strides[i] + span - inDims[i]);
                begin[i] = autoPad == "SAME_UPPER" ? total / 2 : total - total / 2;
            }
            else if (autoPad == "VALID")
            {
                outDims[i] = (inDims[i] - span) / strides[i] + 1;
            }
            else
            {
                begin[i] = pads[i];
                outDims[i] = (inDims[i] + pads[i] + pads[i + sp] - span) / strides[i] + 1;
            }
        }
        return (outDims, begin, strides, dil);
    }

    /// <summary>
    /// Static shapes from the graph inputs (symbolic dims count as 1) through the ops small vision models use, for
    /// FLOP counts; value_info wins when it has a full static shape.
    /// </summary>
    internal static Dictionary<string, long[]> PropagateShapes(PassGraph g)
    {
        var shapes = new Dictionary<string, long[]>(StringComparer.Ordinal);
        static long[]? Static(ValueInfoProto v) =>
            v.Type?.TensorType?.Shape is { } s ? s.Dim.Select(d => d.HasDimValue && d.DimValue > 0 ? d.DimValue : 1L).ToArray() : null;
        foreach (ValueInfoProto v in g.Graph.Input.Where(i => !g.Initializers.ContainsKey(i.Name)))
        {
            if (Static(v) is { } s)
            {
                shapes[v.Name] = s;
            }
        }
        foreach (ValueInfoProto v in g.Graph.ValueInfo)
        {
            if (v.Type?.TensorType?.Shape is { } s && s.Dim.All(d => d.HasDimValue || d.HasDimParam) && Static(v) is { } st)
            {
                shapes[v.Name] = st;
            }
        }
        foreach (NodeProto n in g.Graph.Node)
        {
            if (n.Output.Count == 0 || shapes.ContainsKey(n.Output[0]) || n.Input.Count == 0 || !shapes.TryGetValue(n.Input[0], out long[]? x))
            {
                continue;
            }
            switch (n.OpType)
            {
                case "Relu" or "Sigmoid" or "Tanh" or "LeakyRelu" or "Clip" or "BatchNormalization" or "Dropout" or "Identity" or "Add" or "Mul" or "Sub" or "Div" or "LRN"
                    or "HardSigmoid" or "HardSwish" or "PRelu" or "Elu" or "Selu" or "Softplus" or "InstanceNormalization":
                    shapes[n.Output[0]] = x;
                    break;
                case "GlobalAveragePool" or "GlobalMaxPool" or "GlobalLpPool" when x.Length >= 3:
                    shapes[n.Output[0]] = [x[0], x[1], .. Enumerable.Repeat(1L, x.Length - 2)];
                    break;
                case "Conv" or "MaxPool" or "AveragePool" when x.Length >= 3:
                    long[] kernel;
                    long channels;
                    if (n.OpType == "Conv")
                    {
                        if (!g.Initializers.TryGetValue(n.Input[1], out TensorProto? wt) || wt.Dims.Count != x.Length)
                        {
                            continue;
                        }
                        kernel = [.. wt.Dims.Skip(2)];
                        channels = wt.Dims[0];
                    }
                    else
                    {
                        kernel = [.. n.Attribute.FirstOrDefault(a => a.Name == "kernel_shape")?.Ints ?? []];
                        channels = x[1];
                    }
                    int sp = x.Length - 2;
                    if (kernel.Length != sp)
                    {
                        continue;
                    }
                    shapes[n.Output[0]] = [x[0], channels, .. SlidingWindow(n, x[2..], kernel).OutDims];
                    break;
            }
        }
        return shapes;
    }
}
