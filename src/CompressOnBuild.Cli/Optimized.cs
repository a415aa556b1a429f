using System.Text.Json.Nodes;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using Microsoft.ML.OnnxRuntime;

namespace CompressOnBuild.Cli;

/// <summary>
/// What ONNX Runtime actually runs: the model after ORT's own graph optimizations (level all, CPU provider), with
/// a check for the classic "quantized model is slower" bug: a DequantizeLinear that still feeds a float
/// Conv/MatMul/Gemm because ORT could not fuse it into an integer kernel.
/// </summary>
internal static class Optimized
{
    private static readonly HashSet<string> FloatCompute = new(StringComparer.Ordinal) { "Conv", "MatMul", "Gemm", "ConvTranspose", "FusedConv", "FusedMatMul", "FusedGemm" };

    public static JsonObject Describe(string modelPath)
    {
        string temp = Path.Combine(Path.GetTempPath(), "cob-opt-" + Guid.NewGuid().ToString("N")[..12] + ".onnx");
        try
        {
            using (var options = new SessionOptions
            {
                GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
                OptimizedModelFilePath = temp,
                IntraOpNumThreads = 1,
                // ORT warns that a level-all model is hardware specific; that is expected for an inspection.
                LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
            })
            using (var session = new InferenceSession(modelPath, options))
            {
                _ = session.InputMetadata.Count;
            }
            ModelProto model = ModelIO.Load(temp);
            return Analyze(model);
        }
        catch (OnnxRuntimeException e)
        {
            throw new Core.CompressException(e, DiagnosticCodes.OrtRunFailed, modelPath, e.Message) { File = modelPath };
        }
        finally
        {
            foreach (string f in new[] { temp, temp + ".data" })
            {
                if (File.Exists(f))
                {
                    File.Delete(f);
                }
            }
        }
    }

    public static JsonObject Analyze(ModelProto model)
    {
        var ops = new SortedDictionary<string, int>(StringComparer.Ordinal);
        var producers = new Dictionary<string, NodeProto>(StringComparer.Ordinal);
        foreach (NodeProto n in model.Graph.Node)
        {
            string key = string.IsNullOrEmpty(n.Domain) || n.Domain == "ai.onnx" ? n.OpType : n.Domain + ":" + n.OpType;
            ops[key] = ops.GetValueOrDefault(key) + 1;
            foreach (string o in n.Output)
            {
                producers[o] = n;
            }
        }
        var fallbacks = new JsonArray();
        foreach (NodeProto n in model.Graph.Node)
        {
            if (!FloatCompute.Contains(n.OpType))
            {
                continue;
            }
            foreach (string input in n.Input)
            {
                if (producers.TryGetValue(input, out NodeProto? p) && p.OpType == "DequantizeLinear")
                {
                    fallbacks.Add(ModelChecker.NodeLabel(n));
                    break;
                }
            }
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
