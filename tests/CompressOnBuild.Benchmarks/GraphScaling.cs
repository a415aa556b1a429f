using System.Diagnostics;
using System.Globalization;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Benchmarks;

/// <summary>
/// Time of each weight pass on MatMul+Add chains of 10,000 and 100,000 layers (20,000 and 200,000 nodes), side by
/// side in one run, and the ratio: linear passes give about 10x for 10x the nodes (issue 17 asks for at most 12x and under 60 s for 100,000 nodes). Usage: --graph-scaling [LAYERS...].
/// </summary>
internal static class GraphScaling
{
    public static int Run(string[] args)
    {
        int[] sizes = args.Length > 0 ? [.. args.Select(a => int.Parse(a, CultureInfo.InvariantCulture))] : [10_000, 100_000];
        var passes = new (string Name, Action<ModelProto> Run)[]
        {
            ("Int8Dynamic", m => Int8DynamicQuantizer.Apply(m, QuantizationOptions.Default, "chain")),
            ("Int4", m => Int4WeightQuantizer.Apply(m, new Int4Options { BlockSize = 16, MinimumWeightElements = 16 }, "chain")),
            ("Float16", m => Float16Converter.Apply(m, Float16Options.Default, "chain")),
        };
        Console.WriteLine($"Machine: {Environment.ProcessorCount} logical cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}, {System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture}");
        Console.WriteLine("| Pass | " + string.Join(" | ", sizes.Select(n => $"{n:N0} layers ({2 * n:N0} nodes)")) + " | ratio last/first |");
        Console.WriteLine("|---|" + string.Concat(sizes.Select(_ => "---|")) + "---|");
        foreach ((string name, Action<ModelProto> run) in passes)
        {
            run(TinyModels.MatMulChain(100)); // JIT
            var seconds = new List<double>();
            foreach (int n in sizes)
            {
                ModelProto model = TinyModels.MatMulChain(n);
                int gen2 = GC.CollectionCount(2);
                var watch = Stopwatch.StartNew();
                run(model);
                seconds.Add(watch.Elapsed.TotalSeconds);
                if (Environment.GetEnvironmentVariable("GRAPH_SCALING_GC") == "1")
                {
                    Console.Error.WriteLine($"{name} {n}: {GC.CollectionCount(2) - gen2} gen2 GCs, {GC.GetTotalPauseDuration().TotalSeconds:F2} s total GC pause so far");
                }
            }
            Console.WriteLine($"| {name} | " + string.Join(" | ", seconds.Select(s => s.ToString("F2", CultureInfo.InvariantCulture) + " s"))
                + $" | x{(seconds[^1] / seconds[0]).ToString("F1", CultureInfo.InvariantCulture)} |");
        }
        return 0;
    }
}
