using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Quantization;
using CompressOnBuild.Core.Quantization.Ops;
using CompressOnBuild.Onnx;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Core.Tests.Quantization;

/// <summary>Int8Dynamic lowers com.microsoft Attention (transformer-optimizer output) to QAttention that ORT runs.</summary>
[TestClass]
public sealed class AttentionLoweringTests
{
    private const int Batch = 1;
    private const int Seq = 8;
    private const int Hidden = 32;
    private const int Heads = 4;

    public TestContext TestContext { get; set; } = null!;

    /// <summary>x [1, 8, 32] -> Attention(W [32, 96], B [96][, mask [1, 8] int32][, extra input 5]) -> y [1, 8, 32].</summary>
    private static ModelProto AttentionModel(bool mask, bool attentionBias = false)
    {
        var g = new GraphProto { Name = "attention" };
        g.Input.Add(FloatValue("x", Batch, Seq, Hidden));
        g.Initializer.Add(TensorUtil.FromFloats("W", RandomFloats(Hidden * 3 * Hidden, 5, 0.3f), Hidden, 3 * Hidden));
        g.Initializer.Add(TensorUtil.FromFloats("B", RandomFloats(3 * Hidden, 6, 0.1f), 3 * Hidden));
        var inputs = new List<string> { "x", "W", "B" };
        if (mask || attentionBias)
        {
            inputs.Add("");
        }
        if (mask)
        {
            ValueInfoProto m = FloatValue("mask", Batch, Seq);
            m.Type.TensorType.ElemType = (int)TensorProto.Types.DataType.Int32;
            g.Input.Add(m);
            inputs[3] = "mask";
        }
        if (attentionBias)
        {
            g.Input.Add(FloatValue("attn_bias", Batch, Heads, Seq, Seq));
            inputs.AddRange(["", "attn_bias"]);
        }
        NodeProto node = Node("Attention", [.. inputs], ["y"], "attn", IntAttr("num_heads", Heads));
        node.Domain = OnnxNames.MicrosoftDomain;
        g.Node.Add(node);
        g.Output.Add(FloatValue("y", Batch, Seq, Hidden));
        ModelProto model = Model(g, opset: 14);
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = OnnxNames.MicrosoftDomain, Version = 1 });
        return model;
    }

    private static float[] Run(ModelProto model, string? optimizedPath = null)
    {
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL, IntraOpNumThreads = 1 };
        if (optimizedPath != null)
        {
            options.OptimizedModelFilePath = optimizedPath;
        }
        using var session = new InferenceSession(model.ToByteArray(), options);
        var names = new List<string> { "x" };
        var values = new List<OrtValue> { OrtValue.CreateTensorValueFromMemory(RandomFloats(Batch * Seq * Hidden, 41, 1.5f), [Batch, Seq, Hidden]) };
        if (session.InputNames.Contains("mask"))
        {
            names.Add("mask");
            values.Add(OrtValue.CreateTensorValueFromMemory(new[] { 1, 1, 1, 1, 1, 1, 0, 0 }, [Batch, Seq]));
        }
        try
        {
            using var run = new RunOptions();
            using IDisposableReadOnlyCollection<OrtValue> outputs = session.Run(run, names, values, ["y"]);
            return outputs[0].GetTensorDataAsSpan<float>().ToArray();
        }
        finally
        {
            values.ForEach(v => v.Dispose());
        }
    }

    private static double Cosine(float[] a, float[] b)
    {
        double dot = 0, na = 0, nb = 0;
        for (int i = 0; i < a.Length; i++)
        {
            dot += a[i] * b[i];
            na += a[i] * a[i];
            nb += b[i] * b[i];
        }
        return dot / Math.Sqrt(na * nb);
    }

    [TestMethod]
    [DataRow(false, WeightEncoding.Int8PairBounded)]
    [DataRow(true, WeightEncoding.Int8PairBounded)]
    [DataRow(true, WeightEncoding.UInt8)]
    public void Attention_becomes_QAttention_that_ORT_runs_close_to_float(bool mask, WeightEncoding encoding)
    {
        ModelProto original = AttentionModel(mask);
        ModelProto quantized = original.Clone();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(quantized, new QuantizationOptions { WeightEncoding = encoding }, "attention.onnx");

        QuantizedNode layer = summary.Quantized.Single();
        Assert.AreEqual(("attn", "Attention"), (layer.Node, layer.OpType));
        NodeProto q = quantized.Graph.Node.Single(n => n.OpType == Int8AttentionLowering.QuantizedOpType);
        Assert.AreEqual(OnnxNames.MicrosoftDomain, q.Domain);
        Assert.AreEqual("DynamicQuantizeLinear", quantized.Graph.Node[0].OpType);
        Assert.AreEqual(mask ? "mask" : "", q.Input[5]);
        Assert.IsFalse(quantized.Graph.Initializer.Any(t => t.Name == "W"), "the float weight is gone");
        TensorProto w = quantized.Graph.Initializer.Single(t => t.Name == q.Input[1]);
        Assert.AreEqual(encoding == WeightEncoding.UInt8 ? (int)TensorProto.Types.DataType.Uint8 : (int)TensorProto.Types.DataType.Int8, w.DataType);
        CollectionAssert.AreEqual(new long[] { 3 * Hidden }, quantized.Graph.Initializer.Single(t => t.Name == q.Input[4]).Dims.ToArray(), "one weight scale per column");
        long before = original.CalculateSize(), after = quantized.CalculateSize();
        Assert.IsLessThan(before * 0.5, after, $"{before} -> {after} bytes");

        string optimized = Path.Combine(TestContext.TestRunResultsDirectory ?? Path.GetTempPath(), $"qattention-{Guid.NewGuid():N}.onnx");
        float[] y = Run(original);
        float[] qy = Run(quantized, optimized);
        ModelProto seen = ModelProto.Parser.ParseFrom(File.ReadAllBytes(optimized));
        File.Delete(optimized);
        Assert.IsTrue(seen.Graph.Node.Any(n => n.OpType == Int8AttentionLowering.QuantizedOpType), "ORT keeps QAttention");

        double cosine = Cosine(y, qy);
        float maxDiff = y.Zip(qy, (a, b) => MathF.Abs(a - b)).Max();
        TestContext.WriteLine($"mask {mask} {encoding}: {before} -> {after} bytes, cosine {cosine:F6}, max |diff| {maxDiff:G4}");
        Assert.IsGreaterThan(0.99, cosine, $"cosine {cosine}");
        Assert.IsGreaterThan(0f, maxDiff, "the weights really were quantized");
    }

    [TestMethod]
    public void Attention_with_an_input_QAttention_lacks_stays_float_with_the_reason()
    {
        ModelProto model = AttentionModel(mask: false, attentionBias: true);
        ModelProto copy = model.Clone();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(copy, QuantizationOptions.Default, "attention.onnx");
        SkippedNode skip = summary.Skipped.Single();
        Assert.AreEqual("Attention", skip.OpType);
        StringAssert.Contains(skip.Reason, "no QAttention counterpart");
        Assert.IsTrue(summary.NothingToQuantize);
        Assert.AreEqual(model, copy, "the model is unchanged");
    }
}
