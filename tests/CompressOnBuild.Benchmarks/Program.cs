using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.NoEmit;
using Perfolizer.Horology;

namespace CompressOnBuild.Benchmarks;

/// <summary>
/// Runs the kernel and GEMM benchmarks (in process, a short job) and rewrites the Kernels section of the results
/// file with throughput ratios against memcpy. Usage: CompressOnBuild.Benchmarks [--results PATH] [--quick];
/// CompressOnBuild.Benchmarks --graph-scaling [LAYERS...] times the passes on MatMul chains instead (see <see cref="GraphScaling"/>);
/// --memory CLI.dll [SIZE_MB...] measures the worker's peak memory and throughput (see <see cref="MemoryScaling"/>);
/// --streaming [SIZE_MB] times the streaming path in process next to a plain copy (see <see cref="StreamingThroughput"/>).
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "--graph-scaling")
        {
            return GraphScaling.Run(args[1..]);
        }
        if (args.Length > 0 && args[0] == "--streaming")
        {
            return StreamingThroughput.Run(args[1..]);
        }
        if (args.Length > 0 && args[0] == "--memory")
        {
            return MemoryScaling.Run(args[1..]);
        }
        string? results = null;
        bool quick = false;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--results" when i + 1 < args.Length:
                    results = args[++i];
                    break;
                case "--quick":
                    quick = true;
                    break;
                default:
                    Console.Error.WriteLine($"unknown argument '{args[i]}'. Usage: [--results PATH] [--quick]");
                    return 2;
            }
        }

        Job job = Job.Default
            .WithToolchain(InProcessNoEmitToolchain.Instance)
            .WithLaunchCount(1)
            .WithWarmupCount(quick ? 1 : 2)
            .WithIterationCount(quick ? 2 : 5)
            .WithIterationTime(TimeInterval.FromMilliseconds(quick ? 40 : 100))
            .WithId("Short");
        IConfig config = DefaultConfig.Instance
            .AddJob(job)
            .AddColumn(new ThroughputColumn())
            .WithArtifactsPath(Path.Combine(Path.GetTempPath(), "compressonbuild-bench"))
            .WithOptions(ConfigOptions.DisableLogFile);

        Summary kernels = BenchmarkRunner.Run<KernelBenchmarks>(config);
        Summary gemm = BenchmarkRunner.Run<GemmBenchmarks>(config);

        var table = ResultsTable.From(kernels, gemm);
        string markdown = table.ToMarkdown();
        Console.WriteLine();
        Console.WriteLine(markdown);
        if (results != null)
        {
            ResultsTable.WriteSection(results, markdown);
            Console.WriteLine($"Rewrote the Kernels section of {results}");
        }
        return table.Complete ? 0 : 1;
    }
}

/// <summary>GB/s (bytes of work / median time) or GFLOP/s for GEMM, as a BenchmarkDotNet column.</summary>
internal sealed class ThroughputColumn : IColumn
{
    public string Id => "Throughput";

    public string ColumnName => "Throughput";

    public bool AlwaysShow => true;

    public ColumnCategory Category => ColumnCategory.Custom;

    public int PriorityInCategory => 0;

    public bool IsNumeric => true;

    public UnitType UnitType => UnitType.Dimensionless;

    public string Legend => "GB/s of the bytes processed (GFLOP/s for GEMM), from the median time";

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        double? median = ResultsTable.MedianNs(summary, benchmarkCase);
        if (median is not { } ns)
        {
            return "-";
        }
        string method = benchmarkCase.Descriptor.WorkloadMethod.Name;
        return method.StartsWith("Gemm", StringComparison.Ordinal)
            ? $"{ResultsTable.GemmFlops / ns:F2} GFLOP/s"
            : $"{ResultsTable.BytesOf(benchmarkCase) / ns:F2} GB/s";
    }

    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

    public bool IsAvailable(Summary summary) => true;
}
