using System.Security.Cryptography;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Tests.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;

namespace CompressOnBuild.Core.Tests.Scale;

/// <summary>
/// Int8Dynamic and Int4Weights through the streaming path (<see cref="StreamingQuantizer.CompressInt8Dynamic"/>,
/// <see cref="StreamingQuantizer.CompressInt4Weights"/>) on a tiny model with external data and every layer operator
/// the in-memory passes quantize besides MatMul (Gemm with and without transB, with bias; Conv with bias): the same
/// layers, initializers (byte for byte), nodes and ONNX Runtime outputs as the in-memory pass.
/// </summary>
[TestClass]
public sealed class StreamingLayersTests
{
    private TempDirectory _temp = null!;

    private string _dir => _temp.Path;

    [TestInitialize]
    public void Init() => _temp = new TempDirectory("cob-layers-stream");

    [TestCleanup]
    public void Cleanup() => _temp.Delete();

    /// <summary>
    /// x[1,3,8,8] -> Conv(wc[16,3,3,3], bc, pads 1) -> Relu -> Flatten -> MatMul(w0[1024,64]) -> Relu
    /// -> Gemm(w1[48,64] transB, c1[48], alpha 0.5) -> Relu -> Gemm(w2[48,64], c2[64], beta 2) -> y[1,64].
    /// w0 and w2 both have 64 outputs (one shared zero-point tensor for unsigned int8 codes). Opset 13.
    /// </summary>
    private static ModelProto Layers()
    {
        var g = new GraphProto { Name = "layers" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 3, 8, 8));
        g.Output.Add(TinyModels.FloatValue("y", 1, 64));
        g.Initializer.Add(TensorUtil.FromFloats("wc", TinyModels.RandomFloats(16 * 3 * 3 * 3, 11, 0.3f), 16, 3, 3, 3));
        g.Initializer.Add(TensorUtil.FromFloats("bc", TinyModels.RandomFloats(16, 12, 0.1f), 16));
        g.Initializer.Add(TensorUtil.FromFloats("w0", TinyModels.RandomFloats(1024 * 64, 13, 0.05f), 1024, 64));
        g.Initializer.Add(TensorUtil.FromFloats("w1", TinyModels.RandomFloats(48 * 64, 14, 0.2f), 48, 64));
        g.Initializer.Add(TensorUtil.FromFloats("c1", TinyModels.RandomFloats(48, 15, 0.1f), 48));
        g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(48 * 64, 16, 0.2f), 48, 64));
        g.Initializer.Add(TensorUtil.FromFloats("c2", TinyModels.RandomFloats(64, 17, 0.1f), 64));
        g.Node.Add(TinyModels.Node("Conv", ["x", "wc", "bc"], ["c"], "conv", TinyModels.IntsAttr("pads", 1, 1, 1, 1)));
        g.Node.Add(TinyModels.Node("Relu", ["c"], ["cr"], "relu_c"));
        g.Node.Add(TinyModels.Node("Flatten", ["cr"], ["f"], "flatten"));
        g.Node.Add(TinyModels.Node("MatMul", ["f", "w0"], ["h0"], "mm0"));
        g.Node.Add(TinyModels.Node("Relu", ["h0"], ["h0r"], "relu0"));
        g.Node.Add(TinyModels.Node("Gemm", ["h0r", "w1", "c1"], ["h1"], "gemm1", TinyModels.IntAttr("transB", 1), TinyModels.FloatAttr("alpha", 0.5f)));
        g.Node.Add(TinyModels.Node("Relu", ["h1"], ["h1r"], "relu1"));
        g.Node.Add(TinyModels.Node("Gemm", ["h1r", "w2", "c2"], ["y"], "gemm2", TinyModels.FloatAttr("beta", 2f)));
        return TinyModels.Model(g);
    }

    /// <summary>Every tensor of 64 bytes or more in "&lt;path&gt;.data" (the biases too).</summary>
    private static void SaveExternal(ModelProto model, string path) =>
        ModelIO.Save(model, path, new ModelSaveOptions { ForceExternalData = true, ExternalTensorMinBytes = 64 });

    private static byte[] Inline(TensorProto t)
    {
        TensorProto c = t.Clone();
        c.ExternalData.Clear();
        c.DataLocation = TensorProto.Types.DataLocation.Default;
        return c.ToByteArray();
    }

    private static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    /// <summary>Initializers (sorted by name, byte for byte with external data read back), nodes, opsets and ORT outputs of the two models are the same.</summary>
    private void AssertSameModel(ModelProto inMemory, string output, bool external = true)
    {
        ModelProto streamed = ModelIO.Load(output);
        ModelChecker.Validate(streamed, output);
        ModelProto onDisk = ModelProto.Parser.ParseFrom(File.ReadAllBytes(output));
        Assert.AreEqual(external, onDisk.Graph.Initializer.Any(TensorUtil.IsExternal), "the big tensors are in the data file, only they");
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
            Assert.AreEqual(inMemory.Graph.Node[i], streamed.Graph.Node[i], $"node {i}");
        }
        CollectionAssert.AreEquivalent(inMemory.OpsetImport.Select(o => (o.Domain, o.Version)).ToList(), streamed.OpsetImport.Select(o => (o.Domain, o.Version)).ToList());

        string inMemoryPath = Path.Combine(_dir, "mem", "m.onnx");
        ModelIO.Save(inMemory, inMemoryPath);
        CollectionAssert.AreEqual(OrtHelper.RunRandom(inMemoryPath)["y"], OrtHelper.RunRandom(output)["y"]);
    }

    [TestMethod]
    [DataRow(WeightEncoding.UInt8, false)]
    [DataRow(WeightEncoding.UInt8, true)]
    [DataRow(WeightEncoding.Int8, false)]
    [DataRow(WeightEncoding.Int8PairBounded, true)]
    public void Int8DynamicStreamsGemmAndConvLikeTheInMemoryPass(WeightEncoding encoding, bool chunked)
    {
        ModelProto model = Layers();
        string source = Path.Combine(_dir, "src", "m.onnx");
        SaveExternal(model, source);
        string before = Hash(source + ".data");
        // The chunked MatMul stores float32 scales; the in-memory pass does too when asked (the lowered layers follow the options either way).
        var options = new QuantizationOptions { WeightEncoding = encoding, Float16Scales = false };
        ModelProto inMemory = model.Clone();
        QuantizationSummary expected = Int8DynamicQuantizer.Apply(inMemory, options, "m");
        CollectionAssert.AreEqual(new[] { "conv", "mm0", "gemm1", "gemm2" }, expected.Quantized.Select(q => q.Node).ToList());

        long saved = StreamingQuantizer.WholeWeightLimit;
        StreamingQuantizer.WholeWeightLimit = chunked ? 0 : saved; // 0: MatMul weights take the two-pass chunked path
        QuantizationSummary actual;
        string output = Path.Combine(_dir, "out", "m.onnx");
        try
        {
            actual = StreamingQuantizer.CompressInt8Dynamic(source, output, options, "m");
        }
        finally
        {
            StreamingQuantizer.WholeWeightLimit = saved;
        }

        Assert.AreEqual(before, Hash(source + ".data"), "the source is never modified");
        CollectionAssert.AreEqual(expected.Quantized.Select(q => (q.Node, q.OpType, q.Weight, q.Rows, q.Columns)).ToList(),
            actual.Quantized.Select(q => (q.Node, q.OpType, q.Weight, q.Rows, q.Columns)).ToList());
        for (int i = 0; i < expected.Quantized.Count; i++)
        {
            Assert.AreEqual(expected.Quantized[i].MaxAbsWeightError, actual.Quantized[i].MaxAbsWeightError, 1e-7f, expected.Quantized[i].Node);
        }
        Assert.IsEmpty(actual.Skipped, string.Join("; ", actual.Skipped));
        Assert.AreEqual(expected.FloatWeightBytes, actual.FloatWeightBytes);
        Assert.AreEqual(expected.QuantizedWeightBytes, actual.QuantizedWeightBytes);
        ModelProto streamed = ModelIO.Load(output);
        Assert.IsFalse(streamed.Graph.Initializer.Any(t => t.Name is "wc" or "bc" or "w0" or "w1" or "c1" or "w2" or "c2"), "the float weights and biases are gone");
        // One scalar uint8 zero point for Conv; for unsigned codes one per output length, which MatMul w0 and Gemm w2
        // (64 outputs each, the first chunked, the second lowered in memory) share, as in the in-memory pass.
        Assert.AreEqual(encoding == WeightEncoding.UInt8 ? 3 : 1, streamed.Graph.Initializer.Count(t => t.Name.EndsWith("_zero_point", StringComparison.Ordinal)));
        if (encoding == WeightEncoding.UInt8)
        {
            NodeProto mm0 = streamed.Graph.Node.Single(n => n.Name == "mm0"), gemm2 = streamed.Graph.Node.Single(n => n.Name == "gemm2");
            Assert.AreEqual("w0_zero_point", mm0.Input[3]);
            Assert.AreEqual(mm0.Input[3], gemm2.Input[3]);
        }
        AssertSameModel(inMemory, output);
    }

    [TestMethod]
    [DataRow(32, true)]
    [DataRow(32, false)]
    public void Int4StreamsGemmLikeTheInMemoryPass(int blockSize, bool symmetric)
    {
        ModelProto model = Layers();
        string source = Path.Combine(_dir, "src", "m.onnx");
        SaveExternal(model, source);
        // The chunked MatMul takes min/max block ranges: the in-memory pass matches it with MseScales off.
        var options = new Int4Options { BlockSize = blockSize, Symmetric = symmetric, MseScales = false };
        ModelProto inMemory = model.Clone();
        Int4Summary expected = Int4WeightQuantizer.Apply(inMemory, options, "m");
        CollectionAssert.AreEqual(new[] { "mm0", "gemm1", "gemm2" }, expected.Quantized.Select(q => q.Node).ToList());
        string output = Path.Combine(_dir, "out", "m.onnx");
        Int4Summary actual = StreamingQuantizer.CompressInt4Weights(source, output, options, "m");

        CollectionAssert.AreEqual(expected.Quantized.ToList(), actual.Quantized.ToList());
        CollectionAssert.AreEqual(expected.Skipped.ToList(), actual.Skipped.ToList());
        Assert.AreEqual(expected.FloatWeightBytes, actual.FloatWeightBytes);
        Assert.AreEqual(expected.QuantizedWeightBytes, actual.QuantizedWeightBytes);
        AssertSameModel(inMemory, output);
    }

    public static IEnumerable<object[]> BodyModels() => Quantization.SubgraphWeightTests.Models().Select(m => new[] { m[0], m[1] });

    [TestMethod]
    [DynamicData(nameof(BodyModels))]
    public void LayersInsideBodiesAreQuantizedLikeTheInMemoryPass(string name, Func<ModelProto> build)
    {
        // If/Loop/Scan bodies (weights in the body or moved down from the outer graph), with external data.
        ModelProto model = build();
        string source = Path.Combine(_dir, "src", "m.onnx");
        SaveExternal(model, source);
        foreach (bool int4 in new[] { false, true })
        {
            ModelProto inMemory = model.Clone();
            string output = Path.Combine(_dir, int4 ? "out4" : "out8", "m.onnx");
            (List<QuantizedNode> expected, List<QuantizedNode> actual, List<SkippedNode> skipped) = BothWays(inMemory, source, output, int4, name);
            Assert.IsNotEmpty(expected, name);
            CollectionAssert.AreEqual(expected, actual, $"{name} int4={int4}: " + string.Join("; ", skipped));
            ModelProto streamed = ModelIO.Load(output);
            ModelChecker.Validate(streamed, output);
            var expectedTensors = ModelWalker.Tensors(inMemory).OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
            var actualTensors = ModelWalker.Tensors(streamed).OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
            CollectionAssert.AreEqual(expectedTensors.Select(t => t.Name).ToList(), actualTensors.Select(t => t.Name).ToList(), name);
            for (int i = 0; i < expectedTensors.Count; i++)
            {
                CollectionAssert.AreEqual(Inline(expectedTensors[i]), Inline(actualTensors[i]), $"{name}: {expectedTensors[i].Name}");
            }
            string inMemoryPath = Path.Combine(_dir, int4 ? "mem4" : "mem8", "m.onnx");
            ModelIO.Save(inMemory, inMemoryPath);
            CollectionAssert.AreEqual(OrtHelper.RunRandom(inMemoryPath)["y"], OrtHelper.RunRandom(output)["y"], name);
        }
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void WeightsInConstantNodesAndReshapeChainsStreamLikeTheInMemoryPass(bool int4)
    {
        // x[1,64] -> MatMul(weight from a Constant node, [64,48]) -> Relu -> Gemm(transB, weight Reshape(w_flat[1536]
        // external, [32,48]), c) -> y[1,32]. In memory the Reshape is folded first; streaming resolves it (same tensor).
        var g = new GraphProto { Name = "chains" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 64));
        g.Output.Add(TinyModels.FloatValue("y", 1, 32));
        var constant = TinyModels.Node("Constant", [], ["wc"], "const_w");
        constant.Attribute.Add(new AttributeProto { Name = "value", Type = AttributeProto.Types.AttributeType.Tensor, T = TensorUtil.FromFloats("wc", TinyModels.RandomFloats(64 * 48, 31, 0.2f), 64, 48) });
        g.Node.Add(constant);
        g.Initializer.Add(TensorUtil.FromFloats("w_flat", TinyModels.RandomFloats(32 * 48, 32, 0.2f), 32 * 48));
        g.Initializer.Add(TensorUtil.FromInt64("shape", [32, 48], 2));
        g.Initializer.Add(TensorUtil.FromFloats("c", TinyModels.RandomFloats(32, 33, 0.1f), 32));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "wc"], ["h"], "mm"));
        g.Node.Add(TinyModels.Node("Relu", ["h"], ["hr"], "relu"));
        g.Node.Add(TinyModels.Node("Reshape", ["w_flat", "shape"], ["w_r"], "reshape"));
        g.Node.Add(TinyModels.Node("Gemm", ["hr", "w_r", "c"], ["y"], "gemm", TinyModels.IntAttr("transB", 1)));
        ModelProto model = TinyModels.Model(g);
        string source = Path.Combine(_dir, "src", "m.onnx");
        SaveExternal(model, source);
        Assert.IsTrue(TensorUtil.IsExternal(ModelProto.Parser.ParseFrom(File.ReadAllBytes(source)).Graph.Initializer.Single(t => t.Name == "w_flat")));
        ModelProto inMemory = model.Clone();
        string output = Path.Combine(_dir, "out", "m.onnx");
        (List<QuantizedNode> expected, List<QuantizedNode> actual, List<SkippedNode> skipped) = BothWays(inMemory, source, output, int4, "m");
        CollectionAssert.AreEqual(new[] { "mm", "gemm" }, expected.Select(q => q.Node).ToList());
        CollectionAssert.AreEqual(expected, actual, string.Join("; ", skipped));
        AssertSameModel(inMemory, output, external: false); // every quantized tensor is under 4 KiB, the float weights are gone
        Assert.IsFalse(File.Exists(output + ".data"), "no data file is left when nothing refers to it");
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void WeightsBehindATransposeOfExternalDataStreamLikeTheInMemoryPass(bool int4)
    {
        // tf2onnx's layout: Transpose(w) -> MatMul, and a Transpose feeding a transB Gemm. In memory the Transposes are
        // folded first; streaming resolves each to a placeholder computed when it is read (and dropped).
        var g = new GraphProto { Name = "t" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 64));
        g.Output.Add(TinyModels.FloatValue("y", 1, 48));
        g.Initializer.Add(TensorUtil.FromFloats("w", TinyModels.RandomFloats(32 * 64, 21, 0.3f), 32, 64));
        g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(32 * 48, 22, 0.3f), 32, 48));
        g.Initializer.Add(TensorUtil.FromFloats("c2", TinyModels.RandomFloats(48, 23, 0.1f), 48));
        g.Node.Add(TinyModels.Node("Transpose", ["w"], ["w_t"], "tr"));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w_t"], ["h"], "mm"));
        g.Node.Add(TinyModels.Node("Relu", ["h"], ["hr"], "relu"));
        g.Node.Add(TinyModels.Node("Transpose", ["w2"], ["w2_t"], "tr2"));
        g.Node.Add(TinyModels.Node("Gemm", ["hr", "w2_t", "c2"], ["y"], "gemm", TinyModels.IntAttr("transB", 1)));
        string source = Path.Combine(_dir, "src", "m.onnx");
        ModelProto model = TinyModels.Model(g);
        SaveExternal(model, source);
        string output = Path.Combine(_dir, "out", "m.onnx");
        ModelProto inMemory = model.Clone();
        (List<QuantizedNode> expected, List<QuantizedNode> actual, List<SkippedNode> skipped) = BothWays(inMemory, source, output, int4, "m", int4BlockSize: 16);
        CollectionAssert.AreEqual(new[] { "mm", "gemm" }, expected.Select(q => q.Node).ToList());
        CollectionAssert.AreEqual(expected, actual, string.Join("; ", skipped));
        Assert.IsEmpty(skipped);
        AssertSameModel(inMemory, output, external: false); // every quantized tensor is under 4 KiB, the float weights are gone
    }

    [TestMethod]
    public void WeightsBehindACastOfExternalDataStayFloatWithTheStreamingReason()
    {
        // A Cast of an external float16 weight (2 MiB: non-float external tensors up to 1 MiB are read into memory first)
        // would be computed whole when its site is found and kept until the pass ends (every such weight at once): the
        // streaming path leaves it float and says it is its own limit.
        var g = new GraphProto { Name = "c" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 1024));
        g.Output.Add(TinyModels.FloatValue("y", 1, 32));
        g.Initializer.Add(TinyModels.Float16("w", TinyModels.RandomFloats(1024 * 1024, 21, 0.05f), 1024, 1024));
        g.Initializer.Add(TensorUtil.FromFloats("w2", TinyModels.RandomFloats(32 * 1024, 22, 0.05f), 32, 1024));
        g.Node.Add(TinyModels.Node("Cast", ["w"], ["w_f"], "cast", TinyModels.IntAttr("to", (int)TensorProto.Types.DataType.Float)));
        g.Node.Add(TinyModels.Node("Gemm", ["x", "w_f"], ["h"], "gemm", TinyModels.IntAttr("transB", 1)));
        g.Node.Add(TinyModels.Node("Gemm", ["h", "w2"], ["y"], "gemm2", TinyModels.IntAttr("transB", 1)));
        string source = Path.Combine(_dir, "src", "m.onnx");
        ModelProto model = TinyModels.Model(g);
        SaveExternal(model, source);
        string output = Path.Combine(_dir, "out", "m.onnx");
        QuantizationSummary s = StreamingQuantizer.CompressInt8Dynamic(source, output, QuantizationOptions.Default, "m");
        CollectionAssert.AreEqual(new[] { "gemm2" }, s.Quantized.Select(q => q.Node).ToList());
        SkippedNode skip = s.Skipped.Single();
        Assert.AreEqual("gemm", skip.Node);
        Assert.IsTrue(StreamingQuantizer.IsStreamingLimit(skip), skip.Reason);
        StringAssert.Contains(skip.Reason, "weight 'w_f' is not an initializer (it comes from Cast 'cast' of FLOAT16 external data)");
        ModelProto streamed = ModelIO.Load(output);
        Assert.IsTrue(streamed.Graph.Initializer.Any(t => t.Name == "w"), "the float16 weight stays, copied through");
        // The same outputs as the in-memory pass with that layer excluded.
        ModelProto inMemory = model.Clone();
        Int8DynamicQuantizer.Apply(inMemory, new QuantizationOptions { ExcludedNodes = ["gemm"] }, "m");
        string inMemoryPath = Path.Combine(_dir, "mem", "m.onnx");
        ModelIO.Save(inMemory, inMemoryPath);
        CollectionAssert.AreEqual(OrtHelper.RunRandom(inMemoryPath)["y"], OrtHelper.RunRandom(output)["y"]);
    }

    /// <summary>
    /// Quantizes <paramref name="inMemory"/> in place with the in-memory pass and <paramref name="source"/> (the same model
    /// with external data) with the streaming path into <paramref name="output"/>: int4 (min/max block scales, which the
    /// chunked kernel uses) or int8 dynamic (float32 scales). Returns both passes' quantized layers and the streaming skips.
    /// </summary>
    private static (List<QuantizedNode> Expected, List<QuantizedNode> Actual, List<SkippedNode> Skipped) BothWays(
        ModelProto inMemory, string source, string output, bool int4, string name, int int4BlockSize = 32)
    {
        if (int4)
        {
            var options = new Int4Options { MseScales = false, BlockSize = int4BlockSize };
            List<QuantizedNode> expected = [.. Int4WeightQuantizer.Apply(inMemory, options, name).Quantized];
            Int4Summary s = StreamingQuantizer.CompressInt4Weights(source, output, options, name);
            return (expected, [.. s.Quantized], [.. s.Skipped]);
        }
        var int8 = new QuantizationOptions { Float16Scales = false };
        List<QuantizedNode> expected8 = [.. Int8DynamicQuantizer.Apply(inMemory, int8, name).Quantized];
        QuantizationSummary summary = StreamingQuantizer.CompressInt8Dynamic(source, output, int8, name);
        return (expected8, [.. summary.Quantized], [.. summary.Skipped]);
    }
}
