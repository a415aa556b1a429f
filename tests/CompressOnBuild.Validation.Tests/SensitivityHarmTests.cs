using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Validation.Tests;

/// <summary>SensitivityHarm: the ORT-backed harm measure the worker gives Sensitivity pruning.</summary>
[TestClass]
public sealed class SensitivityHarmTests
{
    [TestMethod]
    public void Kl_divergence_is_zero_for_equal_logits_and_matches_a_hand_computed_value()
    {
        Assert.AreEqual(0.0, SensitivityHarm.KlDivergence([1f, 2f, 3f], [1f, 2f, 3f]), 1e-12);
        Assert.AreEqual(0.0, SensitivityHarm.KlDivergence([1f, 2f, 3f], [11f, 12f, 13f]), 1e-12, "softmax ignores a shift");
        // p = softmax(0, ln 3) = (1/4, 3/4), q = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2).
        double expected = 0.25 * Math.Log(0.5) + 0.75 * Math.Log(1.5);
        Assert.AreEqual(expected, SensitivityHarm.KlDivergence([0f, (float)Math.Log(3)], [0f, 0f]), 1e-6);
        Assert.IsTrue(double.IsNaN(SensitivityHarm.KlDivergence([0f, 1f], [float.NaN, 0f])));
    }

    [TestMethod]
    public void Harm_is_zero_for_the_original_and_grows_with_sparsity_on_mnist()
    {
        string path = Corpus.Model("mnist-mlp-gemm");
        var options = new ModelRunnerOptions { BatchSize = 128 };
        using ModelRunner runner = new(path, options);
        Dataset data = DatasetLoader.Load(Corpus.Dataset("mnist", "t10k-images-idx3-ubyte"), null, runner.Inputs, Preprocessing.Parse("layout=FLAT"), maxSamples: 256);
        HarmMeasure harm = SensitivityHarm.Create(runner, data, options);
        Assert.AreEqual(256, harm.Samples);
        StringAssert.Contains(harm.Name, "KL");
        ModelProto model = ModelIO.Load(path);
        Assert.AreEqual(0.0, harm.Measure(model), 1e-9);
        double previous = 0;
        foreach (string s in new[] { "Magnitude:0.5", "Magnitude:0.8", "Magnitude:0.95" })
        {
            ModelProto pruned = model.Clone();
            Pruner.Apply(pruned, PruningOptions.Parse(s, "m"), "m");
            double h = harm.Measure(pruned);
            Assert.IsGreaterThan(previous, h, s);
            previous = h;
        }
    }
}
