using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using Microsoft.ML.OnnxRuntime;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Validation.Tests;

/// <summary>
/// Static and dynamic int8 on models of default opset 7, 9, 11 and 12 that hold operators whose meaning changed on
/// the way to 13 (Clip and Pad attributes, Dropout, Softmax over a coerced 2-D input, Squeeze/Unsqueeze/Split axes):
/// the model is raised with those nodes rewritten, every Conv and Gemm is quantized (per channel for QDQ), the
/// result matches the float model and ONNX Runtime runs integer kernels. What cannot be raised (Upsample before 10)
/// is named in every skip reason.
/// </summary>
[TestClass]
public sealed class OldOpsetQuantizationTests
{
    private const int Channels = 8;
    private const int Side = 6;

    public TestContext TestContext { get; set; } = null!;

    private static readonly long[] Shape = [1, Channels, Side, Side];

    private static float[] Input(int seed) => RandomFloats(Channels * Side * Side, seed);

    private static AttributeProto[] Conv3x3 => [IntsAttr("pads", 1, 1, 1, 1), IntsAttr("kernel_shape", 3, 3)];

    /// <summary>
    /// x[1,8,6,6] -> Conv -> (opset-specific activation) -> Conv -> (opset-specific tail) -> y, with the operators
    /// whose meaning changed between the model's opset and 13 in the form of that opset.
    /// </summary>
    private static ModelProto OldModel(long opset, out int layers)
    {
        var g = new GraphProto { Name = "old-" + opset };
        g.Input.Add(FloatValue("x", 1, Channels, Side, Side));
        g.Initializer.Add(TensorUtil.FromFloats("w1", RandomFloats(Channels * Channels * 9, 31, 0.3f), Channels, Channels, 3, 3));
        g.Initializer.Add(TensorUtil.FromFloats("b1", RandomFloats(Channels, 32, 0.2f), Channels));
        g.Initializer.Add(TensorUtil.FromFloats("w2", RandomFloats(Channels * Channels * 9, 33, 0.3f), Channels, Channels, 3, 3));
        g.Node.Add(Node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", Conv3x3));
        layers = 2;
        switch (opset)
        {
            case 7:
                // Dropout with a ratio attribute (an input from 12), a Gemm head and Softmax on its 2-D output.
                g.Node.Add(Node("Relu", ["c1"], ["r1"], "relu1"));
                g.Node.Add(Node("Conv", ["r1", "w2"], ["c2"], "conv2", Conv3x3));
                g.Node.Add(Node("Dropout", ["c2"], ["d"], "dropout", FloatAttr("ratio", 0.3f)));
                g.Node.Add(Node("Flatten", ["d"], ["flat"], "flatten"));
                g.Initializer.Add(TensorUtil.FromFloats("fw", RandomFloats(Channels * Side * Side * 10, 34, 0.05f), 10, Channels * Side * Side));
                g.Initializer.Add(TensorUtil.FromFloats("fb", RandomFloats(10, 35, 0.1f), 10));
                g.Node.Add(Node("Gemm", ["flat", "fw", "fb"], ["logits"], "fc", IntAttr("transB", 1)));
                g.Node.Add(Node("Softmax", ["logits"], ["y"], "softmax"));
                g.Output.Add(FloatValue("y", 1, 10));
                layers = 3;
                break;
            case 9:
                // An OCR-classifier shape: Relu6 as Clip with attributes, Pad with attributes, Squeeze with axes.
                g.Node.Add(Node("Clip", ["c1"], ["r1"], "relu6", FloatAttr("min", 0f), FloatAttr("max", 6f)));
                g.Node.Add(Node("Pad", ["r1"], ["p1"], "pad", IntsAttr("pads", 0, 0, 1, 1, 0, 0, 1, 1), FloatAttr("value", 0.5f)));
                g.Node.Add(Node("Conv", ["p1", "w2"], ["c2"], "conv2", IntsAttr("kernel_shape", 3, 3)));
                g.Node.Add(Node("GlobalAveragePool", ["c2"], ["gap"], "gap"));
                g.Node.Add(Node("Squeeze", ["gap"], ["y"], "squeeze", IntsAttr("axes", 2, 3)));
                g.Output.Add(FloatValue("y", 1, Channels));
                break;
            case 11:
                // Softmax over axis 1 of a 3-D tensor: before 13 it normalizes over all 8 x 36 values at once.
                g.Initializer.Add(TensorUtil.FromFloats("lo", [0f]));
                g.Initializer.Add(TensorUtil.FromFloats("hi", [6f]));
                g.Node.Add(Node("Clip", ["c1", "lo", "hi"], ["r1"], "relu6"));
                g.Node.Add(Node("Conv", ["r1", "w2"], ["c2"], "conv2", Conv3x3));
                g.Initializer.Add(TensorUtil.FromInt64("shape3", [1, Channels, Side * Side], 3));
                g.Node.Add(Node("Reshape", ["c2", "shape3"], ["c3"], "reshape"));
                g.Node.Add(Node("Softmax", ["c3"], ["y"], "softmax", IntAttr("axis", 1)));
                g.Output.Add(FloatValue("y", 1, Channels, Side * Side));
                break;
            case 12:
                // Split and Unsqueeze with attributes (inputs from 13).
                g.Node.Add(Node("LeakyRelu", ["c1"], ["r1"], "leaky", FloatAttr("alpha", 0.1f)));
                g.Node.Add(Node("Conv", ["r1", "w2"], ["c2"], "conv2", Conv3x3));
                g.Node.Add(Node("Split", ["c2"], ["s1", "s2"], "split", IntAttr("axis", 1), IntsAttr("split", 3, 5)));
                g.Node.Add(Node("Unsqueeze", ["s1"], ["y"], "unsqueeze", IntsAttr("axes", 0)));
                g.Node.Add(Node("Relu", ["s2"], ["z"], "relu2"));
                g.Output.Add(FloatValue("y", 1, 1, 3, Side, Side));
                g.Output.Add(FloatValue("z", 1, 5, Side, Side));
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(opset));
        }
        return Model(g, opset, opset < 8 ? 3 : 7);
    }

    [TestMethod]
    [DataRow(7L)]
    [DataRow(9L)]
    [DataRow(11L)]
    [DataRow(12L)]
    public void Static_int8_raises_the_opset_rewrites_what_changed_and_quantizes_every_layer(long opset)
    {
        ModelProto model = OldModel(opset, out int layers);
        var options = new Int8StaticOptions { MinimumConvReduction = 0 };
        CalibrationResult ranges = Int8StaticPlacementTests.MeasureRanges(model, Int8StaticQuantizer.TensorsToCalibrate(model, options), Input, Shape);
        ModelProto q = model.Clone();
        Int8StaticSummary s = Int8StaticQuantizer.Apply(q, ranges, options, "old" + opset);
        ModelChecker.Validate(q, "old" + opset);
        TestContext.WriteLine($"opset {opset}: {s.OpsetNote}; {string.Join(" ", q.Graph.Node.Select(n => n.OpType))}; skipped: {string.Join("; ", s.Skipped.Select(k => k.Reason))}");
        Assert.HasCount(layers, s.Quantized);
        Assert.IsTrue(s.PerChannel, "raised to 13: per-channel weights");
        Assert.AreEqual(opset, s.OpsetRaisedFrom);
        Assert.AreEqual(13L, s.OpsetRaisedTo);
        Assert.AreEqual(13L, q.OpsetImport.Single(o => o.Domain.Length == 0).Version);
        Assert.IsNotNull(s.OpsetNote);
        StringAssert.Contains(s.OpsetNote, $"raised to 13");
        double error = Int8StaticPlacementTests.RelativeError(model, q, Input, Shape);
        TestContext.WriteLine($"relative L2 {error:G3}");
        Assert.IsLessThan(0.05, error);
        (List<string> ops, List<string> fallbacks) = Int8StaticPlacementTests.Optimized(q, "old" + opset, GraphOptimizationLevel.ORT_ENABLE_ALL);
        TestContext.WriteLine("ORT: " + string.Join(" ", ops));
        Assert.IsEmpty(fallbacks, string.Join(", ", fallbacks));
        Assert.AreEqual(2, ops.Count(o => o == "QLinearConv"), string.Join(" ", ops));
    }

    /// <summary>The rewritten operators alone (no quantization) compute what the old ones did, on every output.</summary>
    [TestMethod]
    [DataRow(7L)]
    [DataRow(9L)]
    [DataRow(11L)]
    [DataRow(12L)]
    public void Raising_to_13_keeps_every_output(long opset)
    {
        ModelProto model = OldModel(opset, out _);
        ModelProto raised = model.Clone();
        Assert.IsNull(Core.Graph.OpsetRaise.BlockingReason(raised, 13, "test"));
        IReadOnlyList<string> rewritten = Core.Graph.OpsetRaise.Raise(raised, 13);
        TestContext.WriteLine($"opset {opset}: rewrote {string.Join(", ", rewritten)}");
        Assert.IsNotEmpty(rewritten);
        ModelChecker.Validate(raised, "raised");
        using var a = new InferenceSession(Google.Protobuf.MessageExtensions.ToByteArray(model));
        using var b = new InferenceSession(Google.Protobuf.MessageExtensions.ToByteArray(raised));
        string[] outputs = [.. model.Graph.Output.Select(o => o.Name)];
        for (int i = 0; i < 4; i++)
        {
            using OrtValue v = OrtValue.CreateTensorValueFromMemory(Input(700 + i), Shape);
            using var ra = a.Run(new RunOptions(), ["x"], [v], outputs);
            using var rb = b.Run(new RunOptions(), ["x"], [v], outputs);
            for (int o = 0; o < outputs.Length; o++)
            {
                float[] expected = ra[o].GetTensorDataAsSpan<float>().ToArray(), got = rb[o].GetTensorDataAsSpan<float>().ToArray();
                CollectionAssert.AreEqual(ra[o].GetTensorTypeAndShape().Shape, rb[o].GetTensorTypeAndShape().Shape);
                for (int k = 0; k < expected.Length; k++)
                {
                    Assert.AreEqual(expected[k], got[k], 1e-6f + 1e-5f * MathF.Abs(expected[k]), $"{outputs[o]}[{k}]");
                }
            }
        }
    }

    [TestMethod]
    [DataRow(7L)]
    [DataRow(9L)]
    public void Dynamic_int8_quantizes_the_convs_of_an_old_model_raised_to_11(long opset)
    {
        ModelProto model = OldModel(opset, out int layers);
        ModelProto q = model.Clone();
        QuantizationSummary s = Int8DynamicQuantizer.Apply(q, new QuantizationOptions(), "old" + opset);
        ModelChecker.Validate(q, "old" + opset);
        TestContext.WriteLine($"opset {opset}: {string.Join(" ", q.Graph.Node.Select(n => n.OpType))}; skipped: {string.Join("; ", s.Skipped.Select(k => k.Reason))}");
        Assert.AreEqual(2, s.Quantized.Count(n => n.OpType == "Conv"), "both Convs");
        Assert.IsGreaterThanOrEqualTo(11L, q.OpsetImport.Single(o => o.Domain.Length == 0).Version);
        double error = Int8StaticPlacementTests.RelativeError(model, q, Input, Shape);
        TestContext.WriteLine($"relative L2 {error:G3}");
        Assert.IsLessThan(0.05, error);
    }

    /// <summary>Upsample (replaced by Resize at 10) cannot be raised: an opset-9 model holding one keeps its opset, and every skip says why.</summary>
    [TestMethod]
    public void An_opset9_upsample_blocks_the_raise_and_every_layer_says_so()
    {
        var g = new GraphProto { Name = "upsample" };
        g.Input.Add(FloatValue("x", 1, Channels, Side, Side));
        g.Output.Add(FloatValue("y", 1, Channels, 2 * Side, 2 * Side));
        g.Initializer.Add(TensorUtil.FromFloats("w1", RandomFloats(Channels * Channels * 9, 31, 0.3f), Channels, Channels, 3, 3));
        g.Initializer.Add(TensorUtil.FromFloats("scales", [1f, 1f, 2f, 2f], 4));
        g.Node.Add(Node("Conv", ["x", "w1"], ["c1"], "conv1", Conv3x3));
        g.Node.Add(Node("Upsample", ["c1", "scales"], ["y"], "up", new AttributeProto { Name = "mode", Type = AttributeProto.Types.AttributeType.String, S = Google.Protobuf.ByteString.CopyFromUtf8("nearest") }));
        ModelProto model = Model(g, 9);
        var options = new Int8StaticOptions { MinimumConvReduction = 0 };
        ModelProto q = model.Clone();
        Int8StaticSummary s = Int8StaticQuantizer.Apply(q, new CalibrationResult { Ranges = new Dictionary<string, TensorRange> { ["x"] = new(-3, 3), ["c1"] = new(-3, 3) } }, options, "up");
        Assert.IsEmpty(s.Quantized);
        Assert.HasCount(1, s.Skipped);
        StringAssert.Contains(s.Skipped[0].Reason, "Upsample");
        Assert.AreEqual(9L, q.OpsetImport.Single(o => o.Domain.Length == 0).Version);
    }
}
