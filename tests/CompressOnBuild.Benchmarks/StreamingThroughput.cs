using System.Diagnostics;
using System.Globalization;
using System.Runtime.Intrinsics;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Kernels;

namespace CompressOnBuild.Benchmarks;

/// <summary>
/// Throughput of the streaming path (<see cref="StreamingQuantizer"/>, in process) on a generated MatMul chain with
/// external data, side by side with a plain copy of the same files in the same run, page cache warm.
/// Usage: --streaming [SIZE_MB] [--width N] [--rounds N] [--schemes Int8Dynamic,Int4Weights,Float16].
/// Each round runs the plain copy, then each scheme, interleaved, so load changes hit all of them alike; the table
/// gives the best and the median round. "Ours" is the whole call (lazy load, site finding, read, quantize, write,
/// and the data file's fsync, which AtomicFile does for every output); the copy is shown with and without an fsync,
/// and a plain read of the files shows what the page cache alone delivers.
/// </summary>
internal static class StreamingThroughput
{
    public static int Run(string[] args)
    {
        long sizeMb = 2500;
        int width = 1024, rounds = 3;
        string[] schemes = ["Int8Dynamic", "Int4Weights", "Float16"];
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--width" when i + 1 < args.Length:
                    width = int.Parse(args[++i], CultureInfo.InvariantCulture);
                    break;
                case "--rounds" when i + 1 < args.Length:
                    rounds = int.Parse(args[++i], CultureInfo.InvariantCulture);
                    break;
                case "--schemes" when i + 1 < args.Length:
                    schemes = args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries);
                    break;
                default:
                    sizeMb = long.Parse(args[i], CultureInfo.InvariantCulture);
                    break;
            }
        }
        long layerBytes = 4L * width * width;
        int layers = (int)Math.Max(1, (sizeMb * 1_000_000 + layerBytes - 1) / layerBytes);
        long weightBytes = layerBytes * layers;
        string root = Path.Combine(Path.GetTempPath(), "cob-streaming-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(root);
        PrintMachine();
        Console.WriteLine($"Load average at start: {MemoryScaling.LoadAverage()} (shared machine; compare columns of one run only)");
        try
        {
            string model = Path.Combine(root, "model.onnx");
            var gen = Stopwatch.StartNew();
            MemoryScaling.Generate(model, layers, forceExternal: true, width: width);
            Console.WriteLine($"Generated {layers} MatMul layers [{width}x{width}] = {weightBytes / 1e6:0} MB of float32 weights (external data) in {gen.Elapsed.TotalSeconds:0.0} s, {FreeGiB(root):0.0} GiB free after");
            ReadAll(model + ".data"); // warm the page cache
            var times = new Dictionary<string, List<double>>(StringComparer.Ordinal);
            var profiles = new Dictionary<string, StreamingProfile>(StringComparer.Ordinal);
            var cpu = new Dictionary<string, double>(StringComparer.Ordinal);
            void Add(string name, double seconds) => (times.TryGetValue(name, out List<double>? l) ? l : times[name] = []).Add(seconds);
            for (int round = 0; round < rounds; round++)
            {
                Add("plain read (page cache, no write)", ReadOnly(model));
                Add("plain copy", Copy(model, root, fsync: false));
                Add("plain copy + fsync", Copy(model, root, fsync: true));
                foreach (string scheme in schemes)
                {
                    string output = Path.Combine(root, "out", "m.onnx");
                    var profile = new StreamingProfile();
                    TimeSpan cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
                    var watch = Stopwatch.StartNew();
                    switch (scheme)
                    {
                        case "Int8Dynamic":
                            StreamingQuantizer.CompressInt8Dynamic(model, output, QuantizationOptions.Default, "model.onnx", profile: profile);
                            break;
                        case "Int4Weights":
                            StreamingQuantizer.CompressInt4Weights(model, output, new Int4Options(), "model.onnx", profile: profile);
                            break;
                        case "Float16":
                            StreamingQuantizer.CompressFloat16(model, output, new Float16Options(), "model.onnx", profile: profile);
                            break;
                        default:
                            Console.Error.WriteLine($"unknown scheme '{scheme}'");
                            return 2;
                    }
                    Add(scheme, watch.Elapsed.TotalSeconds);
                    if (!profiles.TryGetValue(scheme, out StreamingProfile? best) || watch.Elapsed.TotalSeconds <= times[scheme].Min())
                    {
                        profiles[scheme] = profile;
                        cpu[scheme] = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
                    }
                    Directory.Delete(Path.Combine(root, "out"), recursive: true);
                }
                Console.WriteLine($"round {round + 1}: " + string.Join(", ", times.Select(t => $"{t.Key} {weightBytes / 1e6 / t.Value[^1]:0} MB/s")) + $"; load {MemoryScaling.LoadAverage()}");
            }
            Console.WriteLine();
            Console.WriteLine($"Load average at the end: {MemoryScaling.LoadAverage()}");
            double copy = times["plain copy"].Min();
            Console.WriteLine($"| {weightBytes / 1e6:0} MB, [{width}x{width}] x {layers} | best MB/s of weights | median MB/s | vs plain copy (best) | seconds in the best round: read (reader thread) / wait / quantize / write / fsync / setup / finish; CPU s |");
            Console.WriteLine("|---|---|---|---|---|");
            foreach ((string name, List<double> t) in times)
            {
                double bestS = t.Min();
                double median = t.Order().ElementAt(t.Count / 2);
                string split = profiles.TryGetValue(name, out StreamingProfile? p)
                    ? $"{p.ReadSeconds:0.00} / {p.WaitSeconds:0.00} / {p.QuantizeSeconds:0.00} / {p.WriteSeconds:0.00} / {p.FlushSeconds:0.00} / {p.SetupSeconds:0.00} / {p.FinishSeconds:0.00}; {cpu[name]:0.00}" : "-";
                Console.WriteLine($"| {name} | {weightBytes / 1e6 / bestS:0} | {weightBytes / 1e6 / median:0} | {copy / bestS:0.00} | {split} |");
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
        return 0;
    }

    internal static void PrintMachine()
    {
        string cpu = "unknown CPU";
        bool vnni = false, avx512 = false;
        if (File.Exists("/proc/cpuinfo"))
        {
            foreach (string line in File.ReadLines("/proc/cpuinfo"))
            {
                if (line.StartsWith("model name", StringComparison.Ordinal))
                {
                    cpu = line[(line.IndexOf(':', StringComparison.Ordinal) + 1)..].Trim();
                }
                else if (line.StartsWith("flags", StringComparison.Ordinal))
                {
                    string[] flags = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    vnni = flags.Contains("avx512_vnni");
                    avx512 = flags.Contains("avx512f");
                    break;
                }
            }
        }
        Console.WriteLine($"Machine: {cpu}, {Environment.ProcessorCount} logical cores, AVX-512F {(avx512 ? "yes" : "no")}, AVX-512 VNNI {(vnni ? "yes" : "no")} "
            + $"(/proc/cpuinfo); .NET Vector512 accelerated: {(Vector512.IsHardwareAccelerated ? "yes" : "no")}; kernels: {KernelSelector.Description}");
    }

    /// <summary>Reads a file once through an 8 MiB buffer (warms the page cache).</summary>
    private static void ReadAll(string path)
    {
        var buffer = new byte[8 << 20];
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
        while (fs.Read(buffer) > 0)
        {
        }
    }

    /// <summary>Seconds to read the model and its data file through an 8 MiB buffer (what the page cache delivers to one reader).</summary>
    private static double ReadOnly(string model)
    {
        var watch = Stopwatch.StartNew();
        ReadAll(model);
        ReadAll(model + ".data");
        return watch.Elapsed.TotalSeconds;
    }

    /// <summary>Seconds for a plain read + write of the model and its data file through an 8 MiB buffer.</summary>
    private static double Copy(string model, string root, bool fsync)
    {
        var buffer = new byte[8 << 20];
        var watch = Stopwatch.StartNew();
        foreach (string f in new[] { model, model + ".data" })
        {
            using var src = new FileStream(f, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
            using var dst = new FileStream(Path.Combine(root, Path.GetFileName(f) + ".copy"), FileMode.Create, FileAccess.Write, FileShare.None, 1);
            int n;
            while ((n = src.Read(buffer)) > 0)
            {
                dst.Write(buffer, 0, n);
            }
            if (fsync)
            {
                dst.Flush(flushToDisk: true);
            }
        }
        double seconds = watch.Elapsed.TotalSeconds;
        foreach (string f in new[] { model, model + ".data" })
        {
            File.Delete(Path.Combine(root, Path.GetFileName(f) + ".copy"));
        }
        return seconds;
    }

    private static double FreeGiB(string path) => new DriveInfo(Path.GetPathRoot(path)!).AvailableFreeSpace / (double)(1L << 30);
}
