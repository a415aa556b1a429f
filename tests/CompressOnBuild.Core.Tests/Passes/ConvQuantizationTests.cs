using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Core.Tests.Passes;

[TestClass]
public sealed class ConvQuantizationTests
{
    private static ModelProto ConvModel(int c, int m, int k, int group, bool bias, long opset, int h = 9, params NodeProto[] extra)
    {
        var g = new GraphProto { Name = "conv" };
        g.Input.Add(FloatValue("x", 2, c, h, h));
        g.Output.Add(FloatValue("y", 2, m, "H", "W"));
        g.Initializer.Add(TensorUtil.FromFloats("w", RandomFloats(m * (c / group) * k * k, 31, 0.7f), m, c / group, k, k));
        var inputs = new List<string> { "x", "w" };
        if (bias)
        {
            g.Initializer.Add(TensorUtil.FromFloats("b", RandomFloats(m, 32, 0.3f), m));
            inputs.Add("b");
        }
        string output = extra.Length > 0 ? "conv_out" : "y";
        g.Node.Add(Node("Conv", [.. inputs], [output], "conv", IntsAttr("kernel_shape", k, k), IntsAttr("pads", 1, 1, 1, 1),
            IntsAttr("strides", 2, 1), IntAttr("group", group)));
        g.Node.AddRange(extra);
        return Model(g, opset);
    }

    /// <summary>
    /// Bound per output from the scales, over a receptive field of L = C/group·k·k values:
    /// L·(max|x|·sw_m/2 + max|W_m|·sa/2 + sa·sw_m/4) with sa = (max(x,0) - min(x,0))/255, sw_m = max|W_m|/127.
    /// </summary>
    private static float Bound(float[] x, float[] w, int m, int perChannel, int channel)
    {
        float mx = x.Max(MathF.Abs);
        float sa = (MathF.Max(0, x.Max()) - MathF.Min(0, x.Min())) / 255f;
        float mw = w.AsSpan(channel * perChannel, perChannel).ToArray().Max(MathF.Abs);
        float sw = mw / 127f;
        return perChannel * (mx * sw / 2 + mw * sa / 2 + sa * sw / 4) * 1.0001f + 1e-5f;
    }

    [TestMethod]
    [DataRow(3, 4, 3, 1, true, 13L)]
    [DataRow(4, 6, 3, 2, false, 17L)]
    [DataRow(1, 8, 5, 1, true, 8L)]
    public void Conv_becomes_ConvInteger_and_stays_within_the_derived_bound(int c, int m, int k, int group, bool bias, long opset)
    {
        ModelProto original = ConvModel(c, m, k, group, bias, opset);
        ModelProto model = original.Clone();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "conv.onnx");
        QuantizedNode q = summary.Quantized.Single();
        Assert.AreEqual(("Conv", c / group * k * k, m), (q.OpType, q.Rows, q.Columns));
        ModelChecker.Validate(model, "conv.onnx");
        CollectionAssert.Contains(model.Graph.Node.Select(n => n.OpType).ToList(), "ConvInteger");
        Assert.IsFalse(model.Graph.Node.Any(n => n.OpType == "Conv"));
        Assert.IsFalse(model.Graph.Initializer.Any(t => t.Name is "w" or "b"), "float weight and bias are removed");
        Assert.AreEqual(Math.Max(11, opset), model.OpsetImport.Single(o => o.Domain.Length == 0).Version);
        NodeProto ci = model.Graph.Node.Single(n => n.OpType == "ConvInteger");
        TensorProto wq = model.Graph.Initializer.Single(t => t.Name == ci.Input[1]);
        Assert.AreEqual((int)TensorProto.Types.DataType.Uint8, wq.DataType);
        Assert.IsTrue(TensorUtil.ToInt64Array(wq).All(v => v is >= 1 and <= 255));
        Assert.IsTrue(ci.Attribute.Any(a => a.Name == "group" && a.I == group));

        int h = 9;
        float[] x = RandomFloats(2 * c * h * h, 33, 1.2f);
        using var a = new Ort(original);
        using var b = new Ort(model);
        float[] expected = a.Run(x, [2, c, h, h]);
        float[] actual = b.Run(x, [2, c, h, h]);
        Assert.HasCount(expected.Length, actual);
        float[] w = TensorUtil.ToFloatArray(original.Graph.Initializer.Single(t => t.Name == "w"));
        int perChannel = c / group * k * k;
        int spatial = expected.Length / 2 / m;
        for (int i = 0; i < expected.Length; i++)
        {
            int channel = i / spatial % m;
            Assert.IsLessThanOrEqualTo(Bound(x, w, m, perChannel, channel), MathF.Abs(expected[i] - actual[i]), $"output {i} channel {channel}");
        }
        Assert.IsTrue(expected.Zip(actual).Any(p => p.First != p.Second));
    }

    /// <summary>A Slice with opset-9 attributes is rewritten to its opset-10 inputs, so the model is raised to 11 and the Conv quantized.</summary>
    [TestMethod]
    public void Old_opset_with_a_rewritable_operator_is_raised_and_the_Conv_quantized()
    {
        var slice = Node("Slice", ["conv_out"], ["y"], "slice", IntsAttr("starts", 0), IntsAttr("ends", 1), IntsAttr("axes", 0));
        ModelProto original = ConvModel(3, 4, 3, 1, true, 9, extra: slice);
        ModelProto model = original.Clone();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "old.onnx");
        Assert.AreEqual("Conv", summary.Quantized.Single().OpType);
        Assert.AreEqual(11, model.OpsetImport.Single(o => o.Domain.Length == 0).Version);
        NodeProto rewritten = model.Graph.Node.Single(n => n.OpType == "Slice");
        Assert.IsEmpty(rewritten.Attribute, "starts/ends/axes became inputs");
        Assert.HasCount(4, rewritten.Input);
        float[] x = RandomFloats(2 * 3 * 9 * 9, 5);
        using var a = new Ort(original);
        using var b = new Ort(model);
        float[] expected = a.Run(x, [2, 3, 9, 9]), actual = b.Run(x, [2, 3, 9, 9]);
        Assert.HasCount(expected.Length, actual);
        Assert.IsLessThan(0.05, CompressOnBuild.Kernels.ErrorMetrics.Compare(expected, actual).RelativeL2);
    }

    /// <summary>Upsample was replaced by Resize at opset 10 and is not rewritten: the Conv stays float and says why.</summary>
    [TestMethod]
    public void Old_opset_with_an_operator_that_cannot_be_raised_keeps_Conv_float()
    {
        var up = Node("Upsample", ["conv_out", "scales"], ["y"], "up");
        ModelProto model = ConvModel(3, 4, 3, 1, true, 9, extra: up);
        model.Graph.Initializer.Add(TensorUtil.FromFloats("scales", [1f, 1f, 2f, 2f], 4));
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "old.onnx");
        Assert.IsTrue(summary.NothingToQuantize);
        StringAssert.Contains(summary.Skipped.Single().Reason, "opset 11");
        StringAssert.Contains(summary.Skipped.Single().Reason, "Upsample");
        Assert.AreEqual(9, model.OpsetImport.Single().Version, "the opset is not raised");
    }

    [TestMethod]
    public void Conv_can_be_turned_off()
    {
        ModelProto model = ConvModel(3, 4, 3, 1, true, 13);
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, new QuantizationOptions { QuantizeConv = false }, "off.onnx");
        Assert.IsTrue(summary.NothingToQuantize);
        Assert.AreEqual("Conv quantization is turned off in the options", summary.Skipped.Single().Reason);
        Assert.AreEqual("Conv", model.Graph.Node.Single().OpType);
    }
}
