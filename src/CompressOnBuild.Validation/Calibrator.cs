using System.Globalization;
using CompressOnBuild.Core;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using Google.Protobuf;

namespace CompressOnBuild.Validation;

/// <summary>How activation ranges are derived from the observed values.</summary>
public enum CalibrationMethod
{
    /// <summary>The smallest and largest value seen.</summary>
    MinMax = 0,

    /// <summary>The <see cref="CalibrationOptions.Percentile"/>-th and (100 - it)-th percentiles from a histogram: ignores rare outliers.</summary>
    Percentile = 1,

    /// <summary>
    /// The range, shrunk from min..max toward zero in 1% steps, that minimizes the expected squared uint8
    /// quantization error over the histogram (clipping error outside, step^2/12 inside).
    /// </summary>
    Mse = 2,

    /// <summary>
    /// The range whose 255-level uint8 quantization loses the least information: the clipped range (shrunk toward
    /// zero in 0.5% steps) minimizing the Kullback-Leibler divergence between the observed histogram, with the
    /// clipped tails folded into the edge bins, and that histogram quantized to 255 levels (the entropy calibration
    /// NVIDIA described for TensorRT, here over the asymmetric uint8 range the quantizer uses).
    /// </summary>
    Entropy = 3,
}

/// <summary>Settings for <see cref="Calibrator"/>.</summary>
public sealed class CalibrationOptions
{
    public CalibrationMethod Method { get; init; } = CalibrationMethod.MinMax;

    /// <summary>For <see cref="CalibrationMethod.Percentile"/>: the upper percentile (default 99.99; the lower is 100 minus it).</summary>
    public double Percentile { get; init; } = 99.99;

    /// <summary>Samples used (an evenly spread subset); default 256, 0 = all.</summary>
    public int MaxSamples { get; init; } = 256;

    /// <summary>
    /// Histogram bins per tensor for <see cref="CalibrationMethod.Percentile"/> and <see cref="CalibrationMethod.Mse"/>.
    /// Default 2048. <see cref="CalibrationMethod.Entropy"/> uses at least <see cref="EntropyBins"/>.
    /// </summary>
    public int Bins { get; init; } = 2048;

    public int IntraOpThreads { get; init; } = 1;

    /// <summary>Minimum histogram bins for <see cref="CalibrationMethod.Entropy"/>: 16 bins per uint8 level at the full range.</summary>
    public const int EntropyBins = 16 * 255;

    /// <summary>
    /// Reads the option syntax <c>MinMax</c> | <c>Percentile[:&lt;p in (50, 100]&gt;]</c> | <c>Mse</c> | <c>Entropy</c>
    /// (case-insensitive); <paramref name="canonical"/> is the one spelling of it (<c>Percentile:99.99</c> with the
    /// default filled in), which the CLI reports, caches by and hands back here.
    /// </summary>
    public static bool TryParseMethod(string text, out CalibrationMethod method, out double percentile, out string canonical)
    {
        ArgumentNullException.ThrowIfNull(text);
        percentile = 99.99;
        string[] parts = text.Split(':', StringSplitOptions.TrimEntries);
        (method, bool ok) = parts[0].ToUpperInvariant() switch
        {
            "MINMAX" => (CalibrationMethod.MinMax, parts.Length == 1),
            "MSE" => (CalibrationMethod.Mse, parts.Length == 1),
            "ENTROPY" => (CalibrationMethod.Entropy, parts.Length == 1),
            "PERCENTILE" => (CalibrationMethod.Percentile, parts.Length == 1
                || (parts.Length == 2 && double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out percentile) && percentile > 50 && percentile <= 100)),
            _ => (CalibrationMethod.MinMax, false),
        };
        canonical = method == CalibrationMethod.Percentile ? "Percentile:" + percentile.ToString(CultureInfo.InvariantCulture) : method.ToString();
        return ok;
    }
}

/// <summary>
/// Collects activation ranges for static quantization: runs the float model in ONNX Runtime (optimizations off, so
/// every tensor exists as in the file) with the tensors of interest added as extra graph outputs, over a subset of
/// a <see cref="Dataset"/>. Percentile ranges take a second pass that fills a histogram spanning each tensor's
/// min..max.
/// </summary>
public static class Calibrator
{
    /// <summary>Ranges of <paramref name="tensors"/> (e.g. <see cref="Int8StaticQuantizer.TensorsToCalibrate"/>) over <paramref name="data"/>.</summary>
    /// <exception cref="CompressException">CMPR0305 for an empty data set, CMPR0303 when the data misses a model input,
    /// CMPR0003 for bad options, CMPR0402 when ORT fails, CMPR0404 when an activation is NaN or infinite.</exception>
    public static CalibrationResult Run(ModelProto model, Dataset data, IReadOnlyCollection<string> tensors, CalibrationOptions? options = null, string displayName = "model")
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tensors);
        return Run(() => (model, tensors), data, options, displayName);
    }

    /// <summary>
    /// <see cref="Run(ModelProto, Dataset, IReadOnlyCollection{string}, CalibrationOptions?, string)"/> for a model the
    /// caller does not keep: <paramref name="load"/> gives the model and the tensors to calibrate, the model is written
    /// with those tensors as outputs and dropped before ONNX Runtime loads the file, so no parsed copy is held while
    /// the session is created and run.
    /// </summary>
    public static CalibrationResult Run(Func<(ModelProto Model, IReadOnlyCollection<string> Tensors)> load, Dataset data, CalibrationOptions? options = null,
        string displayName = "model")
    {
        ArgumentNullException.ThrowIfNull(load);
        ArgumentNullException.ThrowIfNull(data);
        options ??= new CalibrationOptions();
        CheckOptions(options, displayName);
        if (data.Count == 0)
        {
            throw CompressException.ForFile(data.Source, DiagnosticCodes.DataEmpty, data.Source);
        }
        string dir = Path.Combine(Path.GetTempPath(), "cob-calibrate-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, "model.onnx");
        try
        {
            string[] names = WriteCalibrationModel(load, path);
            if (names.Length == 0)
            {
                return new CalibrationResult { Ranges = new Dictionary<string, TensorRange>(), Method = MethodName(options), Samples = 0 };
            }
            // The parsed model is garbage now (it lived only in WriteCalibrationModel's frame): give it back before ORT loads.
            Core.IO.ProcessMemory.Release();
            using var runner = new ModelRunner(path, new ModelRunnerOptions { IntraOpThreads = options.IntraOpThreads, Optimization = GraphOptimization.Disabled });
            return Measure(runner, names, data, options, displayName);
        }
        finally
        {
            try
            {
                Directory.Delete(dir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    /// <summary>
    /// Ranges of <paramref name="tensors"/> measured on the model file <paramref name="modelPath"/> itself, whose tensors
    /// may be external data (a model too big to parse whole): the .onnx file is copied into <paramref name="workDirectory"/>
    /// with those tensors appended as outputs (protobuf merges the repeated field), and ONNX Runtime reads the weights from
    /// the model's own folder (<see cref="ModelRunnerOptions.ExternalDataFolder"/>); nothing of the model is parsed or held
    /// here. <paramref name="data"/> loads the data set once the session's inputs are known. Same errors as
    /// <see cref="Run(ModelProto, Dataset, IReadOnlyCollection{string}, CalibrationOptions?, string)"/>.
    /// <paramref name="existingOutputs"/> are the model's own outputs (not added twice).
    /// </summary>
    public static CalibrationResult RunOnFile(string modelPath, IReadOnlyCollection<string> existingOutputs, IReadOnlyCollection<string> tensors, Func<ModelInputs, Dataset> data,
        CalibrationOptions? options, string displayName, string workDirectory)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        ArgumentNullException.ThrowIfNull(existingOutputs);
        ArgumentNullException.ThrowIfNull(tensors);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(workDirectory);
        options ??= new CalibrationOptions();
        CheckOptions(options, displayName);
        string[] names = tensors.Distinct(StringComparer.Ordinal).ToArray();
        if (names.Length == 0)
        {
            return new CalibrationResult { Ranges = new Dictionary<string, TensorRange>(), Method = MethodName(options), Samples = 0 };
        }
        string full = Path.GetFullPath(modelPath);
        string path = Path.Combine(workDirectory, $"cob-calibrate-{Environment.ProcessId}-{Guid.NewGuid():N}.onnx");
        try
        {
            using (var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
            {
                using (var source = new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan))
                {
                    source.CopyTo(file);
                }
                OutputsOnly(names.Where(n => !existingOutputs.Contains(n))).WriteTo(file);
            }
            using var runner = new ModelRunner(path, new ModelRunnerOptions
            {
                IntraOpThreads = options.IntraOpThreads, Optimization = GraphOptimization.Disabled, ExternalDataFolder = Path.GetDirectoryName(full),
            });
            Dataset on = data(runner.Inputs);
            if (on.Count == 0)
            {
                throw CompressException.ForFile(on.Source, DiagnosticCodes.DataEmpty, on.Source);
            }
            return Measure(runner, names, on, options, displayName);
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static void CheckOptions(CalibrationOptions options, string displayName)
    {
        if (options.Method == CalibrationMethod.Percentile && !(options.Percentile > 50 && options.Percentile <= 100))
        {
            throw new CompressException(DiagnosticCodes.InvalidOption, displayName, "CalibrationPercentile", options.Percentile.ToString(CultureInfo.InvariantCulture), "it must be above 50 and at most 100");
        }
        if (options.Bins < 16)
        {
            throw new CompressException(DiagnosticCodes.InvalidOption, displayName, "CalibrationBins", options.Bins, "at least 16 bins are needed");
        }
    }

    /// <summary>A model holding only graph outputs for <paramref name="names"/> (float; ORT infers the shapes), written after a model to add them.</summary>
    private static ModelProto OutputsOnly(IEnumerable<string> names)
    {
        var extra = new ModelProto { Graph = new GraphProto() };
        foreach (string name in names)
        {
            extra.Graph.Output.Add(new ValueInfoProto
            {
                Name = name,
                Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float } },
            });
        }
        return extra;
    }

    /// <summary>Runs the calibration session over the data subset and derives each tensor's range.</summary>
    private static CalibrationResult Measure(ModelRunner runner, string[] names, Dataset data, CalibrationOptions options, string displayName)
    {
        int[] order = InputOrder(runner.Inputs, data);
        int[] indices = DatasetLoader.SubsetIndices(data.Count, options.MaxSamples);
        var min = new float[names.Length];
        var max = new float[names.Length];
        Array.Fill(min, float.PositiveInfinity);
        Array.Fill(max, float.NegativeInfinity);
        foreach (int index in indices)
        {
            TensorData[] outputs = RunSample(runner, data, index, order, names);
            for (int t = 0; t < names.Length; t++)
            {
                ReadOnlySpan<float> v = outputs[t].Data;
                if (v.Length == 0)
                {
                    continue;
                }
                if (!Kernels.TensorStats.AllFinite(v))
                {
                    throw CompressException.ForFile(displayName, DiagnosticCodes.NonFiniteOutputs, displayName, names[t], data.GetSampleSource(index));
                }
                Kernels.MinMaxResult range = Kernels.TensorStats.MinMax(v);
                min[t] = MathF.Min(min[t], range.Min);
                max[t] = MathF.Max(max[t], range.Max);
            }
        }
        if (options.Method is CalibrationMethod.Percentile or CalibrationMethod.Mse or CalibrationMethod.Entropy)
        {
            int bins = options.Method == CalibrationMethod.Entropy ? Math.Max(options.Bins, CalibrationOptions.EntropyBins) : options.Bins;
            var histograms = new long[names.Length][];
            var zeros = new long[names.Length];
            for (int t = 0; t < names.Length; t++)
            {
                histograms[t] = new long[bins];
            }
            foreach (int index in indices)
            {
                TensorData[] outputs = RunSample(runner, data, index, order, names);
                for (int t = 0; t < names.Length; t++)
                {
                    Fill(histograms[t], outputs[t].Data, min[t], max[t]);
                    if (options.Method == CalibrationMethod.Entropy)
                    {
                        zeros[t] += Kernels.Sparsity.CountZeros(outputs[t].Data);
                    }
                }
            }
            for (int t = 0; t < names.Length; t++)
            {
                (min[t], max[t]) = options.Method switch
                {
                    CalibrationMethod.Mse => MseRange(histograms[t], min[t], max[t]),
                    CalibrationMethod.Entropy => EntropyRange(histograms[t], min[t], max[t], zeros[t]),
                    _ => PercentileRange(histograms[t], min[t], max[t], options.Percentile),
                };
            }
        }
        var ranges = new Dictionary<string, TensorRange>(StringComparer.Ordinal);
        for (int t = 0; t < names.Length; t++)
        {
            if (min[t] <= max[t])
            {
                ranges[names[t]] = new TensorRange(min[t], max[t]);
            }
        }
        return new CalibrationResult { Ranges = ranges, Method = MethodName(options), Samples = indices.Length };
    }

    /// <summary>Writes the model of <paramref name="load"/> with its tensors to calibrate as extra outputs (the model is
    /// not copied: the added outputs are written after it, which protobuf merges into its graph); returns the tensor names.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static string[] WriteCalibrationModel(Func<(ModelProto Model, IReadOnlyCollection<string> Tensors)> load, string path)
    {
        (ModelProto model, IReadOnlyCollection<string> tensors) = load();
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tensors);
        string[] names = tensors.Distinct(StringComparer.Ordinal).ToArray();
        if (names.Length == 0)
        {
            return names;
        }
        var existing = new HashSet<string>(model.Graph.Output.Select(o => o.Name), StringComparer.Ordinal);
        ModelProto extra = OutputsOnly(names.Where(n => !existing.Contains(n)));
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
        model.WriteTo(file); // streamed: no second in-memory copy of the model
        extra.WriteTo(file); // protobuf merges a repeated message field: these outputs are appended to the graph's
        return names;
    }

    private static string MethodName(CalibrationOptions o) => o.Method switch
    {
        CalibrationMethod.Percentile => "Percentile " + o.Percentile.ToString(CultureInfo.InvariantCulture),
        CalibrationMethod.Mse => "MSE",
        CalibrationMethod.Entropy => "Entropy",
        _ => "MinMax",
    };

    /// <summary>
    /// The clipped range [f x min, f x max] (zero kept inside, as the quantizer widens to it) whose uint8
    /// quantization best preserves the histogram's distribution: for each candidate f from 1 down in 0.5% steps, while
    /// the range still spans at least <paramref name="levels"/> bins, the divergence between what the clipped
    /// quantizer sees and what it can represent (see <see cref="ClippedKl"/>); the f with the smallest KL(P || Q)
    /// wins (ties: the widest). <paramref name="exactZeros"/> values that were exactly 0 (ReLU outputs, padding)
    /// are taken out of zero's bin first: the quantizer represents 0 exactly, and left in, that spike would make the
    /// divergence favour ranges so narrow that zero's bin sits alone in its level. Returns (min, max) unchanged for
    /// an empty or constant histogram, or when the histogram has too few bins for the levels.
    /// </summary>
    internal static (float Low, float High) EntropyRange(long[] histogram, float min, float max, long exactZeros = 0, int levels = 255)
    {
        int bins = histogram.Length;
        if (max > min && exactZeros > 0 && min <= 0 && max >= 0)
        {
            histogram = (long[])histogram.Clone();
            int zeroBin = Kernels.Histogram.BinOf(0f, min, max, bins);
            histogram[zeroBin] = Math.Max(0, histogram[zeroBin] - exactZeros);
        }
        long total = 0;
        foreach (long c in histogram)
        {
            total += c;
        }
        if (max <= min || total == 0 || bins < levels || levels < 2)
        {
            return (min, max);
        }
        double width = (max - (double)min) / bins;
        // Zero's position in bin units, clamped to the histogram: the range shrinks toward it from both sides.
        double zero = Math.Clamp(-min / width, 0, bins);
        var prefix = new long[bins + 1];
        for (int b = 0; b < bins; b++)
        {
            prefix[b + 1] = prefix[b] + histogram[b];
        }
        var p = new double[bins];
        double bestKl = double.PositiveInfinity;
        (int Lo, int Hi) best = (0, bins);
        for (int step = 0; step <= 199; step++)
        {
            double f = 1.0 - step * 0.005;
            int lo = (int)Math.Round(zero - f * zero);
            int hi = (int)Math.Round(zero + f * (bins - zero));
            lo = Math.Clamp(lo, 0, bins);
            hi = Math.Clamp(hi, lo, bins);
            int k = hi - lo;
            if (k < levels)
            {
                break;
            }
            double kl = ClippedKl(histogram, prefix, lo, hi, levels, p);
            if (kl < bestKl - 1e-12)
            {
                bestKl = kl;
                best = (lo, hi);
            }
        }
        float low = (float)(min + best.Lo * width);
        float high = (float)(min + best.Hi * width);
        return (best.Lo == 0 ? min : low, best.Hi == bins ? max : high);
    }

    /// <summary>
    /// KL(P || Q) for the bins [lo, hi) of the histogram. P: those bins with the mass outside added to the first and
    /// last bin (what the clipped quantizer sees). Q: the same bins without the clipped mass, merged into
    /// <paramref name="levels"/> equal groups and spread back evenly over the bins where P is nonzero, so Q misses
    /// the clipped mass: clipping costs divergence at the edges, coarse levels cost it inside. Both are normalized;
    /// a bin where P has mass and Q has none gets a small floor instead of an infinite term.
    /// </summary>
    private static double ClippedKl(long[] histogram, long[] prefix, int lo, int hi, int levels, double[] p)
    {
        int k = hi - lo;
        for (int b = 0; b < k; b++)
        {
            p[b] = histogram[lo + b];
        }
        p[0] += prefix[lo];
        p[k - 1] += prefix[^1] - prefix[hi];
        double pTotal = prefix[^1];
        double qTotal = prefix[hi] - prefix[lo];
        if (qTotal <= 0)
        {
            return double.PositiveInfinity;
        }
        const double Floor = 1e-6;
        double kl = 0;
        for (int g = 0; g < levels; g++)
        {
            int start = (int)((long)g * k / levels);
            int end = (int)((long)(g + 1) * k / levels);
            long mass = prefix[lo + end] - prefix[lo + start];
            int nonzero = 0;
            for (int b = start; b < end; b++)
            {
                if (p[b] > 0)
                {
                    nonzero++;
                }
            }
            if (nonzero == 0)
            {
                continue;
            }
            double q = Math.Max(mass / (double)nonzero / qTotal, Floor / k);
            for (int b = start; b < end; b++)
            {
                if (p[b] > 0)
                {
                    double pb = p[b] / pTotal;
                    kl += pb * Math.Log(pb / q);
                }
            }
        }
        return kl;
    }

    /// <summary>
    /// [f*min, f*max] for the f in 0.01..1 that minimizes sum over bins of count x error, where error is the
    /// distance to the range for bin centres outside it and step^2/12 (uniform rounding) inside, step = range/255
    /// after widening to include zero, as the quantizer does.
    /// </summary>
    internal static (float Low, float High) MseRange(long[] histogram, float min, float max)
    {
        if (max <= min || histogram.Sum() == 0)
        {
            return (min, max);
        }
        int bins = histogram.Length;
        double width = (max - (double)min) / bins;
        double bestError = double.PositiveInfinity;
        double bestF = 1;
        for (int i = 100; i >= 1; i--)
        {
            double f = i / 100.0;
            double lo = Math.Min(0, min * f), hi = Math.Max(0, max * f);
            double step = (hi - lo) / 255.0;
            double inside = step * step / 12.0;
            double error = 0;
            for (int b = 0; b < bins; b++)
            {
                if (histogram[b] == 0)
                {
                    continue;
                }
                double v = min + (b + 0.5) * width;
                double e = v < lo ? (v - lo) * (v - lo) : v > hi ? (v - hi) * (v - hi) : inside;
                error += histogram[b] * e;
            }
            if (error < bestError)
            {
                bestError = error;
                bestF = f;
            }
        }
        return ((float)(min * bestF), (float)(max * bestF));
    }

    private static int[] InputOrder(ModelInputs inputs, Dataset data)
    {
        var order = new int[inputs.Count];
        for (int i = 0; i < inputs.Count; i++)
        {
            order[i] = -1;
            for (int j = 0; j < data.InputNames.Count; j++)
            {
                if (data.InputNames[j] == inputs[i].Name)
                {
                    order[i] = j;
                }
            }
            if (order[i] < 0)
            {
                throw CompressException.ForFile(data.Source, DiagnosticCodes.DataShape, data.Source, inputs[i].Name, "the data set has no tensor for this input");
            }
        }
        return order;
    }

    private static TensorData[] RunSample(ModelRunner runner, Dataset data, int index, int[] order, string[] names)
    {
        IReadOnlyList<TensorData> sample = data.GetSample(index);
        return runner.Run([.. order.Select(j => sample[j])], names);
    }

    /// <summary>Adds the values to a histogram of equal bins spanning [min, max].</summary>
    internal static void Fill(long[] histogram, ReadOnlySpan<float> values, float min, float max)
    {
        if (max > min && float.IsFinite(min) && float.IsFinite(max))
        {
            // The shared vectorized kernel (values outside [min, max] land in the edge bins; activations were checked finite).
            Kernels.Histogram.Accumulate(values, min, max, histogram);
        }
        else
        {
            // A constant tensor: everything in one bin.
            histogram[0] += values.Length;
        }
    }

    /// <summary>The values below which (100 - p)% and p% of the histogram's mass lie (bin edges, clamped to [min, max]).</summary>
    internal static (float Low, float High) PercentileRange(long[] histogram, float min, float max, double percentile)
    {
        long total = histogram.Sum();
        if (total == 0 || max <= min)
        {
            return (min, max);
        }
        int bins = histogram.Length;
        double width = (max - (double)min) / bins;
        double tail = total * (100.0 - percentile) / 100.0;
        long seen = 0;
        int lowBin = 0;
        while (lowBin < bins - 1 && seen + histogram[lowBin] <= tail)
        {
            seen += histogram[lowBin];
            lowBin++;
        }
        seen = 0;
        int highBin = bins - 1;
        while (highBin > 0 && seen + histogram[highBin] <= tail)
        {
            seen += histogram[highBin];
            highBin--;
        }
        float low = (float)(min + lowBin * width);
        float high = (float)(min + (highBin + 1) * width);
        return (MathF.Max(min, low), MathF.Min(max, MathF.Max(low, high)));
    }
}
