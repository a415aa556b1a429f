using System.Diagnostics;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Cli.Tests;

/// <summary>Faults a build step must survive: the worker killed mid-run, two builds of one model at once.</summary>
[TestClass]
public sealed class FaultTests
{
    private string _dir = "";

    [TestInitialize]
    public void Init()
    {
        _dir = Path.Combine(Path.GetTempPath(), "cob-fault-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(_dir);
    }

    [TestCleanup]
    public void Cleanup()
    {
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private string[] MnistArgs(string output, params string[] extra) =>
    [
        "exec", CliHarness.CliDll(), "compress", Corpus.Model("mnist-lenet5"), "--output", output,
        "--validation-data", Corpus.Dataset("mnist", "t10k-images-idx3-ubyte"), "--labels", Corpus.Dataset("mnist", "t10k-labels-idx1-ubyte"),
        "--min-agreement", "1.0", "--tune", "true", .. extra,
    ];

    [TestMethod]
    public void KillingTheWorkerMidRunLeavesNoPartialOutputAndTheNextRunSucceeds()
    {
        string outDir = Path.Combine(_dir, "obj");
        string output = Path.Combine(outDir, "model.onnx");
        int killedWhileWorking = 0;
        // Kill at a few points of the run (loading, compressing, validating, tuning).
        foreach (int delayMs in new[] { 400, 900, 1800, 3000 })
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = _dir };
            foreach (string a in MnistArgs(output))
            {
                psi.ArgumentList.Add(a);
            }
            using Process p = Process.Start(psi)!;
            Thread.Sleep(delayMs);
            if (!p.HasExited)
            {
                p.Kill(entireProcessTree: true);
                killedWhileWorking++;
            }
            p.WaitForExit();
            // Either nothing was published, or a complete model was: never a torn file.
            if (File.Exists(output))
            {
                ModelChecker.Validate(ModelIO.Load(output), output);
            }
            Assert.AreEqual(0, Directory.Exists(outDir) ? Directory.GetFiles(outDir, "*.tmp", SearchOption.TopDirectoryOnly).Length : 0);
        }
        Assert.IsTrue(killedWhileWorking >= 2, "the worker finished too fast for the kill test to mean anything");

        CliRun next = CliHarness.OutOfProcess(_dir, MnistArgs(output)[2..]);
        Assert.AreEqual(0, next.ExitCode, next.Output);
        ModelChecker.Validate(ModelIO.Load(output), output);
        Assert.AreEqual(0, Directory.GetDirectories(outDir, ".cob-*").Length, "work folders left by killed runs must be cleaned up");
    }

    [TestMethod]
    public void TwoRunsOfTheSameModelAtOnceSharingACacheBothSucceedIdentically()
    {
        string cache = Path.Combine(_dir, "cache");
        var runs = new[] { "a", "b" }.Select(name => Task.Run(() =>
            CliHarness.OutOfProcess(_dir, MnistArgs(Path.Combine(_dir, name, "model.onnx"), "--cache-dir", cache)[2..]))).ToArray();
        Task.WaitAll(runs);
        foreach (Task<CliRun> r in runs)
        {
            Assert.AreEqual(0, r.Result.ExitCode, r.Result.Output);
        }
        CollectionAssert.AreEqual(File.ReadAllBytes(Path.Combine(_dir, "a", "model.onnx")), File.ReadAllBytes(Path.Combine(_dir, "b", "model.onnx")));
        // Exactly one complete entry for the key, no temporary folders left in the cache.
        string[] manifests = Directory.GetFiles(cache, "manifest.sha256", SearchOption.AllDirectories);
        Assert.AreEqual(1, manifests.Length);
        Assert.AreEqual(0, Directory.GetDirectories(cache, "*.tmp", SearchOption.AllDirectories).Length);

        CliRun third = CliHarness.OutOfProcess(_dir, MnistArgs(Path.Combine(_dir, "c", "model.onnx"), "--cache-dir", cache)[2..]);
        Assert.AreEqual(0, third.ExitCode, third.Output);
        StringAssert.Contains(third.Output, "(cached)");
    }
}
