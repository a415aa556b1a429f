using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using static CompressOnBuild.Tests.TinyModels;
using DataType = CompressOnBuild.Onnx.TensorProto.Types.DataType;

namespace CompressOnBuild.Validation.Tests;

/// <summary>
/// Where Int8StaticQuantizer puts the Q/DQ pairs around a Conv followed by an activation, a BatchNormalization, a
/// Mul or a residual Add, judged by the graph ONNX Runtime runs after its optimizer: every Conv must become
/// QLinearConv (no DequantizeLinear feeding float Conv/FusedConv, the CMPR0207 check), and the outputs must stay
/// close to the float model's.
/// </summary>
[TestClass]
public sealed class Int8StaticPlacementTests
{
    private const int Channels = 8;
    private const int Side = 6;

    public TestContext TestContext { get; set; } = null!;

    /// <summary>
    /// x[1,8,6,6] -> Conv a (8x8x3x3, pads 1, bias) -> <paramref name="after"/> -> Conv b (8x8x3x3, pads 1) -> y. The
    /// "after" part reads tensor "a" and writes "h".
    /// </summary>
    private static ModelProto TwoConvs(string after, long opset)
    {
        var g = new GraphProto { Name = "two-convs-" + after };
        g.Input.Add(FloatValue("x", 1, Channels, Side, Side));
        g.Output.Add(FloatValue("y", 1, Channels, Side, Side));
        g.Initializer.Add(TensorUtil.FromFloats("wa", RandomFloats(Channels * Channels * 9, 21, 0.3f), Channels, Channels, 3, 3));
        g.Initializer.Add(TensorUtil.FromFloats("ba", RandomFloats(Channels, 22, 0.2f), Channels));
        g.Initializer.Add(TensorUtil.FromFloats("wb", RandomFloats(Channels * Channels * 9, 23, 0.3f), Channels, Channels, 3, 3));
        AttributeProto[] conv = [IntsAttr("pads", 1, 1, 1, 1), IntsAttr("kernel_shape", 3, 3)];
        g.Node.Add(Node("Conv", ["x", "wa", "ba"], ["a"], "conv_a", conv));
        switch (after)
        {
            case "Relu" or "Sigmoid" or "HardSwish":
                g.Node.Add(Node(after, ["a"], ["h"], "act"));
                break;
            case "LeakyRelu":
                g.Node.Add(Node(after, ["a"], ["h"], "act", FloatAttr("alpha", 0.1f)));
                break;
            case "HardSigmoid":
                g.Node.Add(Node(after, ["a"], ["h"], "act", FloatAttr("alpha", 0.2f), FloatAttr("beta", 0.5f)));
                break;
            case "Clip":
                if (opset < 11)
                {
                    g.Node.Add(Node("Clip", ["a"], ["h"], "act", FloatAttr("min", 0f), FloatAttr("max", 1f)));
                }
                else
                {
                    g.Initializer.Add(TensorUtil.FromFloats("lo", [0f]));
                    g.Initializer.Add(TensorUtil.FromFloats("hi", [1f]));
                    g.Node.Add(Node("Clip", ["a", "lo", "hi"], ["h"], "act"));
                }
                break;
            case "Mul":
                // Swish: a * sigmoid(a).
                g.Node.Add(Node("Sigmoid", ["a"], ["gate"], "gate"));
                g.Node.Add(Node("Mul", ["a", "gate"], ["h"], "mul"));
                break;
            case "Add":
                // Residual: relu(a + x).
                g.Node.Add(Node("Add", ["a", "x"], ["sum"], "residual"));
                g.Node.Add(Node("Relu", ["sum"], ["h"], "act"));
                break;
            case "BatchNormalization":
                g.Initializer.Add(TensorUtil.FromFloats("gamma", RandomFloats(Channels, 24, 0.5f).Select(v => 1f + v).ToArray(), Channels));
                g.Initializer.Add(TensorUtil.FromFloats("beta", RandomFloats(Channels, 25, 0.3f), Channels));
                g.Initializer.Add(TensorUtil.FromFloats("mean", RandomFloats(Channels, 26, 0.2f), Channels));
                g.Initializer.Add(TensorUtil.FromFloats("var", RandomFloats(Channels, 27, 0.5f).Select(v => 0.5f + MathF.Abs(v)).ToArray(), Channels));
                g.Node.Add(opset < 9
                    ? Node("BatchNormalization", ["a", "gamma", "beta", "mean", "var"], ["bn"], "bn", FloatAttr("epsilon", 1e-5f), IntAttr("spatial", 1))
                    : Node("BatchNormalization", ["a", "gamma", "beta", "mean", "var"], ["bn"], "bn", FloatAttr("epsilon", 1e-5f)));
                g.Node.Add(Node("Relu", ["bn"], ["h"], "act"));
                break;
            default:
                throw new ArgumentException(after);
        }
        g.Node.Add(Node("Conv", ["h", "wb"], ["y"], "conv_b", conv));
        return Model(g, opset);
    }

    private static float[] Input(int seed) => RandomFloats(Channels * Side * Side, seed);

    /// <summary>Ranges from running the float model on the test inputs (a stand-in for the Calibrator, which needs files).</summary>
    internal static CalibrationResult MeasureRanges(ModelProto model, IReadOnlyList<string> tensors, Func<int, float[]> input, long[] shape)
    {
        ModelProto m = model.Clone();
        foreach (string t in tensors.Where(t => m.Graph.Output.All(o => o.Name != t)))
        {
            m.Graph.Output.Add(new ValueInfoProto { Name = t, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)DataType.Float } } });
        }
        using var s = new InferenceSession(m.ToByteArray(), new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_DISABLE_ALL });
        var ranges = new Dictionary<string, TensorRange>();
        for (int i = 0; i < 16; i++)
        {
            using OrtValue v = OrtValue.CreateTensorValueFromMemory(input(100 + i), shape);
            using var r = s.Run(new RunOptions(), [m.Graph.Input[0].Name], [v], [.. tensors]);
            for (int t = 0; t < tensors.Count; t++)
            {
                ReadOnlySpan<float> d = r[t].GetTensorDataAsSpan<float>();
                TensorRange old = ranges.GetValueOrDefault(tensors[t], new TensorRange(float.MaxValue, float.MinValue));
                ranges[tensors[t]] = new TensorRange(Math.Min(old.Min, System.Numerics.Tensors.TensorPrimitives.Min(d)), Math.Max(old.Max, System.Numerics.Tensors.TensorPrimitives.Max(d)));
            }
        }
        return new CalibrationResult { Ranges = ranges, Samples = 16 };
    }

    /// <summary>Relative L2 error of <paramref name="quantized"/> against <paramref name="original"/> over 8 held-out inputs.</summary>
    internal static double RelativeError(ModelProto original, ModelProto quantized, Func<int, float[]> input, long[] shape)
    {
        using var sa = new InferenceSession(original.ToByteArray());
        using var sb = new InferenceSession(quantized.ToByteArray());
        var expected = new List<float>();
        var got = new List<float>();
        string x = original.Graph.Input[0].Name, y = original.Graph.Output[0].Name;
        for (int i = 0; i < 8; i++)
        {
            using OrtValue v = OrtValue.CreateTensorValueFromMemory(input(500 + i), shape);
            using var ra = sa.Run(new RunOptions(), [x], [v], [y]);
            using var rb = sb.Run(new RunOptions(), [x], [v], [y]);
            expected.AddRange(ra[0].GetTensorDataAsSpan<float>().ToArray());
            got.AddRange(rb[0].GetTensorDataAsSpan<float>().ToArray());
        }
        return Kernels.ErrorMetrics.Compare([.. expected], [.. got]).RelativeL2;
    }

    /// <summary>The operators of the graph ORT runs, and the float compute nodes that still read a DequantizeLinear (CMPR0207's check).</summary>
    internal static (List<string> Ops, List<string> Fallbacks) Optimized(ModelProto model, string tag, GraphOptimizationLevel level)
    {
        string path = Path.Combine(Path.GetTempPath(), $"cob-placement-{tag}-{Environment.ProcessId}.onnx");
        File.WriteAllBytes(path, model.ToByteArray());
        try
        {
            ModelProto optimized = OptimizedGraph.Optimize(path, level);
            return ([.. optimized.Graph.Node.Select(n => n.OpType)], OptimizedGraph.FloatFallbacks(optimized));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [TestMethod]
    [DataRow("Relu", 13L)]
    [DataRow("LeakyRelu", 13L)]
    [DataRow("Clip", 13L)]
    [DataRow("Clip", 9L)]
    [DataRow("HardSigmoid", 13L)]
    [DataRow("HardSwish", 14L)]
    [DataRow("Sigmoid", 13L)]
    [DataRow("Mul", 13L)]
    [DataRow("Add", 13L)]
    [DataRow("BatchNormalization", 8L)]
    [DataRow("BatchNormalization", 13L)]
    public void Conv_followed_by_it_runs_as_QLinearConv_after_ort_optimizes(string after, long opset)
    {
        ModelProto model = TwoConvs(after, opset);
        long[] shape = [1, Channels, Side, Side];
        var options = new Int8StaticOptions { MinimumConvReduction = 0 };
        IReadOnlyList<string> tensors = Int8StaticQuantizer.TensorsToCalibrate(model, options);
        CalibrationResult ranges = MeasureRanges(model, tensors, Input, shape);
        ModelProto q = model.Clone();
        Int8StaticSummary s = Int8StaticQuantizer.Apply(q, ranges, options, after);
        ModelChecker.Validate(q, after);
        TestContext.WriteLine($"{after} opset {opset}: {string.Join(" ", q.Graph.Node.Select(n => n.OpType))}; skipped: {string.Join("; ", s.Skipped.Select(k => k.Reason))}");
        Assert.HasCount(2, s.Quantized, "both Convs are quantized");
        Assert.IsTrue(s.PerChannel);
        if (after == "BatchNormalization")
        {
            Assert.IsFalse(q.Graph.Node.Any(n => n.OpType == "BatchNormalization"), "the BatchNormalization is folded into the Conv");
        }
        double error = RelativeError(model, q, Input, shape);
        TestContext.WriteLine($"relative L2 {error:G3}");
        Assert.IsLessThan(0.05, error);
        foreach (GraphOptimizationLevel level in new[] { GraphOptimizationLevel.ORT_ENABLE_EXTENDED, GraphOptimizationLevel.ORT_ENABLE_ALL })
        {
            (List<string> ops, List<string> fallbacks) = Optimized(q, after + opset, level);
            TestContext.WriteLine($"ORT {level}: {string.Join(" ", ops)}");
            Assert.IsEmpty(fallbacks, $"{level}: float compute on dequantized inputs: {string.Join(", ", fallbacks)}");
            Assert.AreEqual(2, ops.Count(o => o == "QLinearConv"), string.Join(" ", ops));
        }
    }

    /// <summary>
    /// The default pair-bounded int8 weights: in the K order QLinearConv reads ([kernel position, input channel],
    /// channel fastest) and within each kernel position, no same-sign pair holds more than 128 levels (what keeps
    /// ORT's vpmaddubsw kernels from saturating on CPUs without VNNI), at least one channel uses codes beyond the old
    /// 7-bit range, and the outputs are closer to float than with 7-bit (Int8ReducedRange) weights.
    /// </summary>
    [TestMethod]
    public void Pair_bounded_conv_weights_keep_every_kernel_pair_within_128_levels_and_beat_7_bit()
    {
        // 3 input channels (odd): the GEMM K pairs cross kernel positions and differ from the per-position channel pairs.
        const int inputs = 3;
        var g = new GraphProto { Name = "pairs" };
        g.Input.Add(FloatValue("x", 1, inputs, Side, Side));
        g.Output.Add(FloatValue("y", 1, Channels, Side, Side));
        float[] w = RandomFloats(Channels * inputs * 9, 41, 0.5f);
        g.Initializer.Add(TensorUtil.FromFloats("w", w, Channels, inputs, 3, 3));
        g.Node.Add(Node("Conv", ["x", "w"], ["a"], "conv", IntsAttr("pads", 1, 1, 1, 1), IntsAttr("kernel_shape", 3, 3)));
        g.Node.Add(Node("Relu", ["a"], ["y"], "relu"));
        ModelProto model = Model(g, 13);
        long[] shape = [1, inputs, Side, Side];
        float[] Input3(int seed) => RandomFloats(inputs * Side * Side, seed);
        double Quantized(WeightEncoding encoding, out sbyte[] codes)
        {
            var options = new Int8StaticOptions { MinimumConvReduction = 0, WeightEncoding = encoding };
            CalibrationResult ranges = MeasureRanges(model, Int8StaticQuantizer.TensorsToCalibrate(model, options), Input3, shape);
            ModelProto q = model.Clone();
            Int8StaticQuantizer.Apply(q, ranges, options, "pairs");
            NodeProto conv = q.Graph.Node.Single(n => n.OpType == "Conv");
            NodeProto dq = q.Graph.Node.Single(n => n.Output[0] == conv.Input[1]);
            codes = [.. TensorUtil.ToRawBytes(q.Graph.Initializer.Single(t => t.Name == dq.Input[0])).Select(b => (sbyte)b)];
            return RelativeError(model, q, Input3, shape);
        }
        double pairError = Quantized(WeightEncoding.Int8PairBounded, out sbyte[] codes);
        Assert.AreEqual(WeightEncoding.Int8PairBounded, Int8StaticOptions.Default.WeightEncoding, "the default");
        int k = inputs * 9;
        for (int oc = 0; oc < Channels; oc++)
        {
            int At(int r) => oc * k + r % inputs * 9 + r / inputs; // K index r = kernel position x inputs + input channel
            void Check(int a, int b)
            {
                if (Math.Sign(codes[a]) == Math.Sign(codes[b]) && codes[a] != 0)
                {
                    Assert.IsLessThanOrEqualTo(128, Math.Abs(codes[a]) + Math.Abs(codes[b]), $"channel {oc}: codes {codes[a]} and {codes[b]}");
                }
            }
            for (int r = 0; r + 1 < k; r += 2)
            {
                Check(At(r), At(r + 1));
            }
            for (int p = 0; p < 9; p++)
            {
                Check(oc * k + p, oc * k + 9 + p); // input channels 0 and 1 at one kernel position
            }
        }
        Assert.IsTrue(codes.Any(c => Math.Abs((int)c) > 63), "codes use more than the 7-bit range");
        double sevenBitError = Quantized(WeightEncoding.Int8ReducedRange, out _);
        TestContext.WriteLine($"relative L2: pair-bounded {pairError:G3}, 7-bit {sevenBitError:G3}");
        Assert.IsLessThan(sevenBitError, pairError);
    }

    [TestMethod]
    public void A_relu6_clip_is_folded_into_the_quantize_after_it()
    {
        // Clip(0, 1) saturates on these inputs, the case where float rounding of scale x 255 would overshoot max.
        ModelProto model = TwoConvs("Clip", 13);
        long[] shape = [1, Channels, Side, Side];
        var options = new Int8StaticOptions { MinimumConvReduction = 0 };
        CalibrationResult ranges = MeasureRanges(model, Int8StaticQuantizer.TensorsToCalibrate(model, options), Input, shape);
        Assert.AreEqual(1f, ranges.Ranges["h"].Max, "the Clip saturates in calibration");
        ModelProto q = model.Clone();
        Int8StaticQuantizer.Apply(q, ranges, options, "clip");
        NodeProto quantize = q.Graph.Node.Single(n => n.OpType == "QuantizeLinear" && n.Input[0] == "h");
        float scale = TensorUtil.ToFloatArray(q.Graph.Initializer.Single(t => t.Name == quantize.Input[1])).Single();
        Assert.IsLessThanOrEqualTo(1f, scale * 255f, "the quantized range stays inside the Clip's");
        (List<string> ops, _) = Optimized(q, "clip-fold", GraphOptimizationLevel.ORT_ENABLE_EXTENDED);
        Assert.DoesNotContain("Clip", ops, string.Join(" ", ops));
    }
}
