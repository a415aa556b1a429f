using System.Globalization;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization;

/// <summary>Whether a model already runs quantized operators (every pass leaves such a model as it is).</summary>
public static class QuantizedOperators
{
    private static readonly HashSet<string> QuantizedOps = new(StringComparer.Ordinal)
    {
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
        "MatMulNBits", "MatMulBnb4", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QAttention",
        "DynamicQuantizeLSTM", "QEmbedLayerNormalization", "GatherBlockQuantized", "QuantizeBFP", "DequantizeBFP",
        "MatMulInteger16", "MatMulFpQ4", "QMoE", "QuantizeWithOrder", "DequantizeWithOrder",
    };

    /// <summary>"2 QuantizeLinear, 2 DequantizeLinear nodes" when the model already runs quantized operators, else null.</summary>
    public static string? Describe(ModelProto model)
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
}
