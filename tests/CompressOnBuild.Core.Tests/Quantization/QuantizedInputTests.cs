using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Quantization;
using CompressOnBuild.Onnx;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Core.Tests.Quantization;

/// <summary>Models that already run quantized operators: every pass leaves them as they are and says why (issue 14).</summary>
[TestClass]
public sealed class QuantizedInputTests
{
    /// <summary>
    /// x -> MatMul(DequantizeLinear(int8 w [32, 16])) -> y (a QDQ weight-only export), or x -> QuantizeLinear ->
    /// MatMulInteger -> Cast (an int8 QOperator export), or x -> DynamicQuantizeMatMul (ORT's own dynamic output).
    /// A float [16, 16] MatMul weight sits beside each, so a pass that ignored the quantized ops would find work.
    /// </summary>
    private static ModelProto Quantized(string style)
    {
        var g = new GraphProto { Name = style };
        g.Input.Add(FloatValue("x", 4, 32));
        g.Output.Add(FloatValue("y", 4, 16));
        sbyte[] codes = RandomFloats(32 * 16, 1, 127f).Select(v => (sbyte)v).ToArray();
        g.Initializer.Add(TensorUtil.FromInt8("w_q", codes, 32, 16));
        g.Initializer.Add(TensorUtil.FromFloats("w_scale", [0.01f]));
        g.Initializer.Add(TensorUtil.FromFloats("w2", RandomFloats(16 * 16, 2), 16, 16));
        switch (style)
        {
            case "qdq":
                g.Node.Add(Node("DequantizeLinear", ["w_q", "w_scale"], ["w"], "dq"));
                g.Node.Add(Node("MatMul", ["x", "w"], ["h"], "mm"));
                break;
            case "integer":
                g.Initializer.Add(TensorUtil.FromUInt8("x_zero", [128]));
                g.Initializer.Add(TensorUtil.FromFloats("x_scale", [0.02f]));
                g.Node.Add(Node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"], "q"));
                g.Node.Add(Node("MatMulInteger", ["x_q", "w_q", "x_zero"], ["h_int"], "mmi"));
                g.Node.Add(Node("Cast", ["h_int"], ["h"], "cast", IntAttr("to", (long)TensorProto.Types.DataType.Float)));
                break;
            default:
                NodeProto dq = Node("DynamicQuantizeMatMul", ["x", "w_q", "w_scale"], ["h"], "dqmm");
                dq.Domain = "com.microsoft";
                g.Node.Add(dq);
                break;
        }
        g.Node.Add(Node("MatMul", ["h", "w2"], ["y"], "float_mm"));
        return Model(g);
    }

    [TestMethod]
    [DataRow("qdq", "1 DequantizeLinear node")]
    [DataRow("integer", "1 MatMulInteger, 1 QuantizeLinear nodes")]
    [DataRow("dynamic", "1 DynamicQuantizeMatMul node")]
    public void Every_pass_leaves_an_already_quantized_model_as_it_is(string style, string reason)
    {
        ModelProto model = Quantized(style);
        Assert.AreEqual(reason, QuantizedOperators.Describe(model));
        var results = new List<(string Pass, bool Already, string? Reason, ModelProto After)>();
        ModelProto a = model.Clone();
        QuantizationSummary d = Int8DynamicQuantizer.Apply(a, QuantizationOptions.Default, "q.onnx");
        results.Add(("Int8Dynamic", d.AlreadyQuantized, d.AlreadyQuantizedReason, a));
        ModelProto b = model.Clone();
        Int8StaticSummary st = Int8StaticQuantizer.Apply(b, new CalibrationResult { Ranges = new Dictionary<string, TensorRange>() }, Int8StaticOptions.Default, "q.onnx");
        results.Add(("Int8Static", st.AlreadyQuantized, st.AlreadyQuantizedReason, b));
        ModelProto c = model.Clone();
        Int4Summary i4 = Int4WeightQuantizer.Apply(c, new Int4Options(), "q.onnx");
        results.Add(("Int4Weights", i4.AlreadyQuantized, i4.AlreadyQuantizedReason, c));
        ModelProto f = model.Clone();
        Float16Summary h = Float16Converter.Apply(f, Float16Options.Default, "q.onnx");
        results.Add(("Float16", h.AlreadyQuantized, h.UnchangedReason, f));
        Assert.IsEmpty(Int8StaticQuantizer.TensorsToCalibrate(model, Int8StaticOptions.Default), "nothing to calibrate");
        foreach ((string pass, bool already, string? why, ModelProto after) in results)
        {
            Assert.IsTrue(already, pass);
            Assert.AreEqual(reason, why, pass);
            Assert.AreEqual(model, after, $"{pass} changed the model");
        }
    }
}
