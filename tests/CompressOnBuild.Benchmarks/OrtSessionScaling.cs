using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using CompressOnBuild.Validation;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Benchmarks;

/// <summary>
/// --graph-scaling --sessions: why ONNX Runtime's session creation grows faster than the node count on the scaling
/// models (issue 17). Times <c>new InferenceSession(file, options)</c> alone (wall and process CPU seconds, one
/// session at a time, disposed before the next) for each size side by side, on variants of the same graph that
/// isolate one factor each:
/// <list type="bullet">
/// <item>chain: <see cref="ScalingModels"/>'s MatMul+Add chain as the worker gets it (value_info on every tensor).</item>
/// <item>chain-novi: the same chain without value_info entries.</item>
/// <item>wide: the same node count as 100 independent MatMul+Add chains fed by the input, one output each (depth
/// nodes/100).</item>
/// <item>chain-opset17 / chain-short: opset 17, or one-character-per-digit names (n12, w12, ...).</item>
/// <item>relu: a chain of Relu nodes (no initializers at all); relu-init: every other one an Add of a distinct
/// one-element initializer; relu-init1: the same Adds all reading one initializer.</item>
/// <item>int8: the chain as Int8Dynamic writes it (DynamicQuantizeMatMul with weight, scale and zero point).</item>
/// </list>
/// and, on the chain, session settings: optimization level (disabled, basic, all), session.disable_prepacking,
/// intra-op threads, and session.use_device_allocator_for_initializers (which <see cref="ModelRunner"/> sets).
/// Usage: --graph-scaling --sessions [--nodes 10000,100000] [--variants chain:all,chain:disabled,...].
/// A variant is MODEL:SETTING with MODEL one of chain, chain-novi, wide, chain-opset17, chain-short, relu and SETTING
/// one of disabled, basic, extended, all, all-noprepack, all-threads2, all-nodevalloc, disabled-nodevalloc, and any of
/// them with -profile (ORT's profiler: prints its model-loading and session-initialization times).
/// </summary>
internal static class OrtSessionScaling
{
    private static readonly string[] DefaultVariants =
    [
        "chain:disabled", "chain-novi:disabled", "wide:disabled", "relu:disabled", "chain:disabled-nodevalloc",
        "chain:basic", "chain:all", "chain:all-noprepack", "chain:all-threads2",
    ];

    public static int Run(int[] sizes, string[]? variants)
    {
        OrtInfo ort = OrtLoader.Initialize(new OrtLoaderOptions());
        Console.WriteLine($"ONNX Runtime {ort.Version} ({ort.NativePath})");
        variants ??= DefaultVariants;
        string root = Path.Combine(Path.GetTempPath(), "cob-sessions-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(root);
        var rows = new List<string>();
        Console.WriteLine();
        Console.WriteLine("Session creation: seconds (wall / process CPU) of new InferenceSession(file) alone; ratio = CPU over the previous size, and the exponent log(ratio)/log(size ratio) (1 = linear, 2 = quadratic)");
        string header = "| model | setting | " + string.Join(" | ", sizes.Select(n => $"{n:N0} nodes")) + " | "
            + string.Join(" | ", Enumerable.Range(1, sizes.Length - 1).Select(k => $"{sizes[k]:N0} / {sizes[k - 1]:N0}")) + " |";
        Console.WriteLine(header);
        Console.WriteLine("|---|---|" + string.Concat(sizes.Select(_ => "---:|")) + string.Concat(sizes.Skip(1).Select(_ => "---:|")));
        try
        {
            foreach (string variant in variants)
            {
                string[] parts = variant.Split(':');
                string model = parts[0];
                string setting = parts.Length > 1 ? parts[1] : "all";
                var cells = new List<string>();
                var cpu = new double[sizes.Length];
                for (int k = 0; k < sizes.Length; k++)
                {
                    string file = Path.Combine(root, $"{model}-{sizes[k]}.onnx");
                    if (!File.Exists(file))
                    {
                        using var fs = File.Create(file);
                        ModelProto m = Make(model, sizes[k]);
                        InitializerCounts[model + sizes[k]] = m.Graph.Initializer.Count;
                        m.WriteTo(fs);
                    }
                    GC.Collect();
                    (double wall, double c) = Time(file, setting);
                    cpu[k] = c;
                    cells.Add(F(wall) + " / " + F(c));
                }
                var ratios = new List<string>();
                for (int k = 1; k < sizes.Length; k++)
                {
                    double r = cpu[k] / cpu[k - 1];
                    double e = Math.Log(r) / Math.Log((double)sizes[k] / sizes[k - 1]);
                    ratios.Add($"x{r.ToString("F1", CultureInfo.InvariantCulture)} (n^{e.ToString("F2", CultureInfo.InvariantCulture)})");
                }
                string row = $"| {model} ({Initializers(model, sizes[^1])} initializers) | {setting} | " + string.Join(" | ", cells) + " | " + string.Join(" | ", ratios) + " |";
                rows.Add(row);
                Console.WriteLine(row);
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
        return 0;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static (double Wall, double Cpu) Time(string file, string setting)
    {
        using var so = new SessionOptions
        {
            IntraOpNumThreads = setting.Contains("-threads2", StringComparison.Ordinal) ? 2 : 1,
            InterOpNumThreads = 1,
            ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
            LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
            GraphOptimizationLevel = setting.Split('-')[0] switch
            {
                "disabled" => GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic" => GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended" => GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                _ => GraphOptimizationLevel.ORT_ENABLE_ALL,
            },
        };
        if (!setting.Contains("-nodevalloc", StringComparison.Ordinal))
        {
            so.AddSessionConfigEntry("session.use_device_allocator_for_initializers", "1");
        }
        if (setting.Contains("-noprepack", StringComparison.Ordinal))
        {
            so.AddSessionConfigEntry("session.disable_prepacking", "1");
        }
        bool profile = setting.Contains("-profile", StringComparison.Ordinal);
        if (profile)
        {
            so.EnableProfiling = true;
            so.ProfileOutputPathPrefix = Path.Combine(Path.GetDirectoryName(file)!, "profile");
        }
        TimeSpan cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        var watch = Stopwatch.StartNew();
        using (var session = new InferenceSession(file, so))
        {
            double wall = watch.Elapsed.TotalSeconds;
            double cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
            if (profile)
            {
                // ORT's own split of the creation: model loading (parse + Graph) vs session initialization
                // (resolve, transformers, partitioning, kernels, initializers), in its profile's Session events.
                string json = File.ReadAllText(session.EndProfiling());
                var events = System.Text.Json.Nodes.JsonNode.Parse(json)!.AsArray();
                Console.WriteLine($"    {Path.GetFileName(file)} {setting}: " + string.Join(", ", events
                    .Where(e => e?["cat"]?.GetValue<string>() == "Session")
                    .Select(e => $"{e!["name"]!.GetValue<string>()} {e["dur"]!.GetValue<long>() / 1e6:F2} s")));
            }
            return (wall, cpu);
        }
    }

    private static ModelProto Make(string model, int nodes)
    {
        switch (model)
        {
            case "chain":
                return ScalingModels.Make("chain", nodes);
            case "chain-novi":
            {
                ModelProto m = ScalingModels.Make("chain", nodes);
                m.Graph.ValueInfo.Clear();
                return m;
            }
            case "chain-opset17":
            {
                ModelProto m = ScalingModels.Make("chain", nodes);
                m.OpsetImport[0].Version = 17;
                return m;
            }
            case "chain-short":
                return Renamed(ScalingModels.Make("chain", nodes));
            case "wide":
                return Wide(nodes, 100);
            case "relu":
                return Relus(nodes, initializers: false);
            case "relu-init":
                return Relus(nodes, initializers: true);
            case "relu-init1":
                return Relus(nodes, initializers: true, shared: true);
            case "int8":
            {
                ModelProto m = ScalingModels.Make("chain", nodes);
                CompressOnBuild.Core.Passes.Int8DynamicQuantizer.Apply(m, CompressOnBuild.Core.Passes.QuantizationOptions.Default, "sessions");
                return m;
            }
            default:
                throw new ArgumentException($"unknown session model '{model}'");
        }
    }

    /// <summary>Every value and node renamed to a short name ("v123"), initializers included.</summary>
    private static ModelProto Renamed(ModelProto m)
    {
        var names = new Dictionary<string, string>(StringComparer.Ordinal) { ["x"] = "x", ["y"] = "y" };
        string N(string s)
        {
            if (!names.TryGetValue(s, out string? n))
            {
                n = "v" + names.Count.ToString(CultureInfo.InvariantCulture);
                names[s] = n;
            }
            return n;
        }
        foreach (TensorProto t in m.Graph.Initializer) { t.Name = N(t.Name); }
        foreach (NodeProto node in m.Graph.Node)
        {
            for (int i = 0; i < node.Input.Count; i++) { node.Input[i] = N(node.Input[i]); }
            for (int i = 0; i < node.Output.Count; i++) { node.Output[i] = N(node.Output[i]); }
            node.Name = "";
        }
        foreach (ValueInfoProto v in m.Graph.ValueInfo) { v.Name = N(v.Name); }
        return m;
    }

    /// <summary><paramref name="branches"/> independent MatMul+Add chains from x, one output each, about <paramref name="nodes"/> nodes in all.</summary>
    private static ModelProto Wide(int nodes, int branches)
    {
        int depth = Math.Max(1, nodes / 2 / branches);
        var g = new GraphProto { Name = "wide" };
        g.Input.Add(FloatValue("x", "N", ScalingModels.Width));
        var rng = new Random(1);
        for (int b = 0; b < branches; b++)
        {
            string previous = "x";
            for (int i = 0; i < depth; i++)
            {
                string mm = $"mm{b}_{i}";
                string y = i == depth - 1 ? $"y{b}" : $"h{b}_{i}";
                float[] w = new float[ScalingModels.Width * ScalingModels.Width];
                float[] bias = new float[ScalingModels.Width];
                for (int j = 0; j < w.Length; j++) { w[j] = (rng.NextSingle() * 2 - 1) * 0.2f; }
                for (int j = 0; j < bias.Length; j++) { bias[j] = (rng.NextSingle() * 2 - 1) * 0.5f; }
                g.Initializer.Add(TensorUtil.FromFloats("w" + mm, w, ScalingModels.Width, ScalingModels.Width));
                g.Initializer.Add(TensorUtil.FromFloats("b" + mm, bias, ScalingModels.Width));
                g.Node.Add(Node("MatMul", [previous, "w" + mm], [mm + "_out"], mm));
                g.Node.Add(Node("Add", [mm + "_out", "b" + mm], [y], mm + "_add"));
                g.ValueInfo.Add(FloatValue(mm + "_out", "N", ScalingModels.Width));
                previous = y;
            }
            g.Output.Add(FloatValue($"y{b}", "N", ScalingModels.Width));
        }
        return Model(g);
    }

    /// <summary>x -> Relu -> Relu -> ... -> y: no initializers, one value per node; <paramref name="initializers"/>: every
    /// other node an Add of a distinct one-element initializer instead (nodes/2 initializers of 4 bytes).</summary>
    private static ModelProto Relus(int nodes, bool initializers, bool shared = false)
    {
        var g = new GraphProto { Name = "relu" };
        g.Input.Add(FloatValue("x", "N", ScalingModels.Width));
        string previous = "x";
        for (int i = 0; i < nodes; i++)
        {
            string y = i == nodes - 1 ? "y" : "r" + i.ToString(CultureInfo.InvariantCulture);
            string s = i.ToString(CultureInfo.InvariantCulture);
            if (initializers && i % 2 == 1)
            {
                if (!shared || g.Initializer.Count == 0)
                {
                    g.Initializer.Add(TensorUtil.FromFloats(shared ? "c" : "c" + s, [i * 1e-6f], 1));
                }
                g.Node.Add(Node("Add", [previous, shared ? "c" : "c" + s], [y], "add" + s));
            }
            else
            {
                g.Node.Add(Node("Relu", [previous], [y], "relu" + s));
            }
            previous = y;
        }
        g.Output.Add(FloatValue("y", "N", ScalingModels.Width));
        return Model(g);
    }

    private static readonly Dictionary<string, int> InitializerCounts = [];

    private static int Initializers(string model, int nodes) => InitializerCounts.TryGetValue(model + nodes, out int n) ? n : -1;

    private static string F(double s) => s.ToString(s < 0.1 ? "F4" : s < 10 ? "F2" : "F1", CultureInfo.InvariantCulture);
}
