using System.Text.Json.Nodes;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Validation;
using Microsoft.ML.OnnxRuntime;

namespace CompressOnBuild.Cli;

/// <summary>
/// What ONNX Runtime actually runs (<see cref="OptimizedGraph"/>) as report JSON: the operator histogram and the
/// float fallbacks (a DequantizeLinear still feeding a float Conv/MatMul/Gemm, see <see cref="OptimizedGraph.FloatFallbacks"/>).
/// </summary>
internal static class Optimized
{
    public static JsonObject Describe(string modelPath)
    {
        try
        {
            return Analyze(OptimizedGraph.Optimize(modelPath));
        }
        catch (OnnxRuntimeException e)
        {
            throw new Core.CompressException(e, DiagnosticCodes.OrtRunFailed, modelPath, e.Message) { File = modelPath };
        }
    }

    /// <summary>As <see cref="Describe"/>, from the optimized graph a validation session already wrote
    /// (<see cref="ModelRunnerOptions.OptimizedModelPath"/>) when there is one, else from a session opened for it.</summary>
    public static JsonObject Describe(string modelPath, string? optimizedModelPath) =>
        optimizedModelPath != null && File.Exists(optimizedModelPath) ? Analyze(OptimizedGraph.Load(optimizedModelPath)) : Describe(modelPath);

    public static JsonObject Analyze(ModelProto model)
    {
        var ops = new SortedDictionary<string, int>(StringComparer.Ordinal);
        foreach (NodeProto n in model.Graph.Node)
        {
            string key = string.IsNullOrEmpty(n.Domain) || n.Domain == "ai.onnx" ? n.OpType : n.Domain + ":" + n.OpType;
            ops[key] = ops.GetValueOrDefault(key) + 1;
        }
        var fallbacks = new JsonArray();
        foreach (string label in OptimizedGraph.FloatFallbacks(model))
        {
            fallbacks.Add(label);
        }
        return new JsonObject
        {
            ["onnxRuntime"] = Validation.OrtLoader.Current?.Version,
            ["nodes"] = model.Graph.Node.Count,
            ["operators"] = new JsonObject(ops.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
            ["floatFallbacks"] = fallbacks,
        };
    }
}
