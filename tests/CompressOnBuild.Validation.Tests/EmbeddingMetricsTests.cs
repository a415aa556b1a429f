using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Validation.Tests;

/// <summary>Metrics for embedding and feature outputs: pooled cosine, clear-neighbour agreement, similarity rank correlation.</summary>
[TestClass]
public sealed class EmbeddingMetricsTests
{
    [TestMethod]
    public void Spearman_HandComputedCases()
    {
        Assert.AreEqual(1.0, EmbeddingMetrics.Spearman([1, 2, 3, 4], [10, 20, 30, 1000]), 1e-12, "monotone, not linear: still 1");
        Assert.AreEqual(-1.0, EmbeddingMetrics.Spearman([1, 2, 3, 4], [4, 3, 2, 1]), 1e-12);
        // Ranks x: 1,2,3,4; y: 2,1,4,3 -> d^2 sum 4 -> 1 - 6*4/(4*15) = 0.6.
        Assert.AreEqual(0.6, EmbeddingMetrics.Spearman([1, 2, 3, 4], [2, 1, 4, 3]), 1e-12);
        // Ties get the average rank: y ranks 1.5,1.5,3,4 against 1,2,3,4.
        double expected = Pearson([1, 2, 3, 4], [1.5, 1.5, 3, 4]);
        Assert.AreEqual(expected, EmbeddingMetrics.Spearman([1, 2, 3, 4], [7, 7, 8, 9]), 1e-12);
    }

    /// <summary>
    /// The pairwise similarities are ranked from float arrays, sorted in place, with ranks kept as integers (doubled):
    /// the correlation must be the one of double arrays and double ranks to the last bit, ties included.
    /// </summary>
    [TestMethod]
    public void Spearman_OnFloatsInPlace_IsBitForBitTheDoubleOne()
    {
        var rng = new Random(7);
        foreach (int n in new[] { 3, 10, 1000, 20000 })
        {
            // Few distinct values in part of the data, so many ties and groups of ties of every length.
            float[] x = [.. Enumerable.Range(0, n).Select(i => i % 3 == 0 ? MathF.Round((float)rng.NextDouble() * 20) / 20 : (float)rng.NextDouble())];
            float[] y = [.. x.Select(v => v + (float)(rng.NextDouble() - 0.5) * 0.1f).Select((v, i) => i % 5 == 0 ? MathF.Round(v * 10) / 10 : v)];
            double expected = DoubleSpearman([.. x.Select(v => (double)v)], [.. y.Select(v => (double)v)]);
            double actual = EmbeddingMetrics.SpearmanDestructive((float[])x.Clone(), (float[])y.Clone());
            Assert.AreEqual(BitConverter.DoubleToInt64Bits(expected), BitConverter.DoubleToInt64Bits(actual), $"n={n}: {expected:R} vs {actual:R}");
            Assert.AreEqual(BitConverter.DoubleToInt64Bits(expected), BitConverter.DoubleToInt64Bits(EmbeddingMetrics.Spearman([.. x.Select(v => (double)v)], [.. y.Select(v => (double)v)])));
        }
        Assert.AreEqual(1.0, EmbeddingMetrics.SpearmanDestructive([2f, 2f, 2f], [5f, 5f, 5f]), "both constant");
        Assert.AreEqual(0.0, EmbeddingMetrics.SpearmanDestructive([1f, 2f, 3f], [5f, 5f, 5f]), "one constant");
    }

    /// <summary>The rank correlation as it was computed before (double values, double ranks averaged over ties).</summary>
    private static double DoubleSpearman(double[] x, double[] y)
    {
        static double[] Ranks(double[] values)
        {
            int[] order = [.. Enumerable.Range(0, values.Length)];
            double[] keys = (double[])values.Clone();
            Array.Sort(keys, order);
            double[] ranks = new double[values.Length];
            for (int i = 0; i < keys.Length;)
            {
                int j = i;
                while (j + 1 < keys.Length && keys[j + 1] == keys[i])
                {
                    j++;
                }
                for (int t = i; t <= j; t++)
                {
                    ranks[order[t]] = (i + j) / 2.0 + 1;
                }
                i = j + 1;
            }
            return ranks;
        }
        double[] rx = Ranks(x), ry = Ranks(y);
        double mean = (x.Length + 1) / 2.0;
        double sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < rx.Length; i++)
        {
            double dx = rx[i] - mean, dy = ry[i] - mean;
            sxy += dx * dy;
            sxx += dx * dx;
            syy += dy * dy;
        }
        return sxx == 0 || syy == 0 ? (sxx == syy ? 1 : 0) : sxy / Math.Sqrt(sxx * syy);
    }

    private static double Pearson(double[] x, double[] y)
    {
        double mx = x.Average(), my = y.Average();
        double sxy = x.Zip(y).Sum(p => (p.First - mx) * (p.Second - my));
        return sxy / Math.Sqrt(x.Sum(v => (v - mx) * (v - mx)) * y.Sum(v => (v - my) * (v - my)));
    }

    [TestMethod]
    public void Pool_AveragesTheMaskedTokensOnly()
    {
        TensorData perToken = new([1, 2, 3, 4, 100, 100], [1, 3, 2]);
        CollectionAssert.AreEqual(new float[] { 2, 3 }, EmbeddingMetrics.Pool(perToken, [1, 1, 0]));
        CollectionAssert.AreEqual(new float[] { 104f / 3, 106f / 3 }, EmbeddingMetrics.Pool(perToken, null));
        TensorData features = new([1, 2, 3], [1, 3, 1, 1]);
        CollectionAssert.AreEqual(new float[] { 1, 2, 3 }, EmbeddingMetrics.Pool(features, null));
    }

    [TestMethod]
    public void NeighbourAgreement_CountsOnlySamplesWithAClearNeighbour()
    {
        // Sample 0 has two almost equally near neighbours (1 and 2, cosine margin < 0.02): the compressed model flips
        // them. Samples 1 and 2 are each other's clear nearest neighbour (and stay so); 3 and 4 likewise.
        float[][] original =
        [
            [1f, 0f, 0f],
            Unit(1f, 0.30f, 0f),
            Unit(1f, 0.31f, 0f),
            [0f, 0f, 1f],
            Unit(0f, 0.2f, 1f),
        ];
        float[][] compressed = [.. original.Select(v => (float[])v.Clone())];
        compressed[1] = Unit(1f, 0.33f, 0f);
        compressed[2] = Unit(1f, 0.29f, 0f);
        EmbeddingMetrics m = EmbeddingMetrics.Compare(original, compressed, "none");
        Assert.AreEqual(5, m.PairwiseSamples);
        Assert.AreEqual(4, m.ClearNeighborSamples, "sample 0's neighbour is a tie");
        Assert.AreEqual(1.0, m.NeighborAgreement!.Value, 1e-12, "every clear sample keeps its neighbour");
        Assert.AreEqual(0.8, m.NeighborAgreementAll!.Value, 1e-12, "sample 0's tie flipped");
        Assert.IsTrue(m.SimilarityCorrelation < 1 && m.SimilarityCorrelation > 0.9, $"{m.SimilarityCorrelation}");
        Assert.IsTrue(m.MinCosine < 1 && m.MeanCosine > m.MinCosine);

        EmbeddingMetrics same = EmbeddingMetrics.Compare(original, original, "none");
        Assert.AreEqual(1.0, same.MeanCosine, 1e-6);
        Assert.AreEqual(1.0, same.SimilarityCorrelation!.Value, 1e-12);
        Assert.AreEqual(1.0, same.NeighborAgreementAll!.Value, 1e-12);
    }

    private static float[] Unit(params float[] v)
    {
        float n = MathF.Sqrt(v.Sum(x => x * x));
        return [.. v.Select(x => x / n)];
    }

    [TestMethod]
    [DataRow(new long[] { 1, 128, 384 }, false, "last_hidden_state", OutputKind.Embedding)]
    [DataRow(new long[] { 1, 512, 1, 1 }, false, "features", OutputKind.Embedding)]
    [DataRow(new long[] { 1, 384 }, false, "sentence_embedding", OutputKind.Embedding)]
    [DataRow(new long[] { 1, 10 }, false, "logits", OutputKind.Classification)]
    [DataRow(new long[] { 1, 512, 1, 1 }, true, "features", OutputKind.Classification)]
    public void Choose_FromShapeNameAndLabels(long[] shape, bool labels, string name, OutputKind expected)
    {
        Assert.AreEqual(expected, EmbeddingMetrics.Choose(OutputKind.Auto, name, shape, labels).Kind);
        Assert.AreEqual(OutputKind.Classification, EmbeddingMetrics.Choose(OutputKind.Classification, name, shape, labels).Kind, "the user overrides");
        Assert.AreEqual(OutputKind.Classification, EmbeddingMetrics.Choose(OutputKind.Auto, name, shape, labels, isProbabilities: true).Kind,
            "a softmax output such as [1,1000,1,1] is class scores");
    }

    [TestMethod]
    public void IsProbabilities_OnlyForNonNegativeValuesSummingToOne()
    {
        Assert.IsTrue(EmbeddingMetrics.IsProbabilities([0.2f, 0.7f, 0.1f]));
        Assert.IsFalse(EmbeddingMetrics.IsProbabilities([0.5f, 0.7f, -0.2f]));
        Assert.IsFalse(EmbeddingMetrics.IsProbabilities([0.2f, 0.2f, 0.1f]));
    }

    /// <summary>A featurizer (Conv -&gt; Relu -&gt; GlobalAveragePool, output [1,8,1,1]) on an unlabelled image folder: judged
    /// as embedding, with the pairwise metrics; a perturbed copy lowers them.</summary>
    [TestMethod]
    public void UnlabelledImageFolder_OnAFeaturizer_IsJudgedAsEmbedding()
    {
        using TempDir dir = new();
        string images = dir.File("photos");
        Directory.CreateDirectory(images);
        var rng = new Random(3);
        for (int i = 0; i < 12; i++)
        {
            byte[] pixels = new byte[8 * 8 * 3];
            rng.NextBytes(pixels);
            File.WriteAllBytes(Path.Combine(images, $"img{i:00}.png"), TestFiles.Png(8, 8, 3, pixels));
        }
        string a = dir.File("a.onnx"), b = dir.File("b.onnx");
        TestFiles.Save(Featurizer(TinyModels.RandomFloats(8 * 3 * 9, 1, 0.5f)), a);
        float[] noisy = TinyModels.RandomFloats(8 * 3 * 9, 1, 0.5f).Zip(TinyModels.RandomFloats(8 * 3 * 9, 2, 0.05f), (w, e) => w + e).ToArray();
        TestFiles.Save(Featurizer(noisy), b);
        using ModelRunner original = new(a);
        using ModelRunner compressed = new(b);
        Dataset data = DatasetLoader.Load(images, null, original.Inputs);
        Assert.IsNull(data.Labels);
        ValidationResult r = Validator.Compare(original, compressed, data, new ValidatorOptions { LatencyRuns = 0 });
        Assert.AreEqual(OutputKind.Embedding, r.Metric);
        StringAssert.Contains(r.MetricReason, "feature vector");
        Assert.IsNotNull(r.Embedding);
        Assert.AreEqual(12, r.Embedding.PairwiseSamples);
        Assert.IsTrue(r.Embedding.MeanCosine is > 0.9 and < 1, $"{r.Embedding.MeanCosine}");
        Assert.AreEqual(r.Embedding.MeanCosine, r.MeanCosineSimilarity);
        Assert.IsNotNull(r.Embedding.SimilarityCorrelation);

        ValidationResult forced = Validator.Compare(original, compressed, data, new ValidatorOptions { LatencyRuns = 0, Metric = OutputKind.Classification });
        Assert.AreEqual(OutputKind.Classification, forced.Metric);
        Assert.IsNull(forced.Embedding);
    }

    private static ModelProto Featurizer(float[] weights)
    {
        var g = new GraphProto { Name = "featurizer" };
        g.Input.Add(TinyModels.FloatValue("image", 1, 3, 8, 8));
        g.Output.Add(TinyModels.FloatValue("features", 1, 8, 1, 1));
        g.Initializer.Add(TensorUtil.FromFloats("w", weights, 8, 3, 3, 3));
        g.Node.Add(TinyModels.Node("Conv", ["image", "w"], ["c"], "conv", TinyModels.IntsAttr("pads", 1, 1, 1, 1)));
        g.Node.Add(TinyModels.Node("Relu", ["c"], ["r"], "relu"));
        g.Node.Add(TinyModels.Node("GlobalAveragePool", ["r"], ["features"], "gap"));
        return TinyModels.Model(g);
    }
}
