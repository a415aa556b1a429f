using CompressOnBuild.Core;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Validation.Tests;

/// <summary>Validator latency: prepared ORT runs (<see cref="ModelRunner.PrepareLatency"/>) and the minimum timed duration.</summary>
[TestClass]
public sealed class LatencyMeasurementTests
{
    public TestContext TestContext { get; set; } = null!;

    private static Dataset Mnist(ModelRunner runner, int samples) =>
        DatasetLoader.Load(Corpus.Dataset("mnist", "t10k-images-idx3-ubyte"), Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte"),
            runner.Inputs, Preprocessing.Parse("layout=NCHW"), samples);

    [TestMethod]
    public void Tiny_models_are_timed_past_the_minimum_run_count_until_the_minimum_duration()
    {
        using var a = new ModelRunner(Corpus.Model("mnist-lenet5"));
        using var b = new ModelRunner(Corpus.Model("mnist-lenet5"));
        Dataset data = Mnist(a, 4);
        ValidationResult exact = Validator.Compare(a, b, data, new ValidatorOptions { LatencyRuns = 5, WarmupRuns = 1 });
        Assert.AreEqual(5, exact.LatencyRuns, "without a minimum duration: exactly LatencyRuns");
        // lenet5 runs in about 20 us: 30 ms would take ~1,500 runs, capped at 100 x 5.
        ValidationResult longer = Validator.Compare(a, b, data, new ValidatorOptions { LatencyRuns = 5, WarmupRuns = 1, MinLatencyMilliseconds = 30 });
        TestContext.WriteLine($"{longer.LatencyRuns} runs: {longer.OriginalLatencyMs * 1000:F1} us vs {longer.CompressedLatencyMs * 1000:F1} us, ratio {longer.LatencyRatio:F3}");
        Assert.IsGreaterThan(5, longer.LatencyRuns);
        Assert.IsLessThanOrEqualTo(500, longer.LatencyRuns);
        Assert.IsGreaterThan(0.0, longer.OriginalLatencyMs);
        Assert.IsLessThan(1.0, longer.OriginalLatencyMs, "a 20 us model's median is well under a millisecond");
    }

    [TestMethod]
    public void A_prepared_run_checks_its_inputs_and_times_the_session()
    {
        using var runner = new ModelRunner(Corpus.Model("mnist-8"));
        Dataset data = Mnist(runner, 1);
        Assert.ThrowsExactly<ArgumentException>(() => runner.PrepareLatency([], [runner.Outputs[0].Name]));
        using ModelRunner.LatencyProbe probe = runner.PrepareLatency(data.GetSample(0), [runner.Outputs[0].Name]);
        double[] times = [.. Enumerable.Range(0, 50).Select(_ => probe.Run())];
        TestContext.WriteLine($"mnist-8 prepared runs: median {Validator.Median(times) * 1000:F1} us");
        Assert.IsTrue(times.All(t => t > 0), "every run is timed");
        var e = Assert.ThrowsExactly<CompressException>(() =>
        {
            using ModelRunner.LatencyProbe bad = runner.PrepareLatency(data.GetSample(0), ["no_such_output"]);
            bad.Run();
        });
        Assert.AreEqual(DiagnosticCodes.OrtRunFailed, e.Code);
    }
}
