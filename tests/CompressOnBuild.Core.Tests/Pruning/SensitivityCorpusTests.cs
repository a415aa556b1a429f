using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Tests.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Core.Tests.Pruning;

/// <summary>
/// Sensitivity-guided vs uniform (Magnitude) sparsity at the same overall sparsity on MNIST corpus models, top-1
/// measured on the full 10,000-image test set. Calibration (activation-aware ranking for both, harm for Sensitivity):
/// 256 evenly spaced test images, as in docs/results.md (the corpus has no training split).
/// </summary>
[TestClass]
public sealed class SensitivityCorpusTests
{
    private const int CalibrationSamples = 256;

    public TestContext TestContext { get; set; } = null!;

    /// <summary>Mean KL(softmax(original) || softmax(candidate)) on the calibration images, in ORT.</summary>
    private static HarmMeasure Kl(ModelProto original, string id)
    {
        float[] x = TestActivations.EvenlySpacedImages(id, CalibrationSamples);
        int batch = Math.Min(CorpusEval.Spec(id).Batch, CalibrationSamples);
        float[] Logits(ModelProto m)
        {
            using var ort = new Ort(m, threads: batch > 1 ? 2 : 1);
            var all = new List<float>();
            for (int start = 0; start < CalibrationSamples; start += batch)
            {
                int b = Math.Min(batch, CalibrationSamples - start);
                all.AddRange(ort.Run(x.AsSpan(start * 784, b * 784).ToArray(), CorpusEval.ShapeFor(id)(b)));
            }
            return [.. all];
        }
        float[] reference = Logits(original);
        int classes = reference.Length / CalibrationSamples;
        return new HarmMeasure("KL", CalibrationSamples, candidate =>
        {
            float[] y = Logits(candidate);
            double sum = 0;
            for (int s = 0; s < CalibrationSamples; s++)
            {
                sum += Kl(reference.AsSpan(s * classes, classes), y.AsSpan(s * classes, classes));
            }
            return sum / CalibrationSamples;
        });
    }

    private static double Kl(ReadOnlySpan<float> p, ReadOnlySpan<float> q)
    {
        double mp = double.NegativeInfinity, mq = double.NegativeInfinity, sp = 0, sq = 0, kl = 0;
        for (int i = 0; i < p.Length; i++)
        {
            mp = Math.Max(mp, p[i]);
            mq = Math.Max(mq, q[i]);
        }
        for (int i = 0; i < p.Length; i++)
        {
            sp += Math.Exp(p[i] - mp);
            sq += Math.Exp(q[i] - mq);
        }
        for (int i = 0; i < p.Length; i++)
        {
            double lp = p[i] - mp - Math.Log(sp), lq = q[i] - mq - Math.Log(sq);
            kl += Math.Exp(lp) * (lp - lq);
        }
        return kl;
    }

    [TestMethod]
    [DataRow("mnist-lenet5", 0.7)]
    [DataRow("mnist-mlp-gemm", 0.7)]
    public void Sensitivity_drops_no_more_than_uniform_at_the_same_overall_sparsity(string id, double sparsity)
    {
        ModelProto original = ModelIO.Load(Corpus.Model(id));
        double baseline = CorpusEval.Accuracy(CorpusEval.Predict(original, id), id);
        string s = sparsity.ToString(System.Globalization.CultureInfo.InvariantCulture);

        ModelProto uniform = original.Clone();
        PruningSummary u = Pruner.Apply(uniform, PruningOptions.Parse("Magnitude:" + s + ":uniform", id), id, TestActivations.EvenlySpaced(id, CalibrationSamples));
        ModelProto guided = original.Clone();
        PruningSummary g = Pruner.Apply(guided, PruningOptions.Parse("Sensitivity:" + s, id), id, TestActivations.EvenlySpaced(id, CalibrationSamples), Kl(original, id));
        ModelChecker.Validate(guided, id);

        // Uniform keeps the output layer dense and makes up for it on the others; Sensitivity measures every layer, the
        // output layer included, and places exactly round(s x all prunable weights) zeros.
        long elements = g.Pruned.Sum(p => p.ElementsBefore);
        Assert.AreEqual(g.PrunableWeights, elements, "every prunable layer measured");
        long zerosU = u.Pruned.Sum(p => p.NonzerosBefore - p.NonzerosAfter), zerosG = g.Pruned.Sum(p => p.NonzerosBefore - p.NonzerosAfter);
        Assert.AreEqual((long)Math.Round(sparsity * elements), zerosG, "Sensitivity places exactly round(s x elements) zeros");
        Assert.AreEqual(sparsity, g.AchievedSparsity, 1e-6, "the whole model meets the request");
        Assert.AreEqual(sparsity, u.AchievedSparsity, 0.001, "uniform too, within rounding");

        double topU = CorpusEval.Accuracy(CorpusEval.Predict(uniform, id), id);
        double topG = CorpusEval.Accuracy(CorpusEval.Predict(guided, id), id);
        TestContext.WriteLine($"{id} at {sparsity:P0} of {elements} weights: baseline {baseline:F2}% | uniform {topU:F2}% (drop {baseline - topU:F2}, zeros {zerosU}) | sensitivity {topG:F2}% (drop {baseline - topG:F2}, zeros {zerosG}); " +
            $"predicted harm {g.Sensitivity!.PredictedHarm:G4} vs uniform {g.Sensitivity.UniformPredictedHarm:G4}; {g.Sensitivity.Probes} probes in {g.Sensitivity.Seconds:F1}s; layers: " +
            string.Join(", ", g.Sensitivity.Layers.Select(l => $"{l.Node} {l.ChosenSparsity:P1} (curve {string.Join("/", l.Curve.Select(c => c.Harm.ToString("G3", System.Globalization.CultureInfo.InvariantCulture)))})")));
        Assert.IsLessThanOrEqualTo(g.Sensitivity.UniformPredictedHarm, g.Sensitivity.PredictedHarm);
        // Within 5 of 10,000 images: on mnist-mlp-gemm both land 0.45-0.46 points down (measured), one image apart.
        Assert.IsLessThanOrEqualTo(baseline - topU + 0.05, baseline - topG, $"{id}: sensitivity {topG:F2}% vs uniform {topU:F2}%");
    }
}
