using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using Microsoft.ML.OnnxRuntime;

namespace CompressOnBuild.Validation;

/// <summary>
/// The graph ONNX Runtime actually runs (its optimizations at level all, CPU provider, 1 thread), and the check for
/// the classic "quantized model is slower" bug: a DequantizeLinear that still feeds a float Conv/MatMul/Gemm
/// (or ORT's fused float forms) because ORT could not fuse the pattern into an integer kernel.
/// </summary>
public static class OptimizedGraph
{
    /// <summary>Float compute operators that should never read a DequantizeLinear output in a quantized model.</summary>
    public static IReadOnlySet<string> FloatCompute { get; } = new HashSet<string>(StringComparer.Ordinal)
    {
        "Conv", "MatMul", "Gemm", "ConvTranspose", "FusedConv", "FusedMatMul", "FusedGemm",
    };

    /// <summary>Loads the model at <paramref name="modelPath"/> in ORT and returns the graph ORT wrote after optimizing it.</summary>
    /// <exception cref="OnnxRuntimeException">When ORT rejects the model.</exception>
    public static ModelProto Optimize(string modelPath, GraphOptimizationLevel level = GraphOptimizationLevel.ORT_ENABLE_ALL)
    {
        string temp = Path.Combine(Path.GetTempPath(), "cob-opt-" + Guid.NewGuid().ToString("N")[..12] + ".onnx");
        ModelRunner.CountSession();
        try
        {
            using (var options = new SessionOptions
            {
                GraphOptimizationLevel = level,
                OptimizedModelFilePath = temp,
                IntraOpNumThreads = 1,
                // ORT warns that a level-all model is hardware specific; that is expected for an inspection.
                LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
            })
            using (var session = new InferenceSession(modelPath, options))
            {
                _ = session.InputMetadata.Count;
            }
            return ModelIO.Load(temp);
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

    /// <summary>
    /// The graph a session wrote with <see cref="ModelRunnerOptions.OptimizedModelPath"/> set (the same graph
    /// <see cref="Optimize"/> returns for that session's optimization level, without opening another session); the
    /// file, and a data file ORT may have written beside it, are deleted once read.
    /// </summary>
    public static ModelProto Load(string optimizedModelPath)
    {
        ArgumentNullException.ThrowIfNull(optimizedModelPath);
        try
        {
            return ModelIO.Load(optimizedModelPath);
        }
        finally
        {
            foreach (string f in new[] { optimizedModelPath, optimizedModelPath + ".data" })
            {
                if (File.Exists(f))
                {
                    File.Delete(f);
                }
            }
        }
    }

    /// <summary>Labels of the float compute nodes of <paramref name="optimized"/> that read a DequantizeLinear output.</summary>
    public static List<string> FloatFallbacks(ModelProto optimized)
    {
        ArgumentNullException.ThrowIfNull(optimized);
        var dequantized = new HashSet<string>(StringComparer.Ordinal);
        foreach (NodeProto n in optimized.Graph.Node.Where(n => n.OpType == "DequantizeLinear"))
        {
            dequantized.UnionWith(n.Output);
        }
        return [.. optimized.Graph.Node.Where(n => FloatCompute.Contains(n.OpType) && n.Input.Any(dequantized.Contains)).Select(ModelChecker.NodeLabel)];
    }
}
