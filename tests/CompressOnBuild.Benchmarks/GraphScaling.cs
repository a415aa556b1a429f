using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;

namespace CompressOnBuild.Benchmarks;

/// <summary>
/// Time against node count (issue 17: a 100,000-node graph compresses in under 60 s, and 10x the nodes takes at most
/// 12x the time). Two tables, every size measured side by side in one run so that the ratios share the machine's load:
/// <list type="number">
/// <item>In process, per shape (<see cref="ScalingModels"/>) and step: parse, check, topological sort, each weight
/// pass (Int8Dynamic, Int8Static with fixed ranges, Int4, Float16, Magnitude pruning) and save; wall and process CPU
/// seconds, and the ratio of each size to the one 10x smaller (on CPU seconds, which the other processes on a loaded
/// machine disturb less than wall time).</item>
/// <item>With <c>--worker CLI.dll</c>: the real worker (CompressOnBuild.Cli compress, one process per run) per scheme
/// on the same models: its compress seconds (load the candidate's original, pass, save), its validate seconds
/// (ONNX Runtime opens both models and runs them) and the wall time of the whole run (load, check, hash, both
/// sessions, passes, optimized-graph check, save, validation, report, publish), with the phase at which each
/// COMPRESSONBUILD_MEMORY_TRACE mark was reached.</item>
/// </list>
/// Usage: --graph-scaling [--nodes 1000,10000,100000] [--shapes chain,conv,if] [--steps a,b] [--worker CLI.dll]
/// [--worker-shapes chain,conv] [--worker-schemes Int8Dynamic,...] [--no-passes]; --digest prints a hash of each pass's
/// output per shape and size instead (compare two builds for bit-identical output).
/// </summary>
internal static class GraphScaling
{
    private static readonly string[] DefaultWorkerSchemes = ["Int8Dynamic", "Int8Static", "Int4Weights:16", "Float16", "Magnitude:0.5"];

    public static int Run(string[] args)
    {
        int[] sizes = [1_000, 10_000, 100_000];
        string[] shapes = ScalingModels.Shapes;
        string[]? steps = null;
        string? worker = null;
        string[] workerShapes = ["chain", "conv"];
        string[] workerSchemes = DefaultWorkerSchemes;
        bool passes = true;
        bool digest = false;
        bool sessions = false;
        string[]? sessionVariants = null;
        var layerSizes = new List<int>();
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--nodes": sizes = [.. Next().Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture))]; break;
                case "--shapes": shapes = Next().Split(','); break;
                case "--steps": steps = Next().Split(','); break;
                case "--worker": worker = Path.GetFullPath(Next()); break;
                case "--worker-shapes": workerShapes = Next().Split(','); break;
                case "--worker-schemes": workerSchemes = Next().Split(','); break;
                case "--no-passes": passes = false; break;
                case "--digest": digest = true; break;
                case "--sessions": sessions = true; break;
                case "--variants": sessionVariants = Next().Split(','); break;
                default:
                    // Bare numbers: layer counts of the chain, as before (2 nodes per layer).
                    if (int.TryParse(args[i], NumberStyles.None, CultureInfo.InvariantCulture, out int layers))
                    {
                        layerSizes.Add(2 * layers);
                        break;
                    }
                    Console.Error.WriteLine($"unknown argument '{args[i]}'. Usage: --graph-scaling [--nodes 1000,10000,100000] [--shapes chain,conv,if] [--steps ...] [--worker CLI.dll] [--worker-shapes ...] [--worker-schemes ...] [--no-passes]");
                    return 2;
            }
        }
        if (layerSizes.Count > 0)
        {
            sizes = [.. layerSizes];
        }
        Console.WriteLine($"Machine: {Environment.ProcessorCount} logical cores, {RuntimeInformation.OSDescription}, {RuntimeInformation.ProcessArchitecture}; "
            + $"load average at start: {MemoryScaling.LoadAverage()} (shared machine: ratios are measured side by side in this run)");
        if (sessions)
        {
            int rc = OrtSessionScaling.Run(layerSizes.Count > 0 || args.Contains("--nodes") ? sizes : [10_000, 100_000], sessionVariants);
            Console.WriteLine($"Load average at the end: {MemoryScaling.LoadAverage()}");
            return rc;
        }
        if (digest)
        {
            Digests(sizes, shapes, steps);
            return 0;
        }
        if (passes)
        {
            PassTable(sizes, shapes, steps);
        }
        if (worker != null)
        {
            WorkerTable(worker, sizes, workerShapes, workerSchemes);
        }
        Console.WriteLine($"Load average at the end: {MemoryScaling.LoadAverage()}");
        return 0;
    }

    private static (string Name, Action<ModelProto> Run)[] Steps()
    {
        string dir = Path.Combine(Path.GetTempPath(), "cob-scaling-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture));
        return
        [
            ("parse", m => ModelIO.Parse(m.ToByteArray(), "scaling")),
            ("check", m => ModelChecker.Validate(m, "scaling")),
            ("sort", m => TopologicalSort.Sort(m, "scaling")),
            ("Int8Dynamic", m => Int8DynamicQuantizer.Apply(m, QuantizationOptions.Default, "scaling")),
            ("Int8Static", m =>
            {
                var options = new Int8StaticOptions();
                IReadOnlyList<string> tensors = Int8StaticQuantizer.TensorsToCalibrate(m, options);
                var ranges = tensors.ToDictionary(t => t, _ => new TensorRange(-1f, 1f), StringComparer.Ordinal);
                Int8StaticQuantizer.Apply(m, new CalibrationResult { Ranges = ranges }, options, "scaling");
            }),
            ("Int4", m => Int4WeightQuantizer.Apply(m, new Int4Options { BlockSize = 16, MinimumWeightElements = 16 }, "scaling")),
            ("Float16", m => Float16Converter.Apply(m, Float16Options.Default, "scaling")),
            ("Magnitude", m => Pruner.Apply(m, new PruningOptions { Method = PruningMethod.Magnitude, Sparsity = 0.5 }, "scaling")),
            ("save", m =>
            {
                Directory.CreateDirectory(dir);
                ModelIO.Save(m, Path.Combine(dir, "model.onnx"));
                Directory.Delete(dir, recursive: true);
            }),
        ];
    }

    /// <summary>
    /// --digest: the SHA-256 of each step's output model per shape and size instead of times, so that two builds (before
    /// and after a change to a pass) can be compared for bit-identical output.
    /// </summary>
    private static void Digests(int[] sizes, string[] shapes, string[]? only)
    {
        foreach (string shape in shapes)
        {
            foreach (int n in sizes)
            {
                foreach ((string name, Action<ModelProto> run) in Steps().Where(s => s.Name is not ("parse" or "save") && (only == null || only.Contains(s.Name, StringComparer.OrdinalIgnoreCase))))
                {
                    ModelProto model = ScalingModels.Make(shape, n);
                    string result;
                    try
                    {
                        run(model);
                        result = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(model.ToByteArray()))[..16];
                    }
                    catch (Exception e)
                    {
                        result = e.GetType().Name + ": " + e.Message;
                    }
                    Console.WriteLine($"{shape} {n} {name} {result}");
                }
            }
        }
    }

    private static void PassTable(int[] sizes, string[] shapes, string[]? only)
    {
        var steps = Steps().Where(s => only == null || only.Contains(s.Name, StringComparer.OrdinalIgnoreCase)).ToArray();
        var rows = new List<string>();
        Console.WriteLine();
        Console.WriteLine("In process: seconds per step (wall / process CPU), ratio = CPU time over the size 10x smaller");
        string header = "| shape | step | " + string.Join(" | ", sizes.Select(n => $"{n:N0} nodes")) + " | " + string.Join(" | ", Ratios(sizes)) + " |";
        string rule = "|---|---|" + string.Concat(sizes.Select(_ => "---:|")) + string.Concat(Ratios(sizes).Select(_ => "---:|"));
        Console.WriteLine(header);
        Console.WriteLine(rule);
        foreach (string shape in shapes)
        {
            var models = sizes.Select(n => ScalingModels.Make(shape, n)).ToArray();
            foreach ((string name, Action<ModelProto> run) in steps)
            {
                run(ScalingModels.Make(shape, 100)); // JIT
                var wall = new double[sizes.Length];
                var cpu = new double[sizes.Length];
                for (int k = 0; k < sizes.Length; k++)
                {
                    // Small sizes repeat until they have used 0.5 s of CPU (at most 200 runs) and report the mean: the
                    // process CPU clock ticks in 10 ms steps, and one run on 1,000 nodes takes a few milliseconds.
                    // One full collection before the runs: per run it would walk every model held here (all sizes).
                    double wallSum = 0, cpuSum = 0;
                    int reps = 0;
                    GC.Collect();
                    do
                    {
                        ModelProto model = models[k].Clone();
                        TimeSpan cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
                        var watch = Stopwatch.StartNew();
                        run(model);
                        wallSum += watch.Elapsed.TotalSeconds;
                        cpuSum += (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
                        reps++;
                    }
                    while (cpuSum < 0.5 && reps < 200);
                    wall[k] = wallSum / reps;
                    cpu[k] = cpuSum / reps;
                }
                string row = $"| {shape} ({ScalingModels.CountNodes(models[^1]):N0}) | {name} | "
                    + string.Join(" | ", wall.Zip(cpu, (w, c) => F(w) + " / " + F(c))) + " | " + string.Join(" | ", RatioCells(sizes, cpu)) + " |";
                rows.Add(row);
                Console.WriteLine(row);
            }
        }
    }

    private static void WorkerTable(string cli, int[] sizes, string[] shapes, string[] schemes)
    {
        string root = Path.Combine(Path.GetTempPath(), "cob-scaling-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(root);
        var rows = new List<string>();
        Console.WriteLine();
        Console.WriteLine("Worker (CompressOnBuild.Cli compress, one process per run): compress s (the pass and save) / validate s (ONNX Runtime runs) / wall s / CPU s (user + system) of the whole run; ratios of wall, then of CPU, over the size 10x smaller");
        try
        {
            foreach (string shape in shapes)
            {
                var files = new string[sizes.Length];
                for (int k = 0; k < sizes.Length; k++)
                {
                    files[k] = Path.Combine(root, $"{shape}-{sizes[k]}.onnx");
                    using var fs = File.Create(files[k]);
                    ScalingModels.Make(shape, sizes[k]).WriteTo(fs);
                }
                string? calibration = shape switch
                {
                    "chain" => WriteNpy(Path.Combine(root, shape + ".npy"), [8, ScalingModels.Width]),
                    "conv" => WriteNpy(Path.Combine(root, shape + ".npy"), [8, ScalingModels.Channels, 4, 4]),
                    _ => null, // two inputs (x and the If condition): no single-array calibration file
                };
                foreach (string scheme in schemes)
                {
                    if (scheme == "Int8Static" && calibration == null)
                    {
                        continue;
                    }
                    var cells = new List<string>();
                    var walls = new double[sizes.Length];
                    var cpus = new double[sizes.Length];
                    var phases = new List<string>();
                    for (int k = 0; k < sizes.Length; k++)
                    {
                        string output = Path.Combine(root, "out.onnx");
                        string report = Path.Combine(root, "report.json");
                        var argv = new List<string> { cli, "compress", files[k], "--output", output, "--report", report };
                        if (scheme.StartsWith("Magnitude", StringComparison.Ordinal))
                        {
                            argv.AddRange(["--quantization", "None", "--pruning", scheme]);
                        }
                        else
                        {
                            argv.AddRange(["--quantization", scheme]);
                        }
                        if (scheme == "Int8Static")
                        {
                            argv.AddRange(["--calibration-data", calibration!]);
                        }
                        var watch = Stopwatch.StartNew();
                        (int exit, string stderr, double cpu) = RunWorker(argv);
                        walls[k] = watch.Elapsed.TotalSeconds;
                        cpus[k] = cpu;
                        JsonNode? r = File.Exists(report) ? JsonNode.Parse(File.ReadAllText(report)) : null;
                        double compress = r?["timing"]?["compressSeconds"]?.GetValue<double>() ?? double.NaN;
                        double validate = r?["timing"]?["validateSeconds"]?.GetValue<double>() ?? double.NaN;
                        cells.Add(exit == 0 || exit == 1 ? $"{F(compress)} / {F(validate)} / {F(walls[k])} / {F(cpus[k])}" : $"exit {exit} after {F(walls[k])}");
                        if (exit is not (0 or 1))
                        {
                            Console.Error.WriteLine(stderr);
                        }
                        if (k == sizes.Length - 1)
                        {
                            phases.AddRange(Phases(stderr));
                        }
                        foreach (string f in Directory.GetFiles(root, "out.onnx*").Concat(Directory.GetFiles(root, "report.*")))
                        {
                            File.Delete(f);
                        }
                    }
                    string row = $"| {shape} | {scheme} | " + string.Join(" | ", cells) + " | " + string.Join(" | ", RatioCells(sizes, walls)) + " | " + string.Join(" | ", RatioCells(sizes, cpus)) + " |";
                    rows.Add(row);
                    Console.WriteLine(row);
                    Console.WriteLine($"    {sizes[^1]:N0} nodes, phases (s since the worker started): " + string.Join(", ", phases));
                }
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
        Console.WriteLine();
        Console.WriteLine("| shape | scheme | " + string.Join(" | ", sizes.Select(n => $"{n:N0} nodes: compress / validate / wall / CPU s")) + " | "
            + string.Join(" | ", Ratios(sizes).Select(r => "wall " + r)) + " | " + string.Join(" | ", Ratios(sizes).Select(r => "CPU " + r)) + " |");
        Console.WriteLine("|---|---|" + string.Concat(sizes.Select(_ => "---:|")) + string.Concat(Ratios(sizes).Select(_ => "---:|---:|")));
        rows.ForEach(Console.WriteLine);
    }

    /// <summary>"loaded 1.2" ... from the COMPRESSONBUILD_MEMORY_TRACE lines ("CompressOnBuild memory: item: phase: at 1.2 s, rss ...").</summary>
    private static IEnumerable<string> Phases(string stderr)
    {
        foreach (string line in stderr.Split('\n'))
        {
            int at = line.IndexOf(": at ", StringComparison.Ordinal);
            if (!line.StartsWith("CompressOnBuild memory:", StringComparison.Ordinal) || at < 0)
            {
                continue;
            }
            int phaseStart = line.LastIndexOf(": ", at - 1, StringComparison.Ordinal);
            string phase = line[(phaseStart + 2)..at];
            string seconds = line[(at + 5)..].Split(' ')[0];
            yield return phase + " " + seconds;
        }
    }

    private static IEnumerable<string> Ratios(int[] sizes)
    {
        for (int k = 1; k < sizes.Length; k++)
        {
            yield return $"{sizes[k]:N0} / {sizes[k - 1]:N0}";
        }
    }

    private static IEnumerable<string> RatioCells(int[] sizes, double[] seconds)
    {
        for (int k = 1; k < sizes.Length; k++)
        {
            yield return "x" + (seconds[k] / seconds[k - 1]).ToString("F1", CultureInfo.InvariantCulture);
        }
    }

    private static string F(double s) => double.IsNaN(s) ? "-" : s.ToString(s < 0.1 ? "F4" : s < 10 ? "F2" : "F1", CultureInfo.InvariantCulture);

    /// <summary>Runs the worker under /usr/bin/time when there is one; returns its exit code, output and CPU seconds (user + system; NaN without /usr/bin/time).</summary>
    private static (int Exit, string Stderr, double CpuSeconds) RunWorker(List<string> argv)
    {
        bool time = File.Exists("/usr/bin/time");
        var psi = new ProcessStartInfo(time ? "/usr/bin/time" : "dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        if (time)
        {
            psi.ArgumentList.Add("-f");
            psi.ArgumentList.Add("COB_CPU_SECONDS=%U %S");
            psi.ArgumentList.Add("dotnet");
        }
        argv.ForEach(psi.ArgumentList.Add);
        psi.Environment["COMPRESSONBUILD_MEMORY_TRACE"] = "1";
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        using Process p = Process.Start(psi)!;
        Task<string> err = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        string all = stdout + "\n" + err.Result;
        double cpu = double.NaN;
        foreach (string line in all.Split('\n'))
        {
            if (line.StartsWith("COB_CPU_SECONDS=", StringComparison.Ordinal))
            {
                cpu = line[16..].Split(' ', StringSplitOptions.RemoveEmptyEntries).Sum(v => double.Parse(v, CultureInfo.InvariantCulture));
            }
        }
        return (p.ExitCode, all, cpu);
    }

    /// <summary>A float32 .npy of <paramref name="shape"/> with values in [-1, 1).</summary>
    private static string WriteNpy(string path, int[] shape)
    {
        string header = $"{{'descr': '<f4', 'fortran_order': False, 'shape': ({string.Join(", ", shape)},), }}";
        int total = 10 + header.Length + 1;
        header = header.PadRight(header.Length + ((64 - (total % 64)) % 64)) + "\n";
        var rng = new Random(7);
        float[] values = new float[shape.Aggregate(1, (a, b) => a * b)];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (float)(rng.NextDouble() * 2 - 1);
        }
        using var fs = new FileStream(path, FileMode.Create);
        fs.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0]);
        fs.Write(BitConverter.GetBytes((ushort)header.Length));
        fs.Write(System.Text.Encoding.ASCII.GetBytes(header));
        fs.Write(MemoryMarshal.AsBytes(values.AsSpan()));
        return path;
    }
}
