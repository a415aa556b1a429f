namespace CompressOnBuild.Validation.Tests;

/// <summary>Progress lines: silent for short phases, then throttled; counted steps shown (times passed in, no clock).</summary>
[TestClass]
public sealed class ProgressReporterTests
{
    private static TimeSpan S(double seconds) => TimeSpan.FromSeconds(seconds);

    [TestMethod]
    public void ShortPhasesAreSilent_LongOnesReportThrottledWithCounts()
    {
        using var p = new ProgressReporter("m.onnx", _ => { }, firstAfter: S(3), every: S(5), timerPeriod: TimeSpan.Zero);
        p.Phase("validating", 400, at: S(0));
        Assert.IsNull(p.Tick(S(2.9)), "under 3 s: nothing");
        p.Advance(37);
        Assert.AreEqual("CompressOnBuild progress: m.onnx: validating 37/400 samples, 3 s", p.Tick(S(3.2)));
        Assert.IsNull(p.Tick(S(6)), "at most one line per 5 s");
        p.Advance(100);
        Assert.AreEqual("CompressOnBuild progress: m.onnx: validating 137/400 samples, 8 s", p.Tick(S(8.2)));

        p.Phase("measuring latency", at: S(9));
        Assert.IsNull(p.Tick(S(10)), "a new phase starts silent again");
        Assert.AreEqual("CompressOnBuild progress: m.onnx: measuring latency, 4 s", p.Tick(S(13)));
    }

    [TestMethod]
    public void TheTimerWritesWithoutBeingAsked()
    {
        var lines = new System.Collections.Concurrent.ConcurrentQueue<string>();
        using var done = new ManualResetEventSlim();
        using var p = new ProgressReporter("m.onnx", l => { lines.Enqueue(l); done.Set(); }, firstAfter: TimeSpan.Zero, every: S(60),
            timerPeriod: TimeSpan.FromMilliseconds(10));
        p.Phase("quantizing");
        Assert.IsTrue(done.Wait(S(30)), "the timer must write a line for a running phase");
        StringAssert.StartsWith(lines.First(), "CompressOnBuild progress: m.onnx: quantizing");
    }
}
