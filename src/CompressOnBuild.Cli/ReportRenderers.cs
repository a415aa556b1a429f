using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;

namespace CompressOnBuild.Cli;

/// <summary>
/// Human-readable forms of report.json: a Markdown summary (fit for a CI job summary or a PR comment) and a
/// self-contained HTML page with inline SVG charts that opens offline. Both are rendered from the JSON report only.
/// </summary>
internal static class ReportRenderers
{
    private static readonly CultureInfo Ci = CultureInfo.InvariantCulture;

    public static string MarkdownRow(JsonNode r)
    {
        JsonNode m = r["model"]!;
        JsonNode? v = r["validation"];
        string accuracy = v?["originalAccuracy"] is { } a && v["compressedAccuracy"] is { } b
            ? $"{Num(a, "0.00")}% → {Num(b, "0.00")}%"
            : "-";
        string agreement = v == null ? "-"
            : v["metric"]?.GetValue<string>() == "embedding" && v["embedding"]?["neighborAgreement"] is { } na ? "neighbours " + Num(D(na) * 100, "0.00") + "%"
            : Num(D(v["top1Agreement"]) * 100, "0.00") + "%";
        JsonArray budgets = r["budgets"]!.AsArray();
        string budgetText = budgets.Count == 0 ? "-" : string.Join("<br>", budgets.Select(bd =>
            $"{(bd!["passed"]!.GetValue<bool>() ? "✅" : "❌")} {bd["name"]} {Num(bd["measured"], "G4")} (limit {Num(bd["limit"], "G4")})"));
        string verdict = r["verdict"]!.GetValue<string>() == "passed" ? "✅ passed" : "❌ **failed**";
        return $"| `{Escape(m["source"]!.GetValue<string>())}` | {Kb(m["sourceBytes"])} → {Kb(m["compressedBytes"])} ({Num(m["compressionRatio"], "0.00")}x) | {accuracy} | {agreement} | {budgetText} | {verdict} |";
    }

    public const string MarkdownHeader = "| model | size | top-1 | agreement | budgets | verdict |\n|---|---|---|---|---|---|";

    public static string Markdown(JsonNode r)
    {
        var sb = new StringBuilder();
        sb.Append("### CompressOnBuild: `").Append(Escape(r["model"]!["source"]!.GetValue<string>())).AppendLine("`").AppendLine();
        sb.AppendLine(MarkdownHeader).AppendLine(MarkdownRow(r)).AppendLine();
        JsonNode? v = r["validation"];
        if (v != null)
        {
            sb.AppendLine(string.Create(Ci, $"Validated on {v["samples"]} samples of `{Escape(v["data"]!.GetValue<string>())}` ({v["batching"]}) with ONNX Runtime {r["onnxRuntime"]?["version"]} ({r["onnxRuntime"]?["source"]}); mean cosine {Num(v["meanCosineSimilarity"], "0.00000")}, max abs error {Num(v["maxAbsError"], "G4")}."));
            if (v["note"] is JsonNode note)
            {
                sb.AppendLine().AppendLine($"**Measured {Escape(note.GetValue<string>())}.**");
            }
        }
        if (r["diagnostics"] is JsonArray { Count: > 0 } diagnostics)
        {
            sb.AppendLine();
            foreach (JsonNode? d in diagnostics)
            {
                sb.AppendLine($"- {d!["severity"]} {d["code"]}: {Escape(d["message"]!.GetValue<string>())}");
            }
        }
        if (r["tuning"] is JsonNode t)
        {
            sb.AppendLine().AppendLine(string.Create(Ci, $"Tuning: {t["trials"]!.AsArray().Count} configurations in {Num(t["elapsedSeconds"], "0.0")} s, budgets {(t["met"]!.GetValue<bool>() ? "met" : "NOT met")}."));
        }
        if (r["quantization"] is JsonNode q)
        {
            sb.AppendLine().AppendLine(string.Create(Ci, $"Quantized {q["quantizedNodes"]!.AsArray().Count} node(s), kept {q["skippedNodes"]!.AsArray().Count} float (weights stored as {q["weightEncoding"]})."));
        }
        return sb.ToString();
    }

    public static string Html(JsonNode r)
    {
        JsonNode m = r["model"]!;
        string name = m["source"]!.GetValue<string>();
        var sb = new StringBuilder();
        sb.AppendLine("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>CompressOnBuild: " + H(name) + "</title>");
        sb.AppendLine("<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}.pass{color:#1a7f37}.fail{color:#c62828;font-weight:bold}svg{background:#fafafa;border:1px solid #ddd;margin:0.5em 0}</style></head><body>");
        bool passed = r["verdict"]!.GetValue<string>() == "passed";
        sb.AppendLine($"<h1>{H(name)}</h1><p>Verdict: <span class=\"{(passed ? "pass" : "fail")}\">{(passed ? "passed" : "FAILED")}</span> &middot; CompressOnBuild {H(r["tool"]?["version"]?.ToString())} &middot; ONNX Runtime {H(r["onnxRuntime"]?["version"]?.ToString())} ({H(r["onnxRuntime"]?["source"]?.ToString())})</p>");

        sb.AppendLine("<h2>Summary</h2><table>");
        Row(sb, "output", m["output"]);
        Row(sb, "size", $"{Kb(m["sourceBytes"])} → {Kb(m["compressedBytes"])} ({Num(m["compressionRatio"], "0.00")}x smaller)");
        if (r["validation"] is JsonNode v)
        {
            Row(sb, "validation data", $"{v["data"]} ({v["samples"]} samples, {v["batching"]}){(v["note"] is JsonNode note ? ": " + note.GetValue<string>() : "")}");
            if (v["originalAccuracy"] != null)
            {
                Row(sb, "top-1 accuracy", $"{Num(v["originalAccuracy"], "0.00")}% → {Num(v["compressedAccuracy"], "0.00")}% (drop {Num(v["accuracyDrop"], "0.00")} points)");
            }
            Row(sb, "judged as", $"{v["metric"]} ({v["metricReason"]})");
            if (v["embedding"] is JsonNode e)
            {
                Row(sb, "embedding cosine (pooling)", $"mean {Num(e["meanCosine"], "0.000000")}, min {Num(e["minCosine"], "0.000000")} ({e["pooling"]})");
                Row(sb, "nearest-neighbour agreement", e["neighborAgreement"] == null ? "-"
                    : $"{Num(D(e["neighborAgreement"]) * 100, "0.00")}% of {e["clearNeighborSamples"]} samples with a clear neighbour (all {e["pairwiseSamples"]}: {Num(D(e["neighborAgreementAllSamples"]) * 100, "0.00")}%)");
                Row(sb, "similarity rank correlation", e["similarityCorrelation"] == null ? "-" : Num(e["similarityCorrelation"], "0.000000"));
            }
            Row(sb, "top-1 agreement", Num(D(v["top1Agreement"]) * 100, "0.00") + "%");
            Row(sb, "mean cosine / max abs error", $"{Num(v["meanCosineSimilarity"], "0.000000")} / {Num(v["maxAbsError"], "G4")}");
            Row(sb, "throughput (samples/s)", $"{Num(v["originalSamplesPerSecond"], "0")} → {Num(v["compressedSamplesPerSecond"], "0")}");
            if (v["latency"] is JsonNode l)
            {
                Row(sb, "median latency", $"{Num(l["originalMs"], "0.000")} ms → {Num(l["compressedMs"], "0.000")} ms (ratio {Num(l["ratio"], "0.00")}, {l["runs"]} interleaved runs, {l["threads"]} thread)");
            }
        }
        sb.AppendLine("</table>");
        if (r["diagnostics"] is JsonArray { Count: > 0 } diagnostics)
        {
            sb.AppendLine("<h2>Diagnostics</h2><ul>");
            foreach (JsonNode? d in diagnostics)
            {
                sb.AppendLine($"<li>{H(d!["severity"]?.ToString())} {H(d["code"]?.ToString())}: {H(d["message"]?.ToString())}</li>");
            }
            sb.AppendLine("</ul>");
        }

        sb.AppendLine("<h2>Budgets</h2><table><tr><th>budget</th><th>limit</th><th>measured</th><th>result</th></tr>");
        foreach (JsonNode? b in r["budgets"]!.AsArray())
        {
            bool ok = b!["passed"]!.GetValue<bool>();
            sb.AppendLine($"<tr><td>{H(b["name"]?.ToString())}</td><td>{Num(b["limit"], "G6")}</td><td>{Num(b["measured"], "G6")}</td><td class=\"{(ok ? "pass" : "fail")}\">{(ok ? "met" : "BROKEN")}</td></tr>");
        }
        sb.AppendLine("</table>");

        if (r["tuning"] is JsonNode tuning)
        {
            bool met = tuning["met"]!.GetValue<bool>(), timedOut = tuning["timedOut"]?.GetValue<bool>() == true;
            JsonArray kept = tuning["keptByTune"]?.AsArray() ?? [];
            string head = string.Create(Ci, $"<h2>Tuning</h2><p>{tuning["trials"]!.AsArray().Count} configurations in {Num(tuning["elapsedSeconds"], "0.0")} s of a {Num(tuning["timeBudgetSeconds"], "0")} s time budget ({H(tuning["timeBudgetSource"]?.ToString() ?? "TuneTimeBudgetSeconds")}); budgets <span class=\"{(met ? "pass" : "fail")}\">{(met ? "met" : timedOut ? "NOT met: timed out" : "NOT met")}</span>.");
            sb.AppendLine(head
                + (tuning["harm"] is JsonNode harm ? $" Measured with each pass alone, the harm came from: {H(harm.ToString())}." : "")
                + (kept.Count > 0 ? $" Kept float (or dense) by Tune: {H(string.Join(", ", kept.Select(k => k!.ToString())))}." : "") + "</p>");
        }

        sb.AppendLine("<h2>Accuracy vs size</h2>");
        sb.AppendLine(AccuracyVsSize(r));

        if (r["quantization"] is JsonNode q0 && q0["quantizedNodes"]!.AsArray().Count == 0 && q0["skippedNodes"]!.AsArray().Count > 0)
        {
            sb.AppendLine("<h2>Kept in float</h2><p>No layer is quantized.</p>");
            SkippedTable(sb, q0);
        }
        if (r["quantization"] is JsonNode q && q["quantizedNodes"]!.AsArray().Count > 0)
        {
            sb.AppendLine("<h2>Per-layer weight error</h2><p>Largest |w − dequantized(w)| of each quantized layer (at most half a quantization step).</p>");
            var bars = q["quantizedNodes"]!.AsArray().Select(n => (n!["node"]!.GetValue<string>(), D(n["maxAbsWeightError"]))).ToList();
            sb.AppendLine(BarChart(bars));
            sb.AppendLine("<table><tr><th>layer</th><th>op</th><th>weight</th><th>shape (K x N)</th><th>max abs weight error</th></tr>");
            foreach (JsonNode? n in q["quantizedNodes"]!.AsArray())
            {
                sb.AppendLine($"<tr><td>{H(n!["node"]?.ToString())}</td><td>{H(n["opType"]?.ToString())}</td><td>{H(n["weight"]?.ToString())}</td><td>{n["rows"]} x {n["columns"]}</td><td>{Num(n["maxAbsWeightError"], "G4")}</td></tr>");
            }
            sb.AppendLine("</table>");
            if (q["skippedNodes"]!.AsArray().Count > 0)
            {
                sb.AppendLine("<h3>Kept in float</h3>");
                SkippedTable(sb, q);
            }
        }
        if (r["weightHistograms"] is JsonNode wh)
        {
            double nBefore = wh["before"]!.AsArray().Sum(x => D(x)), nAfter = wh["after"]!.AsArray().Sum(x => D(x));
            sb.AppendLine(string.Create(Ci, $"<h2>Weight histograms</h2><p>Before (grey): the float weights of every quantized layer ({nBefore} values). After (blue): the weights the shipped model stores as DynamicQuantizeMatMul or DequantizeLinear initializers, dequantized ({nAfter} values; ConvInteger and MatMulNBits weights are not decoded). One shared range, log-scaled counts.</p>"));
            sb.AppendLine(Histograms(wh));
        }
        if (r["pruning"] is JsonNode pr && pr["layers"]!.AsArray().Count > 0)
        {
            string allocation = pr["allocation"]?.ToString() switch
            {
                "sensitivity" => " Per-layer sparsities chosen from measured harm (sensitivity allocation).",
                "uniform" => " Uniform allocation: every pruned layer at the same sparsity.",
                _ => "",
            };
            sb.AppendLine($"<h2>Per-layer sparsity ({H(pr["method"]?.ToString())})</h2><p>{allocation} Fraction of each layer's weights that are zero after pruning; parameters {pr["parametersBefore"]} → {pr["parametersAfter"]}, zipped model {Kb(pr["zipBytesBefore"])} → {Kb(pr["zipBytesAfter"])} before quantization.</p>");
            var bars = pr["layers"]!.AsArray().Select(n => (n!["node"]!.GetValue<string>(), D(n["sparsity"]))).ToList();
            sb.AppendLine(BarChart(bars));
            if (pr["sensitivity"] is JsonNode sn)
            {
                JsonArray grid = sn["layers"]!.AsArray().FirstOrDefault()?["curve"]?.AsArray() ?? [];
                sb.AppendLine($"<h3>Sensitivity</h3><p>Harm ({H(sn["measure"]?.ToString())}, {sn["samples"]} samples) with only one layer pruned, per sparsity; chosen per-layer sparsities place {sn["chosenZeros"]} of {sn["elements"]} weights at zero. Predicted harm {Num(sn["predictedHarm"], "G4")} vs {Num(sn["uniformPredictedHarm"], "G4")} for uniform sparsity.{(sn["measuredHarm"] == null ? "" : $" Measured with every layer pruned together: {Num(sn["measuredHarm"], "G4")} vs {Num(sn["uniformMeasuredHarm"], "G4")} for uniform sparsity ({H(sn["uniformCandidate"]?.ToString())}){(sn["fellBackToUniform"]?.GetValue<bool>() == true ? "; the allocation measured no clear gain, so uniform sparsity was applied (the chosen column shows it)" : "")}.")}</p>");
                sb.Append("<table><tr><th>layer</th><th>weights</th><th>chosen</th>");
                foreach (JsonNode? c in grid)
                {
                    sb.Append(string.Create(Ci, $"<th>{D(c!["sparsity"]) * 100:0}%</th>"));
                }
                sb.AppendLine("</tr>");
                foreach (JsonNode? l in sn["layers"]!.AsArray())
                {
                    sb.Append(string.Create(Ci, $"<tr><td>{H(l!["node"]?.ToString())}</td><td>{l["elements"]}</td><td>{D(l["chosenSparsity"]) * 100:0.0}%</td>"));
                    foreach (JsonNode? c in l["curve"]!.AsArray())
                    {
                        sb.Append($"<td>{Num(c!["harm"], "G3")}</td>");
                    }
                    sb.AppendLine("</tr>");
                }
                sb.AppendLine("</table>");
            }
        }
        sb.AppendLine("</body></html>");
        return sb.ToString();
    }

    /// <summary>
    /// Scatter of accuracy (or agreement without labels) against size: the original, every tuning trial, the shipped
    /// model, with the budgets as dashed lines (accuracy floor, agreement floor, size ceiling). Axis ticks are round
    /// values (1, 2 or 5 times a power of ten); point labels that would overlap are moved apart.
    /// </summary>
    internal static string AccuracyVsSize(JsonNode r)
    {
        JsonNode? v = r["validation"];
        if (v == null)
        {
            return "<p>No validation data.</p>";
        }
        bool labels = v["originalAccuracy"] != null;
        double sourceKb = D(r["model"]!["sourceBytes"]) / 1024;
        var points = new List<(double X, double Y, string Label, string Color)>
        {
            (sourceKb, labels ? D(v["originalAccuracy"]) : 100, "original", "#555"),
        };
        if (r["tuning"] is JsonNode t)
        {
            int i = 0;
            foreach (JsonNode? trial in t["trials"]!.AsArray())
            {
                double y = labels && trial!["accuracy"] != null ? D(trial["accuracy"]) : D(trial!["top1Agreement"]) * 100;
                bool chosen = trial["chosen"]!.GetValue<bool>();
                points.Add((D(trial["compressedBytes"]) / 1024, y, chosen ? "shipped" : "trial " + i.ToString(Ci), chosen ? "#1a7f37" : "#999"));
                i++;
            }
        }
        else
        {
            points.Add((D(r["model"]!["compressedBytes"]) / 1024,
                labels ? D(v["compressedAccuracy"]) : D(v["top1Agreement"]) * 100, "compressed", "#1a7f37"));
        }

        // Budget lines in the chart's units.
        var hLines = new List<(double Y, string Label)>();
        var vLines = new List<(double X, string Label)>();
        foreach (JsonNode? b in r["budgets"]?.AsArray() ?? [])
        {
            string name = b!["name"]!.GetValue<string>();
            double limit = D(b["limit"]);
            if (name == "MaxAccuracyDrop" && labels)
            {
                hLines.Add((D(v["originalAccuracy"]) - limit, "MaxAccuracyDrop " + limit.ToString("G4", Ci)));
            }
            else if (name == "MinAgreement" && !labels)
            {
                hLines.Add((limit * 100, "MinAgreement " + limit.ToString("G4", Ci)));
            }
            else if (name == "MaxSizeKB")
            {
                vLines.Add((limit, "MaxSizeKB " + limit.ToString("G4", Ci)));
            }
            else if (name == "MinCompressionRatio" && limit > 0)
            {
                vLines.Add((sourceKb / limit, "MinCompressionRatio " + limit.ToString("G4", Ci) + "x"));
            }
        }

        const int W = 640, Hh = 320, L = 70, B = 40, T = 20, R = 20;
        double[] xTicks = NiceTicks(0, Math.Max(points.Max(p => p.X), vLines.Count == 0 ? 0 : vLines.Max(l => l.X)) * 1.05, 5);
        double yMin = Math.Min(points.Min(p => p.Y), hLines.Count == 0 ? double.MaxValue : hLines.Min(l => l.Y));
        double yMax = Math.Max(points.Max(p => p.Y), hLines.Count == 0 ? double.MinValue : hLines.Max(l => l.Y));
        double pad = Math.Max(0.05, (yMax - yMin) * 0.1);
        double[] yTicks = NiceTicks(yMin - pad, yMax + pad, 5);
        double x0 = xTicks[0], x1 = xTicks[^1], y0 = yTicks[0], y1 = yTicks[^1];
        double Sx(double x) => L + (x - x0) / (x1 - x0) * (W - L - R);
        double Sy(double y) => T + (1 - (y - y0) / (y1 - y0)) * (Hh - T - B);
        string yFormat = TickFormat(yTicks), xFormat = TickFormat(xTicks);

        var sb = new StringBuilder();
        sb.Append(Ci, $"<svg width=\"{W}\" height=\"{Hh}\" viewBox=\"0 0 {W} {Hh}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"11\">");
        sb.Append(Ci, $"<line x1=\"{L}\" y1=\"{Hh - B}\" x2=\"{W - R}\" y2=\"{Hh - B}\" stroke=\"#333\"/><line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{Hh - B}\" stroke=\"#333\"/>");
        sb.Append(Ci, $"<text x=\"{(L + W - R) / 2}\" y=\"{Hh - 8}\" text-anchor=\"middle\">size (KB)</text>");
        sb.Append(Ci, $"<text x=\"14\" y=\"{(T + Hh - B) / 2}\" transform=\"rotate(-90 14 {(T + Hh - B) / 2})\" text-anchor=\"middle\">{(labels ? "top-1 accuracy (%)" : "top-1 agreement (%)")}</text>");
        foreach (double yv in yTicks)
        {
            sb.Append(Ci, $"<line x1=\"{L - 4}\" y1=\"{Sy(yv):0.0}\" x2=\"{L}\" y2=\"{Sy(yv):0.0}\" stroke=\"#333\"/><text class=\"tick\" x=\"{L - 6}\" y=\"{Sy(yv) + 4:0.0}\" text-anchor=\"end\">{yv.ToString(yFormat, Ci)}</text>");
        }
        foreach (double xv in xTicks)
        {
            sb.Append(Ci, $"<line x1=\"{Sx(xv):0.0}\" y1=\"{Hh - B}\" x2=\"{Sx(xv):0.0}\" y2=\"{Hh - B + 4}\" stroke=\"#333\"/><text class=\"tick\" x=\"{Sx(xv):0.0}\" y=\"{Hh - B + 15}\" text-anchor=\"middle\">{xv.ToString(xFormat, Ci)}</text>");
        }
        foreach ((double y, string label) in hLines)
        {
            sb.Append(Ci, $"<line class=\"budget\" x1=\"{L}\" y1=\"{Sy(y):0.0}\" x2=\"{W - R}\" y2=\"{Sy(y):0.0}\" stroke=\"#c62828\" stroke-dasharray=\"5 4\"/><text x=\"{W - R - 4}\" y=\"{Sy(y) + 13:0.0}\" text-anchor=\"end\" fill=\"#c62828\">{H(label)}</text>");
        }
        foreach ((double x, string label) in vLines)
        {
            sb.Append(Ci, $"<line class=\"budget\" x1=\"{Sx(x):0.0}\" y1=\"{T}\" x2=\"{Sx(x):0.0}\" y2=\"{Hh - B}\" stroke=\"#c62828\" stroke-dasharray=\"5 4\"/><text x=\"{Sx(x) + 4:0.0}\" y=\"{T + 10}\" fill=\"#c62828\">{H(label)}</text>");
        }
        // Labels: the named points first, then the trials; a label that would overlap one already placed moves down (or is left to its tooltip).
        var placed = new List<(double X, double Y, double W)>();
        foreach ((double x, double y, string label, string color) in points.OrderBy(p => p.Label.StartsWith("trial", StringComparison.Ordinal)))
        {
            sb.Append(Ci, $"<circle cx=\"{Sx(x):0.0}\" cy=\"{Sy(y):0.0}\" r=\"5\" fill=\"{color}\"><title>{H(label)}: {x:0.0} KB, {y:0.00}%</title></circle>");
            double lw = label.Length * 6.2, lx = Sx(x) + 7, ly = Sy(y) - 6;
            if (lx + lw > W - R)
            {
                lx = Sx(x) - 7 - lw;
            }
            int tries = 0;
            while (placed.Any(q => lx < q.X + q.W && q.X < lx + lw && Math.Abs(q.Y - ly) < 12) && tries++ < 6)
            {
                ly += 12;
            }
            if (tries > 6)
            {
                continue;
            }
            placed.Add((lx, ly, lw));
            sb.Append(Ci, $"<text class=\"point-label\" x=\"{lx:0.0}\" y=\"{ly:0.0}\">{H(label)}</text>");
        }
        sb.Append("</svg>");
        return sb.ToString();
    }

    /// <summary>Round tick values (1, 2 or 5 times a power of ten) covering [<paramref name="min"/>, <paramref name="max"/>], about <paramref name="count"/> intervals.</summary>
    internal static double[] NiceTicks(double min, double max, int count)
    {
        if (!(max > min))
        {
            max = min + 1;
        }
        double raw = (max - min) / count;
        double magnitude = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1.0, 2, 5, 10 }.Select(f => f * magnitude).First(s => s >= raw * (1 - 1e-9));
        double start = Math.Floor(min / step + 1e-9) * step, end = Math.Ceiling(max / step - 1e-9) * step;
        int n = (int)Math.Round((end - start) / step);
        return Enumerable.Range(0, n + 1).Select(i => Math.Round(start + i * step, 10)).ToArray();
    }

    /// <summary>As many decimals as the tick step needs (0 for 10, 1 for 0.5, 2 for 0.02).</summary>
    private static string TickFormat(double[] ticks)
    {
        double step = ticks.Length > 1 ? ticks[1] - ticks[0] : 1;
        int decimals = Math.Max(0, (int)Math.Ceiling(-Math.Log10(step) - 1e-9));
        return decimals == 0 ? "0" : "0." + new string('0', decimals);
    }

    private static string Histograms(JsonNode wh)
    {
        const int W = 640, Hh = 240, L = 50, B = 30, T = 10, R = 10;
        double min = D(wh["min"]), max = D(wh["max"]);
        double[] before = wh["before"]!.AsArray().Select(D).ToArray();
        double[] after = wh["after"]!.AsArray().Select(D).ToArray();
        double top = Math.Log10(1 + Math.Max(before.Max(), after.Max()));
        int bins = before.Length;
        double bw = (W - L - R) / (double)bins;
        var sb = new StringBuilder();
        sb.Append(Ci, $"<svg width=\"{W}\" height=\"{Hh}\" viewBox=\"0 0 {W} {Hh}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"11\">");
        sb.Append(Ci, $"<line x1=\"{L}\" y1=\"{Hh - B}\" x2=\"{W - R}\" y2=\"{Hh - B}\" stroke=\"#333\"/>");
        void Bars(double[] counts, string color, double offset)
        {
            for (int i = 0; i < bins; i++)
            {
                double h = top > 0 ? Math.Log10(1 + counts[i]) / top * (Hh - T - B) : 0;
                sb.Append(Ci, $"<rect x=\"{L + i * bw + offset:0.0}\" y=\"{Hh - B - h:0.0}\" width=\"{bw / 2:0.0}\" height=\"{h:0.0}\" fill=\"{color}\"/>");
            }
        }
        Bars(before, "#999", 0);
        Bars(after, "#4a78c2", bw / 2);
        sb.Append(Ci, $"<text x=\"{L}\" y=\"{Hh - 10}\">{min:G3}</text><text x=\"{W - R}\" y=\"{Hh - 10}\" text-anchor=\"end\">{max:G3}</text>");
        sb.Append("</svg>");
        return sb.ToString();
    }

    private static string BarChart(List<(string Label, double Value)> bars)
    {
        const int W = 640, RowH = 22, L = 220, R = 80;
        int h = bars.Count * RowH + 10;
        double max = Math.Max(bars.Max(b => b.Value), 1e-12);
        var sb = new StringBuilder();
        sb.Append(Ci, $"<svg width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"11\">");
        for (int i = 0; i < bars.Count; i++)
        {
            double w = bars[i].Value / max * (W - L - R);
            int y = 5 + i * RowH;
            string label = bars[i].Label.Length > 34 ? "…" + bars[i].Label[^33..] : bars[i].Label;
            sb.Append(Ci, $"<text x=\"{L - 6}\" y=\"{y + 14}\" text-anchor=\"end\">{H(label)}</text>");
            sb.Append(Ci, $"<rect x=\"{L}\" y=\"{y + 3}\" width=\"{w:0.0}\" height=\"{RowH - 6}\" fill=\"#4a78c2\"/>");
            sb.Append(Ci, $"<text x=\"{L + w + 4:0.0}\" y=\"{y + 14}\">{bars[i].Value:G3}</text>");
        }
        sb.Append("</svg>");
        return sb.ToString();
    }

    private static void SkippedTable(StringBuilder sb, JsonNode q)
    {
        sb.AppendLine("<table><tr><th>layer</th><th>op</th><th>reason</th></tr>");
        foreach (JsonNode? n in q["skippedNodes"]!.AsArray())
        {
            sb.AppendLine($"<tr><td>{H(n!["node"]?.ToString())}</td><td>{H(n["opType"]?.ToString())}</td><td>{H(n["reason"]?.ToString())}</td></tr>");
        }
        sb.AppendLine("</table>");
    }

    private static void Row(StringBuilder sb, string name, object? value) =>
        sb.AppendLine($"<tr><th>{H(name)}</th><td>{H(value?.ToString())}</td></tr>");

    private static string H(string? s) => WebUtility.HtmlEncode(s ?? "");

    private static string Escape(string s) => s.Replace("`", "'", StringComparison.Ordinal).Replace("|", "\\|", StringComparison.Ordinal);

    private static string Kb(JsonNode? bytes) => bytes == null ? "-" : (D(bytes) / 1024).ToString("0.0", Ci) + " KB";

    private static string Num(JsonNode? n, string format) => n == null ? "-" : D(n).ToString(format, Ci);

    private static string Num(double n, string format) => n.ToString(format, Ci);

    /// <summary>A JSON number as double, whatever CLR type the node was built from.</summary>
    private static double D(JsonNode? n) => n == null ? double.NaN : double.Parse(n.ToJsonString(), NumberStyles.Float, Ci);

    /// <summary>Writes X.md and X.html next to the report X.json.</summary>
    public static void WriteBeside(string reportPath, JsonNode report)
    {
        string stem = reportPath.EndsWith(".json", StringComparison.OrdinalIgnoreCase) ? reportPath[..^5] : reportPath;
        Core.Onnx.AtomicFile.WriteAllBytes(stem + ".md", Encoding.UTF8.GetBytes(Markdown(report)));
        Core.Onnx.AtomicFile.WriteAllBytes(stem + ".html", Encoding.UTF8.GetBytes(Html(report)));
    }
}
