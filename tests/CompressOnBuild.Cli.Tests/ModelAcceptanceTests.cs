using System.Text.Json.Nodes;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Microsoft.ML.OnnxRuntime;

namespace CompressOnBuild.Cli.Tests;

/// <summary>Models ONNX Runtime runs must be accepted and compressed, never refused or ended in exit 3 (issue 13).</summary>
[TestClass]
public sealed class ModelAcceptanceTests
{
    private TempDirectory _temp = null!;

    private string _dir => _temp.Path;

    [TestInitialize]
    public void Init() => _temp = new TempDirectory("cob-accept");

    [TestCleanup]
    public void Cleanup() => _temp.Delete();

    private string P(string name) => Path.Combine(_dir, name);

    [TestMethod]
    public void NodesOutOfTopologicalOrderAreCompressedAndTheOutputIsSorted()
    {
        ModelProto m = TinyModels.Mlp(inF: 64, hidden: 32, classes: 4, seed: 9);
        NodeProto first = m.Graph.Node[0];
        m.Graph.Node.RemoveAt(0);
        m.Graph.Node.Add(first); // fc1 listed last, as ONNX Runtime's transformer optimizer writes some graphs
        string model = P("unsorted.onnx");
        ModelIO.Save(m, model);
        using (new InferenceSession(model))
        {
            // ONNX Runtime loads the unsorted model.
        }

        CliRun run = CliHarness.InProcess("compress", model, "--output", P("out/unsorted.onnx"));

        Assert.AreEqual(0, run.ExitCode, run.Output);
        ModelProto output = ModelIO.Load(P("out/unsorted.onnx"));
        var produced = new HashSet<string>(output.Graph.Input.Select(i => i.Name).Concat(output.Graph.Initializer.Select(t => t.Name)));
        foreach (NodeProto n in output.Graph.Node)
        {
            Assert.IsTrue(n.Input.All(i => i.Length == 0 || produced.Contains(i)), $"node {n.Name} is listed before a producer of its inputs");
            produced.UnionWith(n.Output);
        }
        using var session = new InferenceSession(P("out/unsorted.onnx"));
        using OrtValue x = OrtValue.CreateTensorValueFromMemory(new float[64], [1, 64]);
        using var runOptions = new RunOptions();
        using IDisposableReadOnlyCollection<OrtValue> y = session.Run(runOptions, ["x"], [x], ["y"]);
        Assert.AreEqual(4, y[0].GetTensorDataAsSpan<float>().Length);
    }
    private static ValueInfoProto Value(string name, TensorProto.Types.DataType type, params object[] dims)
    {
        ValueInfoProto v = TinyModels.FloatValue(name, dims);
        v.Type.TensorType.ElemType = (int)type;
        return v;
    }

    private string Save(ModelProto m, string name)
    {
        string path = P(name);
        ModelIO.Save(m, path);
        using (new InferenceSession(path))
        {
            // ONNX Runtime loads it: a model the tool must accept.
        }
        return path;
    }

    private static TensorProto Weights(string name, int seed, params long[] dims) =>
        TensorUtil.FromFloats(name, TinyModels.RandomFloats((int)dims.Aggregate(1L, (a, d) => a * d), seed, 0.5f), dims);

    /// <summary>Runs compress with a report and returns the run and the report (null when none was written).</summary>
    private (CliRun Run, JsonNode? Report) Compress(string model, params string[] extra)
    {
        string output = Path.Combine(_dir, "out", Path.GetFileName(model));
        string report = output + ".report.json";
        CliRun run = CliHarness.InProcess(["compress", model, "--output", output, "--report", report, .. extra]);
        return (run, File.Exists(report) ? JsonNode.Parse(File.ReadAllText(report)) : null);
    }

    /// <summary>The model compresses (exit 0) and is validated on the 16 synthetic inputs the CLI makes without data; returns the report.</summary>
    private JsonNode AssertCompressedAndValidatedOnSyntheticInputs(string model, params string[] extra)
    {
        (CliRun run, JsonNode? report) = Compress(model, extra);
        Assert.AreEqual(0, run.ExitCode, run.Output);
        AssertValidatedOn(report, 16);
        return report!;
    }

    private static void AssertValidatedOn(JsonNode? report, int samples)
    {
        Assert.IsNotNull(report);
        Assert.AreEqual(samples, report["validation"]!["samples"]!.GetValue<int>(), report.ToJsonString());
    }

    [TestMethod]
    public void InputsOfEveryElementTypeOrtTakesAreFedInTheirOwnType()
    {
        // One input per element type, each Cast to float and summed, then a MatMul for the quantizer.
        var types = new (string Name, TensorProto.Types.DataType Type)[]
        {
            ("b", TensorProto.Types.DataType.Bool), ("i8", TensorProto.Types.DataType.Int8), ("u8", TensorProto.Types.DataType.Uint8),
            ("i16", TensorProto.Types.DataType.Int16), ("u16", TensorProto.Types.DataType.Uint16), ("i32", TensorProto.Types.DataType.Int32),
            ("i64", TensorProto.Types.DataType.Int64), ("u32", TensorProto.Types.DataType.Uint32), ("u64", TensorProto.Types.DataType.Uint64),
            ("f16", TensorProto.Types.DataType.Float16), ("bf16", TensorProto.Types.DataType.Bfloat16), ("f64", TensorProto.Types.DataType.Double),
        };
        var g = new GraphProto { Name = "types" };
        var sum = TinyModels.Node("Sum", [], ["s"], "sum");
        foreach ((string name, TensorProto.Types.DataType type) in types)
        {
            g.Input.Add(Value(name, type, "N", 32));
            g.Node.Add(TinyModels.Node("Cast", [name], [name + "_f"], "cast_" + name, TinyModels.IntAttr("to", (long)TensorProto.Types.DataType.Float)));
            sum.Input.Add(name + "_f");
        }
        g.Node.Add(sum);
        g.Initializer.Add(Weights("w", 3, 32, 16));
        g.Node.Add(TinyModels.Node("MatMul", ["s", "w"], ["y"], "mm"));
        g.Output.Add(TinyModels.FloatValue("y", "N", 16));
        string model = Save(TinyModels.Model(g), "types.onnx");

        AssertCompressedAndValidatedOnSyntheticInputs(model);
    }

    /// <summary>x [N, 64] float16 -> MatMul(w [64, 48] float16) -> Add(b [48] float16) -> y [N, 48] float16.</summary>
    private string Float16Mlp()
    {
        var g = new GraphProto { Name = "fp16" };
        g.Input.Add(Value("x", TensorProto.Types.DataType.Float16, "N", 64));
        g.Initializer.Add(TinyModels.Float16("w", TinyModels.RandomFloats(64 * 48, 3, 0.5f), 64, 48));
        g.Initializer.Add(TinyModels.Float16("b", TinyModels.RandomFloats(48, 4, 0.5f), 48));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["m"], "mm"));
        g.Node.Add(TinyModels.Node("Add", ["m", "b"], ["y"], "bias"));
        g.Output.Add(Value("y", TensorProto.Types.DataType.Float16, "N", 48));
        return Save(TinyModels.Model(g), "fp16.onnx");
    }

    [TestMethod]
    [DataRow("Int8")]
    [DataRow("Int4Weights:16")]
    public void AFloat16ModelIsQuantizedFromItsFloat16Weights(string scheme)
    {
        string model = Float16Mlp();
        (CliRun run, JsonNode? report) = Compress(model, "--quantization", scheme);
        Assert.AreEqual(0, run.ExitCode, run.Output);
        Assert.IsNotNull(report, run.Output);
        StringAssert.Contains(report["quantization"]!["float16Weights"]!.GetValue<string>(), "float16", report.ToJsonString());
        ModelProto output = ModelIO.Load(Path.Combine(_dir, "out", "fp16.onnx"));
        Assert.AreEqual((int)TensorProto.Types.DataType.Float16, output.Graph.Input[0].Type.TensorType.ElemType, "the app still feeds float16");
        Assert.AreEqual((int)TensorProto.Types.DataType.Float16, output.Graph.Output[0].Type.TensorType.ElemType);
        Assert.IsLessThan(new FileInfo(model).Length * 7 / 10, new FileInfo(Path.Combine(_dir, "out", "fp16.onnx")).Length);
        Assert.AreEqual(16, report["validation"]!["samples"]!.GetValue<int>(), report.ToJsonString());
    }

    [TestMethod]
    public void Int8StaticCalibratesAFloat16Model()
    {
        string model = Float16Mlp();
        string data = P("calibration.npy");
        string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (24, 64), }";
        header += new string(' ', (64 - (10 + header.Length + 1) % 64) % 64) + "\n";
        using (FileStream fs = File.Create(data))
        {
            fs.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0]);
            fs.Write(BitConverter.GetBytes((ushort)header.Length));
            fs.Write(System.Text.Encoding.ASCII.GetBytes(header));
            fs.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(TinyModels.RandomFloats(24 * 64, 5, 1f).AsSpan()));
        }
        (CliRun run, JsonNode? report) = Compress(model, "--quantization", "Int8Static", "--calibration-data", data, "--min-cosine", "0.99");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        Assert.IsNotNull(report, run.Output);
        Assert.AreEqual("MatMul", report["quantization"]!["quantizedNodes"]![0]!["opType"]!.GetValue<string>(), report.ToJsonString());
        StringAssert.Contains(report["quantization"]!["float16Weights"]!.GetValue<string>(), "float16", report.ToJsonString());
        Assert.AreEqual((int)TensorProto.Types.DataType.Float16, ModelIO.Load(Path.Combine(_dir, "out", "fp16.onnx")).Graph.Input[0].Type.TensorType.ElemType);
    }

    [TestMethod]
    public void Float16OnAFloat16ModelCopiesItWithCMPR0240()
    {
        string model = Float16Mlp();
        (CliRun run, _) = Compress(model, "--quantization", "Float16");
        Assert.AreEqual(0, run.ExitCode, run.Output);
        Assert.AreEqual(1, run.Lines.Count(l => l.Contains(" : warning CMPR0240 : ", StringComparison.Ordinal)), run.Output);
        Assert.IsFalse(run.Output.Contains("CMPR0201", StringComparison.Ordinal), run.Output);
        CollectionAssert.AreEqual(ModelIO.Load(model).Graph.Initializer.Select(t => t.DataType).ToArray(),
            ModelIO.Load(Path.Combine(_dir, "out", "fp16.onnx")).Graph.Initializer.Select(t => t.DataType).ToArray());
    }

    [TestMethod]
    public void AStringInputIsFedStrings()
    {
        // A string input ONNX Runtime parses as numbers (Cast string -> float), added to a float input before a MatMul.
        var g = new GraphProto { Name = "strings" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 32));
        g.Input.Add(Value("text", TensorProto.Types.DataType.String, "N", 32));
        g.Initializer.Add(Weights("w", 8, 32, 8));
        g.Node.Add(TinyModels.Node("Cast", ["text"], ["parsed"], "parse", TinyModels.IntAttr("to", (long)TensorProto.Types.DataType.Float)));
        g.Node.Add(TinyModels.Node("Add", ["x", "parsed"], ["sum"], "add"));
        g.Node.Add(TinyModels.Node("MatMul", ["sum", "w"], ["y"], "mm"));
        g.Output.Add(TinyModels.FloatValue("y", "N", 8));
        string model = Save(TinyModels.Model(g), "strings.onnx");

        AssertCompressedAndValidatedOnSyntheticInputs(model);
    }

    [TestMethod]
    public void TokenIdsStayBelowTheVocabularyAndTypeIdsBelowAOneRowTable()
    {
        // RoBERTa-like: token_type_ids index a table of ONE row, so any id other than 0 fails in ONNX Runtime.
        var g = new GraphProto { Name = "embed" };
        g.Input.Add(Value("input_ids", TensorProto.Types.DataType.Int64, "batch", "sequence"));
        g.Input.Add(Value("token_type_ids", TensorProto.Types.DataType.Int64, "batch", "sequence"));
        g.Input.Add(Value("attention_mask", TensorProto.Types.DataType.Int64, "batch", "sequence"));
        g.Initializer.Add(Weights("words", 1, 50, 16));
        g.Initializer.Add(Weights("types", 2, 1, 16));
        g.Initializer.Add(Weights("w", 3, 16, 16));
        g.Node.Add(TinyModels.Node("Gather", ["words", "input_ids"], ["e1"], "word_embeddings"));
        g.Node.Add(TinyModels.Node("Gather", ["types", "token_type_ids"], ["e2"], "type_embeddings"));
        g.Node.Add(TinyModels.Node("Add", ["e1", "e2"], ["e"], "add"));
        g.Node.Add(TinyModels.Node("Cast", ["attention_mask"], ["m"], "cast", TinyModels.IntAttr("to", (long)TensorProto.Types.DataType.Float)));
        g.Node.Add(TinyModels.Node("Unsqueeze", ["m", "axis2"], ["m3"], "unsq"));
        g.Initializer.Add(TensorUtil.FromInt64("axis2", [2], 1));
        g.Node.Add(TinyModels.Node("Mul", ["e", "m3"], ["em"], "mask"));
        g.Node.Add(TinyModels.Node("MatMul", ["em", "w"], ["y"], "mm"));
        g.Output.Add(TinyModels.FloatValue("y", "batch", "sequence", 16));
        string model = Save(TinyModels.Model(g), "embed.onnx");

        AssertCompressedAndValidatedOnSyntheticInputs(model);
    }

    /// <summary>x[1,1,L] -> Pad(reflect, 2 each side) -> Conv(k=3): reflect padding needs L &gt;= 3.</summary>
    /// <summary>a[1,C] feeds a MatMul with 8 rows (so C is 8); b[1,C] only a Concat with a, which needs the same C.</summary>
    [TestMethod]
    public void ANamedDimTheGraphFixesForOneInputHoldsForEveryInputThatNamesIt()
    {
        var g = new GraphProto { Name = "shared" };
        g.Input.Add(TinyModels.FloatValue("a", 1, "C"));
        g.Input.Add(TinyModels.FloatValue("b", 1, "C"));
        g.Initializer.Add(Weights("w", 9, 8, 4));
        g.Node.Add(TinyModels.Node("MatMul", ["a", "w"], ["ya"], "mm"));
        g.Node.Add(TinyModels.Node("Concat", ["a", "b"], ["ab"], "concat", TinyModels.IntAttr("axis", 0)));
        g.Node.Add(TinyModels.Node("MatMul", ["ab", "w"], ["yab"], "mm2"));
        g.Output.Add(TinyModels.FloatValue("ya", 1, 4));
        g.Output.Add(TinyModels.FloatValue("yab", 2, 4));
        string model = Save(TinyModels.Model(g), "shared.onnx");

        JsonNode report = AssertCompressedAndValidatedOnSyntheticInputs(model);
        StringAssert.Contains(report!["validation"]!["data"]!.GetValue<string>(), "a:1x8;b:1x8");
    }

    [TestMethod]
    public void ReflectPaddingGetsASignalLongEnough()
    {
        var g = new GraphProto { Name = "pad" };
        g.Input.Add(TinyModels.FloatValue("audio", 1, 1, "L"));
        g.Initializer.Add(TensorUtil.FromInt64("pads", [0, 0, 2, 0, 0, 2], 6));
        g.Initializer.Add(Weights("k", 4, 8, 1, 3));
        g.Node.Add(TinyModels.Node("Pad", ["audio", "pads"], ["padded"], "pad", new AttributeProto { Name = "mode", Type = AttributeProto.Types.AttributeType.String, S = Google.Protobuf.ByteString.CopyFromUtf8("reflect") }));
        g.Node.Add(TinyModels.Node("Conv", ["padded", "k"], ["y"], "conv"));
        g.Output.Add(TinyModels.FloatValue("y", 1, 8, "L2"));
        string model = Save(TinyModels.Model(g), "pad.onnx");

        JsonNode report = AssertCompressedAndValidatedOnSyntheticInputs(model);
        StringAssert.Contains(report!["validation"]!["data"]!.GetValue<string>(), "audio:1x1x16");
    }

    [TestMethod]
    public void AConvOverASignalGetsAtLeastTheKernelsLength()
    {
        var g = new GraphProto { Name = "conv" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 2, "T"));
        g.Initializer.Add(Weights("k", 5, 8, 2, 5));
        g.Node.Add(TinyModels.Node("Conv", ["x", "k"], ["y"], "conv", TinyModels.IntsAttr("dilations", 2)));
        g.Output.Add(TinyModels.FloatValue("y", "N", 8, "T2"));
        string model = Save(TinyModels.Model(g), "conv.onnx");

        JsonNode report = AssertCompressedAndValidatedOnSyntheticInputs(model);
        StringAssert.Contains(report!["validation"]!["data"]!.GetValue<string>(), "x:1x2x9", "the kernel's extent with dilation 2 is 9");
    }

    /// <summary>
    /// samples[N] and a scalar int64 sample rate: frames of sr/100 samples feed a MatMul with 160 rows, so only
    /// sr=16000 (and N a multiple of 160) runs, which no generic guess finds.
    /// </summary>
    private string SampleRateModel()
    {
        var g = new GraphProto { Name = "sr" };
        g.Input.Add(TinyModels.FloatValue("samples", "N"));
        g.Input.Add(Value("sr", TensorProto.Types.DataType.Int64));
        g.Initializer.Add(TensorUtil.FromInt64("hundred", [100]));
        g.Initializer.Add(TensorUtil.FromInt64("minus1", [-1], 1));
        g.Initializer.Add(TensorUtil.FromInt64("axis0", [0], 1));
        g.Initializer.Add(Weights("w", 6, 160, 32));
        g.Node.Add(TinyModels.Node("Div", ["sr", "hundred"], ["frame"], "div"));
        g.Node.Add(TinyModels.Node("Unsqueeze", ["frame", "axis0"], ["frame1"], "unsq"));
        g.Node.Add(TinyModels.Node("Concat", ["minus1", "frame1"], ["shape"], "concat", TinyModels.IntAttr("axis", 0)));
        g.Node.Add(TinyModels.Node("Reshape", ["samples", "shape"], ["frames"], "reshape"));
        g.Node.Add(TinyModels.Node("MatMul", ["frames", "w"], ["y"], "mm"));
        g.Output.Add(TinyModels.FloatValue("y", "F", 32));
        return Save(TinyModels.Model(g), "sr.onnx");
    }

    [TestMethod]
    public void AScalarSampleRateTheModelNeedsComesFromInputValues()
    {
        string model = SampleRateModel();

        JsonNode report = AssertCompressedAndValidatedOnSyntheticInputs(model, "--input-values", "sr=16000", "--input-shapes", "samples:16000");
        StringAssert.Contains(report!["validation"]!["data"]!.GetValue<string>(), "samples:16000");
    }

    [TestMethod]
    public void WhenNoSyntheticInputsRunTheOriginalItIsACodedWarningAndTheModelIsStillWritten()
    {
        string model = SampleRateModel();

        (CliRun run, JsonNode? report) = Compress(model);

        Assert.AreEqual(0, run.ExitCode, run.Output);
        string warning = run.Lines.Single(l => l.Contains(" : warning CMPR0410 : ", StringComparison.Ordinal));
        StringAssert.Contains(warning, "ValidationData");
        StringAssert.Contains(warning, "InputShapes");
        Assert.IsTrue(File.Exists(P("out/sr.onnx")), run.Output);
        Assert.IsNotNull(report);
        Assert.IsNull(report["validation"], "nothing was measured, so no verdict numbers");
    }

    [TestMethod]
    public void WhenABudgetNeedsTheMeasurementItIsACodedErrorWithExit2()
    {
        string model = SampleRateModel();

        (CliRun run, _) = Compress(model, "--max-latency-ratio", "2");

        Assert.AreEqual(2, run.ExitCode, run.Output);
        string error = run.Errors("CMPR0411").Single();
        StringAssert.Contains(error, "MaxLatencyRatio");
        StringAssert.Contains(error, "InputShapes");
        Assert.IsFalse(File.Exists(P("out/sr.onnx")));
    }

    [TestMethod]
    public void BadInputShapesAndValuesAreCodedErrors()
    {
        string model = SampleRateModel();

        CliRun syntax = Compress(model, "--input-shapes", "samples:16000x").Run;
        Assert.AreEqual(2, syntax.ExitCode, syntax.Output);
        Assert.AreEqual(1, syntax.Errors("CMPR0003").Count(), syntax.Output);

        CliRun values = Compress(model, "--input-values", "sr=fast").Run;
        Assert.AreEqual(2, values.ExitCode, values.Output);
        Assert.AreEqual(1, values.Errors("CMPR0003").Count(), values.Output);

        CliRun unknown = Compress(model, "--input-values", "rate=16000").Run;
        Assert.AreEqual(2, unknown.ExitCode, unknown.Output);
        StringAssert.Contains(unknown.Errors("CMPR0108").Single(), "'rate'");

        CliRun rank = Compress(model, "--input-shapes", "samples:1x16000").Run;
        Assert.AreEqual(2, rank.ExitCode, rank.Output);
        StringAssert.Contains(rank.Errors("CMPR0109").Single(), "1x16000");
    }

    [TestMethod]
    public void InputShapesAndValuesAreInTheCacheKey()
    {
        string model = SampleRateModel();
        string cache = P("cache");
        CliRun first = Compress(model, "--cache-dir", cache, "--input-values", "sr=16000", "--input-shapes", "samples:16000").Run;
        CliRun same = Compress(model, "--cache-dir", cache, "--input-values", "sr=16000.0", "--input-shapes", "samples:16000").Run;
        CliRun other = Compress(model, "--cache-dir", cache, "--input-values", "sr=16000", "--input-shapes", "samples:32000").Run;

        Assert.AreEqual(0, first.ExitCode, first.Output);
        StringAssert.Contains(same.Output, "(cached)");
        Assert.AreEqual(0, other.ExitCode, other.Output);
        Assert.IsFalse(other.Output.Contains("(cached)", StringComparison.Ordinal), other.Output);
    }
    [TestMethod]
    public void AnErrorAboutTheCompressedModelNamesTheOutputNotTheWorkFolder()
    {
        // x[N,64] -> MatMul(all-ones W[64,64]) gives sum(x), about 32 per column -> Sqrt(. - 20) -> MatMul(W2) -> y.
        // Magnitude pruning zeroes half of W (all weights tie), so the pruned model takes the root of about 16 - 20: NaN.
        var g = new GraphProto { Name = "nan" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 64));
        g.Initializer.Add(TensorUtil.FromFloats("w", Enumerable.Repeat(1f, 64 * 64).ToArray(), 64, 64));
        g.Initializer.Add(TensorUtil.FromFloats("twenty", [20f], 1));
        g.Initializer.Add(Weights("w2", 7, 64, 4));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["s"], "sum"));
        g.Node.Add(TinyModels.Node("Sub", ["s", "twenty"], ["d"], "sub"));
        g.Node.Add(TinyModels.Node("Sqrt", ["d"], ["r"], "sqrt"));
        g.Node.Add(TinyModels.Node("MatMul", ["r", "w2"], ["y"], "out"));
        g.Output.Add(TinyModels.FloatValue("y", "N", 4));
        string model = Save(TinyModels.Model(g), "nan.onnx");
        string output = Path.Combine(_dir, "out", "nan.pruned+v2.onnx");

        CliRun run = CliHarness.InProcess("compress", model, "--output", output, "--quantization", "None", "--pruning", "Magnitude:0.5");

        Assert.AreEqual(2, run.ExitCode, run.Output);
        string error = run.Errors("CMPR0404").Single();
        Assert.IsFalse(run.Output.Contains(".cob-", StringComparison.Ordinal), run.Output);
        Assert.IsTrue(error.StartsWith(output + " : error CMPR0404 : ", StringComparison.Ordinal), error);
        StringAssert.Contains(error, "'" + output + "'");
    }

    [TestMethod]
    public void WorkFolderPathsAreMappedToTheUsersFiles()
    {
        string output = Path.Combine(_dir, "obj", "m.onnx");
        string work = Path.Combine(_dir, "obj", ".cob-0123456789ab");
        string text = $"model '{Path.Combine(work, "3", "m.onnx")}' and '{Path.Combine(work, "m.onnx")}.data', probe {Path.Combine(work, "probe", "p.onnx")}: {work}";

        string mapped = WorkFolders.UserPaths(text, "Models/m.onnx", output);

        Assert.AreEqual($"model '{output}' and '{output}.data', probe Models/m.onnx: Models/m.onnx", mapped);
        Assert.AreEqual("no work path", WorkFolders.UserPaths("no work path", "a", output));
    }
}
