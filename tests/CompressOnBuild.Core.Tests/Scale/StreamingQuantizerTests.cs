using System.Diagnostics;
using System.Runtime.InteropServices;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Tests.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace CompressOnBuild.Core.Tests.Scale;

[TestClass]
public sealed class StreamingQuantizerTests
{
    private TempDirectory _temp = null!;

    public TestContext TestContext { get; set; } = null!;

    private string _dir => _temp.Path;

    [TestInitialize]
    public void Init() => _temp = new TempDirectory("cob-scale");

    [TestCleanup]
    public void Cleanup() => _temp.Delete();

    /// <summary>x[1,K] -> MatMul(w0) -> Relu -> MatMul(w1) -> y, plus a small Add constant kept float.</summary>
    private static ModelProto SmallChain(int k = 64, int n = 48, int seed = 5)
    {
        var g = new GraphProto { Name = "chain" };
        g.Input.Add(TinyModels.FloatValue("x", 1, k));
        g.Output.Add(TinyModels.FloatValue("y", 1, n));
        g.Initializer.Add(TensorUtil.FromFloats("w0", TinyModels.RandomFloats(k * n, seed, 0.3f), k, n));
        g.Initializer.Add(TensorUtil.FromFloats("w1", TinyModels.RandomFloats(n * n, seed + 1, 0.3f), n, n));
        g.Initializer.Add(TensorUtil.FromFloats("b", TinyModels.RandomFloats(n, seed + 2, 0.1f), n));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w0"], ["h"], "mm0"));
        g.Node.Add(TinyModels.Node("Relu", ["h"], ["hr"], "relu"));
        g.Node.Add(TinyModels.Node("MatMul", ["hr", "w1"], ["z"], "mm1"));
        g.Node.Add(TinyModels.Node("Add", ["z", "b"], ["y"], "add"));
        return TinyModels.Model(g);
    }

    /// <summary>Saves <paramref name="model"/> with every tensor of 64 bytes or more in "&lt;path&gt;.data".</summary>
    private static void SaveExternal(ModelProto model, string path) =>
        ModelIO.Save(model, path, new ModelSaveOptions { ForceExternalData = true, ExternalTensorMinBytes = 64 });

    /// <summary><see cref="SmallChain"/> with w1[7] set to <paramref name="value"/>, saved with external data as src/m.onnx.</summary>
    private string SaveChainWithW1Element7(float value)
    {
        ModelProto model = SmallChain();
        float[] w = TensorUtil.ToFloatArray(model.Graph.Initializer[1]);
        w[7] = value;
        model.Graph.Initializer[1] = TensorUtil.FromFloats("w1", w, 48, 48);
        string source = Path.Combine(_dir, "src", "m.onnx");
        SaveExternal(model, source);
        return source;
    }

    [TestMethod]
    [DataRow(WeightEncoding.UInt8)]
    [DataRow(WeightEncoding.Int8)]
    [DataRow(WeightEncoding.Int8ReducedRange)]
    [DataRow(WeightEncoding.Int8PairBounded)]
    public void StreamingGivesTheSameWeightsAsTheInMemoryPass(WeightEncoding encoding)
    {
        ModelProto model = SmallChain();
        string source = Path.Combine(_dir, "src", "m.onnx");
        SaveExternal(model, source);
        var options = new QuantizationOptions { WeightEncoding = encoding };

        ModelProto inMemory = model.Clone();
        // The streaming path stores float32 scales and biases; the in-memory pass does too when asked.
        QuantizationSummary expected = Int8DynamicQuantizer.Apply(inMemory, new QuantizationOptions { WeightEncoding = encoding, Float16Scales = false }, "m");
        string output = Path.Combine(_dir, "out", "m.onnx");
        QuantizationSummary actual = StreamingQuantizer.CompressInt8Dynamic(source, output, options, "m");

        CollectionAssert.AreEqual(expected.Quantized.Select(q => q.Node).ToList(), actual.Quantized.Select(q => q.Node).ToList());
        ModelProto streamed = ModelIO.Load(output);
        ModelChecker.Validate(streamed, output);
        // Unsigned codes: both weights have 48 outputs, so both passes store one zero-point tensor that the two nodes share.
        string[] names = encoding == WeightEncoding.UInt8
            ? ["w0_quantized", "w1_quantized", "w0_scale", "w1_scale", "w0_zero_point"]
            : ["w0_quantized", "w1_quantized", "w0_scale", "w1_scale"]; // signed codes: default zero point 0, none stored
        foreach (ModelProto m in new[] { inMemory, streamed })
        {
            Assert.AreEqual(encoding == WeightEncoding.UInt8 ? 1 : 0, m.Graph.Initializer.Count(t => t.Name.EndsWith("_zero_point", StringComparison.Ordinal)));
            if (encoding == WeightEncoding.UInt8)
            {
                CollectionAssert.AreEqual(new[] { "w0_zero_point", "w0_zero_point" }, m.Graph.Node.Where(n => n.Input.Count > 3).Select(n => n.Input[3]).ToArray());
            }
        }
        foreach (string name in names)
        {
            TensorProto a = inMemory.Graph.Initializer.Single(t => t.Name == name);
            TensorProto b = streamed.Graph.Initializer.Single(t => t.Name == name);
            CollectionAssert.AreEqual(a.Dims.ToList(), b.Dims.ToList(), name);
            Assert.AreEqual(a.DataType, b.DataType, name);
            CollectionAssert.AreEqual(a.RawData.ToByteArray(), b.RawData.ToByteArray(), $"{name} must be byte-identical to the in-memory pass");
        }
        for (int i = 0; i < expected.Quantized.Count; i++)
        {
            Assert.AreEqual(expected.Quantized[i].MaxAbsWeightError, actual.Quantized[i].MaxAbsWeightError, 1e-7f);
        }
        Assert.IsFalse(streamed.Graph.Initializer.Any(t => t.Name is "w0" or "w1"), "the float weights must be gone");
        Assert.IsTrue(ModelProto.Parser.ParseFrom(File.ReadAllBytes(output)).Graph.Initializer.Any(TensorUtil.IsExternal));

        // ORT runs both; the streamed model's outputs equal the in-memory model's (same graph math, same weights).
        string inMemoryPath = Path.Combine(_dir, "mem", "m.onnx");
        ModelIO.Save(inMemory, inMemoryPath);
        float[] a1 = OrtHelper.RunRandom(inMemoryPath)["y"];
        float[] b1 = OrtHelper.RunRandom(output)["y"];
        CollectionAssert.AreEqual(a1, b1);
    }

    [TestMethod]
    [DataRow(WeightEncoding.UInt8)]
    [DataRow(WeightEncoding.Int8)]
    [DataRow(WeightEncoding.Int8PairBounded)]
    public void WeightsOverTheWholeWeightLimitStreamInTwoChunkedPassesWithTheSameWeights(WeightEncoding encoding)
    {
        long saved = StreamingQuantizer.WholeWeightLimit;
        StreamingQuantizer.WholeWeightLimit = 0; // every weight takes the chunked two-pass path
        try
        {
            StreamingGivesTheSameWeightsAsTheInMemoryPass(encoding);
        }
        finally
        {
            StreamingQuantizer.WholeWeightLimit = saved;
        }
    }

    [TestMethod]
    [DataRow(true)]
    [DataRow(false)]
    public void Int4ColumnBlockKernelGivesTheInMemoryBlockParameters(bool symmetric)
    {
        // Blocks as columns of a [len, cols] matrix: ties of magnitude in both orders, zeros, one sign, a short block.
        float[][] blocks =
        [
            [-0.5f, 0.5f, 0.25f], [0.5f, -0.5f, 0.1f], [0f, 0f, 0f], [1f, 2f, 3f], [-1f, -3f, -2f], [-0f, 0f, 1e-31f],
            [3f, -3f, 3f], [-7f, 7f, -7f],
        ];
        int len = 3, cols = blocks.Length;
        var m = new float[len * cols];
        for (int c = 0; c < cols; c++)
        {
            for (int r = 0; r < len; r++)
            {
                m[r * cols + c] = blocks[c][r];
            }
        }
        var scales = new float[cols];
        var zeros = new float[cols];
        Kernels.Int4Kernels.ColumnBlockParameters(m, len, cols, symmetric, scales, zeros, new float[cols]);
        for (int c = 0; c < cols; c++)
        {
            var padded = new float[32]; // the in-memory pass pads a short block with zeros
            blocks[c].CopyTo(padded, 0);
            (float scale, byte zero) = Int4WeightQuantizer.BlockParameters(padded, symmetric);
            Assert.AreEqual(scale, scales[c], $"block {c} symmetric={symmetric}");
            Assert.AreEqual(zero, (byte)zeros[c], $"block {c}");
        }
    }

    [TestMethod]
    public void Float16StreamingGivesTheSameModelAsTheInMemoryPass()
    {
        ModelProto model = SmallChain();
        float[] w0 = TensorUtil.ToFloatArray(model.Graph.Initializer[0]);
        w0[5] = 1e6f; // beyond float16: clamped to 65504 and counted
        w0[9] = -7e4f;
        model.Graph.Initializer[0] = TensorUtil.FromFloats("w0", w0, 64, 48);
        string source = Path.Combine(_dir, "src", "m.onnx");
        SaveExternal(model, source);
        // mm1 stays float32: its external weight is copied through; w0 and the bias b are converted while streaming.
        var options = new Float16Options { ExcludedNodes = ["mm1"] };

        ModelProto inMemory = model.Clone();
        Float16Summary expected = Float16Converter.Apply(inMemory, options, "m");
        string output = Path.Combine(_dir, "out", "m.onnx");
        var profile = new StreamingProfile();
        Float16Summary actual = StreamingQuantizer.CompressFloat16(source, output, options, "m", profile: profile);

        Assert.AreEqual(2L, expected.ClampedValues);
        Assert.AreEqual(expected.ClampedValues, actual.ClampedValues);
        Assert.AreEqual(expected.ConvertedTensors, actual.ConvertedTensors);
        Assert.AreEqual(expected.ConvertedElements, actual.ConvertedElements);
        Assert.AreEqual(expected.ConvertedNodes, actual.ConvertedNodes);
        Assert.AreEqual(expected.CastsInserted, actual.CastsInserted);
        CollectionAssert.AreEqual(expected.KeptFloat32.ToList(), actual.KeptFloat32.ToList());
        Assert.IsTrue(actual.KeptFloat32.Any(k => k.Node == "mm1"));
        Assert.IsTrue(actual.ModelBytesAfter < actual.ModelBytesBefore, $"{actual.ModelBytesAfter} vs {actual.ModelBytesBefore}");

        ModelProto streamed = ModelIO.Load(output);
        ModelChecker.Validate(streamed, output);
        ModelProto onDisk = ModelProto.Parser.ParseFrom(File.ReadAllBytes(output));
        Assert.IsTrue(onDisk.Graph.Initializer.Where(t => t.Name is "w0" or "w1" or "b").All(TensorUtil.IsExternal), "weights stay in the data file");
        Assert.AreEqual((int)TensorProto.Types.DataType.Float16, streamed.Graph.Initializer.Single(t => t.Name == "w0").DataType);
        Assert.AreEqual((int)TensorProto.Types.DataType.Float, streamed.Graph.Initializer.Single(t => t.Name == "w1").DataType);
        static byte[] Inline(TensorProto t)
        {
            TensorProto c = t.Clone();
            c.ExternalData.Clear();
            c.DataLocation = TensorProto.Types.DataLocation.Default;
            return c.ToByteArray();
        }
        var expectedInits = inMemory.Graph.Initializer.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        var actualInits = streamed.Graph.Initializer.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        CollectionAssert.AreEqual(expectedInits.Select(t => t.Name).ToList(), actualInits.Select(t => t.Name).ToList());
        for (int i = 0; i < expectedInits.Count; i++)
        {
            CollectionAssert.AreEqual(Inline(expectedInits[i]), Inline(actualInits[i]), $"{expectedInits[i].Name} must be byte-identical to the in-memory pass");
        }
        Assert.AreEqual(inMemory.Graph.Node.Count, streamed.Graph.Node.Count);
        for (int i = 0; i < inMemory.Graph.Node.Count; i++)
        {
            CollectionAssert.AreEqual(inMemory.Graph.Node[i].ToByteArray(), streamed.Graph.Node[i].ToByteArray(), $"node {i}");
        }
        CollectionAssert.AreEqual(inMemory.Graph.Input.ToList(), streamed.Graph.Input.ToList());
        CollectionAssert.AreEqual(inMemory.Graph.Output.ToList(), streamed.Graph.Output.ToList());
        CollectionAssert.AreEqual(inMemory.Graph.ValueInfo.ToList(), streamed.Graph.ValueInfo.ToList());
        Assert.IsTrue(profile.QuantizeSeconds >= 0 && profile.FlushSeconds >= 0);

        string inMemoryPath = Path.Combine(_dir, "mem", "m.onnx");
        ModelIO.Save(inMemory, inMemoryPath);
        float[] a1 = OrtHelper.RunRandom(inMemoryPath)["y"];
        float[] b1 = OrtHelper.RunRandom(output)["y"];
        CollectionAssert.AreEqual(a1, b1);
    }

    [TestMethod]
    [DataRow(32, true)]
    [DataRow(32, false)]
    [DataRow(128, true)]
    [DataRow(128, false)]
    public void Int4StreamingGivesTheSameModelAsTheInMemoryPass(int blockSize, bool symmetric)
    {
        // K = 200: a partial last block for both block sizes, and an odd block count (7 for 32) for the packed zero points.
        ModelProto model = SmallChain(k: 200);
        string source = Path.Combine(_dir, "src", "m.onnx");
        SaveExternal(model, source);
        // The streaming path takes min/max block ranges (no MSE search): the in-memory pass matches it with MseScales off.
        var options = new Int4Options { BlockSize = blockSize, Symmetric = symmetric, AccuracyLevel = 4, MseScales = false };

        ModelProto inMemory = model.Clone();
        Int4Summary expected = Int4WeightQuantizer.Apply(inMemory, options, "m");
        string output = Path.Combine(_dir, "out", "m.onnx");
        Int4Summary actual = StreamingQuantizer.CompressInt4Weights(source, output, options, "m");

        Assert.AreEqual(2, actual.Quantized.Count);
        CollectionAssert.AreEqual(expected.Quantized.ToList(), actual.Quantized.ToList());
        Assert.AreEqual(expected.FloatWeightBytes, actual.FloatWeightBytes);
        Assert.AreEqual(expected.QuantizedWeightBytes, actual.QuantizedWeightBytes);
        ModelProto streamed = ModelIO.Load(output);
        ModelChecker.Validate(streamed, output);
        Assert.IsTrue(ModelProto.Parser.ParseFrom(File.ReadAllBytes(output)).Graph.Initializer.Any(TensorUtil.IsExternal));
        // The whole graph is byte-identical once the external tensors are read back inline (initializer for initializer,
        // node for node, opsets), except where the tensors' bytes live.
        static byte[] Inline(TensorProto t)
        {
            TensorProto c = t.Clone();
            c.ExternalData.Clear();
            c.DataLocation = TensorProto.Types.DataLocation.Default;
            return c.ToByteArray();
        }
        var expectedInits = inMemory.Graph.Initializer.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        var actualInits = streamed.Graph.Initializer.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        CollectionAssert.AreEqual(expectedInits.Select(t => t.Name).ToList(), actualInits.Select(t => t.Name).ToList());
        for (int i = 0; i < expectedInits.Count; i++)
        {
            CollectionAssert.AreEqual(Inline(expectedInits[i]), Inline(actualInits[i]), $"{expectedInits[i].Name} must be byte-identical to the in-memory pass");
        }
        Assert.IsTrue(actualInits.Any(t => t.Name == "w0_q4_scales"));
        Assert.AreEqual(!symmetric, actualInits.Any(t => t.Name == "w0_q4_zero_points"));
        Assert.AreEqual(inMemory.Graph.Node.Count, streamed.Graph.Node.Count);
        for (int i = 0; i < inMemory.Graph.Node.Count; i++)
        {
            CollectionAssert.AreEqual(inMemory.Graph.Node[i].ToByteArray(), streamed.Graph.Node[i].ToByteArray(), $"node {i}");
        }
        CollectionAssert.AreEqual(inMemory.OpsetImport.ToList(), streamed.OpsetImport.ToList());
        CollectionAssert.AreEqual(inMemory.Graph.Input.ToList(), streamed.Graph.Input.ToList());

        string inMemoryPath = Path.Combine(_dir, "mem", "m.onnx");
        ModelIO.Save(inMemory, inMemoryPath);
        float[] a1 = OrtHelper.RunRandom(inMemoryPath)["y"];
        float[] b1 = OrtHelper.RunRandom(output)["y"];
        CollectionAssert.AreEqual(a1, b1);
    }

    /// <summary>
    /// x[1,64] -> mm_ok(w_ok) -> mm_excl(w_ex, excluded) -> mm_small(w_small, 512 elements) and mm_shared(w_sh, also
    /// read by an Add); mm_dyn's weight is Relu(z) of a graph input: one eligible MatMul, four that stay float.
    /// </summary>
    private static ModelProto MixedMatMuls()
    {
        var g = new GraphProto { Name = "mixed" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 64));
        g.Input.Add(TinyModels.FloatValue("z", 64, 16));
        g.Output.Add(TinyModels.FloatValue("s", 1, 8));
        g.Output.Add(TinyModels.FloatValue("y2", 64, 64));
        g.Output.Add(TinyModels.FloatValue("d", 1, 16));
        g.Initializer.Add(TensorUtil.FromFloats("w_ok", TinyModels.RandomFloats(64 * 64, 11, 0.3f), 64, 64));
        g.Initializer.Add(TensorUtil.FromFloats("w_ex", TinyModels.RandomFloats(64 * 64, 12, 0.3f), 64, 64));
        g.Initializer.Add(TensorUtil.FromFloats("w_small", TinyModels.RandomFloats(64 * 8, 13, 0.3f), 64, 8));
        g.Initializer.Add(TensorUtil.FromFloats("w_sh", TinyModels.RandomFloats(64 * 64, 14, 0.3f), 64, 64));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w_ok"], ["h0"], "mm_ok"));
        g.Node.Add(TinyModels.Node("MatMul", ["h0", "w_ex"], ["h1"], "mm_excl"));
        g.Node.Add(TinyModels.Node("MatMul", ["h1", "w_small"], ["s"], "mm_small"));
        g.Node.Add(TinyModels.Node("MatMul", ["h1", "w_sh"], ["h2"], "mm_shared"));
        g.Node.Add(TinyModels.Node("Add", ["h2", "w_sh"], ["y2"], "add_sh"));
        g.Node.Add(TinyModels.Node("Relu", ["z"], ["zr"], "relu_z"));
        g.Node.Add(TinyModels.Node("MatMul", ["h0", "zr"], ["d"], "mm_dyn"));
        return TinyModels.Model(g);
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void StreamingAndInMemoryGiveTheSameSkipReasons(bool int4)
    {
        ModelProto model = MixedMatMuls();
        string source = Path.Combine(_dir, "src", "m.onnx");
        SaveExternal(model, source);
        string output = Path.Combine(_dir, "out", "m.onnx");
        IReadOnlyCollection<string> excluded = ["mm_excl"];
        List<SkippedNode> expected, actual;
        List<string> expectedQuantized, actualQuantized;
        if (int4)
        {
            var options = new Int4Options { MinimumWeightElements = 1024, ExcludedNodes = excluded };
            Int4Summary a = Int4WeightQuantizer.Apply(model.Clone(), options, "m");
            Int4Summary b = StreamingQuantizer.CompressInt4Weights(source, output, options, "m");
            (expected, actual) = ([.. a.Skipped], [.. b.Skipped]);
            (expectedQuantized, actualQuantized) = ([.. a.Quantized.Select(q => q.Node)], [.. b.Quantized.Select(q => q.Node)]);
        }
        else
        {
            var options = new QuantizationOptions { MinimumWeightElements = 1024, ExcludedNodes = excluded };
            QuantizationSummary a = Int8DynamicQuantizer.Apply(model.Clone(), options, "m");
            QuantizationSummary b = StreamingQuantizer.CompressInt8Dynamic(source, output, options, "m");
            (expected, actual) = ([.. a.Skipped], [.. b.Skipped]);
            (expectedQuantized, actualQuantized) = ([.. a.Quantized.Select(q => q.Node)], [.. b.Quantized.Select(q => q.Node)]);
        }
        CollectionAssert.AreEqual(new[] { "mm_ok" }, actualQuantized);
        CollectionAssert.AreEqual(expectedQuantized, actualQuantized);
        CollectionAssert.AreEquivalent(new[] { "mm_excl", "mm_small", "mm_shared", "mm_dyn" }, actual.Select(k => k.Node).ToList());
        CollectionAssert.AreEqual(expected, actual, "streaming: " + string.Join(" | ", actual) + "\nin memory: " + string.Join(" | ", expected));
        StringAssert.Contains(actual.Single(k => k.Node == "mm_shared").Reason, "shared with Add 'add_sh'");
        ModelChecker.Validate(ModelIO.Load(output), output);
    }

    [TestMethod]
    public void StreamingReportsACastWeightWithoutReadingIt()
    {
        // w_f = Cast(w, float) of a 2 MiB float16 weight (over the 1 MiB up to which non-float external tensors are read
        // into memory): the in-memory pass computes the float32 weight; the streaming path names the reason.
        var g = new GraphProto { Name = "chain" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 1024));
        g.Output.Add(TinyModels.FloatValue("y", 1, 1024));
        g.Initializer.Add(TinyModels.Float16("w", TinyModels.RandomFloats(1024 * 1024, 21, 0.05f), 1024, 1024));
        g.Node.Add(TinyModels.Node("Cast", ["w"], ["w_f"], "cast", TinyModels.IntAttr("to", (int)TensorProto.Types.DataType.Float)));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w_f"], ["y"], "mm"));
        string source = Path.Combine(_dir, "src", "m.onnx");
        SaveExternal(TinyModels.Model(g), source);
        QuantizationSummary s = StreamingQuantizer.CompressInt8Dynamic(source, Path.Combine(_dir, "out", "m.onnx"), QuantizationOptions.Default, "m");
        Assert.AreEqual(0, s.Quantized.Count);
        SkippedNode skip = s.Skipped.Single();
        Assert.AreEqual("mm", skip.Node);
        Assert.IsTrue(StreamingQuantizer.IsStreamingLimit(skip), skip.Reason);
        StringAssert.Contains(skip.Reason, "weight 'w_f' is not an initializer (it comes from Cast 'cast' of FLOAT16 external data)");
    }

    [TestMethod]
    public void Int4NonFiniteWeightIsCMPR0202AndNothingIsWritten()
    {
        string source = SaveChainWithW1Element7(float.PositiveInfinity);
        string outDir = Path.Combine(_dir, "out");
        var e = Assert.ThrowsExactly<CompressException>(() => StreamingQuantizer.CompressInt4Weights(source, Path.Combine(outDir, "m.onnx"), Int4Options.Default, "m"));
        Assert.AreEqual(DiagnosticCodes.NonFiniteWeights, e.Code);
        Assert.IsTrue(!Directory.Exists(outDir) || Directory.GetFiles(outDir).Length == 0, "no output and no temporary file may remain");
        var bad = Assert.ThrowsExactly<CompressException>(() => StreamingQuantizer.CompressInt4Weights(source, Path.Combine(outDir, "m.onnx"), new Int4Options { BlockSize = 48 }, "m"));
        Assert.AreEqual(DiagnosticCodes.InvalidOption, bad.Code);
    }

    [TestMethod]
    public void NonFiniteWeightIsCMPR0202AndNothingIsWritten()
    {
        string source = SaveChainWithW1Element7(float.NaN);
        string outDir = Path.Combine(_dir, "out");
        var e = Assert.ThrowsExactly<CompressException>(() => StreamingQuantizer.CompressInt8Dynamic(source, Path.Combine(outDir, "m.onnx"), QuantizationOptions.Default, "m"));
        Assert.AreEqual(DiagnosticCodes.NonFiniteWeights, e.Code);
        Assert.IsTrue(!Directory.Exists(outDir) || Directory.GetFiles(outDir).Length == 0, "no output and no temporary file may remain");
    }

    [TestMethod]
    public void OutputOverTheSourceIsRefused()
    {
        string source = Path.Combine(_dir, "m.onnx");
        SaveExternal(SmallChain(), source);
        byte[] data = File.ReadAllBytes(source + ".data");
        // Another model in the same folder whose data file would be "m.onnx.data" again.
        File.Copy(source, Path.Combine(_dir, "other.onnx"));
        var e = Assert.ThrowsExactly<CompressException>(() => StreamingQuantizer.CompressInt8Dynamic(Path.Combine(_dir, "other.onnx"), source, QuantizationOptions.Default, "m"));
        Assert.AreEqual(DiagnosticCodes.OutputIsSource, e.Code);
        CollectionAssert.AreEqual(data, File.ReadAllBytes(source + ".data"));
    }

    [TestMethod]
    public void SizeProbeCountsExternalData()
    {
        string source = Path.Combine(_dir, "m.onnx");
        SaveExternal(SmallChain(), source);
        long total = ModelIO.TotalBytesWithExternalData(source);
        Assert.AreEqual(new FileInfo(source).Length + (64 * 48 + 48 * 48 + 48) * 4, total);
        Assert.IsFalse(StreamingQuantizer.ShouldStream(source));
        Assert.IsTrue(StreamingQuantizer.ShouldStream(source, thresholdBytes: total));
        Assert.IsFalse(StreamingQuantizer.ShouldStream(source, thresholdBytes: total + 1));
    }

    // ------------------------------------------------------------------ the big model

    private const int Dim = 8192;
    private const int Layers = 10; // 10 x 8192 x 8192 x 4 B = 2.68 GB of float weights

    /// <summary>
    /// 2.68 GB of external float weights (ten parallel [8192, 8192] MatMuls on one input), written to the .data file
    /// in 32 MiB chunks; compressed with the streaming path; the output is checked lazily and run in ORT against the
    /// original with a per-column bound computed from the stored scales. Peak RSS of the compression is measured
    /// (VmHWM reset through /proc/self/clear_refs on Linux). Set COMPRESSONBUILD_SKIP_SCALE=1 to skip by hand.
    /// </summary>
    [TestMethod]
    [Timeout(900_000, CooperativeCancellation = true)]
    public void TwoAndAHalfGigabyteModelStreamsWithinBoundedMemory()
    {
        if (Environment.GetEnvironmentVariable("COMPRESSONBUILD_SKIP_SCALE") == "1")
        {
            Assert.Inconclusive("COMPRESSONBUILD_SKIP_SCALE=1");
        }
        long weightBytes = (long)Layers * Dim * Dim * 4;
        long free = new DriveInfo(Path.GetPathRoot(_dir)!).AvailableFreeSpace;
        Assert.IsTrue(free > weightBytes * 3 / 2 + (1L << 30), $"needs {weightBytes * 3 / 2 / (1 << 20)} MiB of free disk in {_dir}, has {free / (1 << 20)} MiB");

        var watch = Stopwatch.StartNew();
        string source = Path.Combine(_dir, "src", "big.onnx");
        WriteBigModel(source);
        double generateSeconds = watch.Elapsed.TotalSeconds;
        Assert.IsTrue(new FileInfo(source + ".data").Length >= 2_500_000_000L);

        GC.Collect();
        bool resetPeak = ResetPeakWorkingSet();
        long rssBefore = CurrentRss();
        watch.Restart();
        string output = Path.Combine(_dir, "out", "big.onnx");
        QuantizationSummary summary = StreamingQuantizer.CompressInt8Dynamic(source, output, QuantizationOptions.Default, "big.onnx");
        double compressSeconds = watch.Elapsed.TotalSeconds;
        long peak;
        using (var self = Process.GetCurrentProcess())
        {
            self.Refresh();
            peak = self.PeakWorkingSet64;
        }
        long largest = (long)Dim * Dim * 4;

        Assert.AreEqual(Layers, summary.Quantized.Count);
        LazyModel lazy = ModelIO.LoadLazy(output);
        ModelChecker.Validate(lazy.Model, output);
        long outBytes = new FileInfo(output).Length + new FileInfo(output + ".data").Length;
        Assert.IsTrue(outBytes < weightBytes / 3, $"output {outBytes} bytes");

        // ORT: original and compressed on one input; per column j of layer l the difference is bounded by the
        // weight rounding (s_j / 2 per weight) plus the activation rounding (at most one step_x per element with the rounded zero point, |w| <= 127 s_j).
        watch.Restart();
        float[] x = TinyModels.RandomFloats(Dim, 77, 1f);
        Dictionary<string, float[]> original = Run(source, x);
        Dictionary<string, float[]> compressed = Run(output, x);
        double ortSeconds = watch.Elapsed.TotalSeconds;
        float sumAbsX = x.Sum(MathF.Abs);
        float stepX = (Math.Max(x.Max(), 0) - Math.Min(x.Min(), 0)) / 255f;
        double worst = 0;
        for (int l = 0; l < Layers; l++)
        {
            float[] scales = TensorUtil.ToFloatArray(lazy.Model.Graph.Initializer.Single(t => t.Name == $"w{l}_scale"));
            float[] a = original[$"y{l}"];
            float[] b = compressed[$"y{l}"];
            for (int j = 0; j < Dim; j++)
            {
                double bound = scales[j] * (sumAbsX / 2 + stepX * Dim * 127 + stepX * Dim / 2) * 1.01 + 1e-4;
                double diff = Math.Abs(a[j] - b[j]);
                worst = Math.Max(worst, diff / bound);
                Assert.IsTrue(diff <= bound, $"y{l}[{j}]: {a[j]} vs {b[j]}, bound {bound}");
            }
        }

        string report = $"SCALE {weightBytes / 1e9:F2} GB of float weights in {Layers} tensors of {largest >> 20} MiB: generate {generateSeconds:F1} s, " +
            $"stream-compress {compressSeconds:F1} s, peak RSS during compression {peak >> 20} MiB (reset: {resetPeak}, before {rssBefore >> 20} MiB), " +
            $"output {outBytes / 1e6:F0} MB, ORT load+run of both {ortSeconds:F1} s, worst |diff|/bound {worst:F3}";
        TestContext.WriteLine(report);
        Console.WriteLine(report);
        Assert.IsTrue(peak < largest + (1_536L << 20), report);
        if (resetPeak)
        {
            // Int8 reads a weight whole into one of two buffers (one read ahead while the other is quantized), so the
            // working set grows by up to two weights (at most WholeWeightBytes each) plus the codes and chunk buffers.
            long buffers = 2 * Math.Min(largest, StreamingQuantizer.WholeWeightBytes);
            Assert.IsTrue(peak - rssBefore < buffers + (512L << 20), $"the streaming path must not grow the working set by more than two read buffers ({buffers >> 20} MiB) + 512 MiB: " + report);
        }

        // The same generated model through the int4 (MatMulNBits) streaming path: block 32, symmetric (the defaults).
        compressed.Clear();
        lazy = null!;
        GC.Collect();
        bool resetPeak4 = ResetPeakWorkingSet();
        long rssBefore4 = CurrentRss();
        watch.Restart();
        string output4 = Path.Combine(_dir, "out4", "big.onnx");
        Int4Summary summary4 = StreamingQuantizer.CompressInt4Weights(source, output4, Int4Options.Default, "big.onnx");
        double compress4Seconds = watch.Elapsed.TotalSeconds;
        long peak4;
        using (var self = Process.GetCurrentProcess())
        {
            self.Refresh();
            peak4 = self.PeakWorkingSet64;
        }
        Assert.AreEqual(Layers, summary4.Quantized.Count);
        long out4Bytes = new FileInfo(output4).Length + new FileInfo(output4 + ".data").Length;
        Assert.IsTrue(out4Bytes < weightBytes / 6, $"int4 output {out4Bytes} bytes");

        // Symmetric int4 rounds each weight by at most one step |s| (half a step, or a whole one where +8 clamps to
        // +7), so |y4[j] - y[j]| <= sum_k |x_k| |s_{j, k/32}| plus float rounding; the activations stay float.
        watch.Restart();
        Dictionary<string, float[]> compressed4 = Run(output4, x);
        double ort4Seconds = watch.Elapsed.TotalSeconds;
        ModelProto loaded4 = ModelIO.Load(output4);
        ModelChecker.Validate(loaded4, output4);
        int block = Int4Options.Default.BlockSize;
        int blocks = Dim / block;
        double worst4 = 0;
        for (int l = 0; l < Layers; l++)
        {
            float[] scales = TensorUtil.ToFloatArray(loaded4.Graph.Initializer.Single(t => t.Name == $"w{l}_q4_scales"));
            float[] a = original[$"y{l}"];
            float[] b = compressed4[$"y{l}"];
            for (int j = 0; j < Dim; j++)
            {
                double sum = 0;
                for (int k = 0; k < Dim; k++)
                {
                    sum += Math.Abs(x[k]) * Math.Abs(scales[j * blocks + k / block]);
                }
                double bound = sum * 1.01 + 1e-4;
                double diff = Math.Abs(a[j] - b[j]);
                worst4 = Math.Max(worst4, diff / bound);
                Assert.IsTrue(diff <= bound, $"int4 y{l}[{j}]: {a[j]} vs {b[j]}, bound {bound}");
            }
        }
        string report4 = $"SCALE int4 (block {block}, symmetric): stream-compress {compress4Seconds:F1} s, peak RSS during compression {peak4 >> 20} MiB " +
            $"(reset: {resetPeak4}, before {rssBefore4 >> 20} MiB), output {out4Bytes / 1e6:F0} MB, ORT load+run {ort4Seconds:F1} s, worst |diff|/bound {worst4:F3}";
        TestContext.WriteLine(report4);
        Console.WriteLine(report4);
        Assert.IsTrue(peak4 < largest + (1_536L << 20), report4);
    }

    private static Dictionary<string, float[]> Run(string path, float[] x)
    {
        using var options = new SessionOptions { IntraOpNumThreads = 2, GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_BASIC };
        using var session = new InferenceSession(path, options);
        var input = NamedOnnxValue.CreateFromTensor("x", new DenseTensor<float>(x, [1, Dim]));
        using IDisposableReadOnlyCollection<DisposableNamedOnnxValue> results = session.Run([input]);
        return results.ToDictionary(r => r.Name, r => ((Tensor<float>)r.Value).ToArray());
    }

    private static void WriteBigModel(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var g = new GraphProto { Name = "big" };
        g.Input.Add(TinyModels.FloatValue("x", 1, Dim));
        long layerBytes = (long)Dim * Dim * 4;
        float amplitude = MathF.Sqrt(3f / Dim);
        byte[] chunk = new byte[32 << 20];
        Span<float> floats = MemoryMarshal.Cast<byte, float>(chunk.AsSpan());
        ulong state = 0x9E3779B97F4A7C15UL;
        using (var data = new FileStream(path + ".data", FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
        {
            for (int l = 0; l < Layers; l++)
            {
                for (long written = 0; written < layerBytes; written += chunk.Length)
                {
                    for (int i = 0; i < floats.Length; i++)
                    {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        floats[i] = ((state >> 40) / (float)(1 << 24) * 2 - 1) * amplitude;
                    }
                    data.Write(chunk, 0, (int)Math.Min(chunk.Length, layerBytes - written));
                }
                var t = new TensorProto { Name = $"w{l}", DataType = (int)TensorProto.Types.DataType.Float, DataLocation = TensorProto.Types.DataLocation.External };
                t.Dims.Add(Dim);
                t.Dims.Add(Dim);
                t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = "big.onnx.data" });
                t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = (l * layerBytes).ToString(System.Globalization.CultureInfo.InvariantCulture) });
                t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = layerBytes.ToString(System.Globalization.CultureInfo.InvariantCulture) });
                g.Initializer.Add(t);
                g.Node.Add(TinyModels.Node("MatMul", ["x", $"w{l}"], [$"y{l}"], $"mm{l}"));
                g.Output.Add(TinyModels.FloatValue($"y{l}", 1, Dim));
            }
        }
        File.WriteAllBytes(path, TinyModels.Model(g).ToByteArray());
    }

    /// <summary>Linux: writing 5 to /proc/self/clear_refs resets VmHWM (what PeakWorkingSet64 reads) to the current RSS.</summary>
    private static bool ResetPeakWorkingSet()
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static long CurrentRss()
    {
        using var self = Process.GetCurrentProcess();
        self.Refresh();
        return self.WorkingSet64;
    }
}
