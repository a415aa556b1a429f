using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using static CompressOnBuild.Tests.TinyModels;
using DataType = CompressOnBuild.Onnx.TensorProto.Types.DataType;

namespace CompressOnBuild.Core.Tests.Quantization;

/// <summary>Models whose weights are float16: the int8/int4 passes quantize them, Float16 copies them (issue 14).</summary>
[TestClass]
public sealed class Float16InputTests
{
    private const int Batch = 5;
    private const int In = 64;
    private const int Hidden = 48;
    private const int Out = 32;
    private const int Vocab = 100;

    public TestContext TestContext { get; set; } = null!;

    private static TensorProto Half(string name, float[] values, params long[] dims) => CompressOnBuild.Tests.TinyModels.Float16(name, values, dims);

    private static ValueInfoProto Value(string name, DataType type, params object[] dims)
    {
        ValueInfoProto v = FloatValue(name, dims);
        v.Type.TensorType.ElemType = (int)type;
        return v;
    }

    /// <summary>
    /// x [N, 64], ids [N] -> MatMul(W1 [64, 48]) + b1 + Gather(table [100, 48], ids) -> Mul(s [48]) -> Gemm(W2 [32, 48]^T, b2)
    /// -> y [N, 32], every weight float16 and the compute float16. <paramref name="halfIo"/>: x and y are float16 too;
    /// else they are float32 with Casts at the edges (an exporter's keep_io_types).
    /// </summary>
    private static ModelProto Model16(bool halfIo)
    {
        var g = new GraphProto { Name = "fp16" };
        g.Input.Add(Value("x", halfIo ? DataType.Float16 : DataType.Float, "N", In));
        g.Input.Add(Value("ids", DataType.Int64, "N"));
        g.Initializer.Add(Half("W1", RandomFloats(In * Hidden, 1, 0.3f), In, Hidden));
        g.Initializer.Add(Half("b1", RandomFloats(Hidden, 2, 0.2f), Hidden));
        g.Initializer.Add(Half("table", RandomFloats(Vocab * Hidden, 3, 0.5f), Vocab, Hidden));
        g.Initializer.Add(Half("s", RandomFloats(Hidden, 4, 1f).Select(v => 1f + 0.5f * v).ToArray(), Hidden));
        g.Initializer.Add(Half("W2", RandomFloats(Out * Hidden, 5, 0.3f), Out, Hidden));
        g.Initializer.Add(Half("b2", RandomFloats(Out, 6, 0.2f), Out));
        string x = "x";
        if (!halfIo)
        {
            g.Node.Add(Node("Cast", ["x"], ["x16"], "cast_in", IntAttr("to", (long)DataType.Float16)));
            x = "x16";
        }
        g.Node.Add(Node("MatMul", [x, "W1"], ["m"], "fc1"));
        g.Node.Add(Node("Add", ["m", "b1"], ["a"], "bias1"));
        g.Node.Add(Node("Gather", ["table", "ids"], ["e"], "embed"));
        g.Node.Add(Node("Add", ["a", "e"], ["h"], "sum"));
        g.Node.Add(Node("Mul", ["h", "s"], ["hs"], "scale"));
        g.Node.Add(Node("Gemm", ["hs", "W2", "b2"], [halfIo ? "y" : "y16"], "fc2", IntAttr("transB", 1)));
        if (!halfIo)
        {
            g.Node.Add(Node("Cast", ["y16"], ["y"], "cast_out", IntAttr("to", (long)DataType.Float)));
        }
        g.Output.Add(Value("y", halfIo ? DataType.Float16 : DataType.Float, "N", Out));
        return Model(g, opset: 13);
    }

    private static readonly float[] X = RandomFloats(Batch * In, 21, 1f);
    private static readonly long[] Ids = [0, 7, 99, 42, 7];

    /// <summary>Runs the model; returns y as float32 and, when asked, the listed tensors (added as float16, or <paramref name="floatOutputs"/> float32, outputs) as float32.</summary>
    private static Dictionary<string, float[]> Run(ModelProto model, string? optimizedPath = null, bool floatOutputs = false, params string[] extra)
    {
        ModelProto m = model.Clone();
        foreach (string t in extra.Where(t => m.Graph.Output.All(o => o.Name != t)))
        {
            ValueInfoProto v = Value(t, floatOutputs ? DataType.Float : DataType.Float16);
            v.Type.TensorType.Shape = null; // shape left to ORT
            m.Graph.Output.Add(v);
        }
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL, IntraOpNumThreads = 1 };
        if (optimizedPath != null)
        {
            options.OptimizedModelFilePath = optimizedPath;
        }
        using var session = new InferenceSession(m.ToByteArray(), options);
        bool halfIn = model.Graph.Input[0].Type.TensorType.ElemType == (int)DataType.Float16;
        using OrtValue x = halfIn
            ? OrtValue.CreateTensorValueFromMemory(X.Select(v => (Float16)v).ToArray(), [Batch, In])
            : OrtValue.CreateTensorValueFromMemory(X, [Batch, In]);
        using OrtValue ids = OrtValue.CreateTensorValueFromMemory(Ids.ToArray(), [Batch]);
        string[] names = ["y", .. extra.Where(t => t != "y")];
        using var run = new RunOptions();
        using IDisposableReadOnlyCollection<OrtValue> outputs = session.Run(run, ["x", "ids"], [x, ids], names);
        var result = new Dictionary<string, float[]>(StringComparer.Ordinal);
        for (int i = 0; i < names.Length; i++)
        {
            result[names[i]] = outputs[i].GetTensorTypeAndShape().ElementDataType == TensorElementType.Float16
                ? outputs[i].GetTensorDataAsSpan<Float16>().ToArray().Select(v => (float)v).ToArray()
                : outputs[i].GetTensorDataAsSpan<float>().ToArray();
        }
        return result;
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
    [DataRow("Int8Dynamic", true)]
    [DataRow("Int8Dynamic", false)]
    [DataRow("Int8Static", true)]
    [DataRow("Int8Static", false)]
    [DataRow("Int4Weights", true)]
    [DataRow("Int4Weights", false)]
    public void Float16_weights_are_quantized_and_the_model_keeps_its_inputs_and_outputs(string scheme, bool halfIo)
    {
        ModelProto original = Model16(halfIo);
        ModelProto model = original.Clone();
        (IReadOnlyList<QuantizedNode> quantized, IReadOnlyList<SkippedNode> skipped, string? note, string[] kernels) = scheme switch
        {
            "Int8Dynamic" => Summarize(Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "fp16.onnx")),
            "Int4Weights" => Summarize(Int4WeightQuantizer.Apply(model, new Int4Options { BlockSize = 16 }, "fp16.onnx")),
            _ => Summarize(Int8StaticQuantizer.Apply(model, Calibrate(original), Int8StaticOptions.Default, "fp16.onnx")),
        };
        string reasons = string.Join("; ", skipped.Select(k => $"{k.Node}: {k.Reason}"));
        string[] expected = scheme == "Int8Static" ? ["Gemm", "MatMul"] : ["Gather", "Gemm", "MatMul"];
        CollectionAssert.AreEquivalent(expected, quantized.Select(q => q.OpType).ToArray(), reasons);
        Assert.IsNotNull(note);
        StringAssert.Contains(note, "float16");
        ModelChecker.Validate(model, "fp16.onnx");
        Assert.AreEqual(original.Graph.Input[0].Type.TensorType.ElemType, model.Graph.Input[0].Type.TensorType.ElemType, "the input keeps its type");
        Assert.AreEqual(original.Graph.Output[0].Type.TensorType.ElemType, model.Graph.Output[0].Type.TensorType.ElemType, "the output keeps its type");
        Assert.IsTrue(model.Graph.Initializer.Any(t => t.DataType == (int)DataType.Float16 && t.Dims.SequenceEqual([Hidden])),
            "the Mul's scale vector stays float16 in the file");
        long before = original.CalculateSize(), after = model.CalculateSize();
        // Int8Static leaves the Gather table (half of the weights) float16.
        Assert.IsLessThan(before * scheme switch { "Int4Weights" => 0.6, "Int8Dynamic" => 0.75, _ => 0.9 }, after, $"{before} -> {after} bytes");

        string optimized = Path.Combine(TestContext.TestRunResultsDirectory ?? Path.GetTempPath(), $"fp16-{scheme}-{Guid.NewGuid():N}.onnx");
        float[] y = Run(original)["y"];
        float[] q = Run(model, optimized)["y"];
        ModelProto seen = ModelProto.Parser.ParseFrom(File.ReadAllBytes(optimized));
        File.Delete(optimized);
        string ops = string.Join(", ", seen.Graph.Node.Select(n => n.OpType));
        Assert.IsTrue(kernels.Any(k => seen.Graph.Node.Any(n => n.OpType == k)), $"ORT runs the quantized kernels: {ops}");
        double cosine = Cosine(y, q);
        float maxDiff = y.Zip(q, (a, b) => MathF.Abs(a - b)).Max();
        TestContext.WriteLine($"{scheme} halfIo={halfIo}: {before} -> {after} bytes, cosine {cosine:F6}, max |diff| {maxDiff:G4}; ORT: {ops}");
        Assert.IsGreaterThanOrEqualTo(scheme == "Int4Weights" ? 0.995 : 0.999, cosine);
    }

    private static (IReadOnlyList<QuantizedNode>, IReadOnlyList<SkippedNode>, string?, string[]) Summarize(QuantizationSummary s) =>
        (s.Quantized, s.Skipped, s.Float16Weights, ["DynamicQuantizeMatMul", "MatMulIntegerToFloat"]);

    private static (IReadOnlyList<QuantizedNode>, IReadOnlyList<SkippedNode>, string?, string[]) Summarize(Int4Summary s) =>
        (s.Quantized, s.Skipped, s.Float16Weights, ["MatMulNBits"]);

    private static (IReadOnlyList<QuantizedNode>, IReadOnlyList<SkippedNode>, string?, string[]) Summarize(Int8StaticSummary s) =>
        (s.Quantized, s.Skipped, s.Float16Weights, ["QLinearMatMul", "QGemm", "MatMulIntegerToFloat"]);

    /// <summary>Min/max of every tensor the static pass asks for, measured on its calibration model (as the CLI's calibrator does).</summary>
    private static CalibrationResult Calibrate(ModelProto original)
    {
        IReadOnlyList<string> tensors = Int8StaticQuantizer.TensorsToCalibrate(original, Int8StaticOptions.Default);
        Assert.IsNotEmpty(tensors, "a float16 model has tensors to calibrate");
        ModelProto calibration = Int8StaticQuantizer.CalibrationModel(original);
        Assert.AreNotSame(original, calibration);
        Assert.IsFalse(calibration.Graph.Initializer.Any(t => t.DataType == (int)DataType.Float16), "the calibration model computes in float32");
        var inputs = new HashSet<string>(original.Graph.Input.Select(i => i.Name));
        Dictionary<string, float[]> values = Run(calibration, null, floatOutputs: true, [.. tensors.Where(t => !inputs.Contains(t))]);
        var ranges = new Dictionary<string, TensorRange>(StringComparer.Ordinal);
        foreach (string t in tensors)
        {
            float[] v = t == "x" ? X : values[t];
            ranges[t] = new TensorRange(v.Min(), v.Max());
        }
        return new CalibrationResult { Ranges = ranges, Samples = 1 };
    }

    [TestMethod]
    public void Float16_weights_inside_If_branches_are_quantized_and_the_branches_stay_type_correct()
    {
        var g = new GraphProto { Name = "fp16-if" };
        g.Input.Add(Value("x", DataType.Float16, "N", In));
        g.Input.Add(Value("cond", DataType.Bool));
        GraphProto Branch(string name, int seed)
        {
            var b = new GraphProto { Name = name };
            b.Initializer.Add(Half("W_" + name, RandomFloats(In * Out, seed, 0.3f), In, Out));
            b.Node.Add(Node("MatMul", ["x", "W_" + name], ["y_" + name], "mm_" + name));
            ValueInfoProto o = Value("y_" + name, DataType.Float16);
            o.Type.TensorType.Shape = null;
            b.Output.Add(o);
            return b;
        }
        NodeProto iff = Node("If", ["cond"], ["y"], "branch");
        iff.Attribute.Add(new AttributeProto { Name = "then_branch", Type = AttributeProto.Types.AttributeType.Graph, G = Branch("then", 31) });
        iff.Attribute.Add(new AttributeProto { Name = "else_branch", Type = AttributeProto.Types.AttributeType.Graph, G = Branch("else", 32) });
        g.Node.Add(iff);
        g.Output.Add(Value("y", DataType.Float16, "N", Out));
        ModelProto original = Model(g, opset: 13);
        ModelProto model = original.Clone();
        QuantizationSummary s = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "fp16-if.onnx");
        Assert.HasCount(2, s.Quantized, string.Join("; ", s.Skipped.Select(k => $"{k.Node}: {k.Reason}")));
        StringAssert.Contains(s.Float16Weights, "float16");
        ModelChecker.Validate(model, "fp16-if.onnx");
        Assert.IsLessThan(original.CalculateSize() * 0.75, model.CalculateSize());
        foreach (bool branch in new[] { true, false })
        {
            float[] expected = RunIf(original, branch), actual = RunIf(model, branch);
            double cosine = Cosine(expected, actual);
            TestContext.WriteLine($"If {branch}: cosine {cosine:F6}");
            Assert.IsGreaterThanOrEqualTo(0.999, cosine, $"branch {branch}");
        }
    }

    private static float[] RunIf(ModelProto model, bool branch)
    {
        using var session = new InferenceSession(model.ToByteArray());
        using OrtValue x = OrtValue.CreateTensorValueFromMemory(X.Select(v => (Float16)v).ToArray(), [Batch, In]);
        using OrtValue cond = OrtValue.CreateTensorValueFromMemory(new[] { branch }, []);
        using var run = new RunOptions();
        using IDisposableReadOnlyCollection<OrtValue> outputs = session.Run(run, ["x", "cond"], [x, cond], ["y"]);
        return outputs[0].GetTensorDataAsSpan<Float16>().ToArray().Select(v => (float)v).ToArray();
    }

    [TestMethod]
    public void Float16_on_a_float16_model_copies_it_and_says_so()
    {
        ModelProto model = Model16(halfIo: true);
        ModelProto copy = model.Clone();
        Float16Summary s = Float16Converter.Apply(copy, Float16Options.Default, "fp16.onnx");
        Assert.IsTrue(s.AlreadyFloat16);
        StringAssert.Contains(s.UnchangedReason, "FLOAT16");
        Assert.AreEqual(model, copy);
    }

    [TestMethod]
    public void A_float16_model_with_nothing_to_quantize_is_left_exactly_as_it_was()
    {
        ModelProto model = Model16(halfIo: true);
        ModelProto copy = model.Clone();
        QuantizationSummary s = Int8DynamicQuantizer.Apply(copy, new QuantizationOptions { ExcludedNodes = ["fc1", "fc2", "embed"] }, "fp16.onnx");
        Assert.IsTrue(s.NothingToQuantize);
        Assert.IsNull(s.Float16Weights);
        Assert.AreEqual(model, copy);
        Assert.AreEqual(s.ModelBytesBefore, s.ModelBytesAfter);
    }
}
