using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Graph;

/// <summary>
/// One table of default-domain operators and the opsets in which their meaning changed (an attribute became an
/// input, a default or a computation changed), for raising a model's opset: a node may move from opset a to b when
/// no change lies in (a, b]. Versions that only added types, optional inputs/attributes with the old behaviour as
/// default, or negative axes are not changes. An operator not in the table is never raised.
/// </summary>
internal static class OpsetChanges
{
    private static readonly Dictionary<string, int[]> Changed = new(StringComparer.Ordinal)
    {
        // No change of meaning from opset 7 on (additions only).
        ["Conv"] = [], ["Relu"] = [], ["MaxPool"] = [], ["AveragePool"] = [], ["GlobalAveragePool"] = [],
        ["GlobalMaxPool"] = [], ["Add"] = [], ["Sub"] = [], ["Mul"] = [], ["Div"] = [], ["Reshape"] = [],
        ["Flatten"] = [], ["Gemm"] = [], ["MatMul"] = [], ["Transpose"] = [], ["Concat"] = [], ["Sigmoid"] = [],
        ["Tanh"] = [], ["LeakyRelu"] = [], ["Identity"] = [], ["Constant"] = [], ["Sum"] = [], ["Exp"] = [],
        ["Log"] = [], ["Sqrt"] = [], ["Abs"] = [], ["Neg"] = [], ["Shape"] = [], ["Gather"] = [], ["Cast"] = [],
        ["Max"] = [], ["Min"] = [], ["Floor"] = [], ["Ceil"] = [], ["Elu"] = [], ["Selu"] = [], ["PRelu"] = [],
        // spatial=0 was removed in 9: see BlockingReason.
        ["BatchNormalization"] = [],
        // The axis semantics changed from "coerce to 2-D" to one axis.
        ["Softmax"] = [13], ["LogSoftmax"] = [13], ["Hardmax"] = [13],
        // axes moved from an attribute to an input.
        ["Squeeze"] = [13], ["Unsqueeze"] = [13], ["ReduceSum"] = [13], ["Split"] = [13, 18],
        // min/max, pads, starts/ends, k, ratio moved from attributes to inputs.
        ["Clip"] = [11], ["Pad"] = [11], ["Slice"] = [10], ["TopK"] = [10], ["Dropout"] = [12],
        ["Upsample"] = [10], ["Resize"] = [11, 13, 18, 19],
    };

    /// <summary>Whether a default-domain <paramref name="opType"/> node means the same at opset <paramref name="to"/> as at <paramref name="from"/>.</summary>
    public static bool SameMeaning(string opType, long from, long to) =>
        Changed.TryGetValue(opType, out int[]? versions) && !versions.Any(v => v > from && v <= to);

    /// <summary>
    /// Null when every default-domain node of <paramref name="model"/> (nested graphs included) keeps its meaning
    /// if the default opset is raised from its current version to <paramref name="target"/>; otherwise why not,
    /// naming the first node that would change. <paramref name="purpose"/> starts the reason ("Conv needs default opset 11 (DynamicQuantizeLinear)").
    /// </summary>
    public static string? BlockingReason(ModelProto model, long target, string purpose)
    {
        ArgumentNullException.ThrowIfNull(model);
        long version = model.OpsetImport.FirstOrDefault(o => ModelChecker.NormalizeDomain(o.Domain).Length == 0)?.Version ?? 0;
        if (version >= target)
        {
            return null;
        }
        foreach ((GraphProto g, _) in ModelWalker.Graphs(model))
        {
            foreach (NodeProto n in g.Node.Where(OnnxNames.IsDefaultDomain))
            {
                if (!SameMeaning(n.OpType, version, target))
                {
                    return $"{purpose}, the model has {version}, and raising it could change what its {n.OpType} nodes mean";
                }
                if (n.OpType == "BatchNormalization" && PassGraph.IntAttr(n, "spatial", 1) != 1)
                {
                    return $"{purpose}, the model has {version}, and its BatchNormalization '{OnnxNames.Label(n)}' uses spatial=0, which opset 9 removed";
                }
            }
        }
        return model.Functions.Count > 0
            ? $"{purpose}, the model has {version}, and it defines functions whose operators would change version too"
            : null;
    }
}
