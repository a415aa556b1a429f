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

    /// <summary>Sum over layers of the interpolated harm at the chosen sparsities (the allocation assumes harms add up).</summary>
    public double PredictedHarm { get; init; }

    /// <summary>The same sum for uniform sparsity (every layer at the target), for comparison.</summary>
    public double UniformPredictedHarm { get; init; }

    /// <summary>Models measured (layers x grid points).</summary>
    public int Probes { get; init; }

    public double Seconds { get; init; }

    public IReadOnlyList<LayerSensitivity> Layers { get; init; } = [];
}

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
    public static SensitivityAnalysis ChooseSparsities(IReadOnlyList<PrunableLayer> layers, long[] units, long[] start, double target, IReadOnlyList<double> grid,
        HarmMeasure harm, Probe probe)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        int probes = 0;
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
                double h = probe(i, zeros);
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
    public static SensitivityAnalysis Run(PassGraph g, List<PrunableLayer> layers, PruningOptions options, HarmMeasure harm, string displayName)
    {
        long[] start = ExistingZeros(layers);
        SensitivityAnalysis a = ChooseSparsities(layers, layers.Select(l => (long)l.Data.Length).ToArray(), start, options.Sparsity, options.SensitivityGrid, harm, (i, zeros) =>
        {
            PrunableLayer l = layers[i];
            float[] trial = (float[])l.Data.Clone();
            SparsityMasks.ZeroSmallest([trial], l.Scores == null ? null : [l.Scores], zeros);
            return MeasureWith(g, l, trial, harm);
        });
        for (int i = 0; i < layers.Count; i++)
        {
            if (a.Layers[i].ChosenZeros > start[i])
            {
                SparsityMasks.ZeroSmallest([layers[i].Data], layers[i].Scores == null ? null : [layers[i].Scores!], a.Layers[i].ChosenZeros);
            }
        }
        return a;
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
