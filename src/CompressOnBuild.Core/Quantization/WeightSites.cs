using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization;

/// <summary>One node whose constant weight a pass quantizes: the weight as the node sees it, and Gemm's attributes.</summary>
internal sealed class WeightSite
{
    public required NodeProto Node { get; init; }

    public required ResolvedConstant Weight { get; init; }

    /// <summary>Which input of <see cref="Node"/> is the weight (1 for MatMul/Gemm/Conv, 0 for Gather).</summary>
    public int WeightInput { get; init; } = 1;

    /// <summary>The node's weight input.</summary>
    public string WeightName => Node.Input[WeightInput];

    /// <summary>The lowering that found the site and lowers it (set by <see cref="WeightSites.Find"/>).</summary>
    public IOperatorLowering Lowering { get; set; } = null!;

    /// <summary>The axis of the stored weight that indexes output channels (Conv 0, MatMul 1, Gemm 0 with transB, else 1).</summary>
    public int Axis { get; init; }

    /// <summary>Conv's bias (input 2), resolved and checked to be a float32 vector of M elements; null without one.</summary>
    public ResolvedConstant? Bias { get; init; }

    public bool TransA { get; init; }

    public bool TransB { get; init; }

    public float Alpha { get; init; } = 1f;

    public float Beta { get; init; } = 1f;

    /// <summary>
    /// True when the site's lowering checks the weight's values for NaN/infinity itself while it reads them (the
    /// streaming path's chunked MatMul): <see cref="QuantizationDriver.Run"/> then does not read the weight beforehand.
    /// </summary>
    public bool ChecksItsOwnValues { get; set; }
}

/// <summary>
/// The one weight-site finder of the quantization passes: every node of the graph being quantized (the main graph or
/// an If/Loop/Scan body, one call each) that one of the scheme's lowerings handles becomes a site or a skip reason
/// (excluded by the options, or the lowering's own reason:
/// not constant, not float32, wrong rank or size, ...), then weights shared with anything that stays float are
/// rejected. <see cref="MatrixSite"/> is the MatMul/Gemm site rule the matrix lowerings share.
/// </summary>
internal static class WeightSites
{
    /// <summary>The sites of <paramref name="lowerings"/> in graph order; skips go to <see cref="LoweringContext.Skipped"/>.</summary>
    public static List<WeightSite> Find(LoweringContext context, IReadOnlyCollection<IOperatorLowering> lowerings)
    {
        PassGraph g = context.Graph;
        var byOp = new Dictionary<(string, string), IOperatorLowering>();
        foreach (IOperatorLowering l in lowerings)
        {
            byOp[(l.Domain, l.OpType)] = l;
        }
        IOperatorLowering? LoweringOf(NodeProto n) => byOp.GetValueOrDefault((ModelChecker.NormalizeDomain(n.Domain), n.OpType));

        var result = new List<WeightSite>();
        foreach (NodeProto node in g.Graph.Node)
        {
            if (LoweringOf(node) is not { } lowering)
            {
                continue;
            }
            string label = OnnxNames.Label(node);
            void Skip(string reason) => context.Skipped.Add(new SkippedNode(label, node.OpType, reason));
            if (context.Excluded.Contains(label))
            {
                // A node that is not a layer (an index Gather) is not reported even when its op type is excluded.
                bool layer = lowering.AlwaysALayer;
                if (!layer)
                {
                    layer = lowering.FindSite(context, node, _ => layer = true) != null;
                }
                if (layer)
                {
                    Skip("excluded by the options");
                }
                continue;
            }
            if (lowering.FindSite(context, node, Skip) is { } site)
            {
                site.Lowering = lowering;
                result.Add(site);
            }
        }
        RejectSharedWeights(g, result, context.Skipped);
        return result;
    }

    /// <summary>
    /// MatMul/Gemm: weight B (input 1) a constant float32 matrix of at least the minimum size, with Gemm's
    /// transposes, alpha and beta (finite); else null after <paramref name="skip"/>.
    /// </summary>
    public static WeightSite? MatrixSite(LoweringContext context, NodeProto node, Action<string> skip) =>
        MatrixSite(context.Graph, context.DisplayName, context.MinimumWeightElements, node, skip, context.MaximumWeightElements);

    /// <inheritdoc cref="MatrixSite(LoweringContext, NodeProto, Action{string})"/>
    public static WeightSite? MatrixSite(PassGraph g, string displayName, long minimumElements, NodeProto node, Action<string> skip,
        long maximumElements = LoweringContext.InMemoryMaximumWeightElements)
    {
        if (node.Input.Count < 2 || FloatWeight(g, displayName, node.Input[1], skip) is not { } weight)
        {
            return null;
        }
        string w = node.Input[1];
        if (weight.Dims.Length != 2)
        {
            skip($"weight '{w}' has rank {weight.Dims.Length}; only 2-D weights are quantized");
            return null;
        }
        if (!SizeFits(weight, w, minimumElements, maximumElements, skip))
        {
            return null;
        }
        if (node.OpType == "MatMul")
        {
            return new WeightSite { Node = node, Weight = weight, Axis = 1 };
        }
        float alpha = PassGraph.FloatAttr(node, "alpha", 1f), beta = PassGraph.FloatAttr(node, "beta", 1f);
        if (!float.IsFinite(alpha) || !float.IsFinite(beta))
        {
            skip("alpha or beta is not finite");
            return null;
        }
        bool transB = PassGraph.IntAttr(node, "transB", 0) != 0;
        return new WeightSite
        {
            Node = node,
            Weight = weight,
            Axis = transB ? 0 : 1,
            TransA = PassGraph.IntAttr(node, "transA", 0) != 0,
            TransB = transB,
            Alpha = alpha,
            Beta = beta,
        };
    }

    /// <summary>
    /// Conv: weight (input 1) a constant float32 [M, C/group, k...] tensor of at least the minimum size, and a bias
    /// (input 2), if any, a constant float32 vector of M elements; else null after <paramref name="skip"/>.
    /// </summary>
    public static WeightSite? ConvSite(LoweringContext context, NodeProto node, Action<string> skip) =>
        ConvSite(context.Graph, context.DisplayName, context.MinimumWeightElements, node, skip);

    /// <inheritdoc cref="ConvSite(LoweringContext, NodeProto, Action{string})"/>
    public static WeightSite? ConvSite(PassGraph g, string displayName, long minimumElements, NodeProto node, Action<string> skip)
    {
        if (node.Input.Count < 2 || FloatWeight(g, displayName, node.Input[1], skip) is not { } weight)
        {
            return null;
        }
        string w = node.Input[1];
        if (weight.Dims.Length < 3 || weight.Dims[0] <= 0)
        {
            skip($"weight '{w}' has rank {weight.Dims.Length}; Conv weights are [M, C/group, k...]");
            return null;
        }
        if (!SizeFits(weight, w, minimumElements, LoweringContext.InMemoryMaximumWeightElements, skip))
        {
            return null;
        }
        ResolvedConstant? bias = null;
        if (node.Input.Count > 2 && node.Input[2].Length > 0)
        {
            if (!g.TryResolveConstant(node.Input[2], displayName, out bias, out _)
                || bias!.Tensor.DataType != (int)TensorProto.Types.DataType.Float
                || bias.Dims.Aggregate(1L, (a, b) => a * b) != weight.Dims[0])
            {
                skip($"Conv bias '{node.Input[2]}' is not a constant float32 vector of {weight.Dims[0]} elements");
                return null;
            }
        }
        return new WeightSite { Node = node, Weight = weight, Axis = 0, Bias = bias };
    }

    /// <summary>The constant float32 tensor behind <paramref name="name"/>; else null after <paramref name="skip"/>.</summary>
    private static ResolvedConstant? FloatWeight(PassGraph g, string displayName, string name, Action<string> skip)
    {
        if (!g.TryResolveConstant(name, displayName, out ResolvedConstant? weight, out string? why))
        {
            skip(why!);
            return null;
        }
        if (weight!.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
        {
            skip($"weight '{name}' is {TensorUtil.DataTypeName(weight.Tensor.DataType)}, not float32");
            return null;
        }
        return weight;
    }

    /// <summary>At least the minimum number of elements (and at least one), and at most the maximum (one int-indexed array in memory).</summary>
    private static bool SizeFits(ResolvedConstant weight, string name, long minimumElements, long maximumElements, Action<string> skip)
    {
        long elements = weight.Dims.Aggregate(1L, (a, b) => a * b);
        if (elements < minimumElements || elements == 0)
        {
            skip($"weight '{name}' has {elements} elements, fewer than the minimum {minimumElements}");
            return false;
        }
        if (elements > maximumElements)
        {
            skip($"weight '{name}' has {elements} elements, too many for one tensor here");
            return false;
        }
        return true;
    }

    /// <summary>
    /// A weight (or a value its chain reads) read by anything but the sites' weight inputs (a node that stays float,
    /// another input of a site, a graph output, a subgraph) would be stored twice: those sites stay float.
    /// </summary>
    private static void RejectSharedWeights(PassGraph g, List<WeightSite> sites, List<SkippedNode> skipped)
    {
        HashSet<string> outer = g.Outer;
        var rejected = new HashSet<WeightSite>();
        foreach (IGrouping<string, WeightSite> group in sites.GroupBy(c => c.WeightName, StringComparer.Ordinal))
        {
            ResolvedConstant w = group.First().Weight;
            var siteInputs = new Dictionary<NodeProto, int>(ReferenceEqualityComparer.Instance);
            foreach (WeightSite c in group)
            {
                siteInputs[c.Node] = c.WeightInput;
            }
            var chain = new HashSet<NodeProto>(w.Chain, ReferenceEqualityComparer.Instance);
            string? conflict = null;
            foreach (string name in w.ChainInputs.Prepend(group.Key).Append(w.SourceName).Distinct(StringComparer.Ordinal))
            {
                if (outer.Contains(name))
                {
                    conflict = $"weight '{name}' is also a graph output or used inside a subgraph";
                    break;
                }
                foreach (NodeProto user in g.Consumers(name))
                {
                    for (int i = 0; i < user.Input.Count && conflict == null; i++)
                    {
                        bool ok = user.Input[i] != name
                            || (name == group.Key ? siteInputs.TryGetValue(user, out int at) && at == i : chain.Contains(user));
                        if (!ok)
                        {
                            conflict = $"weight '{name}' is shared with {user.OpType} '{OnnxNames.Label(user)}', which stays float";
                        }
                    }
                }
                if (conflict != null)
                {
                    break;
                }
            }
            if (conflict != null)
            {
                foreach (WeightSite c in group)
                {
                    rejected.Add(c);
                    skipped.Add(new SkippedNode(OnnxNames.Label(c.Node), c.Node.OpType, conflict));
                }
            }
        }
        sites.RemoveAll(rejected.Contains);
    }
}
