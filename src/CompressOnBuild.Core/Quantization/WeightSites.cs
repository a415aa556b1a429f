using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization;

/// <summary>One node whose constant weight a pass quantizes: the weight as the node sees it, and Gemm's attributes.</summary>
internal sealed class WeightSite
{
    public required NodeProto Node { get; init; }

    public required ResolvedConstant Weight { get; init; }

    /// <summary>The node's weight input (input 1).</summary>
    public string WeightName => Node.Input[1];

    public bool TransA { get; init; }

    public bool TransB { get; init; }

    public float Alpha { get; init; } = 1f;

    public float Beta { get; init; } = 1f;

    public bool IsConv { get; init; }
}

/// <summary>
/// The one weight-site finder of the quantization passes: main-graph MatMul/Gemm nodes whose weight B is a constant
/// float32 matrix (initializer, Constant node, or Reshape of those), with Gemm's transposes, alpha and beta; the skip
/// reason of every other one (excluded, in a subgraph, not constant, not float32, wrong rank or size, alpha/beta not
/// finite, weight shared with something that stays float). Passes add their own operators through <c>other</c>.
/// </summary>
internal static class WeightSites
{
    /// <summary>
    /// The sites of <paramref name="opTypes"/> in graph order. MatMul and Gemm are resolved here; any other operator
    /// in <paramref name="opTypes"/> goes to <paramref name="other"/> (which reports its own skips and may return null).
    /// </summary>
    public static List<WeightSite> Find(PassGraph g, string displayName, IReadOnlySet<string> opTypes, IReadOnlyCollection<string> excludedNodes,
        long minimumElements, List<SkippedNode> skipped, Func<NodeProto, Action<string>, WeightSite?>? other = null)
    {
        var result = new List<WeightSite>();
        var excluded = new HashSet<string>(excludedNodes, StringComparer.Ordinal);
        foreach ((GraphProto sub, int depth) in ModelWalker.Graphs(g.Model))
        {
            if (depth == 0)
            {
                continue;
            }
            foreach (NodeProto n in sub.Node.Where(n => opTypes.Contains(n.OpType) && OnnxNames.IsDefaultDomain(n)))
            {
                skipped.Add(new SkippedNode(OnnxNames.Label(n), n.OpType, $"it is inside the subgraph '{sub.Name}'; only the main graph is quantized"));
            }
        }
        foreach (NodeProto node in g.Graph.Node)
        {
            if (!OnnxNames.IsDefaultDomain(node) || !opTypes.Contains(node.OpType) || node.Input.Count < 2)
            {
                continue;
            }
            string label = OnnxNames.Label(node);
            void Skip(string reason) => skipped.Add(new SkippedNode(label, node.OpType, reason));
            if (excluded.Contains(label))
            {
                Skip("excluded by the options");
                continue;
            }
            if (node.OpType is not ("MatMul" or "Gemm"))
            {
                if (other?.Invoke(node, Skip) is { } site)
                {
                    result.Add(site);
                }
                continue;
            }
            if (MatrixSite(g, displayName, node, minimumElements, Skip) is { } matrix)
            {
                result.Add(matrix);
            }
        }
        RejectSharedWeights(g, result, skipped);
        return result;
    }

    private static WeightSite? MatrixSite(PassGraph g, string displayName, NodeProto node, long minimumElements, Action<string> skip)
    {
        string w = node.Input[1];
        if (!g.TryResolveConstant(w, displayName, out ResolvedConstant? weight, out string? why))
        {
            skip(why!);
            return null;
        }
        if (weight!.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
        {
            skip($"weight '{w}' is {TensorUtil.DataTypeName(weight.Tensor.DataType)}, not float32");
            return null;
        }
        if (weight.Dims.Length != 2)
        {
            skip($"weight '{w}' has rank {weight.Dims.Length}; only 2-D weights are quantized");
            return null;
        }
        long elements = weight.Dims[0] * weight.Dims[1];
        if (elements < minimumElements || elements == 0)
        {
            skip($"weight '{w}' has {elements} elements, fewer than the minimum {minimumElements}");
            return null;
        }
        if (elements > int.MaxValue / 2)
        {
            skip($"weight '{w}' has {elements} elements, too many for one tensor here");
            return null;
        }
        if (node.OpType == "MatMul")
        {
            return new WeightSite { Node = node, Weight = weight };
        }
        float alpha = PassGraph.FloatAttr(node, "alpha", 1f), beta = PassGraph.FloatAttr(node, "beta", 1f);
        if (!float.IsFinite(alpha) || !float.IsFinite(beta))
        {
            skip("alpha or beta is not finite");
            return null;
        }
        return new WeightSite
        {
            Node = node,
            Weight = weight,
            TransA = PassGraph.IntAttr(node, "transA", 0) != 0,
            TransB = PassGraph.IntAttr(node, "transB", 0) != 0,
            Alpha = alpha,
            Beta = beta,
        };
    }

    /// <summary>A weight (or a value its chain reads) shared with anything that stays float would be stored twice: those nodes stay float.</summary>
    private static void RejectSharedWeights(PassGraph g, List<WeightSite> sites, List<SkippedNode> skipped)
    {
        HashSet<string> outer = g.Outer;
        var rejected = new HashSet<WeightSite>();
        foreach (IGrouping<string, WeightSite> group in sites.GroupBy(c => c.WeightName, StringComparer.Ordinal))
        {
            ResolvedConstant w = group.First().Weight;
            var quantizedNodes = new HashSet<NodeProto>(group.Select(c => c.Node), ReferenceEqualityComparer.Instance);
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
                        bool ok = user.Input[i] != name || (name == group.Key ? i == 1 && quantizedNodes.Contains(user) : chain.Contains(user));
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
