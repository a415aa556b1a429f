using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using Google.Protobuf;
using static CompressOnBuild.Tests.TinyModels;
using DataType = CompressOnBuild.Onnx.TensorProto.Types.DataType;

namespace CompressOnBuild.Core.Tests.Quantization;

/// <summary>
/// Weights the way exporters write them (tf2onnx: a Transpose or a Cast of an initializer; PyTorch: Constant nodes,
/// possibly transposed or reshaped) are quantized by every scheme like plain initializers: the model gets smaller,
/// the float source and its chain are gone, and ONNX Runtime's output stays close to the float model's.
/// </summary>
[TestClass]
public sealed class ExportStyleWeightTests
{
    private const int K = 64, N = 32, Batch = 4;

    private static AttributeProto TensorAttr(TensorProto t) => new() { Name = "value", Type = AttributeProto.Types.AttributeType.Tensor, T = t };

    private static TensorProto Half(string name, float[] values, params long[] dims)
    {
        var bits = values.Select(v => BitConverter.HalfToUInt16Bits((Half)v)).ToArray();
        return TensorUtil.FromRaw(name, DataType.Float16, System.Runtime.InteropServices.MemoryMarshal.AsBytes(bits.AsSpan()), dims);
    }

    private static float[] Transposed(float[] w, int rows, int cols) => PassGraph.Transpose(w, rows, cols);

    /// <summary>x [Batch, K] · W [K, N] with W written in export style <paramref name="style"/>; W holds <paramref name="w"/>.</summary>
    private static ModelProto Build(string style, float[] w)
    {
        var g = new GraphProto { Name = style };
        g.Input.Add(FloatValue("x", Batch, K));
        g.Output.Add(FloatValue("y", Batch, N));
        switch (style)
        {
            case "initializer-transpose": // tf2onnx: the kernel stored [N, K], transposed in the graph
                g.Initializer.Add(TensorUtil.FromFloats("kernel", Transposed(w, K, N), N, K));
                g.Node.Add(Node("Transpose", ["kernel"], ["w"], "kernel_t", IntsAttr("perm", 1, 0)));
                break;
            case "initializer-cast": // mixed-precision export: float16 kernel, Cast to float32 before the MatMul
                g.Initializer.Add(Half("kernel", w, K, N));
                g.Node.Add(Node("Cast", ["kernel"], ["w"], "kernel_cast", IntAttr("to", (long)DataType.Float)));
                break;
            case "transpose-shared-source": // the same transposed kernel read twice through its own Transpose nodes
                g.Initializer.Add(TensorUtil.FromFloats("kernel", Transposed(w, K, N), N, K));
                g.Node.Add(Node("Transpose", ["kernel"], ["w"], "kernel_t", IntsAttr("perm", 1, 0)));
                g.Node.Add(Node("Identity", ["kernel"], ["kernel_copy"], "kernel_id"));
                break;
            case "constant": // PyTorch without initializers
                g.Node.Add(Node("Constant", [], ["w"], "kernel_const", TensorAttr(TensorUtil.FromFloats("", w, K, N))));
                break;
            case "constant-transpose": // PyTorch Linear without constant folding: weight [N, K], transposed
                g.Node.Add(Node("Constant", [], ["kernel"], "kernel_const", TensorAttr(TensorUtil.FromFloats("", Transposed(w, K, N), N, K))));
                g.Node.Add(Node("Transpose", ["kernel"], ["w"], "kernel_t"));
                break;
            case "constant-chain": // float16 Constant, flat, reshaped, unsqueezed and squeezed, transposed, cast
                g.Node.Add(Node("Constant", [], ["flat"], "kernel_const", TensorAttr(Half("", Transposed(w, K, N), N * K))));
                g.Initializer.Add(TensorUtil.FromInt64("shape", [N, K], 2));
                g.Initializer.Add(TensorUtil.FromInt64("axes", [0], 1));
                g.Node.Add(Node("Reshape", ["flat", "shape"], ["nk"], "reshape"));
                g.Node.Add(Node("Unsqueeze", ["nk", "axes"], ["nk1"], "unsqueeze"));
                g.Node.Add(Node("Squeeze", ["nk1", "axes"], ["nk2"], "squeeze"));
                g.Node.Add(Node("Transpose", ["nk2"], ["kn"], "transpose", IntsAttr("perm", 1, 0)));
                g.Node.Add(Node("Cast", ["kn"], ["w"], "cast", IntAttr("to", (long)DataType.Float)));
                break;
            default:
                throw new ArgumentException(style);
        }
        g.Node.Add(Node("MatMul", ["x", "w"], ["y"], "dense"));
        return Model(g);
    }

    public static IEnumerable<object[]> Styles() =>
        new[] { "initializer-transpose", "initializer-cast", "constant", "constant-transpose", "constant-chain" }.Select(s => new object[] { s });

    private static float[] Run(ModelProto model, float[] x)
    {
        using var ort = new Passes.Ort(model);
        return ort.Run(x, [Batch, K]);
    }

    /// <summary>The quantized output against the float one: within <paramref name="tolerance"/> x max|y|, and not bit-identical.</summary>
    private static void AssertClose(ModelProto original, ModelProto quantized, float tolerance, string what)
    {
        float[] x = RandomFloats(Batch * K, 7);
        float[] expected = Run(original, x), actual = Run(quantized, x);
        float scale = expected.Max(MathF.Abs);
        float worst = expected.Zip(actual).Max(p => MathF.Abs(p.First - p.Second));
        Assert.IsLessThanOrEqualTo(tolerance * scale, worst, $"{what}: worst error {worst} against max |y| {scale}");
        Assert.IsGreaterThan(0f, worst, $"{what}: outputs are bit-identical; was anything quantized?");
    }

    /// <summary>No node of the weight's chain (Constant, Transpose, Cast, Reshape, ...) and no float source is left.</summary>
    private static void AssertChainGone(ModelProto model, string what)
    {
        string[] chainOps = ["Constant", "Transpose", "Cast", "Reshape", "Squeeze", "Unsqueeze"];
        // The pass's own Casts of float16 scales and biases (HalfScales) are not the weight's chain (its source is float32).
        var half = model.Graph.Initializer.Where(t => t.DataType == (int)TensorProto.Types.DataType.Float16).Select(t => t.Name).ToHashSet();
        Assert.IsFalse(model.Graph.Node.Any(n => chainOps.Contains(n.OpType) && !(n.OpType == "Cast" && half.Contains(n.Input[0]))),
            $"{what}: left {string.Join(", ", model.Graph.Node.Select(n => n.OpType))}");
        Assert.IsFalse(model.Graph.Initializer.Any(t => t.Name is "kernel" or "shape" or "axes"), $"{what}: a source initializer is left");
    }

    [TestMethod]
    [DynamicData(nameof(Styles))]
    public void Int8_dynamic_quantizes_the_weight_behind_the_chain(string style)
    {
        float[] w = RandomFloats(K * N, 3);
        ModelProto original = Build(style, w);
        ModelProto model = original.Clone();
        QuantizationSummary s = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, style);
        Assert.AreEqual((K, N), (s.Quantized.Single().Rows, s.Quantized.Single().Columns), string.Join("; ", s.Skipped.Select(k => k.Reason)));
        ModelChecker.Validate(model, style);
        AssertChainGone(model, style);
        Assert.IsLessThan(original.CalculateSize(), model.CalculateSize());
        AssertClose(original, model, 0.02f, style);
    }

    [TestMethod]
    [DynamicData(nameof(Styles))]
    public void Int4_quantizes_the_weight_behind_the_chain(string style)
    {
        float[] w = RandomFloats(K * N, 4);
        ModelProto original = Build(style, w);
        ModelProto model = original.Clone();
        Int4Summary s = Int4WeightQuantizer.Apply(model, Int4Options.Default, style);
        Assert.AreEqual((K, N), (s.Quantized.Single().Rows, s.Quantized.Single().Columns), string.Join("; ", s.Skipped.Select(k => k.Reason)));
        ModelChecker.Validate(model, style);
        AssertChainGone(model, style);
        Assert.IsLessThan(original.CalculateSize(), model.CalculateSize());
        AssertClose(original, model, 0.15f, style);
    }

    [TestMethod]
    [DynamicData(nameof(Styles))]
    public void Int8_static_quantizes_the_weight_behind_the_chain(string style)
    {
        float[] w = RandomFloats(K * N, 5);
        ModelProto original = Build(style, w);
        float[] x = RandomFloats(Batch * K, 7);
        float[] y = Run(original, x);
        var ranges = new Dictionary<string, TensorRange>(StringComparer.Ordinal);
        foreach (string t in Int8StaticQuantizer.TensorsToCalibrate(original, Int8StaticOptions.Default))
        {
            ranges[t] = t switch
            {
                "x" => new TensorRange(x.Min(), x.Max()),
                "y" => new TensorRange(y.Min(), y.Max()),
                _ => throw new AssertFailedException($"{style}: unexpected tensor to calibrate '{t}'"),
            };
        }
        ModelProto model = original.Clone();
        Int8StaticSummary s = Int8StaticQuantizer.Apply(model, new CalibrationResult { Ranges = ranges, Samples = 1 }, Int8StaticOptions.Default, style);
        Assert.AreEqual((K, N), (s.Quantized.Single().Rows, s.Quantized.Single().Columns), string.Join("; ", s.Skipped.Select(k => k.Reason)));
        ModelChecker.Validate(model, style);
        AssertChainGone(model, style);
        Assert.IsLessThan(original.CalculateSize(), model.CalculateSize());
        AssertClose(original, model, 0.03f, style);
    }

    [TestMethod]
    [DataRow("initializer-transpose")]
    [DataRow("constant")]
    [DataRow("constant-transpose")]
    public void Float16_stores_the_weight_behind_the_chain_as_float16(string style)
    {
        float[] w = RandomFloats(K * N, 6);
        ModelProto original = Build(style, w);
        ModelProto model = original.Clone();
        Float16Summary s = Float16Converter.Apply(model, Float16Options.Default, style);
        Assert.IsNull(s.UnchangedReason);
        ModelChecker.Validate(model, style);
        Assert.IsFalse(ModelWalker.Tensors(model).Any(t => t.DataType == (int)DataType.Float && TensorUtil.ElementCount(t) >= K * N), $"{style}: a float32 weight is left");
        Assert.IsLessThan(original.CalculateSize() * 6 / 10, model.CalculateSize());
        AssertClose(original, model, 0.005f, style);
    }

    [TestMethod]
    public void Source_read_by_a_float_node_too_keeps_the_weight_float()
    {
        ModelProto original = Build("transpose-shared-source", RandomFloats(K * N, 8));
        original.Graph.Output.Add(FloatValue("kernel_copy", N, K));
        ModelProto model = original.Clone();
        QuantizationSummary s = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "shared");
        Assert.IsEmpty(s.Quantized);
        Assert.Contains("kernel", s.Skipped.Single(k => k.Node == "dense").Reason);
        CollectionAssert.AreEqual(original.ToByteArray(), model.ToByteArray(), "nothing changed");
    }

    [TestMethod]
    public void Cast_to_something_other_than_float32_is_a_skip_reason()
    {
        var g = new GraphProto { Name = "int_cast" };
        g.Input.Add(FloatValue("x", Batch, K));
        g.Output.Add(FloatValue("y", Batch, N));
        g.Initializer.Add(TensorUtil.FromFloats("kernel", RandomFloats(K * N, 9), K, N));
        g.Node.Add(Node("Cast", ["kernel"], ["w16"], "to_half", IntAttr("to", (long)DataType.Float16)));
        g.Node.Add(Node("Cast", ["w16"], ["w"], "to_float", IntAttr("to", (long)DataType.Float)));
        g.Node.Add(Node("MatMul", ["x", "w"], ["y"], "dense"));
        ModelProto model = Model(g);
        QuantizationSummary s = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "cast");
        Assert.IsEmpty(s.Quantized);
        Assert.Contains("Cast of FLOAT to FLOAT16", s.Skipped.Single().Reason);
    }
}
