using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using CompressOnBuild.Validation;

/// <summary>
/// The "pruning-large" section of docs/results.md (issue 15): Magnitude and SparseGPT side by side on the ResNet18
/// featurizer (photo crops: 256 for calibration, the others for evaluation) and on all-MiniLM-L6-v2 (sentences: 256
/// evenly spaced for calibration, the others for evaluation), each row one worker process (`compress`) validating the
/// fp32 model and the pruned one side by side.
/// </summary>
internal static class PruningLarge
{
    private static readonly CultureInfo Ci = CultureInfo.InvariantCulture;

    /// <summary>The rows, in table order: (model, pruning, quantization).</summary>
    private static readonly (string Model, string Pruning, string Quantization)[] Rows =
    [
        ("ResNet18", "Magnitude:0.5", "None"), ("ResNet18", "SparseGPT:0.5", "None"), ("ResNet18", "SparseGPT:0.5:uniform", "None"),
        ("ResNet18", "NofM:2:4", "None"), ("ResNet18", "SparseGPT:2:4", "None"), ("ResNet18", "Channels:0.3", "None"),
        ("MiniLM", "Magnitude:0.5", "None"), ("MiniLM", "SparseGPT:0.5", "None"), ("MiniLM", "SparseGPT:0.5:uniform", "None"),
        ("MiniLM", "SparseGPT:0.3", "None"), ("MiniLM", "SparseGPT:0.4", "None"),
        ("MiniLM", "SparseGPT:0.5", "Int8Dynamic"),
    ];

    /// <param name="only">Null: every row. Else only the rows whose "model pruning quantization" contains one of these texts;
    /// the others are taken from <paramref name="keepFrom"/> (the current docs/results.md).</param>
    public static string Section(string corpus, string repo, string work, string[]? only = null, string? keepFrom = null)
    {
        string large = Large.LargeDir(corpus);
        // COMPRESSONBUILD_RESULTS_CLI: a copy of the built worker, so rebuilding the tree during a long run does not change it.
        string cli = Environment.GetEnvironmentVariable("COMPRESSONBUILD_RESULTS_CLI") is { Length: > 0 } copy ? copy
            : Path.Combine(repo, "artifacts", "bin", "CompressOnBuild.Cli", "release", "CompressOnBuild.Cli.dll");
        if (!File.Exists(cli))
        {
            throw new FileNotFoundException("build the CLI first (dotnet build src/CompressOnBuild.Cli -c Release)", cli);
        }
        string resnet = Path.Combine(large, "resnet18-featurizer", "model.onnx");
        string minilm = Path.Combine(large, "all-minilm-l6-v2", "model.onnx");
        string vocab = Path.Combine(large, "all-minilm-l6-v2", "vocab.txt");
        (string calibration, string evaluation, _) = Large.SplitPhotos(corpus, work);
        (string textCalibration, string textEvaluation) = SplitSentences(corpus, work);
        bool Selected((string Model, string Pruning, string Quantization) r) =>
            only == null || only.Any(t => $"{r.Model} {r.Pruning} {r.Quantization}".Contains(t, StringComparison.OrdinalIgnoreCase));
        // Rows kept from the current section: by (model, pruning, quantization).
        var kept = new Dictionary<string, string>(StringComparer.Ordinal);
        string? earlier = null;
        if (only != null && keepFrom != null)
        {
            int b0 = keepFrom.IndexOf("<!-- pruning-large:begin -->", StringComparison.Ordinal), e0 = keepFrom.IndexOf("<!-- pruning-large:end -->", StringComparison.Ordinal);
            string old = b0 >= 0 && e0 > b0 ? keepFrom[b0..e0] : "";
            foreach (string line in old.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.StartsWith("| ResNet18 |", StringComparison.Ordinal) || l.StartsWith("| MiniLM |", StringComparison.Ordinal)))
            {
                string[] c = line.Split('|');
                kept[Key(c[1].Trim(), c[2].Trim(), c[3].Trim())] = c.Length - 2 == 10 ? string.Join('|', c[..5]) + "| (earlier run, before the allocation column) |" + string.Join('|', c[5..]) : line;
            }
            earlier = old.Split('\n').FirstOrDefault(l => l.StartsWith("Generated ", StringComparison.Ordinal))?.Split(" UTC", 2)[0]["Generated ".Length..];
        }

        var section = System.Diagnostics.Stopwatch.StartNew();
        var notes = new List<string>();
        var errors = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach ((string key, string line) in kept)
        {
            string[] c = line.Split('|');
            if (double.TryParse(c[7].Trim(), NumberStyles.Float, Ci, out double err))
            {
                errors[key] = err;
            }
        }
        // The ResNet18 rows and the MiniLM rows run as two concurrent sequences of worker processes (one per core of a
        // 2-core machine; each worker's ORT runs are single-threaded); the rows keep their order.
        string[] imageArgs = ["--preprocessing", Large.ResNetPreprocessing, "--validation-data", evaluation, "--calibration-data", calibration, "--calibration-samples", "256"];
        string[] textArgs = ["--tokenizer", vocab, "--sequence-length", "128", "--validation-data", textEvaluation, "--calibration-data", textCalibration, "--calibration-samples", "256"];
        List<string> Sequence(string model, string path, string[] data)
        {
            var rows = new List<string>();
            foreach ((string Model, string Pruning, string Quantization) r in Rows.Where(r => r.Model == model))
            {
                string key = Key(r.Model, r.Pruning, r.Quantization);
                if (!Selected(r))
                {
                    if (kept.TryGetValue(key, out string? line))
                    {
                        rows.Add(line);
                    }
                    continue;
                }
                Large.Run run = Large.Worker(cli, work, path, Name(model == "ResNet18" ? "resnet" : "minilm", r.Pruning, r.Quantization), ["--pruning", r.Pruning, "--quantization", r.Quantization, .. data]);
                if (run.Report is { } rep && r.Quantization == "None")
                {
                    lock (errors)
                    {
                        errors[key] = RelativeError(rep);
                    }
                }
                double? baseline;
                lock (errors)
                {
                    baseline = Baseline(r.Pruning) is { } bp && errors.TryGetValue(Key(r.Model, bp, "None"), out double be) ? be : null;
                }
                rows.Add(Row(r.Model, r.Pruning, r.Quantization, run, r.Quantization == "None" ? baseline : null));
                if (AllocationNote(r.Model, r.Pruning, r.Quantization, run) is { } note)
                {
                    lock (notes)
                    {
                        notes.Add(note);
                    }
                }
                Console.Error.WriteLine(rows[^1]);
            }
            return rows;
        }
        Task<List<string>> resnetRows = Task.Run(() => Sequence("ResNet18", resnet, imageArgs));
        Task<List<string>> minilmRows = Task.Run(() => Sequence("MiniLM", minilm, textArgs));
        List<string> rows = [.. resnetRows.Result, .. minilmRows.Result];

        var sb = new StringBuilder();
        sb.AppendLine("<!-- pruning-large:begin -->");
        sb.AppendLine("## Pruning large models (generated by `bash build/results.sh pruning-large`)");
        sb.AppendLine();
        sb.AppendLine(string.Create(Ci, $"Generated {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {Environment.ProcessorCount} cores ({Large.Cpu()}), .NET {Environment.Version}. Each row is one worker process (`compress`), the fp32 model and the pruned one validated side by side in that run (batch 1, 1 thread; latency = median of interleaved single-sample runs); the ResNet18 rows and the MiniLM rows run as two concurrent sequences of workers, so each compress time includes sharing the machine with the other sequence. {(only == null ? "The whole section" : "This run (`pruning-large:" + string.Join(",", only) + "`)")} took {section.Elapsed.TotalMinutes:0.0} minutes wall; load average at the end (1/5/15 min): {Large.LoadAverage()}. ResNet18: the 506 photo crops split into 256 calibration files (evenly spaced) and the others for evaluation; quality on the 512-d features. MiniLM: the 2,000 corpus sentences split into 256 evenly spaced calibration sentences and the 1,744 others for evaluation, sequence length 128; quality on the mean-pooled `last_hidden_state`. Every row has CalibrationData, so Magnitude and NofM rank by \\|w\\| x input RMS (activation-aware); SparseGPT reconstructs from the same data. Allocation: with CalibrationData, Magnitude:s and SparseGPT:s choose per-layer sparsities from measured harm by default (\"sensitivity\": every prunable layer pruned alone at 25-95 %, the harm to the output measured on 32 calibration samples, then exactly s of all prunable weights placed with the least predicted harm); `:uniform` keeps every layer at one sparsity (the output layer dense, the others raised to make up for it); N:M patterns and Channels have their own rules. Sparsity = zero or removed weights over all of the model's prunable weights (MatMul/Gemm/Conv). Zip: Deflate of the fp32 model → of the shipped model, and in brackets the ratio the shipped bytes would reach if each byte were coded at the order-0 entropy of the file's byte histogram (what a byte-wise coder can approach)."));
        sb.AppendLine();
        sb.AppendLine("| model | pruning | quantization | sparsity (requested / achieved) | allocation | mean cosine (min) | mean relative L2 error | error vs the magnitude row | zip (order-0 entropy bound) | latency fp32 / pruned | compress time |");
        sb.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|");
        rows.ForEach(r => sb.AppendLine(r));
        sb.AppendLine();
        if (only != null)
        {
            sb.AppendLine(string.Create(Ci, $"Only the rows matching `{string.Join(",", only)}` were rerun in this run; the other rows are carried over from the run of {earlier ?? "an earlier run"} UTC (binaries of that time)."));
            sb.AppendLine();
        }
        foreach (string n in notes)
        {
            sb.AppendLine(n);
            sb.AppendLine();
        }
        sb.AppendLine("Issue 15 targets: ResNet18 SparseGPT:0.5 mean cosine >= 0.98 and relative L2 error <= 0.5x Magnitude:0.5; SparseGPT:2:4 cosine >= 0.95; Channels:0.3 + refit latency <= 0.8x fp32 with cosine >= 0.95; MiniLM SparseGPT:0.5 cosine >= 0.97, SparseGPT:0.5 + Int8 cosine >= 0.96 and zip >= 6x smaller than the zipped fp32 model.");
        sb.AppendLine("<!-- pruning-large:end -->");
        return sb.ToString();
    }

    private static string Key(string model, string pruning, string quantization) => model + "|" + pruning + "|" + quantization;

    /// <summary>For a row with the sensitivity allocation: what it measured and the per-layer sparsities it chose.</summary>
    private static string? AllocationNote(string model, string pruning, string quantization, Large.Run run)
    {
        if (run.Report?["pruning"]?["sensitivity"] is not JsonNode a)
        {
            return null;
        }
        var layers = a["layers"]!.AsArray().Select(l => (Node: l!["node"]!.GetValue<string>(), S: Large.D(l["chosenSparsity"]), N: Large.D(l["elements"]))).ToList();
        string list = string.Join(", ", layers.Select(l => string.Create(Ci, $"{l.Node} {l.S * 100:0}%")));
        return string.Create(Ci, $"{model} {pruning}{(quantization == "None" ? "" : " + " + quantization)}, sensitivity allocation: {Large.D(a["probes"]):0} probes ({a["measure"]}, {Large.D(a["samples"]):0} samples) in {Large.D(a["seconds"]):0.0} s of the {Large.D(run.Report!["timing"]!["compressSeconds"]):0.0} s compress time; predicted harm {Large.D(a["predictedHarm"]):G3} vs {Large.D(a["uniformPredictedHarm"]):G3} at uniform sparsity; per-layer sparsity {layers.Min(l => l.S) * 100:0}-{layers.Max(l => l.S) * 100:0}%: {list}.");
    }

    private static string Name(string model, string pruning, string quantization) =>
        model + "-" + string.Concat((pruning + "-" + quantization).Select(c => char.IsAsciiLetterOrDigit(c) ? c : '-'));

    /// <summary>The magnitude row the method is compared with at the same sparsity (SparseGPT:0.5 with Magnitude:0.5, SparseGPT:2:4 with NofM:2:4).</summary>
    private static string? Baseline(string pruning) => pruning switch
    {
        "SparseGPT:0.5" or "SparseGPT:0.5:uniform" => "Magnitude:0.5",
        "SparseGPT:2:4" => "NofM:2:4",
        _ => null,
    };

    /// <summary>The first output's mean relative L2 error (report.json lists it per output).</summary>
    private static double RelativeError(JsonNode r) => Large.D(r["validation"]!["outputs"]![0]!["meanRelativeL2Error"]);

    private static string Row(string model, string pruning, string quantization, Large.Run run, double? baseline)
    {
        if (run.Report is not { } r)
        {
            return $"| {model} | {pruning} | {quantization} | failed: {run.Text.Replace('\n', ' ').Replace("|", "\\|", StringComparison.Ordinal)} | | | | | | | |";
        }
        JsonNode p = r["pruning"]!, v = r["validation"]!, e = v["embedding"]!, l = v["latency"]!, t = r["timing"]!;
        string requested = p["requestedSparsity"] is { } rq ? string.Create(Ci, $"{Large.D(rq) * 100:0.0}%") : "-";
        double error = RelativeError(r);
        string versus = baseline is double b ? string.Create(Ci, $"{error / b:0.00}x") : "-";
        long zipBefore = (long)Large.D(p["zipBytesBefore"]);
        byte[]? shipped = run.Output != null && File.Exists(run.Output) ? File.ReadAllBytes(run.Output) : null;
        long zipAfter = shipped != null ? CompressOnBuild.Core.Passes.PruningSummary.ZipBytes(shipped) : 0;
        double bound = shipped != null ? zipBefore / Pruning.Order0EntropyBytes(shipped) : double.NaN;
        string allocation = p["allocation"]?.ToString() ?? "-";
        return string.Create(Ci,
            $"| {model} | {pruning} | {quantization} | {requested} / {Large.D(p["achievedSparsity"]) * 100:0.0}% | {allocation} | {Large.D(e["meanCosine"]):0.0000} ({Large.D(e["minCosine"]):0.0000}) | {error:0.0000} | {versus} | {zipBefore / 1e6:0.0} MB → {zipAfter / 1e6:0.0} MB ({(double)zipBefore / zipAfter:0.00}x; {bound:0.00}x) | {Large.D(l["originalMs"]):0.0} ms / {Large.D(l["compressedMs"]):0.0} ms ({Large.D(l["ratio"]):0.00}x) | {Large.D(t["compressSeconds"]):0.0} s |");
    }

    /// <summary>256 evenly spaced sentences for calibration, the others for evaluation (two .txt files).</summary>
    private static (string Calibration, string Evaluation) SplitSentences(string corpus, string work)
    {
        string[] all = File.ReadAllLines(Path.Combine(corpus, "datasets", "sentences", "sentences.txt"));
        HashSet<int> picked = [.. DatasetLoader.SubsetIndices(all.Length, 256)];
        string calibration = Path.Combine(work, "sentences-calibration.txt"), evaluation = Path.Combine(work, "sentences-evaluation.txt");
        File.WriteAllLines(calibration, all.Where((_, i) => picked.Contains(i)));
        File.WriteAllLines(evaluation, all.Where((_, i) => !picked.Contains(i)));
        return (calibration, evaluation);
    }
}
