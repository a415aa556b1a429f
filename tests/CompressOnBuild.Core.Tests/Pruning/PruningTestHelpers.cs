using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Tests.Pruning;

/// <summary>Reading back a pruned model's initializers, and the options the tiny-model pruning tests use.</summary>
internal static class PruningTestHelpers
{
    public static float[] Weight(ModelProto m, string name) =>
        TensorUtil.ToFloatArray(m.Graph.Initializer.Single(t => t.Name == name));

    public static long[] Dims(ModelProto m, string name) => [.. m.Graph.Initializer.Single(t => t.Name == name).Dims];

    public static int Zeros(float[] w) => w.Count(v => v == 0f);

    /// <summary>The parsed method with the output layer pruned as well (the tiny models have one or two layers).</summary>
    public static PruningOptions All(string text) => PruningOptions.Parse(text, "m") with { KeepOutputLayers = false };
}
