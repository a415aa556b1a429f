using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Quantization.Ops;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Core.Tests.Passes;

[TestClass]
public sealed class GatherLoweringTests
{
    private const int Rows = 300;
    private const int Cols = 48; // int4 blocks of 32: a partial last block per row

    public TestContext TestContext { get; set; } = null!;

    /// <summary>ids int64 [N] (or int32) -> Gather(table [Rows, Cols]) -> y [N, Cols]; optionally the table also feeds a MatMul.</summary>
    private static ModelProto Embedding(bool int32Ids = false, bool tiedMatMul = false, bool constantNode = false)
    {
        var g = new GraphProto { Name = "embedding" };
        ValueInfoProto ids = FloatValue("ids", "N");
        ids.Type.TensorType.ElemType = (int)(int32Ids ? TensorProto.Types.DataType.Int32 : TensorProto.Types.DataType.Int64);
        g.Input.Add(ids);
        g.Output.Add(FloatValue("y", "N", Cols));
        float[] table = RandomFloats(Rows * Cols, 11, 0.8f);
        for (int c = 0; c < Cols; c++)
        {
            table[c] += 3f * MathF.Sin(c); // rows 0 and Rows-1 differ clearly from their neighbours
            table[(Rows - 1) * Cols + c] -= 2f * MathF.Cos(c);
        }
        if (constantNode)
        {
            g.Node.Add(Node("Constant", [], ["table"], "table_constant"));
            g.Node[0].Attribute.Add(new AttributeProto { Name = "value", Type = AttributeProto.Types.AttributeType.Tensor, T = TensorUtil.FromFloats("", table, Rows, Cols) });
        }
        else
        {
            g.Initializer.Add(TensorUtil.FromFloats("table", table, Rows, Cols));
        }
        g.Node.Add(Node("Gather", ["table", "ids"], ["y"], "embed"));
        if (tiedMatMul)
        {
            g.Input.Add(FloatValue("h", "N", Rows));
            g.Output.Add(FloatValue("logits", "N", Cols));
            g.Node.Add(Node("MatMul", ["h", "table"], ["logits"], "tied"));
        }
        return Model(g);
    }

    private static readonly long[] Ids = [0, Rows - 1, 5, 123, -1, 0, 77];

    private static float[] Run(ModelProto model, bool int32Ids = false, string? optimizedPath = null)
    {
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL, IntraOpNumThreads = 1 };
        if (optimizedPath != null)
        {
            options.OptimizedModelFilePath = optimizedPath;
        }
        using var session = new InferenceSession(model.ToByteArray(), options);
        using OrtValue ids = int32Ids
            ? OrtValue.CreateTensorValueFromMemory(Ids.Select(i => (int)i).ToArray(), [Ids.Length])
            : OrtValue.CreateTensorValueFromMemory(Ids.ToArray(), [Ids.Length]);
        using var run = new RunOptions();
        using IDisposableReadOnlyCollection<OrtValue> outputs = session.Run(run, ["ids"], [ids], ["y"]);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }

    private static double Cosine(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
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

    /// <summary>Quantizes with the pass for <paramref name="bits"/>; returns the Gather layers it reports.</summary>
    private static (List<QuantizedNode> Quantized, List<SkippedNode> Skipped) Quantize(ModelProto model, int bits, bool symmetric = true, IReadOnlyCollection<string>? excluded = null)
    {
        if (bits == 8)
        {
            QuantizationSummary s = Int8DynamicQuantizer.Apply(model, new QuantizationOptions { ExcludedNodes = excluded ?? [] }, "embedding.onnx");
            return ([.. s.Quantized], [.. s.Skipped]);
        }
        Int4Summary s4 = Int4WeightQuantizer.Apply(model, new Int4Options { BlockSize = 32, Symmetric = symmetric, ExcludedNodes = excluded ?? [] }, "embedding.onnx");
        return ([.. s4.Quantized], [.. s4.Skipped]);
    }

    [TestMethod]
    [DataRow(8, true, false, 0.9999)]
    [DataRow(8, true, true, 0.9999)]
    [DataRow(4, true, false, 0.99)]
    [DataRow(4, false, true, 0.99)]
    public void Table_is_quantized_and_ORT_gathers_the_right_rows(int bits, bool symmetric, bool int32Ids, double minCosine)
    {
        ModelProto original = Embedding(int32Ids);
        ModelProto quantized = original.Clone();
        (List<QuantizedNode> done, _) = Quantize(quantized, bits, symmetric);

        QuantizedNode layer = done.Single();
        Assert.AreEqual("Gather", layer.OpType);
        Assert.AreEqual((Rows, Cols), (layer.Rows, layer.Columns));
        NodeProto node = quantized.Graph.Node.Single(n => n.OpType != "Cast");
        Assert.AreEqual(GatherLowering.QuantizedOpType, node.OpType);
        // 8 bits: the row scales are float16 behind one Cast (ORT folds it at load); 4 bits: float32 block scales.
        NodeProto? cast = quantized.Graph.Node.SingleOrDefault(n => n.OpType == "Cast");
        Assert.AreEqual(bits == 8, cast != null && cast.Output[0] == node.Input[2]);
        TensorProto scales = quantized.Graph.Initializer.Single(t => t.Name == (cast?.Input[0] ?? node.Input[2]));
        Assert.AreEqual((int)(bits == 8 ? TensorProto.Types.DataType.Float16 : TensorProto.Types.DataType.Float), scales.DataType);
        Assert.AreEqual("com.microsoft", node.Domain);
        Assert.AreEqual("ids", node.Input[1], "the token ids go in unchanged");
        Assert.IsFalse(quantized.Graph.Initializer.Any(t => t.Name == "table"), "the float table is gone");
        long before = original.CalculateSize(), after = quantized.CalculateSize();
        Assert.IsLessThan(before * (bits == 8 ? 0.3 : 0.2), after, $"{before} -> {after} bytes");

        string optimized = Path.Combine(TestContext.TestRunResultsDirectory ?? Path.GetTempPath(), $"gather-{bits}-{symmetric}-{int32Ids}-{Guid.NewGuid():N}.onnx");
        float[] expected = Run(original, int32Ids);
        float[] actual = Run(quantized, int32Ids, optimized);
        ModelProto seen = ModelProto.Parser.ParseFrom(File.ReadAllBytes(optimized));
        File.Delete(optimized);
        Assert.IsTrue(seen.Graph.Node.Any(n => n.OpType == GatherBlockQuantizedName), "ORT keeps the quantized gather (no float table at load)");
        Assert.IsFalse(seen.Graph.Initializer.Any(t => t.DataType == (int)TensorProto.Types.DataType.Float && t.Dims.Count == 2 && t.Dims[0] == Rows && t.Dims[1] == Cols),
            "ORT did not fold a float copy of the table");

        Assert.HasCount(expected.Length, actual);
        for (int i = 0; i < Ids.Length; i++)
        {
            ReadOnlySpan<float> e = expected.AsSpan(i * Cols, Cols), a = actual.AsSpan(i * Cols, Cols);
            double cos = Cosine(e, a);
            Assert.IsGreaterThanOrEqualTo(minCosine, cos, $"id {Ids[i]}: cosine {cos}");
            for (int c = 0; c < Cols; c++)
            {
                Assert.IsLessThanOrEqualTo(layer.MaxAbsWeightError + 1e-5f, MathF.Abs(e[c] - a[c]), $"id {Ids[i]} column {c}");
            }
        }
    }

    [TestMethod]
    public void Table_in_a_Constant_node_is_quantized_and_the_Constant_removed()
    {
        ModelProto original = Embedding(constantNode: true);
        ModelProto quantized = original.Clone();
        (List<QuantizedNode> done, _) = Quantize(quantized, 8);
        Assert.AreEqual("Gather", done.Single().OpType);
        Assert.AreEqual(GatherLowering.QuantizedOpType, quantized.Graph.Node.Single(n => n.OpType != "Cast").OpType);
        float[] expected = Run(original), actual = Run(quantized);
        Assert.IsGreaterThanOrEqualTo(0.9999, Cosine(expected, actual));
        Assert.IsLessThan(original.CalculateSize() * 0.3, quantized.CalculateSize());
    }

    private const string GatherBlockQuantizedName = GatherLowering.QuantizedOpType;

    [TestMethod]
    [DataRow(8)]
    [DataRow(4)]
    public void Gather_left_out_of_OpTypesToQuantize_stays_float_with_a_reason(int bits)
    {
        ModelProto model = Embedding();
        (List<QuantizedNode> done, List<SkippedNode> skipped) = Quantize(model, bits, excluded: ["embed"]);
        Assert.IsEmpty(done);
        Assert.AreEqual("excluded by the options", skipped.Single(s => s.Node == "embed").Reason);
        Assert.AreEqual("Gather", model.Graph.Node.Single().OpType);
        Assert.IsTrue(model.Graph.Initializer.Any(t => t.Name == "table"));
    }

    [TestMethod]
    [DataRow(8)]
    [DataRow(4)]
    public void Table_shared_with_a_float_MatMul_stays_float(int bits)
    {
        ModelProto model = Embedding(tiedMatMul: true);
        (List<QuantizedNode> done, List<SkippedNode> skipped) = Quantize(model, bits, excluded: ["tied"]);
        Assert.IsFalse(done.Any(q => q.OpType == "Gather"));
        StringAssert.Contains(skipped.Single(s => s.Node == "embed").Reason, "shared with MatMul 'tied'");
        Assert.IsTrue(model.Graph.Node.Any(n => n.OpType == "Gather"));
    }

    [TestMethod]
    public void Table_with_NaN_is_a_coded_error_and_the_model_is_untouched()
    {
        ModelProto model = Embedding();
        float[] table = TensorUtil.ToFloatArray(model.Graph.Initializer[0]);
        table[17] = float.NaN;
        model.Graph.Initializer[0] = TensorUtil.FromFloats("table", table, Rows, Cols);
        ModelProto copy = model.Clone();
        CompressException e = Assert.ThrowsExactly<CompressException>(() => Quantize(copy, 8));
        Assert.AreEqual("CMPR0202", e.Code);
        Assert.AreEqual("Gather", copy.Graph.Node.Single().OpType);
    }
}
