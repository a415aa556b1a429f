using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Core.Tests.Quantization;

/// <summary>Einsum dense layers (Keras EinsumDense through tf2onnx) become Reshape/MatMul/Reshape with the same values; other equations stay.</summary>
[TestClass]
public sealed class DenseEinsumTests
{
    /// <summary>Einsum(x, w) with x of shape <paramref name="xDims"/> and a constant w of <paramref name="wDims"/>; the weight first when <paramref name="weightFirst"/>.</summary>
    public static ModelProto EinsumModel(string equation, long[] xDims, long[] wDims, bool weightFirst = false, int seed = 3)
    {
        var g = new GraphProto { Name = "einsum" };
        g.Input.Add(FloatValue("x", [.. xDims.Cast<object>()]));
        g.Output.Add(new ValueInfoProto { Name = "y", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float } } });
        g.Initializer.Add(TensorUtil.FromFloats("kernel", RandomFloats((int)wDims.Aggregate(1L, (a, b) => a * b), seed), wDims));
        NodeProto einsum = Node("Einsum", weightFirst ? ["kernel", "x"] : ["x", "kernel"], ["y"], "dense");
        einsum.Attribute.Add(new AttributeProto { Name = "equation", Type = AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8(equation) });
        g.Node.Add(einsum);
        return Model(g, opset: 13);
    }

    public static float[] Run(ModelProto model, float[] x, long[] shape)
    {
        using var session = new InferenceSession(model.ToByteArray());
        using OrtValue v = OrtValue.CreateTensorValueFromMemory(x, shape);
        using IDisposableReadOnlyCollection<OrtValue> r = session.Run(new RunOptions(), ["x"], [v], ["y"]);
        return r[0].GetTensorDataAsSpan<float>().ToArray();
    }

    [TestMethod]
    [DataRow("abc,cde->abde", new long[] { 2, 3, 16 }, new long[] { 16, 4, 8 }, false)]
    [DataRow("abcd,cde->abe", new long[] { 2, 3, 4, 16 }, new long[] { 4, 16, 8 }, false)]
    [DataRow("abc,dc->abd", new long[] { 2, 3, 16 }, new long[] { 8, 16 }, false)]
    [DataRow("ab, bc", new long[] { 5, 16 }, new long[] { 16, 8 }, false)]
    [DataRow("cde,abc->abde", new long[] { 2, 3, 16 }, new long[] { 16, 4, 8 }, true)]
    public void Dense_equation_becomes_a_MatMul_with_the_same_values(string equation, long[] xDims, long[] wDims, bool weightFirst)
    {
        ModelProto original = EinsumModel(equation, xDims, wDims, weightFirst);
        ModelProto model = original.Clone();
        Assert.AreEqual(1, DenseEinsum.Rewrite(new PassGraph(model), "einsum"));
        Assert.IsFalse(model.Graph.Node.Any(n => n.OpType == "Einsum"));
        Assert.AreEqual("dense", model.Graph.Node.Single(n => n.OpType == "MatMul").Name);
        ModelChecker.Validate(model, "einsum");
        float[] x = RandomFloats((int)xDims.Aggregate(1L, (a, b) => a * b), 4);
        float[] expected = Run(original, x, xDims), actual = Run(model, x, xDims);
        Assert.HasCount(expected.Length, actual);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.AreEqual(expected[i], actual[i], 1e-4f, $"{equation}: element {i}");
        }
    }

    [TestMethod]
    [DataRow("bij,bjk->bik", new long[] { 2, 3, 16 }, new long[] { 2, 16, 8 })]
    [DataRow("abc,cd->adb", new long[] { 2, 3, 16 }, new long[] { 16, 8 })]
    [DataRow("abc,cd->ab", new long[] { 2, 3, 16 }, new long[] { 16, 8 })]
    [DataRow("...c,cd->...d", new long[] { 2, 3, 16 }, new long[] { 16, 8 })]
    [DataRow("abc,ccd->abd", new long[] { 2, 3, 16 }, new long[] { 16, 16, 8 })]
    public void Other_equations_are_left_alone(string equation, long[] xDims, long[] wDims)
    {
        ModelProto model = EinsumModel(equation, xDims, wDims);
        byte[] before = model.ToByteArray();
        Assert.AreEqual(0, DenseEinsum.Rewrite(new PassGraph(model), "einsum"));
        CollectionAssert.AreEqual(before, model.ToByteArray());
    }

    [TestMethod]
    [DataRow("abc,cde->abde", new long[] { 2, 3, 64 }, new long[] { 64, 4, 8 })]
    [DataRow("abcd,cde->abe", new long[] { 2, 3, 4, 16 }, new long[] { 4, 16, 32 })]
    [DataRow("abc,dc->abd", new long[] { 2, 3, 64 }, new long[] { 32, 64 })]
    public void Int8_dynamic_and_Int4_quantize_an_EinsumDense_layer(string equation, long[] xDims, long[] wDims)
    {
        ModelProto original = EinsumModel(equation, xDims, wDims);
        ModelProto int8 = original.Clone(), int4 = original.Clone();
        QuantizationSummary s8 = Int8DynamicQuantizer.Apply(int8, QuantizationOptions.Default, "einsum");
        Int4Summary s4 = Int4WeightQuantizer.Apply(int4, Int4Options.Default, "einsum");
        float[] x = RandomFloats((int)xDims.Aggregate(1L, (a, b) => a * b), 5);
        float[] expected = Run(original, x, xDims);
        float scale = expected.Max(MathF.Abs);
        foreach ((ModelProto model, string node, float tolerance, string what) in new[] { (int8, s8.Quantized.Single().Node, 0.02f, "int8"), (int4, s4.Quantized.Single().Node, 0.2f, "int4") })
        {
            Assert.AreEqual("dense", node, what);
            ModelChecker.Validate(model, what);
            Assert.IsFalse(model.Graph.Node.Any(n => n.OpType is "Einsum" or "MatMul"), what);
            Assert.IsFalse(model.Graph.Initializer.Any(t => t.Name == "kernel"), $"{what}: the float kernel is gone");
            Assert.IsLessThan(original.CalculateSize() * 4 / 10, model.CalculateSize(), what);
            float[] actual = Run(model, x, xDims);
            float worst = expected.Zip(actual).Max(p => MathF.Abs(p.First - p.Second));
            Assert.IsLessThanOrEqualTo(tolerance * scale, worst, $"{what}: worst error {worst}, max |y| {scale}");
            Assert.IsGreaterThan(0f, worst, what);
        }
    }
}
