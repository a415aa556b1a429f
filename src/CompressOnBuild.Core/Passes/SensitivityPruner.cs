using System.Globalization;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// How much a candidate model's outputs differ from the original's on some data (0 = identical, larger = worse).
/// Sensitivity pruning calls <paramref name="Measure"/> with the model being pruned, in which exactly one layer's
/// weights are temporarily pruned; the callee must not keep or change the model. CompressOnBuild.Validation's
/// SensitivityHarm provides one that runs ONNX Runtime.
/// </summary>
/// <param name="Name">What is measured, for the report (e.g. "mean KL divergence of softmax(output) vs the original").</param>
/// <param name="Samples">Samples it runs on.</param>
/// <param name="Measure">The harm of a candidate model.</param>
public sealed record HarmMeasure(string Name, int Samples, Func<ModelProto, double> Measure)
{
    /// <summary>
    /// Optional, faster path: the harm of the model the measure was built on with the values of one weight initializer
    /// replaced (same shape), on one ONNX Runtime session opened once (no model written per probe); null when that
    /// weight cannot be replaced this way (the caller then uses <see cref="Measure"/>). Valid only while the model being
    /// pruned still equals that model apart from the one weight (the pruner probes before it changes anything).
    /// </summary>
    public Func<string, float[], double?>? MeasureWeight { get; init; }

    /// <summary>
    /// Optional: layer inputs on the same (bounded) samples the harm is measured on, from the model passed in; SparseGPT's
    /// probes build each layer's Hessian from them. Null: the pruner's own activation source is used.
    /// </summary>
    public ActivationSource? Activations { get; init; }

    /// <summary>Optional: frees what the measure holds open (the probe session); the measure still works afterwards.</summary>
    public Action? Release { get; init; }

    /// <summary>
    /// Optional: harms already measured on the same model and data, by scheme, weight and zero count, reused instead of
    /// probing again and added to as probes run. Every probe is the unchanged model with one layer pruned, so its harm
    /// does not depend on which other layers a run prunes or keeps dense: Tune's attempts, which rerun the allocation with
    /// some layers excluded, share one of these (the worker keeps one per item).
    /// </summary>
    public IDictionary<string, double>? Reuse { get; init; }
}

/// <summary>One measurement of a layer pruned alone: its sparsity, zeroed elements and the harm to the model's output.</summary>
public sealed record SensitivityPoint(double Sparsity, long Zeros, double Harm);

/// <summary>A layer's measured harm curve and the sparsity the allocation chose for it.</summary>
/// <param name="Node">Node name (or first output when unnamed).</param>
/// <param name="Weight">The weight tensor.</param>
/// <param name="Elements">Weight elements.</param>
/// <param name="Curve">Harm with only this layer pruned, at each sparsity of the grid (0 at no pruning is implied).</param>
/// <param name="ChosenZeros">Elements set to zero by the allocation.</param>
/// <param name="PredictedHarm">The curve linearly interpolated at <paramref name="ChosenZeros"/>.</param>
public sealed record LayerSensitivity(string Node, string Weight, long Elements, IReadOnlyList<SensitivityPoint> Curve, long ChosenZeros, double PredictedHarm)
{
    public double ChosenSparsity => Elements == 0 ? 0 : (double)ChosenZeros / Elements;
}

/// <summary>What the sensitivity analysis measured and chose (<see cref="PruningMethod.Sensitivity"/>).</summary>
public sealed class SensitivityAnalysis
{
    /// <summary>The harm measure's name (<see cref="HarmMeasure.Name"/>).</summary>
    public required string Measure { get; init; }

    public int Samples { get; init; }

    /// <summary>The requested overall sparsity of the pruned layers.</summary>
    public double TargetSparsity { get; init; }

    /// <summary>Weight elements of the pruned layers together.</summary>
    public long Elements { get; init; }

    /// <summary>round(target x elements): the zeros the allocation places.</summary>
    public long TargetZeros { get; init; }

    /// <summary>Zeros placed (equal to <see cref="TargetZeros"/> unless the layers were already sparser than the target).</summary>
    public long ChosenZeros { get; init; }

    /// <summary>
    /// Sum over layers of the interpolated harm at the sparsities the allocation chose (the allocation assumes harms add
    /// up); after a fallback to uniform it stays the allocation's.
    /// </summary>
    public double PredictedHarm { get; init; }

    /// <summary>The same sum for uniform sparsity (every layer at the target), for comparison.</summary>
    public double UniformPredictedHarm { get; init; }

    /// <summary>Models measured (layers x grid points), those reused from an earlier allocation (<see cref="HarmMeasure.Reuse"/>) included.</summary>
    public int Probes { get; init; }

    /// <summary>Of <see cref="Probes"/>, those taken from an earlier allocation of the same item instead of measured again.</summary>
    public int ReusedProbes { get; init; }

    public double Seconds { get; init; }

    /// <summary>
    /// Per layer, what was measured and chosen; after a fallback to uniform (<see cref="FellBackToUniform"/>) the chosen
    /// zeros are the uniform ones that were applied.
    /// </summary>
    public IReadOnlyList<LayerSensitivity> Layers { get; init; } = [];

    /// <summary>
    /// The harm measured with every layer pruned together as the allocation chose (the curves predict it from one layer at
    /// a time, assuming harms add up); null when not measured.
    /// </summary>
    public double? MeasuredHarm { get; init; }

    /// <summary>The harm measured, on the same samples, with the least harmful uniform candidate (<see cref="UniformCandidate"/>); null when none was measured.</summary>
    public double? UniformMeasuredHarm { get; init; }

    /// <summary>Which uniform sparsity <see cref="UniformMeasuredHarm"/> was measured with (e.g. "every layer at 50%").</summary>
    public string? UniformCandidate { get; init; }

    /// <summary>
    /// True when the allocation did not measure clearly better than uniform sparsity (<see cref="MeasuredHarm"/> above
    /// (1 - <see cref="SensitivityPruner.RequiredGain"/>) x <see cref="UniformMeasuredHarm"/>) and the uniform sparsities
    /// were applied instead.
    /// </summary>
    public bool FellBackToUniform { get; init; }
}

/// <summary>
/// A uniform alternative to the sensitivity allocation: per layer the zeros it places, and how to name it in the report.
/// </summary>
public sealed record UniformCandidate(string Description, long[] Zeros);

/// <summary>
/// Sensitivity-guided unstructured pruning. For every layer alone, at every sparsity g of the grid, the
/// round(g x n) weights of smallest |w| (or activation-aware score) are zeroed and the harm is measured; the layer is
/// then restored. Each layer's curve (removed elements, harm), starting at (already-zero elements, 0), is replaced by
/// its lower convex hull, whose segments have rising harm per removed element. Taking segments of all layers in order
/// of that slope (a Lagrangian sweep: the optimum of the convexified, additive problem), the last one partially,
/// places exactly round(target x total elements) zeros with the least predicted harm. Each layer is then pruned
/// by magnitude to its chosen count, so masks are nested with the measured ones.
/// </summary>
internal static class SensitivityPruner
{
    /// <summary>
    /// The allocation is kept only when it measures at least this fraction less harm than the best uniform candidate: a
    /// smaller gain is within what a different sample of the data could reverse (the harm is a mean over a few samples),
    /// and uniform sparsity is then the plainer, documented choice.
    /// </summary>
    internal const double RequiredGain = 0.02;

    /// <summary>Harm recorded for a candidate whose measure is not finite (e.g. NaN outputs): never preferred.</summary>
    private const double BrokenHarm = 1e30;

    /// <summary>
    /// One probe: the harm of the model with only layer <c>layer</c> pruned to <c>zeros</c> of its units (the callee
    /// applies the pruning, measures and restores the layer before returning).
    /// </summary>
    public delegate double Probe(int layer, long zeros);

    /// <summary>
    /// The one allocation every scheme shares (Magnitude, SparseGPT, and any other that can prune one layer at a given
    /// amount): for every layer alone, at every fraction g of <paramref name="grid"/>, <paramref name="probe"/> measures the
    /// harm of round(g x units) zeros; then <see cref="Allocate(long[], long[], IReadOnlyList{IReadOnlyList{SensitivityPoint}}, long)"/>
    /// places exactly round(<paramref name="target"/> x all units) zeros (units: weight elements, or channels, ...) with
    /// the least predicted harm on the lower convex hulls of the curves. Returns the analysis, whose
    /// <see cref="LayerSensitivity.ChosenZeros"/> the caller applies.
    /// </summary>
    /// <param name="units">Per layer, what the fraction counts (e.g. weight elements).</param>
    /// <param name="start">Per layer, units already pruned (zeros on input): harm 0 there, never fewer chosen.</param>
    /// <param name="scheme">What the probe does (e.g. "magnitude", "sparsegpt:0.01"), the key <see cref="HarmMeasure.Reuse"/> is kept under.</param>
    public static SensitivityAnalysis ChooseSparsities(IReadOnlyList<PrunableLayer> layers, long[] units, long[] start, double target, IReadOnlyList<double> grid,
        HarmMeasure harm, Probe probe, string scheme = "")
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        int probes = 0, reused = 0;
        var curves = new List<SensitivityPoint>[layers.Count];
        for (int i = 0; i < layers.Count; i++)
        {
            curves[i] = [];
            foreach (double s in grid)
            {
                long zeros = (long)Math.Round(s * units[i]);
                if (zeros <= start[i] || curves[i].Any(p => p.Zeros == zeros))
                {
                    continue;
                }
                string key = string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{scheme}|{layers[i].WeightName}|{units[i]}|{zeros}");
                double h;
                if (harm.Reuse != null && harm.Reuse.TryGetValue(key, out double known))
                {
                    h = known;
                    reused++;
                }
                else
                {
                    h = probe(i, zeros);
                    if (harm.Reuse != null)
                    {
                        harm.Reuse[key] = h;
                    }
                }
                probes++;
                curves[i].Add(new SensitivityPoint(s, zeros, double.IsFinite(h) ? h : BrokenHarm));
            }
        }
        long total = units.Sum();
        long targetZeros = (long)Math.Round(target * total);
        long[] chosen = Allocate(units, start, curves, targetZeros);
        var result = new List<LayerSensitivity>();
        double predicted = 0, uniform = 0;
        for (int i = 0; i < layers.Count; i++)
        {
            double h = Interpolate(start[i], curves[i], chosen[i]);
            predicted += h;
            uniform += Interpolate(start[i], curves[i], (long)Math.Round(target * units[i]));
            result.Add(new LayerSensitivity(layers[i].Label, layers[i].WeightName, units[i], curves[i], chosen[i], h));
        }
        return new SensitivityAnalysis
        {
            Measure = harm.Name,
            Samples = harm.Samples,
            TargetSparsity = target,
            Elements = total,
            TargetZeros = targetZeros,
            ChosenZeros = chosen.Sum(),
            PredictedHarm = predicted,
            UniformPredictedHarm = uniform,
            Probes = probes,
            ReusedProbes = reused,
            Seconds = watch.Elapsed.TotalSeconds,
            Layers = result,
        };
    }

    /// <summary>
    /// The harm of the model in <paramref name="g"/> with <paramref name="l"/>'s weight replaced by <paramref name="trial"/>:
    /// through <see cref="HarmMeasure.MeasureWeight"/> (one session) when it takes that weight, else by writing the weight
    /// into the model, measuring it and restoring the original values.
    /// </summary>
    public static double MeasureWith(PassGraph g, PrunableLayer l, float[] trial, HarmMeasure harm)
    {
        if (harm.MeasureWeight?.Invoke(l.WeightName, trial) is double fast)
        {
            return fast;
        }
        PrunableLayers.SetConstant(g, l.WeightName, trial);
        try
        {
            return harm.Measure(g.Model);
        }
        finally
        {
            PrunableLayers.SetConstant(g, l.WeightName, l.Data);
        }
    }

    /// <summary>Zeros already in each layer's weight (their harm is 0).</summary>
    public static long[] ExistingZeros(IReadOnlyList<PrunableLayer> layers) =>
        layers.Select(l => l.Data.Length - PrunableLayers.CountNonzeros(l.Data)).ToArray();

    /// <summary>
    /// Magnitude (or activation-aware) masks: every layer's curve from its own smallest-score weights, then each layer
    /// pruned to its chosen count, so masks are nested with the measured ones.
    /// </summary>
    /// <remarks>
    /// The curves measure one layer at a time and the allocation assumes their harms add up; so the allocation is then
    /// measured with every layer pruned together, next to uniform sparsity (every layer at the target, and each of
    /// <paramref name="uniform"/>), each with exactly the allocation's zeros (per-layer rounding moved onto its most pruned
    /// layer; a candidate further off is not measured), on the same samples. Unless the
    /// allocation measures at least <see cref="RequiredGain"/> less harm than the best of them, that uniform candidate is
    /// applied instead (<see cref="SensitivityAnalysis.FellBackToUniform"/>).
    /// </remarks>
    public static SensitivityAnalysis Run(PassGraph g, List<PrunableLayer> layers, PruningOptions options, HarmMeasure harm, string displayName,
        IReadOnlyList<UniformCandidate>? uniform = null)
    {
        long[] start = ExistingZeros(layers);
        SensitivityAnalysis a = ChooseSparsities(layers, layers.Select(l => (long)l.Data.Length).ToArray(), start, options.Sparsity, options.SensitivityGrid, harm, (i, zeros) =>
        {
            PrunableLayer l = layers[i];
            float[] trial = (float[])l.Data.Clone();
            SparsityMasks.ZeroSmallest([trial], l.Scores == null ? null : [l.Scores], zeros);
            return MeasureWith(g, l, trial, harm);
        }, "magnitude");
        a = CheckAgainstUniform(g, layers, start, a, harm, uniform);
        for (int i = 0; i < layers.Count; i++)
        {
            if (a.Layers[i].ChosenZeros > start[i])
            {
                SparsityMasks.ZeroSmallest([layers[i].Data], layers[i].Scores == null ? null : [layers[i].Scores!], a.Layers[i].ChosenZeros);
            }
        }
        return a;
    }

    /// <summary>
    /// Measures the allocation of <paramref name="a"/> with all layers pruned together and the uniform candidates (every
    /// layer at the target, then <paramref name="extra"/>; each only with the allocation's count of zeros, per-layer
    /// rounding moved onto its most pruned layer), and returns
    /// <paramref name="a"/> with those harms, its chosen zeros replaced by the least harmful uniform candidate's unless
    /// the allocation measures at least <see cref="RequiredGain"/> less. Nothing of the model changes (every layer is restored).
    /// </summary>
    internal static SensitivityAnalysis CheckAgainstUniform(PassGraph g, List<PrunableLayer> layers, long[] start, SensitivityAnalysis a, HarmMeasure harm,
        IReadOnlyList<UniformCandidate>? extra)
    {
        if (layers.Count < 2)
        {
            return a; // one layer: the allocation is the uniform sparsity
        }
        long[] allocated = a.Layers.Select(l => l.ChosenZeros).ToArray();
        var candidates = new List<UniformCandidate>();
        UniformCandidate everyLayer = new(string.Create(CultureInfo.InvariantCulture, $"every layer at {a.TargetSparsity:P1}"),
            layers.Select(l => (long)Math.Round(a.TargetSparsity * l.Data.Length)).ToArray());
        foreach (UniformCandidate c in new[] { everyLayer }.Concat(extra ?? []))
        {
            if (c.Zeros.Length != layers.Count)
            {
                continue;
            }
            long[] zeros = c.Zeros.Select((z, i) => Math.Max(start[i], Math.Min(z, layers[i].Data.Length))).ToArray();
            long off = allocated.Sum() - zeros.Sum();
            if (off != 0 && Math.Abs(off) <= zeros.Length)
            {
                // Per-layer rounding: the difference goes onto the most pruned layer, so the counts are equal.
                int k = Enumerable.Range(0, zeros.Length).MaxBy(i => zeros[i] - start[i]);
                zeros[k] = Math.Clamp(zeros[k] + off, start[k], layers[k].Data.Length);
            }
            if (zeros.Sum() == allocated.Sum() && !zeros.SequenceEqual(allocated) && candidates.All(x => !x.Zeros.SequenceEqual(zeros)))
            {
                candidates.Add(c with { Zeros = zeros });
            }
        }
        if (candidates.Count == 0)
        {
            return a;
        }
        double Together(long[] zeros)
        {
            try
            {
                for (int i = 0; i < layers.Count; i++)
                {
                    PrunableLayer l = layers[i];
                    float[] trial = (float[])l.Data.Clone();
                    if (zeros[i] > start[i])
                    {
                        SparsityMasks.ZeroSmallest([trial], l.Scores == null ? null : [l.Scores], zeros[i]);
                    }
                    PrunableLayers.SetConstant(g, l.WeightName, trial);
                }
                double h = harm.Measure(g.Model);
                return double.IsFinite(h) ? h : BrokenHarm;
            }
            finally
            {
                foreach (PrunableLayer l in layers)
                {
                    PrunableLayers.SetConstant(g, l.WeightName, l.Data);
                }
            }
        }
        var watch = System.Diagnostics.Stopwatch.StartNew();
        double measured = Together(allocated);
        UniformCandidate best = candidates[0];
        double bestHarm = double.PositiveInfinity;
        foreach (UniformCandidate c in candidates)
        {
            double h = Together(c.Zeros);
            if (h < bestHarm)
            {
                (best, bestHarm) = (c, h);
            }
        }
        bool fallBack = measured > (1 - RequiredGain) * bestHarm;
        var result = new SensitivityAnalysis
        {
            Measure = a.Measure, Samples = a.Samples, TargetSparsity = a.TargetSparsity, Elements = a.Elements, TargetZeros = a.TargetZeros,
            ChosenZeros = fallBack ? best.Zeros.Sum() : a.ChosenZeros,
            PredictedHarm = a.PredictedHarm,
            UniformPredictedHarm = a.UniformPredictedHarm,
            Probes = a.Probes,
            ReusedProbes = a.ReusedProbes,
            Seconds = a.Seconds + watch.Elapsed.TotalSeconds,
            Layers = fallBack ? a.Layers.Select((l, i) => l with { ChosenZeros = best.Zeros[i], PredictedHarm = Interpolate(start[i], l.Curve, best.Zeros[i]) }).ToList() : a.Layers,
            MeasuredHarm = measured,
            UniformMeasuredHarm = bestHarm,
            UniformCandidate = best.Description,
            FellBackToUniform = fallBack,
        };
        return result;
    }

    private readonly record struct Segment(int Layer, int Index, long From, long To, double Slope);

    /// <summary>
    /// Zeros per layer (each at least <paramref name="start"/>) summing to <paramref name="target"/> (or to the sum of
    /// <paramref name="start"/> when that is larger) with the least harm on the lower convex hulls of the curves.
    /// </summary>
    internal static long[] Allocate(long[] elements, long[] start, IReadOnlyList<IReadOnlyList<SensitivityPoint>> curves, long target)
    {
        int n = elements.Length;
        long[] chosen = (long[])start.Clone();
        long remaining = target - start.Sum();
        var segments = new List<Segment>();
        var lastSlope = new double[n];
        var top = new long[n];
        for (int i = 0; i < n; i++)
        {
            List<(long X, double H)> hull = LowerHull(start[i], curves[i]);
            for (int k = 1; k < hull.Count; k++)
            {
                double slope = (hull[k].H - hull[k - 1].H) / (hull[k].X - hull[k - 1].X);
                segments.Add(new Segment(i, k, hull[k - 1].X, hull[k].X, slope));
                lastSlope[i] = slope;
            }
            top[i] = hull[^1].X;
        }
        // Cheapest harm per removed element first; per layer the hull's slopes rise, so its segments stay in order.
        segments.Sort((a, b) => a.Slope != b.Slope ? a.Slope.CompareTo(b.Slope) : a.Layer != b.Layer ? a.Layer.CompareTo(b.Layer) : a.Index.CompareTo(b.Index));
        foreach (Segment s in segments)
        {
            if (remaining <= 0)
            {
                break;
            }
            long take = Math.Min(remaining, s.To - s.From);
            chosen[s.Layer] += take;
            remaining -= take;
        }
        // Only reachable when rounding leaves the grid's largest sparsity a few elements short of the target: those
        // elements go to the layers whose last measured slope is smallest, beyond the grid.
        foreach (int i in Enumerable.Range(0, n).OrderBy(i => lastSlope[i]))
        {
            if (remaining <= 0)
            {
                break;
            }
            long take = Math.Min(remaining, elements[i] - Math.Max(top[i], chosen[i]));
            if (take > 0)
            {
                chosen[i] += take;
                remaining -= take;
            }
        }
        return chosen;
    }

    /// <summary>Lower convex hull of (start, 0) and the curve's (zeros, harm) points, by ascending zeros.</summary>
    private static List<(long X, double H)> LowerHull(long start, IReadOnlyList<SensitivityPoint> curve)
    {
        var points = new List<(long X, double H)> { (start, 0) };
        points.AddRange(curve.Select(p => (p.Zeros, p.Harm)).OrderBy(p => p.Zeros));
        var hull = new List<(long X, double H)>();
        foreach ((long X, double H) p in points)
        {
            while (hull.Count >= 2)
            {
                (long X, double H) a = hull[^2], b = hull[^1];
                double cross = (double)(b.X - a.X) * (p.H - a.H) - (b.H - a.H) * (p.X - a.X);
                if (cross > 0)
                {
                    break;
                }
                hull.RemoveAt(hull.Count - 1);
            }
            hull.Add(p);
        }
        return hull;
    }

    /// <summary>The measured curve (with (start, 0)) linearly interpolated at <paramref name="zeros"/>; the last slope beyond it.</summary>
    private static double Interpolate(long start, IReadOnlyList<SensitivityPoint> curve, long zeros)
    {
        var points = new List<(long X, double H)> { (start, 0) };
        points.AddRange(curve.Select(p => (p.Zeros, p.Harm)).OrderBy(p => p.Zeros));
        if (zeros <= start)
        {
            return 0;
        }
        for (int k = 1; k < points.Count; k++)
        {
            if (zeros <= points[k].X || k == points.Count - 1)
            {
                (long x0, double h0) = points[k - 1];
                (long x1, double h1) = points[k];
                return h0 + (h1 - h0) * (zeros - x0) / (x1 - x0);
            }
        }
        return 0;
    }
}
