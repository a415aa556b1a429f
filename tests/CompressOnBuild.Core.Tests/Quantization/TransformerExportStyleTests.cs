using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using Google.Protobuf;
using static CompressOnBuild.Tests.TinyModels;
using DataType = CompressOnBuild.Onnx.TensorProto.Types.DataType;

namespace CompressOnBuild.Core.Tests.Quantization;

/// <summary>
/// One transformer encoder layer (Q/K/V/output projections, attention, LayerNormalization, a two-layer feed-forward)
/// written the way PyTorch and TensorFlow exporters write dense layers: every one of its six weight MatMuls is
/// quantized by Int8 dynamic and Int4, the two activation x activation MatMuls of attention stay float with their
/// reason, and ONNX Runtime's output stays close to float.
/// </summary>
[TestClass]
public sealed class TransformerExportStyleTests
{
    private const int S = 8, H = 64, F = 128;

    private static readonly string[] DenseLayers = ["query", "key", "value", "attention_output", "ffn_in", "ffn_out"];

    private sealed class Builder(GraphProto g, string style)
    {
        private int _seed = 100;

        /// <summary>y = x · W + b for x [1, S, k], in the export style.</summary>
        public string Dense(string name, string x, int k, int n)
        {
            float[] w = RandomFloats(k * n, _seed++, 1f / MathF.Sqrt(k));
            string b = name + "_bias";
            g.Initializer.Add(TensorUtil.FromFloats(b, RandomFloats(n, _seed++, 0.1f), n));
            string y = name + "_out";
            switch (style)
            {
                case "pytorch": // torch.onnx.export with constant folding: W^T stored [k, n], MatMul + Add
                    g.Initializer.Add(TensorUtil.FromFloats(name + "_weight", w, k, n));
                    g.Node.Add(Node("MatMul", [x, name + "_weight"], [name + "_mm"], name));
                    g.Node.Add(Node("Add", [name + "_mm", b], [y], name + "_add"));
                    break;
                case "pytorch-constants": // no constant folding and no initializers: Linear weight [n, k] in a Constant, transposed
                    g.Node.Add(Node("Constant", [], [name + "_weight"], name + "_const", new AttributeProto
                    {
                        Name = "value", Type = AttributeProto.Types.AttributeType.Tensor, T = TensorUtil.FromFloats("", PassGraph.Transpose(w, k, n), n, k),
                    }));
                    g.Node.Add(Node("Transpose", [name + "_weight"], [name + "_wt"], name + "_t", IntsAttr("perm", 1, 0)));
                    g.Node.Add(Node("MatMul", [x, name + "_wt"], [name + "_mm"], name));
                    g.Node.Add(Node("Add", [name + "_mm", b], [y], name + "_add"));
                    break;
                case "tf2onnx": // Keras Dense on [1, S, k]: Tensordot = Reshape to 2-D, MatMul, Reshape back; kernel read through Identity
                    g.Initializer.Add(TensorUtil.FromFloats(name + "_kernel", w, k, n));
                    g.Initializer.Add(TensorUtil.FromInt64(name + "_flat", [-1, k], 2));
                    g.Initializer.Add(TensorUtil.FromInt64(name + "_back", [1, S, n], 3));
                    g.Node.Add(Node("Identity", [name + "_kernel"], [name + "_read"], name + "_read"));
                    g.Node.Add(Node("Reshape", [x, name + "_flat"], [name + "_x2d"], name + "_reshape_in"));
                    g.Node.Add(Node("MatMul", [name + "_x2d", name + "_read"], [name + "_mm"], name));
                    g.Node.Add(Node("Add", [name + "_mm", b], [name + "_biased"], name + "_add"));
                    g.Node.Add(Node("Reshape", [name + "_biased", name + "_back"], [y], name + "_reshape_out"));
                    break;
                case "tf2onnx-mixed": // mixed-precision Keras: float16 kernel Cast to float32 before the MatMul
                    var bits = w.Select(v => BitConverter.HalfToUInt16Bits((Half)v)).ToArray();
                    g.Initializer.Add(TensorUtil.FromRaw(name + "_kernel", DataType.Float16, System.Runtime.InteropServices.MemoryMarshal.AsBytes(bits.AsSpan()), k, n));
                    g.Node.Add(Node("Cast", [name + "_kernel"], [name + "_k32"], name + "_cast", IntAttr("to", (long)DataType.Float)));
                    g.Node.Add(Node("MatMul", [x, name + "_k32"], [name + "_mm"], name));
                    g.Node.Add(Node("Add", [name + "_mm", b], [y], name + "_add"));
                    break;
                case "einsum": // Keras EinsumDense as older tf2onnx left it
                    g.Initializer.Add(TensorUtil.FromFloats(name + "_kernel", w, k, n));
                    NodeProto e = Node("Einsum", [x, name + "_kernel"], [name + "_mm"], name);
                    e.Attribute.Add(new AttributeProto { Name = "equation", Type = AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8("abc,cd->abd") });
                    g.Node.Add(e);
                    g.Node.Add(Node("Add", [name + "_mm", b], [y], name + "_add"));
                    break;
                default:
                    throw new ArgumentException(style);
            }
            return y;
        }
    }

    public static ModelProto EncoderLayer(string style)
    {
        var g = new GraphProto { Name = "encoder_" + style };
        g.Input.Add(FloatValue("x", 1, S, H));
        g.Output.Add(FloatValue("y", 1, S, H));
        var b = new Builder(g, style);
        string q = b.Dense("query", "x", H, H), k = b.Dense("key", "x", H, H), v = b.Dense("value", "x", H, H);
        g.Initializer.Add(TensorUtil.FromFloats("scale", [1f / MathF.Sqrt(H)]));
        g.Initializer.Add(TensorUtil.FromFloats("ln_gamma", Enumerable.Repeat(1f, H).ToArray(), H));
        g.Initializer.Add(TensorUtil.FromFloats("ln_beta", new float[H], H));
        g.Node.Add(Node("Transpose", [k], ["key_t"], "key_transpose", IntsAttr("perm", 0, 2, 1)));
        g.Node.Add(Node("MatMul", [q, "key_t"], ["scores"], "attention_scores"));
        g.Node.Add(Node("Mul", ["scores", "scale"], ["scaled"], "attention_scale"));
        g.Node.Add(Node("Softmax", ["scaled"], ["probs"], "attention_softmax", IntAttr("axis", -1)));
        g.Node.Add(Node("MatMul", ["probs", v], ["context"], "attention_context"));
        string o = b.Dense("attention_output", "context", H, H);
        g.Node.Add(Node("Add", ["x", o], ["residual"], "residual_add"));
        g.Node.Add(Node("LayerNormalization", ["residual", "ln_gamma", "ln_beta"], ["h"], "layer_norm", IntAttr("axis", -1)));
        string f1 = b.Dense("ffn_in", "h", H, F);
        g.Node.Add(Node("Relu", [f1], ["ffn_act"], "ffn_relu"));
        string f2 = b.Dense("ffn_out", "ffn_act", F, H);
        g.Node.Add(Node("Add", ["h", f2], ["y"], "output_add"));
        return Model(g, opset: 17, irVersion: 8);
    }

    public static IEnumerable<object[]> Styles() =>
        new[] { "pytorch", "pytorch-constants", "tf2onnx", "tf2onnx-mixed", "einsum" }.Select(s => new object[] { s });

    private static void AssertClose(ModelProto original, ModelProto quantized, float tolerance, string what)
    {
        float[] x = RandomFloats(S * H, 77);
        using var a = new Passes.Ort(original);
        using var b = new Passes.Ort(quantized);
        float[] expected = a.Run(x, [1, S, H]), actual = b.Run(x, [1, S, H]);
        float scale = expected.Max(MathF.Abs);
        float worst = expected.Zip(actual).Max(p => MathF.Abs(p.First - p.Second));
        Assert.IsLessThanOrEqualTo(tolerance * scale, worst, $"{what}: worst error {worst} against max |y| {scale}");
        Assert.IsGreaterThan(0f, worst, $"{what}: bit-identical output");
    }

    private static void AssertLayers(IEnumerable<QuantizedNode> quantized, IEnumerable<SkippedNode> skipped, string what)
    {
        CollectionAssert.AreEquivalent(DenseLayers, quantized.Select(q => q.Node).ToArray(), $"{what}: " + string.Join("; ", skipped.Select(s => s.Node + ": " + s.Reason)));
        foreach (string activations in new[] { "attention_scores", "attention_context" })
        {
            Assert.Contains("is computed at run time", skipped.Single(s => s.Node == activations).Reason, what);
        }
    }

    [TestMethod]
    [DynamicData(nameof(Styles))]
    public void Int8_dynamic_finds_every_weight_MatMul(string style)
    {
        ModelProto original = EncoderLayer(style);
        ModelProto model = original.Clone();
        QuantizationSummary s = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, style);
        AssertLayers(s.Quantized, s.Skipped, style);
        ModelChecker.Validate(model, style);
        Assert.IsTrue(model.Graph.Node.Any(n => n.OpType == "LayerNormalization") && model.Graph.Node.Any(n => n.OpType == "Softmax"), "LayerNormalization and Softmax stay float");
        Assert.IsLessThan(original.CalculateSize() * (style == "tf2onnx-mixed" ? 6 : 4) / 10, model.CalculateSize());
        AssertClose(original, model, 0.05f, style);
    }

    [TestMethod]
    [DynamicData(nameof(Styles))]
    public void Int4_finds_every_weight_MatMul(string style)
    {
        ModelProto original = EncoderLayer(style);
        ModelProto model = original.Clone();
        Int4Summary s = Int4WeightQuantizer.Apply(model, Int4Options.Default, style);
        AssertLayers(s.Quantized, s.Skipped, style);
        ModelChecker.Validate(model, style);
        Assert.IsLessThan(original.CalculateSize() * (style == "tf2onnx-mixed" ? 4 : 3) / 10, model.CalculateSize());
        AssertClose(original, model, 0.25f, style);
    }
}
