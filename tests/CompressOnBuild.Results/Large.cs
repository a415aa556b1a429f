using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using CompressOnBuild.Validation;

/// <summary>
/// The "large" section of docs/results.md (issue 18): all-MiniLM-L6-v2 on the corpus sentences (text data + tokenizer)
/// and the ResNet18 featurizer on the corpus photos, each scheme through the real worker in its own process (so the
/// wall time and peak RSS are the worker's alone), fp32 reference and compressed model measured in the same run.
/// </summary>
internal static class Large
{
    private static readonly CultureInfo Ci = CultureInfo.InvariantCulture;

    internal const string ResNetPreprocessing = "layout=NCHW;channels=BGR;scale=1;mean=103.0626,115.9029,123.1516;std=1;resize=224;crop=224x224";

    /// <param name="keepFrom">The current docs/results.md: only the MiniLM Int8 row and the end-to-end run are measured; the other rows are kept.</param>
    public static string Section(string corpus, string repo, string work, int sentences, string? keepFrom = null)
    {
        // Rows and lines are kept from this section only (docs/results.md has other sections with ResNet18/MiniLM rows).
        if (keepFrom != null && keepFrom.IndexOf("<!-- large:begin -->", StringComparison.Ordinal) is int begin and >= 0)
        {
            int end = keepFrom.IndexOf("<!-- large:end -->", begin, StringComparison.Ordinal);
            keepFrom = end < 0 ? keepFrom[begin..] : keepFrom[begin..end];
        }
        string large = LargeDir(corpus);
        string cli = Path.Combine(repo, "artifacts", "bin", "CompressOnBuild.Cli", "release", "CompressOnBuild.Cli.dll");
        if (!File.Exists(cli))
        {
            throw new FileNotFoundException("build the CLI first (dotnet build src/CompressOnBuild.Cli -c Release)", cli);
        }
        string minilm = Path.Combine(large, "all-minilm-l6-v2", "model.onnx");
        string vocab = Path.Combine(large, "all-minilm-l6-v2", "vocab.txt");
        string resnet = Path.Combine(large, "resnet18-featurizer", "model.onnx");
        string text = Path.Combine(corpus, "datasets", "sentences", "sentences.txt");
        if (sentences > 0)
        {
            // An evenly spaced subset (quick runs); the default is all 2,000.
            string[] all = File.ReadAllLines(text);
            text = Path.Combine(work, "sentences.txt");
            File.WriteAllLines(text, DatasetLoader.SubsetIndices(all.Length, sentences).Select(i => all[i]));
        }
        (string calibration, string evaluation, Dictionary<string, string> photoOf) = keepFrom == null ? SplitPhotos(corpus, work) : ("", "", []);

        var rows = new List<string>();
        var notes = new List<string>();
        string[] textArgs = ["--validation-data", text, "--tokenizer", vocab, "--sequence-length", "128"];
        foreach ((string scheme, string q) in new[] { ("Int8 (dynamic)", "Int8Dynamic"), ("Int4Weights", "Int4Weights"), ("Float16", "Float16") })
        {
            string label = $"| MiniLM | {scheme} |";
            if (keepFrom != null && q != "Int8Dynamic" && keepFrom.Split('\n').FirstOrDefault(l => l.StartsWith(label, StringComparison.Ordinal)) is { } kept)
            {
                rows.Add(kept.TrimEnd('\r')); // large-minilm reruns the Int8 row only
                continue;
            }
            if (q == "Int4Weights")
            {
                (string row, string note) = MiniLmInt4(text, vocab, minilm, cli, work);
                rows.Add(row);
                notes.Add(note);
                continue;
            }
            Run run = Worker(cli, work, minilm, $"minilm-{q}", ["--quantization", q, .. textArgs]);
            rows.Add(Row("MiniLM", scheme, run, null));
        }
        // End to end as a build runs it: the item's defaults (no SequenceLength: each sentence at its own length, no
        // latency budget), one worker process from start to exit.
        Run e2e = Worker(cli, work, minilm, "minilm-e2e", ["--quantization", "Int8Dynamic", "--validation-data", text, "--tokenizer", vocab], latency: false);
        notes.Add(e2e.Report == null ? "MiniLM Int8 end to end: failed: " + e2e.Text.Replace('\n', ' ') : string.Create(Ci,
            $"MiniLM Int8 end to end as a build runs it (`Quantization=\"Int8\" ValidationData=sentences.txt Tokenizer=vocab.txt`, no SequenceLength: each sentence at its own length; one worker process: start, load, quantize, validate both models on {e2e.Samples} sentences, report): {e2e.WallSeconds:0.0} s wall (target <= 60 s; compress {D(e2e.Report["timing"]!["compressSeconds"]):0.0} s, validate {D(e2e.Report["timing"]!["validateSeconds"]):0.0} s), worker peak RSS {e2e.PeakRss / 1048576.0:0} MiB = {e2e.PeakRss / (double)e2e.SourceBytes:0.0}x the model (target <= 3x); quality on unpadded sentences: cosine {D(e2e.Report["validation"]!["embedding"]!["meanCosine"]):0.0000} (min {D(e2e.Report["validation"]!["embedding"]!["minCosine"]):0.0000}), clear-neighbour agreement {D(e2e.Report["validation"]!["embedding"]!["neighborAgreement"]) * 100:0.0}%, rank correlation {D(e2e.Report["validation"]!["embedding"]!["similarityCorrelation"]):0.0000}. Load average during the run: {LoadAverage()}."));
        if (keepFrom != null)
        {
            string[] kept = keepFrom.Split('\n').Select(l => l.TrimEnd('\r')).ToArray();
            rows.AddRange(kept.Where(l => l.StartsWith("| ResNet18 |", StringComparison.Ordinal)));
            notes.AddRange(kept.Where(l => l.StartsWith(ResNetNotePrefix, StringComparison.Ordinal) || l.StartsWith(Int4NotePrefix, StringComparison.Ordinal)));
            // The Float16 row's date: from the line an earlier partial run wrote, else the section's header (a full run).
            string? earlier = kept.FirstOrDefault(l => l.StartsWith(CarriedPrefix, StringComparison.Ordinal))?[CarriedPrefix.Length..].Split(" UTC", 2)[0]
                ?? kept.FirstOrDefault(l => l.StartsWith("Generated ", StringComparison.Ordinal))?.Split(" UTC", 2)[0]["Generated ".Length..];
            notes.Add($"{CarriedPrefix}{earlier ?? "an earlier run"} UTC; the Int4Weights and ResNet18 rows are from the runs their own lines name (`bash build/results.sh large-minilm` reruns the MiniLM Int8 row and the end-to-end line only, `large-minilm-int4` the Int4Weights row, `large-resnet` the ResNet18 rows).");
        }
        else
        {
            rows.AddRange(ResNetRows(resnet, calibration, evaluation, photoOf, cli, work));
        }

        var sb = new StringBuilder();
        sb.AppendLine("<!-- large:begin -->");
        sb.AppendLine("## Large models (generated by `bash build/results.sh large`)");
        sb.AppendLine();
        sb.AppendLine(string.Create(Ci, $"Generated {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {Environment.ProcessorCount} cores ({Cpu()}; {System.Runtime.InteropServices.RuntimeInformation.OSDescription}; load average at the end {LoadAverage()}: other jobs shared the machine, so absolute times are inflated and only the ratios within a row compare), .NET {Environment.Version}; AVX-512 VNNI: {System.Runtime.Intrinsics.X86.AvxVnni.IsSupported || System.Runtime.Intrinsics.X86.Avx512F.IsSupported}. Each row is one worker process (`compress`), the fp32 model and the compressed one validated side by side in that run: batch 1, 1 thread, latency = median of interleaved single-sample runs on sample 0 (MiniLM: sequence length 128, padded). MiniLM: {(sentences > 0 ? sentences.ToString(Ci) + " evenly spaced" : "all 2,000")} corpus sentences from `sentences.txt`, tokenized by the worker with the model's vocab.txt; quality is on the mean-pooled (attention-mask) `last_hidden_state`. ResNet18: the 506 photo crops split into 256 calibration files (evenly spaced) and the {(evaluation.Length > 0 ? Directory.GetFiles(evaluation).Length : 250)} others for evaluation; quality on the 512-d features; retrieval@1 = the nearest other evaluation crop (cosine) comes from the same photo (crops.csv). Sizes: MB = 10^6 bytes (the unit of issue 18's targets; the build line's KB and MaxSizeKB are KiB)."));
        sb.AppendLine();
        sb.AppendLine("| model | scheme | size (fp32 → ours) | ratio | cosine mean / min | clear-neighbour agreement | similarity rank corr. | retrieval@1 fp32 / ours | latency fp32 / ours (ratio) | compress / validate |");
        sb.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        rows.ForEach(r => sb.AppendLine(r));
        sb.AppendLine();
        foreach (string n in notes)
        {
            sb.AppendLine(n); // one Markdown paragraph each
            sb.AppendLine();
        }
        sb.AppendLine("Issue 18 targets: MiniLM Int8 <= 23.0 MB, cosine mean >= 0.995 / min >= 0.98, clear-neighbour agreement >= 98%, rank correlation >= 0.995, latency <= 0.45x; Int4Weights <= 16 MB, cosine >= 0.98, latency <= 1.0x; Float16 >= 1.99x smaller, cosine >= 0.9999; ResNet18 Int8 >= 3.95x, cosine >= 0.995, clear-neighbour >= 99%, retrieval within 1 point of fp32, latency <= 0.5x; Float16 >= 1.99x, cosine >= 0.9999.");
        sb.AppendLine("<!-- large:end -->");
        return sb.ToString();
    }

    /// <summary>The start of the line a partial (<c>large-minilm</c>) run writes about the MiniLM Float16 row it kept.</summary>
    internal const string CarriedPrefix = "The MiniLM Float16 row is carried over from the run of ";

    /// <summary>The start of the line under the table that says how the MiniLM Int4Weights row was made.</summary>
    internal const string Int4NotePrefix = "MiniLM Int4Weights row:";

    /// <summary>
    /// The MiniLM Int4Weights row as a user with data runs it: CalibrationData = 256 evenly spaced corpus sentences (so
    /// GPTQ, the default with calibration data), validated on the other sentences only (none of the calibration ones),
    /// sequence length 128; plus the dated line that says so. <c>large</c> and <c>large-minilm-int4</c> use it.
    /// </summary>
    internal static (string Row, string Note) MiniLmInt4(string text, string vocab, string minilm, string cli, string work)
    {
        string[] all = File.ReadAllLines(text).Where(l => l.Trim().Length > 0).ToArray();
        HashSet<int> picked = [.. DatasetLoader.SubsetIndices(all.Length, 256)];
        string calibration = Path.Combine(work, "int4-calibration.txt"), evaluation = Path.Combine(work, "int4-evaluation.txt");
        File.WriteAllLines(calibration, picked.Order().Select(i => all[i]));
        File.WriteAllLines(evaluation, Enumerable.Range(0, all.Length).Where(i => !picked.Contains(i)).Select(i => all[i]));
        Run run = Worker(cli, work, minilm, "minilm-Int4Weights", ["--quantization", "Int4Weights", "--calibration-data", calibration, "--calibration-samples", "256",
            "--validation-data", evaluation, "--tokenizer", vocab, "--sequence-length", "128"]);
        string method = run.Report?["quantization"]?["method"]?.GetValue<string>() ?? "?";
        string note = string.Create(Ci, $"{Int4NotePrefix} `Quantization=\"Int4Weights\"` with `CalibrationData` = 256 evenly spaced corpus sentences, so the default method is {method} (activation order, MSE-clipped block scales, block 32 symmetric), validated on the {all.Length - picked.Count} other sentences (sequence length 128); regenerated {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC (load average at the end {LoadAverage()}).");
        return (Row("MiniLM", "Int4Weights", run, null), note);
    }

    /// <summary>The start of the line <c>large-resnet</c> adds under the table.</summary>
    internal const string ResNetNotePrefix = "ResNet18 rows regenerated";

    internal static string ResNetNote() => string.Create(Ci,
        $"{ResNetNotePrefix} {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC by `bash build/results.sh large-resnet` (same machine and protocol as the table; load average at the start {LoadAverage()}); the MiniLM rows are from the run above.");

    /// <summary>The ResNet18 rows alone (Int8 static on 256 calibration photos, Float16), for <c>large-resnet</c>.</summary>
    public static List<string> ResNetRows(string corpus, string repo, string work)
    {
        string cli = Path.Combine(repo, "artifacts", "bin", "CompressOnBuild.Cli", "release", "CompressOnBuild.Cli.dll");
        if (!File.Exists(cli))
        {
            throw new FileNotFoundException("build the CLI first (dotnet build src/CompressOnBuild.Cli -c Release)", cli);
        }
        (string calibration, string evaluation, Dictionary<string, string> photoOf) = SplitPhotos(corpus, work);
        return ResNetRows(Path.Combine(LargeDir(corpus), "resnet18-featurizer", "model.onnx"), calibration, evaluation, photoOf, cli, work);
    }

    private static List<string> ResNetRows(string resnet, string calibration, string evaluation, Dictionary<string, string> photoOf, string cli, string work)
    {
        var rows = new List<string>();
        string[] imageArgs = ["--preprocessing", ResNetPreprocessing, "--validation-data", evaluation];
        foreach ((string scheme, string q, string[] extra) in new[]
        {
            ("Int8 (static, 256 photos)", "Int8Static", new[] { "--calibration-data", calibration, "--calibration-samples", "256" }),
            ("Float16", "Float16", Array.Empty<string>()),
        })
        {
            Run run = Worker(cli, work, resnet, $"resnet-{q}", ["--quantization", q, .. imageArgs, .. extra]);
            string? retrieval = run.Output == null ? null : Retrieval(resnet, run.Output, evaluation, photoOf);
            rows.Add(Row("ResNet18", scheme, run, retrieval));
        }
        return rows;
    }

    internal sealed record Run(JsonNode? Report, string? Output, string Text, double WallSeconds, long PeakRss, long SourceBytes, int Samples);

    internal static Run Worker(string cli, string work, string model, string name, string[] args, bool latency = true)
    {
        string output = Path.Combine(work, name + ".onnx");
        string report = Path.Combine(work, name + ".json");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in (string[])["exec", cli, "compress", model, "--output", output, "--report", report, .. (latency ? (string[])["--max-latency-ratio", "1000"] : []), .. args])
        {
            psi.ArgumentList.Add(a);
        }
        var watch = Stopwatch.StartNew();
        using Process p = Process.Start(psi)!;
        Task<string> err = p.StandardError.ReadToEndAsync();
        var text = new StringBuilder();
        while (p.StandardOutput.ReadLine() is { } line)
        {
            Console.WriteLine("  " + line);
            text.AppendLine(line);
        }
        p.WaitForExit();
        double seconds = watch.Elapsed.TotalSeconds;
        text.Append(err.Result);
        Console.WriteLine(string.Create(Ci, $"{name}: exit {p.ExitCode} in {seconds:0.0} s"));
        JsonNode? r = p.ExitCode == 0 && File.Exists(report) ? JsonNode.Parse(File.ReadAllText(report)) : null;
        return new Run(r, r == null ? null : output, text.ToString(), seconds,
            r == null ? 0 : (long)D(r["timing"]?["workerPeakRssBytes"]), new FileInfo(model).Length, r == null ? 0 : (int)D(r["validation"]!["samples"]));
    }

    private static string Row(string model, string scheme, Run run, string? retrieval)
    {
        if (run.Report is not { } r)
        {
            return $"| {model} | {scheme} | failed: {run.Text.Replace('\n', ' ').Replace("|", "\\|", StringComparison.Ordinal)} | | | | | | | |";
        }
        JsonNode m = r["model"]!, v = r["validation"]!, e = v["embedding"]!, l = v["latency"]!, t = r["timing"]!;
        string na = e["neighborAgreement"] == null ? "-" : string.Create(Ci, $"{D(e["neighborAgreement"]) * 100:0.0}% of {e["clearNeighborSamples"]}");
        return string.Create(Ci,
            $"| {model} | {scheme} | {D(m["sourceBytes"]) / 1e6:0.0} MB → {D(m["compressedBytes"]) / 1e6:0.00} MB | {D(m["compressionRatio"]):0.00}x | {D(e["meanCosine"]):0.0000} / {D(e["minCosine"]):0.0000} | {na} | {D(e["similarityCorrelation"]):0.0000} | {retrieval ?? "-"} | {D(l["originalMs"]):0.0} ms / {D(l["compressedMs"]):0.0} ms ({D(l["ratio"]):0.00}x) | {D(t["compressSeconds"]):0.0} s / {D(t["validateSeconds"]):0.0} s |");
    }

    /// <summary>Same-photo retrieval@1 on the evaluation crops, fp32 model and compressed model.</summary>
    private static string Retrieval(string original, string compressed, string evaluation, Dictionary<string, string> photoOf)
    {
        double Measure(string modelPath)
        {
            using var runner = new ModelRunner(modelPath, new ModelRunnerOptions { IntraOpThreads = 1 });
            Dataset data = DatasetLoader.Load(evaluation, null, runner.Inputs, Preprocessing.Parse(ResNetPreprocessing));
            DatasetRun run = runner.RunDataset(data);
            float[][] features = [.. run.Outputs.Select(o => Normalized(o[0].Data))];
            string[] photos = [.. Enumerable.Range(0, data.Count).Select(i => photoOf[Path.GetFileName(data.GetSampleSource(i))])];
            int hits = 0;
            for (int i = 0; i < features.Length; i++)
            {
                int best = -1;
                double bestSim = double.NegativeInfinity;
                for (int j = 0; j < features.Length; j++)
                {
                    double s = j == i ? double.NegativeInfinity : System.Numerics.Tensors.TensorPrimitives.Dot(features[i], features[j]);
                    if (s > bestSim)
                    {
                        bestSim = s;
                        best = j;
                    }
                }
                hits += photos[best] == photos[i] ? 1 : 0;
            }
            return 100.0 * hits / features.Length;
        }
        return string.Create(Ci, $"{Measure(original):0.0}% / {Measure(compressed):0.0}%");
    }

    private static float[] Normalized(float[] v)
    {
        float n = System.Numerics.Tensors.TensorPrimitives.Norm(v);
        return [.. v.Select(x => n > 0 ? x / n : 0)];
    }

    /// <summary>256 evenly spaced crops for calibration, the rest for evaluation (symbolic links in two folders).</summary>
    internal static (string Calibration, string Evaluation, Dictionary<string, string> PhotoOf) SplitPhotos(string corpus, string work)
    {
        string dir = Path.Combine(corpus, "datasets", "photos-224");
        string[] files = [.. Directory.GetFiles(dir, "*.jpg").Order(StringComparer.Ordinal)];
        HashSet<int> calibrationIndices = [.. DatasetLoader.SubsetIndices(files.Length, 256)];
        string calibration = Path.Combine(work, "photos-calibration"), evaluation = Path.Combine(work, "photos-evaluation");
        Directory.CreateDirectory(calibration);
        Directory.CreateDirectory(evaluation);
        for (int i = 0; i < files.Length; i++)
        {
            File.CreateSymbolicLink(Path.Combine(calibrationIndices.Contains(i) ? calibration : evaluation, Path.GetFileName(files[i])), files[i]);
        }
        var photoOf = File.ReadAllLines(Path.Combine(dir, "crops.csv")).Skip(1).Select(l => l.Split(','))
            .ToDictionary(p => p[0], p => p[1], StringComparer.Ordinal);
        return (calibration, evaluation, photoOf);
    }

    internal static string LargeDir(string corpus)
    {
        if (Environment.GetEnvironmentVariable("CORPUS_LARGE_DIR") is { Length: > 0 } env)
        {
            return env;
        }
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true };
        psi.ArgumentList.Add(Path.Combine(corpus, "large", "fetch.sh"));
        psi.ArgumentList.Add("--env");
        using Process p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        string? line = output.Split('\n').FirstOrDefault(l => l.StartsWith("CORPUS_LARGE_DIR=", StringComparison.Ordinal));
        if (p.ExitCode != 0 || line == null)
        {
            throw new InvalidOperationException("large/fetch.sh --env failed: " + output);
        }
        return line["CORPUS_LARGE_DIR=".Length..].Trim().Trim('"', '\'');
    }

    internal static string LoadAverage()
    {
        try
        {
            return string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) + " (1/5/15 min, 2 cores)";
        }
        catch (IOException)
        {
            return "unknown";
        }
    }

    internal static string Cpu()
    {
        try
        {
            return File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "unknown CPU";
        }
        catch (IOException)
        {
            return "unknown CPU";
        }
    }

    internal static double D(JsonNode? n) => n == null ? double.NaN : double.Parse(n.ToJsonString(), NumberStyles.Float, Ci);
}
