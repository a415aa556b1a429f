using System.Diagnostics;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;

namespace CompressOnBuild.Core.Tests.Passes;

/// <summary>
/// The quantized corpus models against the originals on the full 10,000-image test sets: top-1 may drop by at
/// most 0.5 points, the model must shrink, and ORT must really run integer kernels (DynamicQuantizeMatMul for
/// MatMul/Gemm, ConvInteger for Conv) with no float MatMul/Gemm/Conv left after its optimizer.
/// </summary>
[TestClass]
public sealed class CorpusQuantizationTests
{
    public TestContext TestContext { get; set; } = null!;

    private static readonly Dictionary<string, (float[] Images, byte[] Labels)> Datasets = [];
    private static readonly Lock DatasetsLock = new();

    private static (float[] Images, byte[] Labels) Dataset(string id, bool plusMinusOne)
    {
        lock (DatasetsLock)
        {
            string key = id + plusMinusOne;
            if (!Datasets.TryGetValue(key, out var data))
            {
                (byte[] pixels, int count) = Idx.ReadImages(Corpus.Dataset(id, "t10k-images-idx3-ubyte"));
                byte[] labels = Idx.ReadLabels(Corpus.Dataset(id, "t10k-labels-idx1-ubyte"));
                Assert.AreEqual(count, labels.Length);
                // spec.json: pixel / 255, and for fashion-mlp then (x - 0.5) / 0.5
                float[] images = pixels.Select(p => plusMinusOne ? (p / 255f - 0.5f) / 0.5f : p / 255f).ToArray();
                Datasets[key] = data = (images, labels);
            }
            return data;
        }
    }

    private static Func<int, long[]> ShapeFor(string id) =>
        id == "mnist-mlp-gemm" ? b => [b, 784] : b => [b, 1, 28, 28];

    private static double Top1(ModelProto model, string id, float[] images, byte[] labels, int batch)
    {
        using var ort = new Ort(model, threads: batch > 1 ? 2 : 1);
        int[] predicted = ort.Classify(images, labels.Length, batch, ShapeFor(id));
        return 100.0 * predicted.Where((p, i) => p == labels[i]).Count() / labels.Length;
    }

    [TestMethod]
    [DataRow("mnist-8", "mnist", false, 1, 98.90)]
    [DataRow("mnist-lenet5", "mnist", false, 500, 98.13)]
    [DataRow("mnist-mlp-gemm", "mnist", false, 1000, 96.43)]
    [DataRow("fashion-mlp", "fashion-mnist", true, 1, 87.40)]
    public void Quantized_model_keeps_top1_within_half_a_point_and_shrinks(string id, string dataset, bool plusMinusOne, int batch, double baseline)
    {
        var watch = Stopwatch.StartNew();
        ModelProto original = ModelIO.Load(Corpus.Model(id));
        (float[] images, byte[] labels) = Dataset(dataset, plusMinusOne);

        ModelProto quantized = original.Clone();
        var applyWatch = Stopwatch.StartNew();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(quantized, QuantizationOptions.Default, id);
        long applyMs = applyWatch.ElapsedMilliseconds;
        Assert.IsFalse(summary.AlreadyQuantized);
        Assert.IsNotEmpty(summary.Quantized, string.Join("; ", summary.Skipped));
        ModelChecker.Validate(quantized, id);

        double before = Top1(original, id, images, labels, batch);
        double after = Top1(quantized, id, images, labels, batch);
        long originalFile = new FileInfo(Corpus.Model(id)).Length;
        long quantizedFile = quantized.CalculateSize();
        TestContext.WriteLine($"{id}: top-1 {before:F2}% -> {after:F2}% (drop {before - after:F2} points); size {originalFile} -> {quantizedFile} bytes (ratio {(double)quantizedFile / originalFile:F3}); " +
            $"quantized {summary.Quantized.Count} node(s): {string.Join(", ", summary.Quantized.Select(q => $"{q.Node} [{q.Rows}x{q.Columns}] max|dw|={q.MaxAbsWeightError:G3}"))}; skipped: {string.Join("; ", summary.Skipped.Select(s => s.Node + ": " + s.Reason))}; pass {applyMs} ms, test {watch.ElapsedMilliseconds} ms");

        Assert.AreEqual(baseline, before, 0.006, "the float baseline differs from MANIFEST.md: preprocessing is wrong");
        Assert.IsLessThanOrEqualTo(0.5, before - after, $"{id}: top-1 dropped from {before:F2}% to {after:F2}%");
        Assert.IsLessThan(originalFile, quantizedFile, $"{id}: the quantized model is not smaller");
        Assert.AreEqual(quantizedFile, summary.ModelBytesAfter);
    }

    [TestMethod]
    [DataRow("mnist-8")]
    [DataRow("mnist-lenet5")]
    [DataRow("mnist-mlp-gemm")]
    [DataRow("fashion-mlp")]
    public void Optimized_graph_runs_integer_kernels(string id)
    {
        ModelProto model = ModelIO.Load(Corpus.Model(id));
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, id);
        string path = Path.Combine(Path.GetTempPath(), $"cob-quant-{id}-{Environment.ProcessId}.onnx");
        try
        {
            foreach (GraphOptimizationLevel level in new[] { GraphOptimizationLevel.ORT_ENABLE_EXTENDED, GraphOptimizationLevel.ORT_ENABLE_ALL })
            {
                List<string> ops = Ort.OptimizedOps(model, path, level);
                TestContext.WriteLine($"{id} {level}: {string.Join(" ", ops)}");
                string all = string.Join(" ", ops);
                Assert.AreEqual(summary.Quantized.Count(q => q.OpType != "Conv"), ops.Count(o => o == Int8DynamicQuantizer.QuantizedOpType), $"{id} {level}: {all}");
                Assert.AreEqual(summary.Quantized.Count(q => q.OpType == "Conv"), ops.Count(o => o == "ConvInteger"), $"{id} {level}: {all}");
                Assert.IsFalse(ops.Any(o => o is "MatMul" or "Gemm" or "FusedMatMul" or "FusedGemm" or "Conv" or "FusedConv" or "NchwcConv"), $"{id} {level}: a float MatMul/Gemm/Conv survived: {all}");
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    [TestMethod]
    public void Every_corpus_model_gets_a_fitting_outcome()
    {
        foreach (string id in Corpus.AllModelIds())
        {
            ModelProto model = ModelIO.Load(Corpus.Model(id));
            byte[] before = model.ToByteArray();
            QuantizationSummary summary = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, id);
            TestContext.WriteLine($"{id}: already={summary.AlreadyQuantized} ({summary.AlreadyQuantizedReason}) quantized={summary.Quantized.Count} skipped={summary.Skipped.Count} first skip: {(summary.Skipped.Count > 0 ? summary.Skipped[0].Reason : "-")}");
            switch (id)
            {
                case "mobilenetv2-int8":
                    Assert.IsTrue(summary.AlreadyQuantized, id);
                    CollectionAssert.AreEqual(before, model.ToByteArray(), "an already quantized model is left alone");
                    break;
                case "squeezenet-fp16":
                    // fp16 weights are quantized from float16 (Float16Lift), the float16 input and output stay
                    Assert.AreEqual(26, summary.Quantized.Count(q => q.OpType == "Conv"), id);
                    Assert.IsEmpty(summary.Skipped, id);
                    StringAssert.Contains(summary.Float16Weights, "float16", id);
                    ModelChecker.Validate(model, id);
                    Assert.IsLessThan(before.LongLength * 6 / 10, model.CalculateSize(), id);
                    Dictionary<string, float[]> expected = Onnx.OrtHelper.RunRandom(before), actual = Onnx.OrtHelper.RunRandom(model.ToByteArray());
                    foreach ((string name, float[] e) in expected)
                    {
                        double cosine = Kernels.ErrorMetrics.CosineSimilarity(e, actual[name]);
                        TestContext.WriteLine($"{id} {name}: cosine {cosine:F6} against the float16 original");
                        Assert.IsGreaterThanOrEqualTo(0.99, cosine, $"{id} {name}");
                    }
                    break;
                default:
                    Assert.IsNotEmpty(summary.Quantized, id);
                    Assert.IsEmpty(summary.Skipped, id);
                    ModelChecker.Validate(model, id);
                    break;
            }
        }
    }

    /// <summary>
    /// Why the default is uint8: on this CPU (AVX2, no VNNI) int8 weights go through ORT's saturating u8s8 kernel.
    /// The three encodings are compared on the two batched MNIST models by logit error against the float model.
    /// uint8 and int8 hold the same levels, so without saturation their errors match; uint8 must never be worse.
    /// </summary>
    [TestMethod]
    [DataRow("mnist-mlp-gemm")]
    [DataRow("mnist-lenet5")]
    public void Weight_encodings_compared(string id)
    {
        ModelProto original = ModelIO.Load(Corpus.Model(id));
        (float[] images, byte[] labels) = Dataset("mnist", false);
        int count = 2000;
        float[] input = images.AsSpan(0, count * 784).ToArray();
        long[] shape = ShapeFor(id)(count);
        float[] reference;
        using (var ort = new Ort(original, threads: 2))
        {
            reference = ort.Run(input, shape);
        }
        var errors = new Dictionary<WeightEncoding, double>();
        foreach (WeightEncoding encoding in Enum.GetValues<WeightEncoding>())
        {
            ModelProto q = original.Clone();
            Int8DynamicQuantizer.Apply(q, new QuantizationOptions { WeightEncoding = encoding }, id);
            float[] got;
            using (var ort = new Ort(q, threads: 2))
            {
                got = ort.Run(input, shape);
            }
            Kernels.ErrorMetricsResult m = Kernels.ErrorMetrics.Compare(reference, got);
            int agree = 0;
            for (int i = 0; i < count; i++)
            {
                agree += ArgMax(reference.AsSpan(i * 10, 10)) == ArgMax(got.AsSpan(i * 10, 10)) ? 1 : 0;
            }
            errors[encoding] = m.RelativeL2;
            TestContext.WriteLine($"{id} {encoding}: relative L2 {m.RelativeL2:G4}, max |dlogit| {m.MaxAbsDifference:G4}, cosine {m.CosineSimilarity:F6}, top-1 agreement {100.0 * agree / count:F2}%");
        }
        Assert.IsLessThanOrEqualTo(errors[WeightEncoding.Int8] * 1.05 + 1e-6, errors[WeightEncoding.UInt8]);
        Assert.IsLessThan(0.05, errors[WeightEncoding.UInt8], "uint8 logits are more than 5% off");
    }

    private static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++)
        {
            if (v[i] > v[best])
            {
                best = i;
            }
        }
        return best;
    }
}
