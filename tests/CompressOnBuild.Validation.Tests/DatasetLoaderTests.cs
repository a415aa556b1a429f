using CompressOnBuild.Core;

namespace CompressOnBuild.Validation.Tests;

[TestClass]
public sealed class DatasetLoaderTests
{
    private static CompressException Throws(string code, Action action)
    {
        CompressException e = Assert.ThrowsExactly<CompressException>(action);
        Assert.AreEqual(code, e.Code, e.Message);
        return e;
    }

    [TestMethod]
    public void Idx_ImagesAndLabels_ScaledToNchw()
    {
        using TempDir dir = new();
        byte[] pixels = [0, 51, 102, 255, 10, 20, 30, 40, 255, 255, 0, 0];
        string images = dir.File("imgs-idx3-ubyte");
        string labels = dir.File("labels-idx1-ubyte");
        File.WriteAllBytes(images, TestFiles.IdxImages(3, 2, 2, pixels));
        File.WriteAllBytes(labels, TestFiles.IdxLabels(7, 1, 4));

        Dataset ds = DatasetLoader.Load(images, labels, TestFiles.Inputs("x", -1, 1, 2, 2));
        Assert.AreEqual(3, ds.Count);
        CollectionAssert.AreEqual(new[] { 7, 1, 4 }, ds.Labels!.ToArray());
        TensorData s0 = ds.GetSample(0)[0];
        CollectionAssert.AreEqual(new long[] { 1, 1, 2, 2 }, s0.Shape);
        TestFiles.AssertClose([0f, 0.2f, 0.4f, 1f], s0.Data);
        Assert.IsTrue(ds.CanBatch);
        TensorData batch = ds.GetBatch(1, 2)[0];
        CollectionAssert.AreEqual(new long[] { 2, 1, 2, 2 }, batch.Shape);
        Assert.AreEqual(40f / 255f, batch.Data[3], 1e-7f);
        Assert.AreEqual(1f, batch.Data[4], 1e-7f);
        StringAssert.Contains(ds.GetSampleSource(2), "image 2");
    }

    [TestMethod]
    public void Idx_FlatLayoutWithNormalization()
    {
        using TempDir dir = new();
        string images = dir.File("i");
        File.WriteAllBytes(images, TestFiles.IdxImages(1, 2, 2, [0, 255, 51, 204]));
        Dataset ds = DatasetLoader.Load(images, null, TestFiles.Inputs("x", -1, 4), Preprocessing.Parse("mean=0.5;std=0.5"));
        CollectionAssert.AreEqual(new long[] { 1, 4 }, ds.GetSample(0)[0].Shape);
        float[] d = ds.GetSample(0)[0].Data;
        Assert.AreEqual(-1f, d[0], 1e-6f);
        Assert.AreEqual(1f, d[1], 1e-6f);
        Assert.AreEqual(-0.6f, d[2], 1e-6f);
        Assert.AreEqual(0.6f, d[3], 1e-6f);
        Assert.IsNull(ds.Labels);
    }

    [TestMethod]
    public void Idx_Errors()
    {
        using TempDir dir = new();
        string images = dir.File("i");
        File.WriteAllBytes(images, TestFiles.IdxImages(3, 2, 2, new byte[12]));
        string labels = dir.File("l");
        File.WriteAllBytes(labels, TestFiles.IdxLabels(1, 2));
        CompressException mismatch = Throws(DiagnosticCodes.LabelsMismatch, () => DatasetLoader.Load(images, labels, TestFiles.Inputs("x", -1, 1, 2, 2)));
        StringAssert.Contains(mismatch.Message, labels);
        Assert.AreEqual(labels, mismatch.File);

        string truncated = dir.File("t");
        File.WriteAllBytes(truncated, TestFiles.IdxImages(3, 2, 2, new byte[12])[..20]);
        CompressException bad = Throws(DiagnosticCodes.DataUnreadable, () => DatasetLoader.Load(truncated, null, TestFiles.Inputs("x", -1, 1, 2, 2)));
        StringAssert.Contains(bad.Message, truncated);

        // 4 pixels cannot feed a [N,5] flat input.
        CompressException shape = Throws(DiagnosticCodes.DataShape, () => DatasetLoader.Load(images, null, TestFiles.Inputs("x", -1, 5)));
        StringAssert.Contains(shape.Message, images);

        Throws(DiagnosticCodes.DataNotFound, () => DatasetLoader.Load(dir.File("missing"), null, TestFiles.Inputs("x", -1, 4)));
        Throws(DiagnosticCodes.DataNotFound, () => DatasetLoader.Load(images, dir.File("nolabels"), TestFiles.Inputs("x", -1, 4)));

        string empty = dir.File("e");
        File.WriteAllBytes(empty, TestFiles.IdxImages(0, 2, 2, []));
        Throws(DiagnosticCodes.DataEmpty, () => DatasetLoader.Load(empty, null, TestFiles.Inputs("x", -1, 4)));

        string garbage = dir.File("g.bin");
        File.WriteAllText(garbage, "hello");
        Throws(DiagnosticCodes.DataUnreadable, () => DatasetLoader.Load(garbage, null, TestFiles.Inputs("x", -1, 4)));
    }

    [TestMethod]
    public void Npy_FloatDoubleInt64AndUInt8()
    {
        using TempDir dir = new();
        string f = dir.File("f.npy");
        File.WriteAllBytes(f, TestFiles.NpyFloat([3, 2], 1, 2, 3, 4, 5, 6));
        Dataset ds = DatasetLoader.Load(f, null, TestFiles.Inputs("x", -1, 2));
        Assert.AreEqual(3, ds.Count);
        CollectionAssert.AreEqual(new[] { 5f, 6f }, ds.GetSample(2)[0].Data);
        CollectionAssert.AreEqual(new long[] { 1, 2 }, ds.GetSample(2)[0].Shape);

        string d = dir.File("d.npy");
        File.WriteAllBytes(d, TestFiles.NpyDouble([1, 2], 0.25, -8));
        CollectionAssert.AreEqual(new[] { 0.25f, -8f }, DatasetLoader.Load(d, null, TestFiles.Inputs("x", 1, 2)).GetSample(0)[0].Data);

        string l = dir.File("l.npy");
        File.WriteAllBytes(l, TestFiles.NpyInt64([2, 1], 101, -3));
        CollectionAssert.AreEqual(new[] { -3f }, DatasetLoader.Load(l, null, TestFiles.Inputs("ids", -1, 1)).GetSample(1)[0].Data);

        // uint8 data goes through the preprocessing: (102 * 1/255 - 0.2) / 0.5 = 0.4
        string u = dir.File("u.npy");
        File.WriteAllBytes(u, TestFiles.Npy("|u1", [1, 1, 1, 2], [102, 255]));
        float[] px = DatasetLoader.Load(u, null, TestFiles.Inputs("x", -1, 1, 1, 2), Preprocessing.Parse("mean=0.2;std=0.5")).GetSample(0)[0].Data;
        Assert.AreEqual(0.4f, px[0], 1e-6f);
        Assert.AreEqual(1.6f, px[1], 1e-6f);
    }

    [TestMethod]
    public void Npy_Errors()
    {
        using TempDir dir = new();
        string big = dir.File("big.npy");
        File.WriteAllBytes(big, TestFiles.Npy(">f4", [1, 2], new byte[8]));
        CompressException e = Throws(DiagnosticCodes.DataUnreadable, () => DatasetLoader.Load(big, null, TestFiles.Inputs("x", -1, 2)));
        StringAssert.Contains(e.Message, ">f4");

        string fortran = dir.File("fo.npy");
        File.WriteAllBytes(fortran, TestFiles.Npy("<f4", [1, 2], new byte[8], fortran: true));
        Throws(DiagnosticCodes.DataUnreadable, () => DatasetLoader.Load(fortran, null, TestFiles.Inputs("x", -1, 2)));

        string shortData = dir.File("short.npy");
        File.WriteAllBytes(shortData, TestFiles.Npy("<f4", [2, 2], new byte[8]));
        Throws(DiagnosticCodes.DataUnreadable, () => DatasetLoader.Load(shortData, null, TestFiles.Inputs("x", -1, 2)));

        string rank = dir.File("rank.npy");
        File.WriteAllBytes(rank, TestFiles.NpyFloat([4], 1, 2, 3, 4));
        CompressException r = Throws(DiagnosticCodes.DataShape, () => DatasetLoader.Load(rank, null, TestFiles.Inputs("x", -1, 4)));
        StringAssert.Contains(r.Message, rank);

        string wide = dir.File("wide.npy");
        File.WriteAllBytes(wide, TestFiles.NpyFloat([1, 3], 1, 2, 3));
        Throws(DiagnosticCodes.DataShape, () => DatasetLoader.Load(wide, null, TestFiles.Inputs("x", -1, 4)));

        string notNpy = dir.File("bad.npy");
        File.WriteAllText(notNpy, "not numpy at all");
        Throws(DiagnosticCodes.DataUnreadable, () => DatasetLoader.Load(notNpy, null, TestFiles.Inputs("x", -1, 4)));
    }

    [TestMethod]
    public void Npz_ByNameWithLabels_AndByPosition()
    {
        using TempDir dir = new();
        string z = dir.File("d.npz");
        TestFiles.Zip(z,
            ("labels.npy", TestFiles.NpyInt64([2], 3, 9)),
            ("b.npy", TestFiles.NpyFloat([2, 1], 10, 20)),
            ("a.npy", TestFiles.NpyFloat([2, 2], 1, 2, 3, 4)));
        ModelInputs inputs = new([new TensorInfo("a", TensorElementType.Float, [-1, 2]), new TensorInfo("b", TensorElementType.Float, [-1, 1])]);
        Dataset ds = DatasetLoader.Load(z, null, inputs);
        Assert.AreEqual(2, ds.Count);
        CollectionAssert.AreEqual(new[] { 3, 9 }, ds.Labels!.ToArray());
        CollectionAssert.AreEqual(new[] { 3f, 4f }, ds.GetSample(1)[0].Data);
        CollectionAssert.AreEqual(new[] { 20f }, ds.GetSample(1)[1].Data);

        string pos = dir.File("p.npz");
        TestFiles.Zip(pos, ("arr_0.npy", TestFiles.NpyFloat([1, 2], 7, 8)));
        CollectionAssert.AreEqual(new[] { 7f, 8f }, DatasetLoader.Load(pos, null, TestFiles.Inputs("x", -1, 2)).GetSample(0)[0].Data);

        string mismatch = dir.File("m.npz");
        TestFiles.Zip(mismatch, ("labels.npy", TestFiles.NpyInt64([3], 1, 2, 3)), ("x.npy", TestFiles.NpyFloat([2, 1], 1, 2)));
        Throws(DiagnosticCodes.LabelsMismatch, () => DatasetLoader.Load(mismatch, null, TestFiles.Inputs("x", -1, 1)));

        string notZip = dir.File("n.npz");
        File.WriteAllText(notZip, "nope");
        Throws(DiagnosticCodes.DataUnreadable, () => DatasetLoader.Load(notZip, null, TestFiles.Inputs("x", -1, 1)));
    }

    [TestMethod]
    public void OnnxTestDataSets_ByNameByPositionWithReferences()
    {
        using TempDir dir = new();
        TestFiles.WriteTensor(dir.File("test_data_set_0/input_0.pb"), "x", [1, 2, 3], 1, 3);
        TestFiles.WriteTensor(dir.File("test_data_set_0/output_0.pb"), "y", [2, 4, 6], 1, 3);
        TestFiles.WriteTensor(dir.File("test_data_set_1/input_0.pb"), "x", [4, 5, 6], 1, 3);
        Dataset ds = DatasetLoader.Load(dir.Path, null, TestFiles.Inputs("x", 1, 3));
        Assert.AreEqual(2, ds.Count);
        Assert.IsTrue(ds.HasReferenceOutputs);
        CollectionAssert.AreEqual(new[] { 2f, 4f, 6f }, ds.GetReferenceOutputs(0)![0].Data);
        Assert.IsNull(ds.GetReferenceOutputs(1));
        CollectionAssert.AreEqual(new[] { 4f, 5f, 6f }, ds.GetSample(1)[0].Data);

        // Names that match no input map by position (file index), here two inputs swapped by name.
        using TempDir two = new();
        TestFiles.WriteTensor(two.File("input_0.pb"), "b", [1], 1, 1);
        TestFiles.WriteTensor(two.File("input_1.pb"), "a", [2, 2], 1, 2);
        ModelInputs named = new([new TensorInfo("a", TensorElementType.Float, [1, 2]), new TensorInfo("b", TensorElementType.Float, [1, 1])]);
        Dataset byName = DatasetLoader.Load(two.Path, null, named);
        Assert.AreEqual(1, byName.Count);
        CollectionAssert.AreEqual(new[] { 2f, 2f }, byName.GetSample(0)[0].Data);
        ModelInputs positional = new([new TensorInfo("p", TensorElementType.Float, [1, 1]), new TensorInfo("q", TensorElementType.Float, [1, 2])]);
        CollectionAssert.AreEqual(new[] { 1f }, DatasetLoader.Load(two.Path, null, positional).GetSample(0)[0].Data);

        // Wrong shape names the .pb file.
        CompressException e = Throws(DiagnosticCodes.DataShape, () => DatasetLoader.Load(dir.Path, null, TestFiles.Inputs("x", 1, 4)));
        StringAssert.Contains(e.Message, "input_0.pb");

        // A corrupt .pb.
        using TempDir corrupt = new();
        File.WriteAllBytes(corrupt.File("test_data_set_0/input_0.pb"), [0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
        Throws(DiagnosticCodes.DataUnreadable, () => DatasetLoader.Load(corrupt.Path, null, TestFiles.Inputs("x", 1, 3)));
    }

    [TestMethod]
    public void ImageFolder_PngAndBmp_ClassesInOrdinalOrder()
    {
        using TempDir dir = new();
        // 2x2 RGB images; class "b" sorts after "a".
        byte[] red = [255, 0, 0, 255, 0, 0, 255, 0, 0, 255, 0, 0];
        byte[] mixed = [0, 0, 0, 255, 255, 255, 10, 20, 30, 40, 50, 60];
        File.WriteAllBytes(dir.File("b/1.png"), TestFiles.Png(2, 2, 3, red));
        File.WriteAllBytes(dir.File("a/0.bmp"), TestFiles.Bmp(2, 2, mixed));
        File.WriteAllBytes(dir.File("a/1.png"), TestFiles.Png(2, 2, 3, mixed));
        File.WriteAllText(dir.File("a/readme.txt"), "ignored");

        Dataset ds = DatasetLoader.Load(dir.Path, null, TestFiles.Inputs("x", -1, 3, 2, 2), Preprocessing.Parse("scale=1"));
        Assert.AreEqual(3, ds.Count);
        CollectionAssert.AreEqual(new[] { 0, 0, 1 }, ds.Labels!.ToArray());
        float[] expectedMixed = [0, 255, 10, 40, 0, 255, 20, 50, 0, 255, 30, 60]; // planar R, G, B
        CollectionAssert.AreEqual(expectedMixed, ds.GetSample(0)[0].Data, "BMP");
        CollectionAssert.AreEqual(expectedMixed, ds.GetSample(1)[0].Data, "PNG");
        CollectionAssert.AreEqual(new[] { 255f, 255f, 255f, 255f, 0f, 0f, 0f, 0f, 0f, 0f, 0f, 0f }, ds.GetSample(2)[0].Data);

        // Gray PNG resized to the model's fixed 4x4.
        using TempDir gray = new();
        File.WriteAllBytes(gray.File("only.png"), TestFiles.Png(2, 2, 1, [0, 255, 0, 255]));
        Dataset g = DatasetLoader.Load(gray.Path, null, TestFiles.Inputs("x", 1, 1, 4, 4));
        Assert.IsNull(g.Labels);
        CollectionAssert.AreEqual(new long[] { 1, 1, 4, 4 }, g.GetSample(0)[0].Shape);
        TestFiles.AssertClose([0f, 0.25f, 0.75f, 1f], g.GetSample(0)[0].Data[..4]);
    }

    [TestMethod]
    public void ImageFolder_Errors()
    {
        using TempDir dir = new();
        Directory.CreateDirectory(dir.File("cls/x"));
        Throws(DiagnosticCodes.DataEmpty, () => DatasetLoader.Load(dir.Path, null, TestFiles.Inputs("x", -1, 1, 2, 2)));

        File.WriteAllBytes(dir.File("cls/broken.png"), [0x89, (byte)'P', (byte)'N', (byte)'G', 1, 2, 3]);
        CompressException e = Throws(DiagnosticCodes.DataUnreadable, () => DatasetLoader.Load(dir.Path, null, TestFiles.Inputs("x", -1, 1, 2, 2)));
        StringAssert.Contains(e.Message, "broken.png");
        Assert.AreEqual(dir.File("cls/broken.png"), e.File);

        using TempDir rgb = new();
        File.WriteAllBytes(rgb.File("c/a.png"), TestFiles.Png(1, 1, 3, [1, 2, 3]));
        // Three-channel image into an input with 2 channels.
        Throws(DiagnosticCodes.DataShape, () => DatasetLoader.Load(rgb.Path, null, TestFiles.Inputs("x", -1, 2, 4, 4)));
        // dtype that contradicts the model.
        Throws(DiagnosticCodes.PreprocessingInvalid, () => DatasetLoader.Load(rgb.Path, null, TestFiles.Inputs("x", -1, 3, 1, 1), Preprocessing.Parse("dtype=uint8")));
    }

    [TestMethod]
    public void Labels_TextFileAndSubset()
    {
        using TempDir dir = new();
        string f = dir.File("f.npy");
        File.WriteAllBytes(f, TestFiles.NpyFloat([5, 1], 0, 1, 2, 3, 4));
        string labels = dir.File("labels.txt");
        File.WriteAllText(labels, "4\n3\n2\n1\n0\n");
        Dataset ds = DatasetLoader.Load(f, labels, TestFiles.Inputs("x", -1, 1), null, maxSamples: 2);
        Assert.AreEqual(2, ds.Count);
        // Evenly spaced: floor(i * 5 / 2) = 0, 2.
        CollectionAssert.AreEqual(new[] { 0f }, ds.GetSample(0)[0].Data);
        CollectionAssert.AreEqual(new[] { 2f }, ds.GetSample(1)[0].Data);
        CollectionAssert.AreEqual(new[] { 4, 2 }, ds.Labels!.ToArray());
        CollectionAssert.AreEqual(new[] { 0, 3, 6 }, DatasetLoader.SubsetIndices(10, 3));
        Assert.HasCount(10, DatasetLoader.SubsetIndices(10, 0));

        File.WriteAllText(labels, "1\ncat\n");
        Throws(DiagnosticCodes.DataUnreadable, () => DatasetLoader.Load(f, labels, TestFiles.Inputs("x", -1, 1)));
    }

    [TestMethod]
    public void OverMemoryBudget_DecodesOnAccess_WithTheSameValues()
    {
        using TempDir dir = new();
        byte[] pixels = [.. Enumerable.Range(0, 5 * 4).Select(i => (byte)(i * 12))];
        string images = dir.File("i");
        File.WriteAllBytes(images, TestFiles.IdxImages(5, 2, 2, pixels));
        ModelInputs inputs = TestFiles.Inputs("x", -1, 1, 2, 2);
        Dataset held = DatasetLoader.Load(images, null, inputs);
        Dataset lazy = DatasetLoader.Load(images, null, inputs, memoryBudget: 20);
        Assert.IsTrue(held.IsInMemory);
        Assert.IsFalse(lazy.IsInMemory);
        Assert.AreEqual(held.Count, lazy.Count);
        Assert.IsTrue(lazy.CanBatch);
        for (int i = 0; i < held.Count; i++)
        {
            CollectionAssert.AreEqual(held.GetSample(i)[0].Data, lazy.GetSample(i)[0].Data);
        }
        CollectionAssert.AreEqual(held.GetBatch(1, 3)[0].Data, lazy.GetBatch(1, 3)[0].Data);

        // A file that disappears after loading fails on access with the file's name.
        using TempDir folder = new();
        File.WriteAllBytes(folder.File("a/1.png"), TestFiles.Png(1, 1, 1, [7]));
        File.WriteAllBytes(folder.File("a/2.png"), TestFiles.Png(1, 1, 1, [9]));
        Dataset images2 = DatasetLoader.Load(folder.Path, null, inputs, Preprocessing.Parse("scale=1"), memoryBudget: 1);
        Assert.AreEqual(9f, images2.GetSample(1)[0].Data[0]);
        File.Delete(folder.File("a/2.png"));
        CompressException e = Throws(DiagnosticCodes.DataUnreadable, () => images2.GetSample(1));
        StringAssert.Contains(e.Message, "2.png");
    }

    [TestMethod]
    public void SingleImageFile_IsOneUnlabelledSample()
    {
        using TempDir dir = new();
        string bmp = dir.File("one.bmp");
        File.WriteAllBytes(bmp, TestFiles.Bmp(1, 1, [30, 60, 90]));
        Dataset ds = DatasetLoader.Load(bmp, null, TestFiles.Inputs("x", 1, 3, 1, 1), Preprocessing.Parse("scale=1;channels=BGR"));
        Assert.AreEqual(1, ds.Count);
        Assert.IsNull(ds.Labels);
        CollectionAssert.AreEqual(new[] { 90f, 60f, 30f }, ds.GetSample(0)[0].Data);
        Assert.AreEqual(bmp, ds.GetSampleSource(0));
    }
}
