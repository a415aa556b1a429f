using System.Diagnostics;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Core.Tests.Graph;

/// <summary>
/// The passes scale linearly with the node count (issue 17: Int8Dynamic took 59 s on a 10,000-node MatMul chain
/// through per-node IndexOf/Where/OuterUses scans and RepeatedField Insert/RemoveAt). A generous ratio, not a
/// timing budget: 10x the nodes must take less than 40x the time (quadratic work gives about 100x). Both sizes are
/// well beyond the CPU caches, which a smaller first size is not (its per-node cost is several times lower). Time is the
/// test thread's own CPU time where Linux reports it (/proc/thread-self/schedstat), so that other processes on a
/// loaded machine do not count; elsewhere wall-clock time.
/// </summary>
[TestClass]
public sealed class GraphScalingTests
{
    private const int Small = 2_000;
    private const int Large = 20_000;
    private const double MaxRatio = 40;

    /// <summary>The fastest of two runs of <paramref name="pass"/> on a fresh chain of <paramref name="layers"/> layers.</summary>
    private static double BestSeconds(int layers, Action<ModelProto> pass)
    {
        double best = double.MaxValue;
        for (int run = 0; run < 2; run++)
        {
            ModelProto model = MatMulChain(layers);
            GC.Collect();
            var watch = Stopwatch.StartNew();
            double cpu = ThreadCpuSeconds();
            pass(model);
            best = Math.Min(best, double.IsNaN(cpu) ? watch.Elapsed.TotalSeconds : ThreadCpuSeconds() - cpu);
        }
        return best;
    }

    /// <summary>CPU time the current thread has run, in seconds, or NaN where the OS does not tell.</summary>
    private static double ThreadCpuSeconds()
    {
        try
        {
            string stat = File.ReadAllText("/proc/thread-self/schedstat");
            return long.Parse(stat.AsSpan(0, stat.IndexOf(' ', StringComparison.Ordinal)), System.Globalization.CultureInfo.InvariantCulture) / 1e9;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or ArgumentOutOfRangeException)
        {
            return double.NaN;
        }
    }

    private static void AssertLinear(string pass, Action<ModelProto> run)
    {
        run(MatMulChain(100)); // JIT
        double small = BestSeconds(Small, run);
        double large = BestSeconds(Large, run);
        double ratio = large / Math.Max(small, 1e-4);
        Console.WriteLine($"{pass}: {Small} layers {small:F3} s, {Large} layers {large:F3} s: x{ratio:F1}");
        Assert.IsLessThan(MaxRatio, ratio, $"{pass}: {Small} layers {small:F3} s, {Large} layers {large:F3} s: x{ratio:F1} for x{Large / Small} nodes");
    }

    [TestMethod]
    public void Int4_time_grows_linearly_with_node_count() =>
        AssertLinear("Int4", m => Assert.HasCount(m.Graph.Node.Count(n => n.OpType == "MatMul"),
            Int4WeightQuantizer.Apply(m, new Int4Options { BlockSize = 16, MinimumWeightElements = 16 }, "chain").Quantized));

    [TestMethod]
    public void Int8Dynamic_time_grows_linearly_with_node_count()
    {
        AssertLinear("Int8Dynamic", m =>
        {
            QuantizationSummary s = Int8DynamicQuantizer.Apply(m, QuantizationOptions.Default, "chain");
            Assert.HasCount(m.Graph.Node.Count, s.Quantized, "every MatMul quantized with its bias Add folded in");
            Assert.IsTrue(m.Graph.Node.All(n => n.OpType == Int8DynamicQuantizer.QuantizedOpType), "only DynamicQuantizeMatMul nodes left");
            Assert.AreEqual(0, m.Graph.ValueInfo.Count(v => v.Name.EndsWith("_out", StringComparison.Ordinal)), "value_info of the folded MatMul outputs dropped");
        });
    }
}
