using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Graph;

/// <summary>ONNX domains and the names the passes give nodes in reports.</summary>
public static class OnnxNames
{
    /// <summary>ONNX Runtime's contrib operator domain.</summary>
    public const string MicrosoftDomain = "com.microsoft";

    /// <summary>Whether <paramref name="node"/> is in the default ONNX domain ("" or "ai.onnx").</summary>
    public static bool IsDefaultDomain(NodeProto node)
    {
        ArgumentNullException.ThrowIfNull(node);
        return ModelChecker.NormalizeDomain(node.Domain).Length == 0;
    }

    /// <summary>Whether <paramref name="node"/> is the default-domain operator <paramref name="opType"/>.</summary>
    public static bool Is(NodeProto node, string opType) => IsDefaultDomain(node) && node.OpType == opType;

    /// <summary>The node's name, else its first output, else its operator: how reports and options refer to a node.</summary>
    public static string Label(NodeProto node)
    {
        ArgumentNullException.ThrowIfNull(node);
        return node.Name.Length > 0 ? node.Name : node.Output.Count > 0 ? node.Output[0] : node.OpType;
    }
}
