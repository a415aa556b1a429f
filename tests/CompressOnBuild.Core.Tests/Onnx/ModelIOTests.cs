using CompressOnBuild.Core;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;

namespace CompressOnBuild.Core.Tests.Onnx;

[TestClass]
public sealed class ModelIOTests
{
    private TempDirectory _temp = null!;

    public TestContext TestContext { get; set; } = null!;

    private string _dir => _temp.Path;

    [TestInitialize]
    public void Init() => _temp = new TempDirectory("cob-io");

    [TestCleanup]
    public void Cleanup() => _temp.Delete();

    public static IEnumerable<object[]> CorpusModels()
    {
        foreach (string id in new[] { "fashion-mlp", "mnist-8", "mnist-lenet5", "mnist-mlp-gemm", "mobilenetv2-int8", "squeezenet-fp16" })
        {
            yield return [id];
        }
    }

    [TestMethod]
    public void CorpusHasExactlyTheModelsThisTestCovers()
    {
        // If the corpus gains a model, the round-trip list above must grow with it.
        CollectionAssert.AreEquivalent(CorpusModels().Select(o => (string)o[0]).ToList(), Corpus.AllModelIds().ToList());
    }

    [TestMethod]
    [DynamicData(nameof(CorpusModels))]
    public void CorpusModelRoundTripsFaithfully(string id)
    {
        string source = Corpus.Model(id);
        byte[] sourceBytes = File.ReadAllBytes(source);
        ModelProto loaded = ModelIO.Load(source);
        ModelChecker.Validate(loaded, source);
        string saved = Path.Combine(_dir, id + ".onnx");
        ModelIO.Save(loaded, saved);

        ModelProto reloaded = ModelIO.Load(saved);
        Assert.AreEqual(loaded, reloaded, "load -> save -> load must give the same message (nodes, attributes, initializers, opsets, metadata, doc strings, unknown fields)");
        // Protobuf serialization of the same message is canonical in Google.Protobuf: equal bytes except field order of the original writer.
        Assert.AreEqual(ModelProto.Parser.ParseFrom(sourceBytes), reloaded);
        CollectionAssert.AreEqual(sourceBytes, File.ReadAllBytes(source), "the source model must not be modified");

        Dictionary<string, float[]> before = OrtHelper.RunRandom(source);
        Dictionary<string, float[]> after = OrtHelper.RunRandom(saved);
        CollectionAssert.AreEquivalent(before.Keys.ToList(), after.Keys.ToList());
        foreach ((string name, float[] values) in before)
        {
            CollectionAssert.AreEqual(values, after[name], $"output '{name}' must be bit-identical after a round trip");
        }
    }

    [TestMethod]
    public void RoundTripKeepsEveryFieldKindIncludingUnknownFields()
    {
        ModelProto m = TinyModels.Mlp();
        m.DocString = "model doc";
        m.MetadataProps.Add(new StringStringEntryProto { Key = "author", Value = "tests" });
        m.Graph.DocString = "graph doc";
        m.Graph.Node[0].DocString = "node doc";
        m.Graph.Node[0].MetadataProps.Add(new StringStringEntryProto { Key = "k", Value = "v" });
        m.Functions.Add(new FunctionProto { Name = "f", Domain = "custom" });
        m.TrainingInfo.Add(new TrainingInfoProto { Algorithm = new GraphProto { Name = "train" } });
        m.Graph.SparseInitializer.Add(new SparseTensorProto
        {
            Values = TensorUtil.FromFloats("sparse", [1f, 2f], 2),
            Indices = TensorUtil.FromInt64("sparse_idx", [1, 5], 2),
            Dims = { 8 },
        });
        byte[] bytes = m.ToByteArray();
        // Append an unknown field (number 999, varint 42) as a newer ONNX might write it.
        var withUnknown = new MemoryStream();
        withUnknown.Write(bytes);
        var cos = new CodedOutputStream(withUnknown, leaveOpen: true);
        cos.WriteTag(999, WireFormat.WireType.Varint);
        cos.WriteInt64(42);
        cos.Flush();
        string path = Path.Combine(_dir, "full.onnx");
        File.WriteAllBytes(path, withUnknown.ToArray());

        ModelProto loaded = ModelIO.Load(path);
        string saved = Path.Combine(_dir, "full-saved.onnx");
        ModelIO.Save(loaded, saved);
        byte[] savedBytes = File.ReadAllBytes(saved);
        CollectionAssert.AreEqual(withUnknown.ToArray(), savedBytes, "a model written by Google.Protobuf must come back byte for byte, unknown field included");
    }

    [TestMethod]
    public void ExternalDataIsWrittenAndReadBackAndOrtRunsIt()
    {
        ModelProto m = TinyModels.Mlp(inF: 64, hidden: 32);
        string inline = Path.Combine(_dir, "inline.onnx");
        string external = Path.Combine(_dir, "ext", "external.onnx");
        ModelIO.Save(m, inline);
        ModelIO.Save(m, external, new ModelSaveOptions { ForceExternalData = true, ExternalTensorMinBytes = 64 });

        Assert.IsTrue(File.Exists(external + ".data"));
        ModelProto raw = ModelProto.Parser.ParseFrom(File.ReadAllBytes(external));
        Assert.IsTrue(raw.Graph.Initializer.Any(TensorUtil.IsExternal), "big tensors must be stored externally");
        Assert.AreEqual(m, ModelIO.Load(external), "external data must load back to the same tensors");

        Dictionary<string, float[]> a = OrtHelper.RunRandom(inline);
        Dictionary<string, float[]> b = OrtHelper.RunRandom(external);
        CollectionAssert.AreEqual(a["y"], b["y"]);
    }

    [TestMethod]
    [DataRow("/etc/passwd")]
    [DataRow("../outside.data")]
    [DataRow("sub/../../outside.data")]
    [DataRow("C:\\Windows\\system.ini")]
    [DataRow("C:relative.data")]
    [DataRow("\\\\server\\share\\w.data")]
    [DataRow("\\\\?\\C:\\w.data")]
    [DataRow("..\\outside.data")]
    public void ExternalDataPathsThatLeaveTheFolderAreRejected(string location)
    {
        string outside = Path.Combine(_dir, "outside.data");
        File.WriteAllBytes(outside, new byte[4096]);
        string modelDir = Path.Combine(_dir, "model");
        Directory.CreateDirectory(Path.Combine(modelDir, "sub"));
        string modelPath = WriteExternalModel(modelDir, location, 0, 16);

        var e = Assert.ThrowsExactly<CompressException>(() => ModelIO.Load(modelPath));
        Assert.AreEqual(DiagnosticCodes.ExternalDataPath, e.Code);
        StringAssert.Contains(e.Message, location);
    }

    [TestMethod]
    public void SymlinkThatLeavesTheFolderIsRejectedButOneInsideIsFollowed()
    {
        string outside = Path.Combine(_dir, "secret.data");
        File.WriteAllBytes(outside, new byte[16]);
        string modelDir = Path.Combine(_dir, "model");
        Directory.CreateDirectory(modelDir);
        File.CreateSymbolicLink(Path.Combine(modelDir, "link.data"), outside);
        Directory.CreateSymbolicLink(Path.Combine(modelDir, "linkdir"), _dir);
        File.WriteAllBytes(Path.Combine(modelDir, "real.data"), new byte[16]);
        File.CreateSymbolicLink(Path.Combine(modelDir, "inside.data"), Path.Combine(modelDir, "real.data"));

        Assert.AreEqual(DiagnosticCodes.ExternalDataPath,
            Assert.ThrowsExactly<CompressException>(() => ModelIO.Load(WriteExternalModel(modelDir, "link.data", 0, 16))).Code);
        Assert.AreEqual(DiagnosticCodes.ExternalDataPath,
            Assert.ThrowsExactly<CompressException>(() => ModelIO.Load(WriteExternalModel(modelDir, "linkdir/secret.data", 0, 16))).Code);
        ModelProto ok = ModelIO.Load(WriteExternalModel(modelDir, "inside.data", 0, 16));
        Assert.AreEqual(16, ok.Graph.Initializer[0].RawData.Length);
    }

    [TestMethod]
    [DataRow(0L, 32L)]
    [DataRow(4090L, 16L)]
    [DataRow(-1L, 16L)]
    [DataRow(9_000_000_000L, 16L)]
    public void ExternalDataOutsideTheFileOrOfWrongLengthIsRejected(long offset, long length)
    {
        string modelDir = Path.Combine(_dir, "model");
        Directory.CreateDirectory(modelDir);
        File.WriteAllBytes(Path.Combine(modelDir, "w.data"), new byte[4096]);
        string modelPath = WriteExternalModel(modelDir, "w.data", offset, length);
        var e = Assert.ThrowsExactly<CompressException>(() => ModelIO.Load(modelPath));
        Assert.AreEqual(DiagnosticCodes.ExternalDataUnreadable, e.Code, e.Message);
    }

    [TestMethod]
    public void MissingExternalFileIsACodedError()
    {
        string modelDir = Path.Combine(_dir, "model");
        Directory.CreateDirectory(modelDir);
        var e = Assert.ThrowsExactly<CompressException>(() => ModelIO.Load(WriteExternalModel(modelDir, "absent.data", 0, 16)));
        Assert.AreEqual(DiagnosticCodes.ExternalDataUnreadable, e.Code);
    }

    /// <summary>A model with one external float initializer of 4 elements (16 bytes) feeding Identity.</summary>
    private static string WriteExternalModel(string dir, string location, long offset, long length)
    {
        var g = new GraphProto { Name = "g" };
        var t = new TensorProto { Name = "w", DataType = (int)TensorProto.Types.DataType.Float, DataLocation = TensorProto.Types.DataLocation.External };
        t.Dims.Add(4);
        t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = location });
        t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = length.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        g.Initializer.Add(t);
        g.Node.Add(TinyModels.Node("Identity", ["w"], ["y"]));
        g.Output.Add(TinyModels.FloatValue("y", 4));
        string path = Path.Combine(dir, "m-" + Guid.NewGuid().ToString("N")[..6] + ".onnx");
        File.WriteAllBytes(path, TinyModels.Model(g).ToByteArray());
        return path;
    }

    [TestMethod]
    public void MissingModelIsCMPR0101()
    {
        var e = Assert.ThrowsExactly<CompressException>(() => ModelIO.Load(Path.Combine(_dir, "nope.onnx")));
        Assert.AreEqual(DiagnosticCodes.ModelNotFound, e.Code);
        Assert.AreEqual(2, e.ExitCode);
    }

    [TestMethod]
    public void TruncatingAModelAtEveryLengthGivesACodedErrorOrAValidPrefix()
    {
        byte[] bytes = TinyModels.Mlp(inF: 4, hidden: 3, classes: 2).ToByteArray();
        int coded = 0;
        for (int len = 0; len < bytes.Length; len++)
        {
            string path = Path.Combine(_dir, "t.onnx");
            File.WriteAllBytes(path, bytes.AsSpan(0, len).ToArray());
            try
            {
                ModelProto m = ModelIO.Load(path);
                // A cut that falls between fields parses; the checker must then still catch what is missing.
                ModelChecker.Validate(m, path);
                Assert.Fail($"a model truncated to {len} of {bytes.Length} bytes passed validation");
            }
            catch (CompressException e)
            {
                Assert.IsTrue(e.Code is DiagnosticCodes.ModelNotOnnx or DiagnosticCodes.ModelInvalid, $"length {len}: {e.Code} {e.Message}");
                coded++;
            }
        }
        Assert.AreEqual(bytes.Length, coded);
    }

    [TestMethod]
    public void RandomByteFlipsNeverEscapeAsUncodedExceptions()
    {
        byte[] good = TinyModels.Mlp(inF: 8, hidden: 4, classes: 3).ToByteArray();
        var rng = new Random(1234);
        string path = Path.Combine(_dir, "f.onnx");
        int accepted = 0, rejected = 0;
        for (int trial = 0; trial < 2000; trial++)
        {
            byte[] b = (byte[])good.Clone();
            int flips = 1 + rng.Next(4);
            for (int f = 0; f < flips; f++)
            {
                b[rng.Next(b.Length)] = (byte)rng.Next(256);
            }
            File.WriteAllBytes(path, b);
            try
            {
                ModelChecker.Validate(ModelIO.Load(path), path);
                accepted++;
            }
            catch (CompressException e)
            {
                Assert.IsTrue(e.Code is DiagnosticCodes.ModelNotOnnx or DiagnosticCodes.ModelInvalid or DiagnosticCodes.ExternalDataPath or DiagnosticCodes.ExternalDataUnreadable, e.Code);
                rejected++;
            }
        }
        TestContext.WriteLine($"byte flips: {accepted} still-valid models, {rejected} coded rejections");
        Assert.IsTrue(rejected > 0);
    }

    [TestMethod]
    public void DeeplyNestedSubgraphsAreRejectedNotStackOverflow()
    {
        var inner = new GraphProto { Name = "leaf" };
        for (int depth = 0; depth < 300; depth++)
        {
            var g = new GraphProto { Name = "g" + depth };
            var n = TinyModels.Node("If", ["c"], ["o"]);
            n.Attribute.Add(new AttributeProto { Name = "then_branch", Type = AttributeProto.Types.AttributeType.Graph, G = inner });
            g.Node.Add(n);
            inner = g;
        }
        // Serialize by hand: Google.Protobuf would refuse to parse it back, which is what we test.
        string path = Path.Combine(_dir, "deep.onnx");
        File.WriteAllBytes(path, TinyModels.Model(inner).ToByteArray());
        var e = Assert.ThrowsExactly<CompressException>(() => ModelIO.Load(path));
        Assert.AreEqual(DiagnosticCodes.ModelNotOnnx, e.Code);
        StringAssert.Contains(e.Message, "nested");
    }

    [TestMethod]
    public void NonOnnxFilesAreCMPR0102()
    {
        string text = Path.Combine(_dir, "readme.onnx");
        File.WriteAllText(text, "this is not a model at all, just text\n");
        Assert.AreEqual(DiagnosticCodes.ModelNotOnnx, Assert.ThrowsExactly<CompressException>(() => ModelIO.Load(text)).Code);
        string empty = Path.Combine(_dir, "empty.onnx");
        File.WriteAllBytes(empty, []);
        var e = Assert.ThrowsExactly<CompressException>(() => ModelIO.Load(empty));
        Assert.AreEqual(DiagnosticCodes.ModelNotOnnx, e.Code);
        StringAssert.Contains(e.Message, "empty");
    }

    [TestMethod]
    public void SaveIsAtomicAndLeavesNoTemporaryFiles()
    {
        string path = Path.Combine(_dir, "out", "m.onnx");
        ModelIO.Save(TinyModels.Mlp(), path);
        ModelIO.Save(TinyModels.Mlp(seed: 5), path);
        Assert.AreEqual(TinyModels.Mlp(seed: 5), ModelIO.Load(path));
        CollectionAssert.AreEqual(new[] { "m.onnx" }, Directory.GetFiles(Path.GetDirectoryName(path)!).Select(Path.GetFileName).ToArray());
    }
}
