using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Quantization.Ops;
using CompressOnBuild.Onnx;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Core.Tests.Passes;

[TestClass]
public sealed class LstmLoweringTests
{
    private const int Steps = 7;
    private const int Batch = 3;
    private const int InputSize = 24;
    private const int Hidden = 32;

    public TestContext TestContext { get; set; } = null!;

    /// <summary>Which optional LSTM inputs the test model has.</summary>
    public sealed record Shape(string Direction, bool Bias, bool SequenceLens, bool InitialStates, bool Peepholes = false);

    private static int Directions(string direction) => direction == "bidirectional" ? 2 : 1;

    /// <summary>x [T, N, I] -> LSTM(W, R[, B][, seq][, h0, c0][, P]) -> y [T, D, N, H], y_h [D, N, H] (initial states are graph inputs).</summary>
    private static ModelProto Lstm(Shape shape, string op = "LSTM", int seed = 3)
    {
        int d = Directions(shape.Direction);
        int gates = op switch { "LSTM" => 4, "GRU" => 3, _ => 1 };
        var g = new GraphProto { Name = op.ToLowerInvariant() };
        g.Input.Add(FloatValue("x", Steps, Batch, InputSize));
        g.Initializer.Add(TensorUtil.FromFloats("W", RandomFloats(d * gates * Hidden * InputSize, seed, 0.3f), d, gates * Hidden, InputSize));
        g.Initializer.Add(TensorUtil.FromFloats("R", RandomFloats(d * gates * Hidden * Hidden, seed + 1, 0.25f), d, gates * Hidden, Hidden));
        var inputs = new List<string> { "x", "W", "R", "", "", "", "", "" };
        if (shape.Bias)
        {
            g.Initializer.Add(TensorUtil.FromFloats("B", RandomFloats(d * 2 * gates * Hidden, seed + 2, 0.5f), d, 2 * gates * Hidden));
            inputs[3] = "B";
        }
        if (shape.SequenceLens)
        {
            ValueInfoProto lens = FloatValue("seq", Batch);
            lens.Type.TensorType.ElemType = (int)TensorProto.Types.DataType.Int32;
            g.Input.Add(lens);
            inputs[4] = "seq";
        }
        if (shape.InitialStates)
        {
            g.Input.Add(FloatValue("h0", d, Batch, Hidden));
            inputs[5] = "h0";
            if (op == "LSTM")
            {
                g.Input.Add(FloatValue("c0", d, Batch, Hidden));
                inputs[6] = "c0";
            }
        }
        if (shape.Peepholes)
        {
            g.Initializer.Add(TensorUtil.FromFloats("P", RandomFloats(d * 3 * Hidden, seed + 3, 0.2f), d, 3 * Hidden));
            inputs[7] = "P";
        }
        while (inputs[^1].Length == 0)
        {
            inputs.RemoveAt(inputs.Count - 1);
        }
        NodeProto node = Node(op, [.. inputs], ["y", "y_h"], "rnn", IntAttr("hidden_size", Hidden));
        node.Attribute.Add(new AttributeProto { Name = "direction", Type = AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8(shape.Direction) });
        g.Node.Add(node);
        g.Output.Add(FloatValue("y", Steps, d, Batch, Hidden));
        g.Output.Add(FloatValue("y_h", d, Batch, Hidden));
        return Model(g, opset: 14);
    }

    /// <summary>Runs the model on fixed inputs; returns y and y_h.</summary>
    private static (float[] Y, float[] YH) Run(ModelProto model, Shape shape, string? optimizedPath = null)
    {
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL, IntraOpNumThreads = 1 };
        if (optimizedPath != null)
        {
            options.OptimizedModelFilePath = optimizedPath;
        }
        using var session = new InferenceSession(model.ToByteArray(), options);
        int d = Directions(shape.Direction);
        var names = new List<string> { "x" };
        var values = new List<OrtValue> { OrtValue.CreateTensorValueFromMemory(RandomFloats(Steps * Batch * InputSize, 41, 1.5f), [Steps, Batch, InputSize]) };
        if (shape.SequenceLens)
        {
            names.Add("seq");
            values.Add(OrtValue.CreateTensorValueFromMemory(new[] { Steps, 4, 1 }, [Batch]));
        }
        if (shape.InitialStates)
        {
            names.Add("h0");
            values.Add(OrtValue.CreateTensorValueFromMemory(RandomFloats(d * Batch * Hidden, 42, 0.5f), [d, Batch, Hidden]));
            if (session.InputNames.Contains("c0"))
            {
                names.Add("c0");
                values.Add(OrtValue.CreateTensorValueFromMemory(RandomFloats(d * Batch * Hidden, 43, 0.5f), [d, Batch, Hidden]));
            }
        }
        try
        {
            using var run = new RunOptions();
            using IDisposableReadOnlyCollection<OrtValue> outputs = session.Run(run, names, values, ["y", "y_h"]);
            return (outputs[0].GetTensorDataAsSpan<float>().ToArray(), outputs[1].GetTensorDataAsSpan<float>().ToArray());
        }
        finally
        {
            values.ForEach(v => v.Dispose());
        }
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

    private static float MaxAbsDifference(float[] a, float[] b) => a.Zip(b, (x, y) => MathF.Abs(x - y)).Max();

    public static IEnumerable<object[]> Shapes =>
    [
        [new Shape("forward", Bias: true, SequenceLens: false, InitialStates: false), WeightEncoding.UInt8],
        [new Shape("bidirectional", Bias: true, SequenceLens: true, InitialStates: true), WeightEncoding.Int8PairBounded],
        [new Shape("forward", Bias: false, SequenceLens: false, InitialStates: false), WeightEncoding.Int8PairBounded],
        [new Shape("reverse", Bias: true, SequenceLens: true, InitialStates: true), WeightEncoding.UInt8],
        [new Shape("bidirectional", Bias: true, SequenceLens: true, InitialStates: true, Peepholes: true), WeightEncoding.UInt8],
        [new Shape("bidirectional", Bias: false, SequenceLens: false, InitialStates: false), WeightEncoding.Int8PairBounded],
        [new Shape("bidirectional", Bias: true, SequenceLens: false, InitialStates: true), WeightEncoding.Int8ReducedRange],
    ];

    [TestMethod]
    [DynamicData(nameof(Shapes))]
    public void Lstm_becomes_DynamicQuantizeLSTM_that_ORT_runs_close_to_float(Shape shape, WeightEncoding encoding)
    {
        ModelProto original = Lstm(shape);
        ModelProto quantized = original.Clone();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(quantized, new QuantizationOptions { WeightEncoding = encoding }, "lstm.onnx");

        QuantizedNode layer = summary.Quantized.Single();
        Assert.AreEqual(("rnn", "LSTM"), (layer.Node, layer.OpType));
        NodeProto node = quantized.Graph.Node.Single();
        Assert.AreEqual((LstmLowering.QuantizedOpType, "com.microsoft"), (node.OpType, node.Domain));
        Assert.AreEqual("rnn", node.Name);
        Assert.HasCount(12, node.Input);
        Assert.IsFalse(quantized.Graph.Initializer.Any(t => t.Name is "W" or "R"), "the float W and R are gone");
        TensorProto w = quantized.Graph.Initializer.Single(t => t.Name == node.Input[1]);
        CollectionAssert.AreEqual(new long[] { Directions(shape.Direction), InputSize, 4 * Hidden }, w.Dims.ToArray(), "W is stored transposed [D, I, 4H]");
        CollectionAssert.AreEqual(new long[] { Directions(shape.Direction), 4 * Hidden }, quantized.Graph.Initializer.Single(t => t.Name == node.Input[8]).Dims.ToArray());
        Assert.AreEqual(encoding == WeightEncoding.UInt8 ? (int)TensorProto.Types.DataType.Uint8 : (int)TensorProto.Types.DataType.Int8, w.DataType);
        long before = original.CalculateSize(), after = quantized.CalculateSize();
        Assert.IsLessThan(before * 0.35, after, $"{before} -> {after} bytes");
        Assert.AreEqual(after, summary.ModelBytesAfter);

        string optimized = Path.Combine(TestContext.TestRunResultsDirectory ?? Path.GetTempPath(), $"lstm-{Guid.NewGuid():N}.onnx");
        (float[] y, float[] yh) = Run(original, shape);
        (float[] qy, float[] qyh) = Run(quantized, shape, optimized);
        ModelProto seen = ModelProto.Parser.ParseFrom(File.ReadAllBytes(optimized));
        File.Delete(optimized);
        Assert.AreEqual(LstmLowering.QuantizedOpType, seen.Graph.Node.Single().OpType, "ORT runs the quantized LSTM kernel");

        double cosine = Math.Min(Cosine(y, qy), Cosine(yh, qyh));
        float maxDiff = Math.Max(MaxAbsDifference(y, qy), MaxAbsDifference(yh, qyh));
        TestContext.WriteLine($"{shape} {encoding}: {before} -> {after} bytes, cosine {cosine:F6}, max |diff| {maxDiff:G4}");
        double tolerance = encoding == WeightEncoding.Int8ReducedRange ? 0.05 : 0.03;
        Assert.IsGreaterThanOrEqualTo(0.998, cosine, $"cosine {cosine}");
        Assert.IsLessThan(tolerance, maxDiff, $"max |y - y_q| {maxDiff}");
        Assert.IsGreaterThan(0f, maxDiff, "the weights really were quantized");
    }

    [TestMethod]
    [DataRow("GRU")]
    [DataRow("RNN")]
    public void Gru_and_Rnn_stay_float_with_the_reason(string op)
    {
        ModelProto model = Lstm(new Shape("forward", Bias: true, SequenceLens: false, InitialStates: false), op);
        ModelProto copy = model.Clone();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(copy, QuantizationOptions.Default, "rnn.onnx");
        Assert.IsTrue(summary.NothingToQuantize);
        SkippedNode skip = summary.Skipped.Single();
        Assert.AreEqual(op, skip.OpType);
        StringAssert.Contains(skip.Reason, $"no quantized {op} kernel");
        Assert.AreEqual(model, copy, "the model is unchanged");
    }

    [TestMethod]
    [DataRow("LSTM", "bidirectional")]
    [DataRow("GRU", "forward")]
    [DataRow("RNN", "reverse")]
    public void Float16_stores_recurrent_weights_as_float16_and_the_node_computes_in_float32(string op, string direction)
    {
        var shape = new Shape(direction, Bias: true, SequenceLens: false, InitialStates: true, Peepholes: op == "LSTM");
        ModelProto original = Lstm(shape, op);
        ModelProto half = original.Clone();
        Float16Summary s = Float16Converter.Apply(half, new Float16Options(), "rnn.onnx");

        SkippedNode kept = s.KeptFloat32.Single();
        Assert.AreEqual(("rnn", op), (kept.Node, kept.OpType));
        StringAssert.Contains(kept.Reason, "stored as float16");
        int weights = op == "LSTM" ? 4 : 3;
        Assert.AreEqual(weights, s.ConvertedTensors);
        Assert.IsTrue(half.Graph.Initializer.All(t => t.DataType == (int)TensorProto.Types.DataType.Float16));
        NodeProto node = half.Graph.Node.Single(n => n.OpType == op);
        Assert.AreEqual("x", node.Input[0], "the activation input is not cast");
        Assert.AreEqual(weights, half.Graph.Node.Count(n => n.OpType == "Cast"), "one Cast back to float32 per weight");
        long before = original.CalculateSize(), after = half.CalculateSize();
        Assert.IsLessThan(before * 0.55, after, $"{before} -> {after} bytes");

        (float[] y, float[] yh) = Run(original, shape);
        (float[] hy, float[] hyh) = Run(half, shape);
        float maxDiff = Math.Max(MaxAbsDifference(y, hy), MaxAbsDifference(yh, hyh));
        TestContext.WriteLine($"{op} {direction} Float16: {before} -> {after} bytes, max |diff| {maxDiff:G4}");
        Assert.IsLessThan(0.01f, maxDiff);
    }

    [TestMethod]
    public void Int4_lists_the_lstm_as_float_with_the_reason()
    {
        ModelProto model = Lstm(new Shape("forward", Bias: true, SequenceLens: false, InitialStates: false));
        Int4Summary s = Int4WeightQuantizer.Apply(model, new Int4Options(), "lstm.onnx");
        Assert.IsTrue(s.NothingToQuantize);
        SkippedNode skip = s.Skipped.Single();
        Assert.AreEqual(("rnn", "LSTM"), (skip.Node, skip.OpType));
        StringAssert.Contains(skip.Reason, "no 4-bit LSTM kernel");
        Assert.AreEqual("LSTM", model.Graph.Node.Single().OpType);
    }

    [TestMethod]
    public void Int8Static_quantizes_lstm_weights_with_DynamicQuantizeLSTM()
    {
        var shape = new Shape("bidirectional", Bias: true, SequenceLens: false, InitialStates: true);
        ModelProto original = Lstm(shape);
        ModelProto quantized = original.Clone();
        Int8StaticSummary s = Int8StaticQuantizer.Apply(quantized, new CalibrationResult { Ranges = new Dictionary<string, TensorRange>() }, new Int8StaticOptions(), "lstm.onnx");
        Assert.AreEqual("LSTM", s.Quantized.Single().OpType);
        Assert.AreEqual(LstmLowering.QuantizedOpType, quantized.Graph.Node.Single().OpType);
        Assert.IsLessThan(original.CalculateSize() * 0.35, s.ModelBytesAfter);
        (float[] y, _) = Run(original, shape);
        (float[] qy, _) = Run(quantized, shape);
        Assert.IsGreaterThanOrEqualTo(0.998, Cosine(y, qy));
        Assert.IsLessThan(0.05f, MaxAbsDifference(y, qy));
    }

    [TestMethod]
    public void Excluded_lstm_and_batch_major_layout_stay_float()
    {
        var shape = new Shape("forward", Bias: true, SequenceLens: false, InitialStates: false);
        ModelProto excluded = Lstm(shape);
        QuantizationSummary s = Int8DynamicQuantizer.Apply(excluded, new QuantizationOptions { ExcludedNodes = ["rnn"] }, "lstm.onnx");
        Assert.AreEqual("excluded by the options", s.Skipped.Single().Reason);
        Assert.AreEqual("LSTM", excluded.Graph.Node.Single().OpType);

        ModelProto batchMajor = Lstm(shape);
        batchMajor.Graph.Node[0].Attribute.Add(IntAttr("layout", 1));
        s = Int8DynamicQuantizer.Apply(batchMajor, QuantizationOptions.Default, "lstm.onnx");
        StringAssert.Contains(s.Skipped.Single().Reason, "layout=1");
        Assert.AreEqual("LSTM", batchMajor.Graph.Node.Single().OpType);
    }

    [TestMethod]
    public void Weight_shared_with_another_node_keeps_the_lstm_float()
    {
        ModelProto model = Lstm(new Shape("forward", Bias: true, SequenceLens: false, InitialStates: false));
        model.Graph.Node.Add(Node("Identity", ["R"], ["r_copy"], "leak"));
        model.Graph.Output.Add(FloatValue("r_copy", 1, 4 * Hidden, Hidden));
        QuantizationSummary s = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "lstm.onnx");
        Assert.IsTrue(s.NothingToQuantize);
        StringAssert.Contains(s.Skipped.Single().Reason, "'R' is shared with Identity 'leak'");
        Assert.IsTrue(model.Graph.Initializer.Any(t => t.Name == "W"));
    }

    [TestMethod]
    public void Non_finite_lstm_weight_is_CMPR0202_and_leaves_the_model_unchanged()
    {
        ModelProto model = Lstm(new Shape("forward", Bias: true, SequenceLens: false, InitialStates: false));
        float[] r = TensorUtil.ToFloatArray(model.Graph.Initializer[1]);
        r[5] = float.NaN;
        model.Graph.Initializer[1] = TensorUtil.FromFloats("R", r, 1, 4 * Hidden, Hidden);
        ModelProto copy = model.Clone();
        CompressException e = Assert.ThrowsExactly<CompressException>(() => Int8DynamicQuantizer.Apply(copy, QuantizationOptions.Default, "lstm.onnx"));
        Assert.AreEqual(DiagnosticCodes.NonFiniteWeights, e.Code);
        Assert.AreEqual(model, copy);
    }
}
