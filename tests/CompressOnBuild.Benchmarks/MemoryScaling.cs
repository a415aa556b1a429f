using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using CompressOnBuild.Onnx;
using Google.Protobuf;

namespace CompressOnBuild.Benchmarks;

/// <summary>
/// Peak memory and throughput of the real worker (CompressOnBuild.Cli compress, one process per run, validation on
/// its synthetic inputs included) on synthetic MatMul chains of about 100 MB, 1 GB and 2.5 GB of float32 weights,
/// per scheme, side by side with a plain copy of the same file(s) in the same run. Models are generated in a fresh
/// temporary folder and deleted afterwards. Usage: --memory CLI.dll [SIZE_MB...] [--schemes a,b] [--ops MatMul,Gemm] [--width N].
/// --ops: the layer operator of the chains (Gemm: transB=1, the older PyTorch Linear export), each op's chain in turn;
/// --width: every weight [N, N] (default 1024, 4 MiB; 8192 makes 256 MiB weights).
/// Peak RSS is the worker's VmHWM as /usr/bin/time reports it (max resident set), else the report's
/// workerPeakRssBytes; throughput is weight bytes / the report's compressSeconds (load, pass, save).
/// </summary>
internal static class MemoryScaling
{
    /// <summary>Row width of every weight: [1024, 1024] float32 = 4 MiB per layer.</summary>
    private const int Width = 1024;

    public static int Run(string[] args)
    {
        if (args.Length == 0 || !File.Exists(args[0]))
        {
            Console.Error.WriteLine("usage: --memory <CompressOnBuild.Cli.dll> [SIZE_MB...] [--schemes Int8Dynamic,Int8Static,Int4Weights,Float16] [--ops MatMul,Gemm] [--width N]");
            return 2;
        }
        string cli = Path.GetFullPath(args[0]);
        var sizes = new List<long>();
        string[] schemes = ["Int8Dynamic", "Int8Static", "Int4Weights", "Float16"];
        string[] ops = ["MatMul"];
        int width = Width;
        for (int i = 1; i < args.Length; i++)
        {
            if (args[i] == "--schemes" && i + 1 < args.Length)
            {
                schemes = args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries);
            }
            else if (args[i] == "--width" && i + 1 < args.Length)
            {
                width = int.Parse(args[++i], CultureInfo.InvariantCulture);
            }
            else if (args[i] == "--ops" && i + 1 < args.Length)
            {
                ops = args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries);
                if (ops.Any(o => o is not ("MatMul" or "Gemm")))
                {
                    Console.Error.WriteLine("--ops takes MatMul and/or Gemm");
                    return 2;
                }
            }
            else
            {
                sizes.Add(long.Parse(args[i], CultureInfo.InvariantCulture) * 1_000_000);
            }
        }
        if (sizes.Count == 0)
        {
            sizes.AddRange([100_000_000, 1_000_000_000, 2_500_000_000]);
        }
        string root = Path.Combine(Path.GetTempPath(), "cob-memory-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(root);
        Console.WriteLine($"Machine: {Environment.ProcessorCount} logical cores, {RuntimeInformation.OSDescription}, {RuntimeInformation.ProcessArchitecture}, "
            + $"{MemTotalGiB()} GiB RAM; load average at start: {LoadAverage()} (shared, noisy machine)");
        StreamingThroughput.PrintMachine();
        Console.WriteLine($"Temp folder: {root} ({FreeGiB(root):0.0} GiB free)");
        var rows = new List<string>();
        try
        {
            foreach ((long target, string op) in sizes.SelectMany(t => ops.Select(o => (t, o))))
            {
                int layers = (int)Math.Max(1, (target + (4L * width * width) - 1) / (4L * width * width));
                long weightBytes = 4L * width * width * layers;
                string dir = Path.Combine(root, (weightBytes / 1_000_000).ToString(CultureInfo.InvariantCulture) + "MB-" + op);
                string label = $"{weightBytes / 1e6:0} MB" + (op == "MatMul" ? "" : " " + op) + (width == Width ? "" : $" [{width}x{width}]");
                Directory.CreateDirectory(dir);
                string model = Path.Combine(dir, "model.onnx");
                var gen = Stopwatch.StartNew();
                bool external = Generate(model, layers, width: width, op: op);
                string calibration = Path.Combine(dir, "calibration.npy");
                WriteNpy(calibration, 32, width);
                Console.WriteLine($"Generated {layers} {op} layers [{width}x{width}] = {weightBytes / 1e6:0} MB of weights{(external ? " (external .data)" : " (inline)")} in {gen.Elapsed.TotalSeconds:0.0} s");
                double copyMBs = PlainCopy(model, external ? model + ".data" : null, weightBytes);
                rows.Add($"| {label} | plain copy | - | - | {copyMBs:0} | 1.00 | - |");
                foreach (string scheme in schemes)
                {
                    string output = Path.Combine(dir, "out-" + scheme + ".onnx");
                    string report = Path.Combine(dir, "report-" + scheme + ".json");
                    var argv = new List<string> { cli, "compress", model, "--output", output, "--report", report, "--quantization", scheme };
                    if (scheme == "Int8Static")
                    {
                        argv.AddRange(["--calibration-data", calibration]);
                    }
                    (int exit, long peak, double wall, string stderr) = RunWorker(argv);
                    JsonNode? r = File.Exists(report) ? JsonNode.Parse(File.ReadAllText(report)) : null;
                    double compress = r?["timing"]?["compressSeconds"]?.GetValue<double>() ?? double.NaN;
                    if (peak <= 0)
                    {
                        peak = r?["timing"]?["workerPeakRssBytes"]?.GetValue<long>() ?? 0;
                    }
                    long outBytes = File.Exists(output) ? new FileInfo(output).Length + (Directory.GetFiles(dir, "out-" + scheme + ".onnx*.data").Sum(f => new FileInfo(f).Length)) : 0;
                    double mbs = weightBytes / 1e6 / compress;
                    string note = exit == 0 ? "" : $" (exit {exit}: {FirstLine(stderr)})";
                    rows.Add($"| {label} | {scheme}{note} | {peak / 1048576.0:0} MiB | {peak / (double)weightBytes:0.00}x | {mbs:0} | {mbs / copyMBs:0.00} | {wall:0.0} s |");
                    Console.WriteLine(rows[^1]);
                    foreach (string line in stderr.Split('\n').Where(l => l.StartsWith("CompressOnBuild memory:", StringComparison.Ordinal)))
                    {
                        Console.WriteLine("    " + line);
                    }
                    foreach (string f in Directory.GetFiles(dir, "out-" + scheme + "*"))
                    {
                        File.Delete(f);
                    }
                }
                Directory.Delete(dir, recursive: true);
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
        Console.WriteLine();
        Console.WriteLine($"Load average at the end: {LoadAverage()}");
        Console.WriteLine("| weights | scheme | worker peak RSS | peak / weight bytes | MB/s of weights (compress) | vs plain copy | wall (with validation) |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        rows.ForEach(Console.WriteLine);
        return 0;
    }

    /// <summary>
    /// x[1, 1024] -> MatMul W0 -> ... -> MatMul W(n-1) -> y (<paramref name="op"/> "Gemm": Gemm with transB=1, the
    /// weight read as [N, K]). Weights uniform in +-sqrt(3/1024) (unit gain per layer).
    /// Inline when the model stays under 1.8 GB, else an external "model.onnx.data" written one layer at a time.
    /// </summary>
    internal static bool Generate(string path, int layers, bool forceExternal = false, int width = Width, string op = "MatMul")
    {
        long layerBytes = 4L * width * width;
        bool external = forceExternal || layerBytes * layers >= 1_800_000_000;
        var graph = new GraphProto { Name = "chain" };
        graph.Input.Add(Value("x"));
        graph.Output.Add(Value("y"));
        var rng = new Xorshift(12345);
        float a = MathF.Sqrt(3f / width);
        FileStream? data = external ? new FileStream(path + ".data", FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20) : null;
        var buffer = new float[width * width];
        try
        {
            for (int i = 0; i < layers; i++)
            {
                for (int k = 0; k < buffer.Length; k++)
                {
                    buffer[k] = (rng.NextFloat() * 2 - 1) * a;
                }
                var t = new TensorProto { Name = "w" + i.ToString(CultureInfo.InvariantCulture), DataType = (int)TensorProto.Types.DataType.Float };
                t.Dims.Add(width);
                t.Dims.Add(width);
                byte[] bytes = MemoryMarshal.AsBytes(buffer.AsSpan()).ToArray();
                if (data != null)
                {
                    long offset = data.Position;
                    data.Write(bytes);
                    t.DataLocation = TensorProto.Types.DataLocation.External;
                    t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = Path.GetFileName(path) + ".data" });
                    t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString(CultureInfo.InvariantCulture) });
                    t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = bytes.Length.ToString(CultureInfo.InvariantCulture) });
                }
                else
                {
                    t.RawData = UnsafeByteOperations.UnsafeWrap(bytes);
                }
                graph.Initializer.Add(t);
                string input = i == 0 ? "x" : "h" + (i - 1).ToString(CultureInfo.InvariantCulture);
                string output = i == layers - 1 ? "y" : "h" + i.ToString(CultureInfo.InvariantCulture);
                var node = new NodeProto { OpType = op, Name = (op == "MatMul" ? "mm" : "gemm") + i.ToString(CultureInfo.InvariantCulture) };
                if (op == "Gemm")
                {
                    node.Attribute.Add(new AttributeProto { Name = "transB", Type = AttributeProto.Types.AttributeType.Int, I = 1 });
                }
                node.Input.Add(input);
                node.Input.Add(t.Name);
                node.Output.Add(output);
                graph.Node.Add(node);
            }
        }
        finally
        {
            data?.Dispose();
        }
        var model = new ModelProto { IrVersion = 8, ProducerName = "memory-benchmark", Graph = graph };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 13 });
        using (var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            model.WriteTo(fs);
        }
        return external;

        ValueInfoProto Value(string name)
        {
            var shape = new TensorShapeProto();
            shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = 1 });
            shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = width });
            return new ValueInfoProto
            {
                Name = name,
                Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float, Shape = shape } },
            };
        }
    }

    /// <summary>A float32 .npy of [rows, cols] standard-ish normal values (calibration data for Int8Static).</summary>
    private static void WriteNpy(string path, int rows, int cols)
    {
        string header = $"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}";
        int total = 10 + header.Length + 1;
        header = header.PadRight(header.Length + ((64 - (total % 64)) % 64)) + "\n";
        using var fs = new FileStream(path, FileMode.Create);
        fs.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0]);
        fs.Write(BitConverter.GetBytes((ushort)header.Length));
        fs.Write(System.Text.Encoding.ASCII.GetBytes(header));
        var rng = new Xorshift(7);
        var values = new float[rows * cols];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (rng.NextFloat() + rng.NextFloat() + rng.NextFloat() - 1.5f) * 2f;
        }
        fs.Write(MemoryMarshal.AsBytes(values.AsSpan()));
    }

    /// <summary>MB/s of weights for a plain read + write of the model file(s) through a 1 MiB buffer, page cache warm (best of 2).</summary>
    private static double PlainCopy(string model, string? data, long weightBytes)
    {
        double best = double.MaxValue;
        for (int run = 0; run < 2; run++)
        {
            var watch = Stopwatch.StartNew();
            foreach (string f in data == null ? new[] { model } : [model, data])
            {
                using var src = new FileStream(f, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
                using var dst = new FileStream(f + ".copy", FileMode.Create, FileAccess.Write, FileShare.None, 1);
                src.CopyTo(dst, 1 << 20);
            }
            best = Math.Min(best, watch.Elapsed.TotalSeconds);
            foreach (string f in data == null ? new[] { model } : [model, data])
            {
                File.Delete(f + ".copy");
            }
        }
        return weightBytes / 1e6 / best;
    }

    private static (int Exit, long PeakBytes, double WallSeconds, string Stderr) RunWorker(List<string> argv)
    {
        bool time = File.Exists("/usr/bin/time");
        var psi = new ProcessStartInfo(time ? "/usr/bin/time" : "dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        if (time)
        {
            psi.ArgumentList.Add("-f");
            psi.ArgumentList.Add("COB_MAXRSS_KB=%M");
            psi.ArgumentList.Add("dotnet");
        }
        argv.ForEach(psi.ArgumentList.Add);
        psi.Environment["COMPRESSONBUILD_MEMORY_TRACE"] = "1";
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        var watch = Stopwatch.StartNew();
        using Process p = Process.Start(psi)!;
        Task<string> err = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        double wall = watch.Elapsed.TotalSeconds;
        string stderr = stdout + "\n" + err.Result;
        long peak = 0;
        foreach (string line in stderr.Split('\n'))
        {
            if (line.StartsWith("COB_MAXRSS_KB=", StringComparison.Ordinal))
            {
                peak = long.Parse(line.AsSpan(14).Trim(), CultureInfo.InvariantCulture) * 1024;
            }
        }
        return (p.ExitCode, peak, wall, stderr);
    }

    private static string FirstLine(string s)
    {
        string line = s.Split('\n').FirstOrDefault(l => l.Contains("CMPR", StringComparison.Ordinal))?.Trim() ?? "";
        int code = line.IndexOf("CMPR", StringComparison.Ordinal);
        line = code >= 0 ? line[code..] : line;
        return line.Length > 140 ? line[..140] + "..." : line;
    }

    internal static string LoadAverage() => File.Exists("/proc/loadavg") ? string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "n/a";

    private static long MemTotalGiB() =>
        File.Exists("/proc/meminfo") ? long.Parse(File.ReadLines("/proc/meminfo").First().Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) >> 20 : 0;

    private static double FreeGiB(string path) => new DriveInfo(Path.GetPathRoot(path)!).AvailableFreeSpace / (double)(1L << 30);

    private struct Xorshift(ulong seed)
    {
        private ulong _s = seed;

        public float NextFloat()
        {
            _s ^= _s << 13;
            _s ^= _s >> 7;
            _s ^= _s << 17;
            return (_s >> 40) * (1f / (1 << 24));
        }
    }
}
