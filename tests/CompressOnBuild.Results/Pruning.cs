using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using CompressOnBuild.Core.Passes;

/// <summary>
/// The "pruning" section of docs/results.md: every labelled corpus model through the real worker with Magnitude
/// (with and without calibration, alone and with int8), Sensitivity vs uniform Magnitude at equal overall sparsity,
/// and Channels with and without the least-squares refit; all validated on the full 10,000-image test sets.
/// </summary>
internal static class Pruning
{
    private static readonly CultureInfo Ci = CultureInfo.InvariantCulture;

    private const int CalibrationSamples = 256;

    private static readonly string[] Order = ["mnist-lenet5", "mnist-mlp-gemm", "mnist-8", "fashion-mlp"];

    private static readonly double[] SensitivitySparsities = [0.5, 0.7];

    /// <summary>One worker run: its report (null when it failed) and the shipped model's zip size.</summary>
    private sealed record Run(string Id, string Label, bool Calibrated, JsonNode? Report, long ZipShipped, string? Failure, double EntropyBytes = 0)
    {
        public JsonNode V => Report!["validation"]!;

        public JsonNode P => Report!["pruning"]!;

        public double Drop => D(V["originalAccuracy"]) - D(V["compressedAccuracy"]);

        public double ZipRatio => D(P["zipBytesBefore"]) / ZipShipped;

        /// <summary>
        /// The zip ratio the shipped bytes could reach at best with any coder that treats bytes as independent
        /// (order-0 entropy of the file's byte histogram): Deflate lands near it on weight-dominated files.
        /// </summary>
        public double EntropyFloorRatio => D(P["zipBytesBefore"]) / EntropyBytes;

        public double ParamsBefore => D(P["parametersBefore"]);

        public double ParamsAfter => D(P["parametersAfter"]);

        public double Fewer => 1 - ParamsAfter / ParamsBefore;

        public double? Latency => V["latency"] is { } l ? D(l["ratio"]) : null;

        public long Zeros => P["layers"]!.AsArray().Sum(l => (long)(D(l!["nonzerosBefore"]) - D(l["nonzerosAfter"])));

        public long Elements => P["layers"]!.AsArray().Sum(l => (long)D(l!["nonzerosBefore"]));
    }

    public static string Section(string corpus, string work, (string Id, string Dataset, string? Preprocessing, double Baseline)[] models)
    {
        var rows = new List<string>();
        var sensitivityRows = new List<string>();
        var targets = new List<string>();
        foreach (string id in Order)
        {
            (_, string dataset, string? pre, double baseline) = models.Single(m => m.Id == id);
            string images = Path.Combine(corpus, "datasets", dataset, "t10k-images-idx3-ubyte");
            string labels = Path.Combine(corpus, "datasets", dataset, "t10k-labels-idx1-ubyte");
            Run Compress(string tag, string label, string pruning, string quantization, bool calibrated, bool latency = false)
            {
                string output = Path.Combine(work, $"{id}-{tag}.onnx"), report = Path.Combine(work, $"{id}-{tag}.json");
                var cli = new List<string>
                {
                    "compress", Path.Combine(corpus, "models", id, "model.onnx"), "--output", output, "--report", report,
                    "--pruning", pruning, "--quantization", quantization, "--validation-data", images, "--labels", labels,
                };
                if (calibrated)
                {
                    cli.AddRange(["--calibration-data", images, "--calibration-samples", CalibrationSamples.ToString(Ci)]);
                }
                if (latency)
                {
                    cli.AddRange(["--max-latency-ratio", "1000"]);
                }
                if (pre != null)
                {
                    cli.AddRange(["--preprocessing", pre]);
                }
                var text = new StringWriter();
                var watch = Stopwatch.StartNew();
                int code = CompressOnBuild.Cli.Program.Run([.. cli], text);
                Console.WriteLine($"{id} {label}{(calibrated ? " (calibrated)" : "")}: exit {code} in {watch.Elapsed.TotalSeconds:0.0}s");
                if (code != 0 || !File.Exists(report) || !File.Exists(output))
                {
                    return new Run(id, label, calibrated, null, 0, text.ToString().Replace('\n', ' ').Replace("|", "\\|", StringComparison.Ordinal));
                }
                byte[] shipped = File.ReadAllBytes(output);
                return new Run(id, label, calibrated, JsonNode.Parse(File.ReadAllText(report)), PruningSummary.ZipBytes(shipped), null, Order0EntropyBytes(shipped));
            }

            Run magnitude = Compress("mag", "Magnitude:0.5", "Magnitude:0.5", "None", calibrated: false);
            Run magnitudeCal = Compress("mag-cal", "Magnitude:0.5", "Magnitude:0.5", "None", calibrated: true);
            Run int8 = Compress("mag-int8", "Magnitude:0.5 + Int8 (dynamic)", "Magnitude:0.5", "Int8", calibrated: false);
            Run int8Cal = Compress("mag-int8-cal", "Magnitude:0.5 + Int8 (static)", "Magnitude:0.5", "Int8", calibrated: true);
            Run channels = Compress("ch-norefit", "Channels:0.3:norefit (no refit)", "Channels:0.3:norefit", "None", calibrated: true, latency: true);
            Run channelsCal = Compress("ch-refit", "Channels:0.3 (least-squares refit)", "Channels:0.3", "None", calibrated: true, latency: true);
            foreach (Run r in new[] { magnitude, magnitudeCal, int8, int8Cal, channels, channelsCal })
            {
                rows.Add(Row(r, baseline));
            }
            Target(targets, magnitude, "Magnitude 50 %, \\|w\\| ranking: drop <= 0.3", r => r.Drop <= 0.3, r => $"drop {r.Drop:0.00}");
            Target(targets, magnitudeCal, "Magnitude 50 %, calibrated ranking: drop <= 0.3", r => r.Drop <= 0.3, r => $"drop {r.Drop:0.00}");
            Target(targets, int8, "Magnitude 50 % + Int8 (dynamic): drop <= 0.8 and zip ratio >= 6", r => r.Drop <= 0.8 && r.ZipRatio >= 6, r => $"drop {r.Drop:0.00}, zip {r.ZipRatio:0.00}x (order-0 entropy bound {r.EntropyFloorRatio:0.00}x)");
            Target(targets, int8Cal, "Magnitude 50 % (calibrated) + Int8 (static): drop <= 0.8 and zip ratio >= 6", r => r.Drop <= 0.8 && r.ZipRatio >= 6, r => $"drop {r.Drop:0.00}, zip {r.ZipRatio:0.00}x (order-0 entropy bound {r.EntropyFloorRatio:0.00}x)");
            foreach (Run r in new[] { channels, channelsCal })
            {
                Target(targets, r, $"{r.Label}: >= 25 % fewer parameters, latency ratio <= 0.85, drop <= 1.0",
                    x => x.Fewer >= 0.25 && x.Latency <= 0.85 && x.Drop <= 1.0, x => $"{x.Fewer:P1} fewer, latency {x.Latency:0.000}, drop {x.Drop:0.00}");
            }

            foreach (double s in SensitivitySparsities)
            {
                string st = s.ToString(Ci);
                Run uniform = Compress($"uni-{st}", $"Magnitude:{st}:uniform", $"Magnitude:{st}:uniform", "None", calibrated: true);
                Run guided = Compress($"sens-{st}", $"Sensitivity:{st}", $"Sensitivity:{st}", "None", calibrated: true);
                sensitivityRows.Add(SensitivityRow(id, s, uniform, guided));
                if (uniform.Report != null && guided.Report != null)
                {
                    bool met = guided.Drop <= uniform.Drop + 1e-9;
                    targets.Add(string.Create(Ci, $"| {id} | Sensitivity beats uniform at {s:P0} overall sparsity (drop <= uniform's) | sensitivity {guided.Drop:0.00} vs uniform {uniform.Drop:0.00} | {(met ? Math.Abs(guided.Drop - uniform.Drop) < 0.005 ? "met (tie)" : "met" : "missed")} |"));
                }
                else
                {
                    targets.Add($"| {id} | Sensitivity beats uniform at {s:P0} | run failed: {uniform.Failure ?? guided.Failure} | missed |");
                }
            }
        }

        var sb = new StringBuilder();
        sb.AppendLine("<!-- pruning:begin -->");
        sb.AppendLine("## Pruning results (generated by `bash build/results.sh pruning`)");
        sb.AppendLine();
        sb.AppendLine(string.Create(Ci, $"Generated {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {Environment.ProcessorCount} cores ({System.Runtime.InteropServices.RuntimeInformation.OSDescription}), .NET {Environment.Version}, through the real worker (`compress`, in process). Every model is validated on its full 10,000-image test set (top-1 vs the IDX labels; drop = original - pruned top-1 in points). \"Calibrated\" runs pass `--calibration-data` with {CalibrationSamples} evenly spaced images of the same test set (the corpus has no training split; same convention as the compression section): Magnitude then ranks weights by \\|w\\| x RMS of their input feature, Channels prunes Conv channels too (they need calibration activations) and refits the next layer by least squares unless `:norefit`, Sensitivity measures its per-layer harm curves (mean KL divergence of the output vs the original) on those images; calibrated Magnitude rows choose their per-layer sparsities the same way by default (the sensitivity allocation, harm measured on as many of those images as fit 2.56 GFLOP per probe, here all 256; `:uniform` opts out), with every prunable layer measured, the output layer included; Sensitivity and calibrated Magnitude then measure the chosen allocation with all layers pruned together next to uniform sparsity (every layer at s, and `:uniform`'s split) and apply uniform unless the allocation measures at least 2 % less harm. Uncalibrated rows and `:uniform` keep the output layer dense (default) and prune the other layers uniformly. Parameters = nonzero MatMul/Gemm/Conv weights + biases, before -> after pruning. Zip ratio = zip (Deflate) of the fp32 original / zip of the shipped model. In the targets, the order-0 entropy bound is the zip ratio the shipped bytes would reach if each byte were coded at the entropy of the file's byte histogram (what a byte-wise Huffman stage approaches): with 50 % zeros that is about 1 bit per weight for the zero/nonzero pattern plus half the surviving int8 codes' 6-7 bits. The fp32 originals themselves zip to 58 % (mnist-mlp-gemm, whose low mantissa bytes are often zero) to 88-92 % (the others) of their size, so 6x against the zipped original asks for about 3 bits per weight on mnist-mlp-gemm and about 4.5-5 on the others. Latency ratio = pruned / original median single-sample latency, interleaved, 1 thread (Channels rows only; noisy on a shared 2-core machine)."));
        sb.AppendLine();
        sb.AppendLine("| model | configuration | calibrated | original top-1 | pruned top-1 | drop | agreement | parameters | zip ratio | latency ratio |");
        sb.AppendLine("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
        rows.ForEach(r => sb.AppendLine(r));
        sb.AppendLine();
        sb.AppendLine("### Sensitivity-guided vs uniform sparsity at equal overall sparsity");
        sb.AppendLine();
        sb.AppendLine("Both calibrated on the same 256 images (same activation-aware ranking); uniform = `Magnitude:s:uniform` (the output layer dense, every other layer at the same sparsity, raised to make up for the output layer), sensitivity = `Sensitivity:s` (exactly round(s x weights) zeros over all prunable layers, the output layer included, split by the measured harm curves on all 256 images). Both have the same overall sparsity over the model's prunable weights; zeros counted over the layers each pruned.");
        sb.AppendLine();
        sb.AppendLine("| model | overall sparsity | uniform drop | sensitivity drop | zeros uniform / sensitivity (of weights) | per-layer sparsity chosen | analysis |");
        sb.AppendLine("|---|---:|---:|---:|---:|---|---:|");
        sensitivityRows.ForEach(r => sb.AppendLine(r));
        sb.AppendLine();
        sb.AppendLine("### Targets");
        sb.AppendLine();
        sb.AppendLine("| model | target | measured | Met? |");
        sb.AppendLine("|---|---|---|---|");
        targets.ForEach(r => sb.AppendLine(r));
        sb.AppendLine("<!-- pruning:end -->");
        return sb.ToString();
    }

    private static void Target(List<string> targets, Run r, string what, Func<Run, bool> met, Func<Run, FormattableString> measured) =>
        targets.Add(r.Report == null
            ? $"| {r.Id} | {what} | run failed: {r.Failure} | missed |"
            : $"| {r.Id} | {what} | {measured(r).ToString(Ci)} | {(met(r) ? "met" : "missed")} |");

    private static string Row(Run r, double baseline)
    {
        if (r.Report == null)
        {
            return $"| {r.Id} | {r.Label} | {(r.Calibrated ? "yes" : "no")} | failed: {r.Failure} | | | | | | |";
        }
        return string.Create(Ci,
            $"| {r.Id} | {r.Label}{NothingPruned(r)} | {(r.Calibrated ? "yes" : "no")} | {D(r.V["originalAccuracy"]):0.00}% (baseline {baseline:0.00}%) | {D(r.V["compressedAccuracy"]):0.00}% | {r.Drop:0.00} | {D(r.V["top1Agreement"]) * 100:0.00}% | {r.ParamsBefore:N0} -> {r.ParamsAfter:N0} ({r.Fewer:P1} fewer) | {r.ZipRatio:0.00}x | {(r.Latency is { } l ? l.ToString("0.00", Ci) : "-")} |");
    }

    /// <summary>For a run that pruned no layer: why (the worker's first skip reason).</summary>
    private static string NothingPruned(Run r) =>
        r.P["layers"]!.AsArray().Any(l => D(l!["nonzerosAfter"]) < D(l["nonzerosBefore"]) || D(l["outputsAfter"]) < D(l["outputsBefore"])) ? ""
            : " (nothing pruned: " + string.Join("; ", r.P["skippedNodes"]!.AsArray().Select(k => $"{k!["node"]}: {k["reason"]}")).Replace("|", "\\|", StringComparison.Ordinal) + ")";

    private static string SensitivityRow(string id, double s, Run uniform, Run guided)
    {
        if (uniform.Report == null || guided.Report == null)
        {
            return $"| {id} | {s:P0} | failed: {uniform.Failure ?? guided.Failure} | | | | |";
        }
        JsonNode a = guided.P["sensitivity"]!;
        string layers = string.Join(", ", a["layers"]!.AsArray().Select(l => string.Create(Ci, $"{l!["node"]} {D(l["chosenSparsity"]) * 100:0.0}%")));
        if (a["layers"]!.AsArray().Count == 1)
        {
            layers += " (the only prunable layer: the same as uniform by construction)";
        }
        else if (a["fellBackToUniform"]?.GetValue<bool>() == true)
        {
            layers += string.Create(Ci, $" (uniform applied: {a["uniformCandidate"]}, harm {D(a["uniformMeasuredHarm"]):G3} vs the allocation's {D(a["measuredHarm"]):G3})");
        }
        return string.Create(Ci,
            $"| {id} | {s:P0} | {uniform.Drop:0.00} | {guided.Drop:0.00} | {uniform.Zeros:N0} / {guided.Zeros:N0} (of {guided.Elements:N0}) | {layers} | {D(a["probes"])} probes, {D(a["seconds"]):0.0} s |");
    }

    private static double D(JsonNode? n) => n == null ? double.NaN : double.Parse(n.ToJsonString(), NumberStyles.Float, CultureInfo.InvariantCulture);

    /// <summary>Bytes needed to code <paramref name="bytes"/> at the order-0 entropy of its byte histogram.</summary>
    internal static double Order0EntropyBytes(byte[] bytes)
    {
        var counts = new long[256];
        foreach (byte b in bytes)
        {
            counts[b]++;
        }
        double bits = 0;
        foreach (long c in counts)
        {
            if (c > 0)
            {
                bits -= c * Math.Log2((double)c / bytes.Length);
            }
        }
        return bits / 8;
    }
}
