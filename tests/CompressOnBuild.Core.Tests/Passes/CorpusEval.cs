using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Core.Tests.Passes;

/// <summary>Full-test-set evaluation of the MNIST-family corpus models for the float16 / int4 / static int8 pass tests.</summary>
internal static class CorpusEval
{
    private static readonly Dictionary<string, (float[] Images, byte[] Labels)> Cache = [];
    private static readonly Lock CacheLock = new();

    /// <summary>(dataset, preprocessing is (p/255-0.5)/0.5, batch to run with, MANIFEST baseline top-1).</summary>
    public static (string Dataset, bool PlusMinusOne, int Batch, double Baseline) Spec(string id) => id switch
    {
        "mnist-8" => ("mnist", false, 1, 98.90),
        "mnist-lenet5" => ("mnist", false, 500, 98.13),
        "mnist-mlp-gemm" => ("mnist", false, 1000, 96.43),
        "fashion-mlp" => ("fashion-mnist", true, 1, 87.40),
        _ => throw new ArgumentException("not an MNIST-family corpus model: " + id),
    };

    public static (float[] Images, byte[] Labels) Data(string id)
    {
        (string dataset, bool plusMinusOne, _, _) = Spec(id);
        lock (CacheLock)
        {
            string key = dataset + plusMinusOne;
            if (!Cache.TryGetValue(key, out var data))
            {
                (byte[] pixels, int count) = Idx.ReadImages(Corpus.Dataset(dataset, "t10k-images-idx3-ubyte"));
                byte[] labels = Idx.ReadLabels(Corpus.Dataset(dataset, "t10k-labels-idx1-ubyte"));
                Assert.AreEqual(count, labels.Length);
                float[] images = pixels.Select(p => plusMinusOne ? (p / 255f - 0.5f) / 0.5f : p / 255f).ToArray();
                Cache[key] = data = (images, labels);
            }
            return data;
        }
    }

    public static Func<int, long[]> ShapeFor(string id) =>
        id == "mnist-mlp-gemm" ? b => [b, 784] : b => [b, 1, 28, 28];

    /// <summary>Top-1 class of every test image.</summary>
    public static int[] Predict(ModelProto model, string id, int? count = null)
    {
        (float[] images, byte[] labels) = Data(id);
        int batch = Spec(id).Batch;
        using var ort = new Ort(model, threads: batch > 1 ? 2 : 1);
        return ort.Classify(images, count ?? labels.Length, batch, ShapeFor(id));
    }

    public static double Accuracy(int[] predicted, string id)
    {
        byte[] labels = Data(id).Labels;
        return 100.0 * predicted.Where((p, i) => p == labels[i]).Count() / predicted.Length;
    }

    public static double Agreement(int[] a, int[] b) => 100.0 * a.Where((p, i) => p == b[i]).Count() / a.Length;
}
