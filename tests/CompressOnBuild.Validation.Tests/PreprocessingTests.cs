using CompressOnBuild.Core;

namespace CompressOnBuild.Validation.Tests;

[TestClass]
public sealed class PreprocessingTests
{
    [TestMethod]
    public void Parse_ReadsEveryKey()
    {
        Preprocessing p = Preprocessing.Parse("layout=NHWC; scale=0.5;mean=1,2,3;std=2,4,8;channels=BGR;invert=true;resize=256;crop=224x200;dtype=float16");
        Assert.AreEqual(DataLayout.Nhwc, p.Layout);
        Assert.AreEqual(0.5f, p.Scale);
        CollectionAssert.AreEqual(new[] { 1f, 2f, 3f }, p.Mean.ToArray());
        CollectionAssert.AreEqual(new[] { 2f, 4f, 8f }, p.Std.ToArray());
        Assert.AreEqual(ChannelOrder.Bgr, p.Channels);
        Assert.IsTrue(p.Invert);
        Assert.AreEqual(256, p.ResizeShorter);
        Assert.AreEqual((224, 200), p.Crop);
        Assert.AreEqual(TensorElementType.Float16, p.ElementType);
        Assert.IsNull(p.Size);
    }

    [TestMethod]
    public void Default_IsScale1Over255Mean0Std1()
    {
        Preprocessing p = Preprocessing.Parse(null);
        Assert.AreSame(Preprocessing.Default, p);
        Assert.AreEqual(DataLayout.Auto, p.Layout);
        Assert.AreEqual(1f, p.Apply(255f, 0), 1e-7f);
        Assert.AreEqual(0f, p.Apply(0f, 0));
        Assert.AreEqual(128f / 255f, p.Apply(128f, 0), 1e-7f);
    }

    [TestMethod]
    public void Apply_MatchesHandComputedValues()
    {
        // x = (raw * scale - mean) / std; fashion-mnist style: (200/255 - 0.5) / 0.5 = 0.568627...
        Preprocessing fashion = Preprocessing.Parse("layout=NCHW;scale=0.003921569;mean=0.5;std=0.5");
        Assert.AreEqual(0.5686275f, fashion.Apply(200f, 0), 1e-6f);
        Assert.AreEqual(-1f, fashion.Apply(0f, 0), 1e-6f);

        // Per channel ImageNet values: channel 2, raw 100: (0.3921569 - 0.406) / 0.225 = -0.0615251
        Preprocessing imagenet = Preprocessing.Parse("mean=0.485,0.456,0.406;std=0.229,0.224,0.225");
        Assert.AreEqual(-0.0615251f, imagenet.Apply(100f, 2), 1e-5f);
        Assert.AreEqual((100f / 255f - 0.485f) / 0.229f, imagenet.Apply(100f, 0), 1e-6f);

        // Invert applies to the raw value: 255 - 55 = 200.
        Preprocessing inv = Preprocessing.Parse("invert=true;scale=1");
        Assert.AreEqual(200f, inv.Apply(55f, 0));
    }

    [TestMethod]
    public void Parse_AcceptsSimpleFractions_AsDocumented()
    {
        // docs/options.md writes the default as scale=1/255: the parser takes what the docs show.
        Preprocessing p = Preprocessing.Parse("scale=1/255;mean=1/2,0.25,-3/4;std=2/1");
        Assert.AreEqual(1f / 255f, p.Scale);
        CollectionAssert.AreEqual(new[] { 0.5f, 0.25f, -0.75f }, p.Mean.ToArray());
        CollectionAssert.AreEqual(new[] { 2f }, p.Std.ToArray());
        Assert.AreEqual(Preprocessing.Default.Apply(128f, 0), p.Apply(128f, 0) * 2f + 0.5f, 1e-6f);
    }

    [TestMethod]
    [DataRow("scale=1/0", DisplayName = "fraction over zero")]
    [DataRow("scale=1/2/3", DisplayName = "two slashes")]
    [DataRow("scale=/255", DisplayName = "no numerator")]
    [DataRow("scale=1/", DisplayName = "no denominator")]
    [DataRow("layout=NCWH", DisplayName = "unknown layout")]
    [DataRow("scale=abc", DisplayName = "scale not a number")]
    [DataRow("std=0", DisplayName = "std zero")]
    [DataRow("mean=1,2;std=1,2,3", DisplayName = "mean/std counts differ")]
    [DataRow("size=224", DisplayName = "size without x")]
    [DataRow("crop=0x10", DisplayName = "crop zero")]
    [DataRow("resize=-3", DisplayName = "negative resize")]
    [DataRow("invert=yes", DisplayName = "invert not bool")]
    [DataRow("channels=CMYK", DisplayName = "unknown channels")]
    [DataRow("dtype=int4", DisplayName = "unknown dtype")]
    [DataRow("colour=red", DisplayName = "unknown key")]
    [DataRow("scale", DisplayName = "no equals")]
    [DataRow("scale=1;scale=2", DisplayName = "duplicate key")]
    [DataRow("size=10x10;crop=5x5", DisplayName = "size with crop")]
    [DataRow("scale=NaN", DisplayName = "NaN scale")]
    public void Parse_RejectsBadStrings(string text)
    {
        CompressException e = Assert.ThrowsExactly<CompressException>(() => Preprocessing.Parse(text));
        Assert.AreEqual(DiagnosticCodes.PreprocessingInvalid, e.Code);
        StringAssert.StartsWith(e.Message, "CMPR0306");
        StringAssert.Contains(e.Message, text);
    }
}

[TestClass]
public sealed class ImagePipelineTests
{
    [TestMethod]
    public void Resize_Bilinear_HalfPixelCenters()
    {
        // 1x2 row [0, 100] widened to 1x4: source x = (dst + 0.5) * 0.5 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamp -> 0, 25, 75, 100
        float[] result = ImagePipeline.Resize([0f, 100f], 1, 2, 1, 1, 4);
        CollectionAssert.AreEqual(new[] { 0f, 25f, 75f, 100f }, result);
        // Downscale 4 -> 2: source x = 0.5, 2.5 -> means of neighbours
        float[] down = ImagePipeline.Resize([0f, 10f, 20f, 30f], 1, 4, 1, 1, 2);
        CollectionAssert.AreEqual(new[] { 5f, 25f }, down);
    }

    [TestMethod]
    public void CenterCrop_TakesTheMiddle()
    {
        float[] src = [.. Enumerable.Range(0, 16).Select(i => (float)i)]; // 4x4, one channel
        CollectionAssert.AreEqual(new[] { 5f, 6f, 9f, 10f }, ImagePipeline.CenterCrop(src, 4, 4, 1, 2, 2));
    }

    [TestMethod]
    public void ToTensor_NchwBgrAndNhwcRgb()
    {
        // 1x2 RGB image: pixel 0 = (10, 20, 30), pixel 1 = (40, 50, 60); scale 1 keeps raw values.
        byte[] px = [10, 20, 30, 40, 50, 60];
        TensorInfo nchw = new("x", TensorElementType.Float, [-1, 3, 1, 2]);
        TensorData a = ImagePipeline.ToTensor(px, 1, 2, 3, nchw, Preprocessing.Parse("scale=1;channels=BGR"), "img");
        CollectionAssert.AreEqual(new long[] { 1, 3, 1, 2 }, a.Shape);
        CollectionAssert.AreEqual(new[] { 30f, 60f, 20f, 50f, 10f, 40f }, a.Data);

        TensorInfo nhwc = new("x", TensorElementType.Float, [1, 1, 2, 3]);
        // [1,1,2,3] is ambiguous (NCHW gray 2x3 or NHWC RGB 1x2), so the layout is given.
        TensorData b = ImagePipeline.ToTensor(px, 1, 2, 3, nhwc, Preprocessing.Parse("scale=1;layout=NHWC"), "img");
        CollectionAssert.AreEqual(new long[] { 1, 1, 2, 3 }, b.Shape);
        CollectionAssert.AreEqual(new[] { 10f, 20f, 30f, 40f, 50f, 60f }, b.Data);

        TensorInfo gray = new("x", TensorElementType.Float, [-1, 2]);
        TensorData c = ImagePipeline.ToTensor(px, 1, 2, 3, gray, Preprocessing.Parse("scale=1;channels=GRAY"), "img");
        Assert.AreEqual(0.299f * 10 + 0.587f * 20 + 0.114f * 30, c.Data[0], 1e-4f);
    }

    [TestMethod]
    public void ToTensor_ResizeShorterThenCrop()
    {
        // 2x4 gray image, resize shorter side to 4 -> 4x8, crop 2x2 from the center.
        byte[] px = [0, 0, 0, 0, 255, 255, 255, 255];
        TensorInfo input = new("x", TensorElementType.Float, [-1, 1, -1, -1]);
        TensorData t = ImagePipeline.ToTensor(px, 2, 4, 1, input, Preprocessing.Parse("resize=4;crop=2x2;scale=1"), "img");
        CollectionAssert.AreEqual(new long[] { 1, 1, 2, 2 }, t.Shape);
        // Rows 1 and 2 of the 4-row resize: source y = 0.25 and 0.75 -> 63.75 and 191.25.
        CollectionAssert.AreEqual(new[] { 63.75f, 63.75f, 191.25f, 191.25f }, t.Data);
    }

    [TestMethod]
    public void ToTensor_WrongLayoutSaysWhatTheInputExpects()
    {
        byte[] px = new byte[28 * 28];
        TensorInfo nchw = new("x", TensorElementType.Float, [-1, 1, 28, 28]);
        CompressException e = Assert.ThrowsExactly<CompressException>(() =>
            ImagePipeline.ToTensor(px, 28, 28, 1, nchw, Preprocessing.Parse("layout=NHWC"), "img"));
        Assert.AreEqual(DiagnosticCodes.DataShape, e.Code);
        StringAssert.Contains(e.Message, "[-1,1,28,28]");
        StringAssert.Contains(e.Message, "28 channel(s)");
        StringAssert.Contains(e.Message, "as Nchw it expects 1 channel(s) of 28x28");
        StringAssert.Contains(e.Message, "use layout=NCHW");
        Assert.IsFalse(e.Message.Contains("cannot be filled", StringComparison.Ordinal), e.Message);

        // A gray model asked for colour: the message names both channel counts.
        e = Assert.ThrowsExactly<CompressException>(() => ImagePipeline.ToTensor(px, 28, 28, 1, nchw, Preprocessing.Parse("channels=RGB"), "img"));
        StringAssert.Contains(e.Message, "expects 1 channel(s), but channels=RGB would produce 3");
    }

    [TestMethod]
    public void ToTensor_ASizeThatDiffersFromTheModelsFixedSizeIsAnErrorNotASecondResize()
    {
        byte[] px = new byte[28 * 28];
        TensorInfo fixed28 = new("x", TensorElementType.Float, [-1, 1, 28, 28]);
        CompressException e = Assert.ThrowsExactly<CompressException>(() =>
            ImagePipeline.ToTensor(px, 28, 28, 1, fixed28, Preprocessing.Parse("size=32x32"), "img"));
        Assert.AreEqual(DiagnosticCodes.DataShape, e.Code);
        StringAssert.Contains(e.Message, "expects 28x28 images, but the preprocessing (size=32x32) would produce 32x32");

        // Without size= the images are resized to the model's fixed size, as documented.
        TensorData t = ImagePipeline.ToTensor(new byte[32 * 32], 32, 32, 1, fixed28, Preprocessing.Default, "img");
        CollectionAssert.AreEqual(new long[] { 1, 1, 28, 28 }, t.Shape);
        // A matching size is fine.
        t = ImagePipeline.ToTensor(new byte[32 * 32], 32, 32, 1, fixed28, Preprocessing.Parse("size=28x28"), "img");
        CollectionAssert.AreEqual(new long[] { 1, 1, 28, 28 }, t.Shape);
    }

    [TestMethod]
    public void ToTensor_PerChannelMeanCountMustMatch()
    {
        TensorInfo input = new("x", TensorElementType.Float, [-1, 1, 1, 1]);
        CompressException e = Assert.ThrowsExactly<CompressException>(() =>
            ImagePipeline.ToTensor([1], 1, 1, 1, input, Preprocessing.Parse("mean=0.1,0.2,0.3"), "img"));
        Assert.AreEqual(DiagnosticCodes.PreprocessingInvalid, e.Code);
    }

    [TestMethod]
    public void ToTensor_AutoLayout_NhwcGrayAndRank3()
    {
        byte[] px = [0, 255, 255, 0];
        TensorData nhwc = ImagePipeline.ToTensor(px, 2, 2, 1, new TensorInfo("x", TensorElementType.Float, [-1, 2, 2, 1]), Preprocessing.Default, "img");
        CollectionAssert.AreEqual(new long[] { 1, 2, 2, 1 }, nhwc.Shape);
        TensorData rank3 = ImagePipeline.ToTensor(px, 2, 2, 1, new TensorInfo("x", TensorElementType.Float, [-1, 2, 2]), Preprocessing.Default, "img");
        CollectionAssert.AreEqual(new long[] { 1, 2, 2 }, rank3.Shape);
        TestFiles.AssertClose([0f, 1f, 1f, 0f], rank3.Data);
        CompressException e = Assert.ThrowsExactly<CompressException>(() =>
            ImagePipeline.ToTensor(px, 2, 2, 1, new TensorInfo("x", TensorElementType.Float, [4]), Preprocessing.Default, "img.png"));
        Assert.AreEqual(DiagnosticCodes.DataShape, e.Code);
        StringAssert.Contains(e.Message, "img.png");
    }
}
