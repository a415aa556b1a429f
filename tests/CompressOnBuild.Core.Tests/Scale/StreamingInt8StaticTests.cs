using System.Security.Cryptography;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Tests.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Core.Tests.Scale;

/// <summary>
/// Static int8 through the streaming path (<see cref="StreamingQuantizer.CompressInt8Static"/>) on tiny models with
/// external data: the same model as the in-memory pass with the same ranges, the source untouched, nothing written on failure.
/// </summary>
[TestClass]
public sealed class StreamingInt8StaticTests
{
    private TempDirectory _temp = null!;

    private string _dir => _temp.Path;

    [TestInitialize]
    public void Init() => _temp = new TempDirectory("cob-static-stream");

    [TestCleanup]
    public void Cleanup() => _temp.Delete();

    /// <summary>
    /// x[1,128] -> MatMul(w0) + b0 (fused into a Gemm by the pass) -> Relu -> Gemm(w1 transposed, c1) -> y, and
    /// img[1,16,6,6] -> Conv(wc, bc) -> Relu -> c: MatMul, Gemm with transB and Conv layers, every tensor of 64 bytes or
    /// more in "m.onnx.data".
    /// </summary>
    private static ModelProto Layers(float w1Element = 0.1f)
    {
        var g = new GraphProto { Name = "layers" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 128));
        g.Input.Add(TinyModels.FloatValue("img", 1, 16, 6, 6));
        g.Output.Add(TinyModels.FloatValue("y", 1, 80));
        g.Output.Add(TinyModels.FloatValue("c", 1, 32, 4, 4));
        g.ValueInfo.Add(TinyModels.FloatValue("h", 1, 64));
        g.Initializer.Add(TensorUtil.FromFloats("w0", TinyModels.RandomFloats(128 * 64, 3, 0.3f), 128, 64));
        g.Initializer.Add(TensorUtil.FromFloats("b0", TinyModels.RandomFloats(64, 4, 0.1f), 64));
        float[] w1 = TinyModels.RandomFloats(80 * 64, 5, 0.3f);
        w1[7] = w1Element;
        g.Initializer.Add(TensorUtil.FromFloats("w1", w1, 80, 64));
        g.Initializer.Add(TensorUtil.FromFloats("c1", TinyModels.RandomFloats(80, 6, 0.1f), 80));
        g.Initializer.Add(TensorUtil.FromFloats("wc", TinyModels.RandomFloats(32 * 16 * 3 * 3, 7, 0.2f), 32, 16, 3, 3));
        g.Initializer.Add(TensorUtil.FromFloats("bc", TinyModels.RandomFloats(32, 8, 0.1f), 32));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w0"], ["h0"], "mm0"));
        g.Node.Add(TinyModels.Node("Add", ["h0", "b0"], ["h"], "add0"));
        g.Node.Add(TinyModels.Node("Relu", ["h"], ["hr"], "relu0"));
        g.Node.Add(TinyModels.Node("Gemm", ["hr", "w1", "c1"], ["y"], "gemm1", TinyModels.IntAttr("transB", 1)));
        g.Node.Add(TinyModels.Node("Conv", ["img", "wc", "bc"], ["c0"], "conv"));
        g.Node.Add(TinyModels.Node("Relu", ["c0"], ["c"], "relu_c"));
        return TinyModels.Model(g);
    }

    private static void SaveExternal(ModelProto model, string path) =>
        ModelIO.Save(model, path, new ModelSaveOptions { ForceExternalData = true, ExternalTensorMinBytes = 64 });

    /// <summary>Fixed ranges for every tensor the plan asks for (calibration itself runs in ONNX Runtime, in the Validation tests).</summary>
    private static CalibrationResult Ranges(IEnumerable<string> tensors) => new()
    {
        Ranges = tensors.ToDictionary(t => t, t => new TensorRange(-2.5f, 3f), StringComparer.Ordinal),
        Method = "MinMax",
        Samples = 1,
    };

    private static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    [TestMethod]
    [DataRow(ActivationType.UInt8, true)]
    [DataRow(ActivationType.Int8, true)]
    [DataRow(ActivationType.UInt8, false)]
    public void StreamedModelIsTheInMemoryPassesModel(ActivationType activations, bool perChannel)
    {
        string source = Path.Combine(_dir, "src", "m.onnx");
        SaveExternal(Layers(), source);
        string[] sourceHashes = [Hash(source), Hash(source + ".data")];
        var options = new Int8StaticOptions { ActivationType = activations, PerChannel = perChannel, MinimumConvReduction = 0 };

        (IReadOnlyList<string> tensors, IReadOnlyList<string> outputs) = StreamingQuantizer.Int8StaticTensorsToCalibrate(source, options, "m");
        CollectionAssert.AreEqual(Int8StaticQuantizer.TensorsToCalibrate(ModelIO.Load(source), options).ToList(), tensors.ToList(),
            "the plan on the lazily loaded graph must ask for the in-memory plan's tensors");
        CollectionAssert.AreEqual(new[] { "y", "c" }, outputs.ToList());
        CalibrationResult calibration = Ranges(tensors);

        ModelProto inMemory = ModelIO.Load(source);
        Int8StaticSummary expected = Int8StaticQuantizer.Apply(inMemory, calibration, options, "m");
        string output = Path.Combine(_dir, "out", "m.onnx");
        Int8StaticSummary actual = StreamingQuantizer.CompressInt8Static(source, output, calibration, options, "m");

        CollectionAssert.AreEquivalent(new[] { "mm0", "gemm1", "conv" }, actual.Quantized.Select(q => q.Node).ToList());
        CollectionAssert.AreEqual(expected.Quantized.Select(q => (q.Node, q.OpType, q.Rows, q.Columns, q.MaxAbsWeightError)).ToList(),
            actual.Quantized.Select(q => (q.Node, q.OpType, q.Rows, q.Columns, q.MaxAbsWeightError)).ToList());
        Assert.AreEqual(expected.QuantizedActivations, actual.QuantizedActivations);
        Assert.AreEqual(expected.PerChannel, actual.PerChannel);
        Assert.AreEqual(new FileInfo(output).Length + new FileInfo(output + ".data").Length, actual.ModelBytesAfter);
        Assert.AreEqual(ModelIO.TotalBytesWithExternalData(source), actual.ModelBytesBefore, "the .onnx plus its tensors' external bytes, as the other streaming schemes count them");

        // The same graph and the same tensors, byte for byte; the int8 weights and the copied tensors sit in the data file.
        ModelProto lazy = ModelProto.Parser.ParseFrom(File.ReadAllBytes(output));
        TensorProto[] codes = [.. lazy.Graph.Initializer.Where(t => t.DataType is (int)TensorProto.Types.DataType.Int8 or (int)TensorProto.Types.DataType.Uint8 && t.Dims.Count >= 2)];
        Assert.AreEqual(3, codes.Length);
        Assert.IsTrue(codes.All(TensorUtil.IsExternal), "quantized weights (of 4 KiB and more) go to the data file");
        ModelProto streamed = ModelIO.Load(output);
        ModelChecker.Validate(streamed, output);
        CollectionAssert.AreEqual(inMemory.Graph.Node.Select(n => n.ToString()).ToList(), streamed.Graph.Node.Select(n => n.ToString()).ToList());
        CollectionAssert.AreEquivalent(inMemory.Graph.Initializer.Select(t => t.Name).ToList(), streamed.Graph.Initializer.Select(t => t.Name).ToList());
        foreach (TensorProto a in inMemory.Graph.Initializer)
        {
            TensorProto b = streamed.Graph.Initializer.Single(t => t.Name == a.Name);
            Assert.AreEqual(a.DataType, b.DataType, a.Name);
            CollectionAssert.AreEqual(a.Dims.ToList(), b.Dims.ToList(), a.Name);
            CollectionAssert.AreEqual(TensorUtil.ToRawBytes(a), TensorUtil.ToRawBytes(b), a.Name);
        }
        Assert.IsFalse(streamed.Graph.Initializer.Any(t => t.Name is "w0" or "w1" or "wc"), "the float weights must be gone");

        // ONNX Runtime gives the in-memory model's outputs on the streamed one.
        string inMemoryPath = Path.Combine(_dir, "mem", "m.onnx");
        ModelIO.Save(inMemory, inMemoryPath);
        Dictionary<string, float[]> a1 = OrtHelper.RunRandom(inMemoryPath);
        Dictionary<string, float[]> b1 = OrtHelper.RunRandom(output);
        CollectionAssert.AreEqual(a1["y"], b1["y"]);
        CollectionAssert.AreEqual(a1["c"], b1["c"]);

        CollectionAssert.AreEqual(sourceHashes, new[] { Hash(source), Hash(source + ".data") }, "the source model and its data file are never modified");
        CollectionAssert.AreEquivalent(new[] { "m.onnx", "m.onnx.data" }, Directory.GetFiles(Path.GetDirectoryName(output)!).Select(Path.GetFileName).ToList(),
            "only the published pair is left");
    }

    [TestMethod]
    public void NonFiniteWeightIsCMPR0202AndTheEarlierPairStays()
    {
        string source = Path.Combine(_dir, "src", "m.onnx");
        var options = new Int8StaticOptions { MinimumConvReduction = 0 };
        SaveExternal(Layers(), source);
        CalibrationResult calibration = Ranges(StreamingQuantizer.Int8StaticTensorsToCalibrate(source, options, "m").Tensors);
        string output = Path.Combine(_dir, "out", "m.onnx");
        StreamingQuantizer.CompressInt8Static(source, output, calibration, options, "m");
        string[] published = [Hash(output), Hash(output + ".data")];

        SaveExternal(Layers(w1Element: float.NaN), source);
        var e = Assert.ThrowsExactly<CompressException>(() => StreamingQuantizer.CompressInt8Static(source, output, calibration, options, "m"));
        Assert.AreEqual(DiagnosticCodes.NonFiniteWeights, e.Code);
        StringAssert.Contains(e.Message, "w1");
        CollectionAssert.AreEqual(published, new[] { Hash(output), Hash(output + ".data") }, "a failed run leaves the earlier pair as it was");
        Assert.AreEqual(2, Directory.GetFiles(Path.GetDirectoryName(output)!).Length, "no temporary file may remain");
    }

    [TestMethod]
    public void OutputOverTheSourceDataIsRefused()
    {
        string source = Path.Combine(_dir, "m.onnx");
        SaveExternal(Layers(), source);
        string data = Hash(source + ".data");
        File.Copy(source, Path.Combine(_dir, "other.onnx"));
        var e = Assert.ThrowsExactly<CompressException>(() => StreamingQuantizer.CompressInt8Static(Path.Combine(_dir, "other.onnx"), source,
            Ranges([]), new Int8StaticOptions(), "m"));
        Assert.AreEqual(DiagnosticCodes.OutputIsSource, e.Code);
        Assert.AreEqual(data, Hash(source + ".data"));
    }
}
