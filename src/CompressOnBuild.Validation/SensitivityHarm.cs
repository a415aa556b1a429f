using CompressOnBuild.Core;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using Google.Protobuf;

namespace CompressOnBuild.Validation;

/// <summary>
/// The label-free <see cref="HarmMeasure"/> behind sensitivity pruning: the original model's numeric outputs are computed
/// once on the data; a candidate is written to a temporary file, run in ONNX Runtime on the same samples, and its harm is
/// the mean over samples and outputs of each output's harm (every output counts: a layer that feeds only a second output,
/// e.g. a transformer's pooler, is not free to prune because the first output does not see it): KL(softmax(original) ||
/// softmax(candidate)), the softmax taken over all of one sample's output values (natural log; for a classifier that is
/// its class axis). Outputs with one value
/// per sample, and outputs with more than one axis besides the batch (token or spatial maps: [1, tokens, features], where
/// one softmax over every value would be dominated by a few large ones), use the squared difference divided by the
/// original's mean square instead (relative squared error); on text data with an attention mask, a token output's
/// padding rows are left out of both. With several outputs, every output's harm includes its relative squared error,
/// and the KL is added to it: the KL depends on the output's scale (over values bounded to a small range, e.g. a tanh
/// pooler's [-1, 1], the softmax is nearly uniform and the KL stays near zero however much the output changes), so on
/// its own it would make such an output free to prune next to another output measured by its relative error; the
/// relative squared error is scale-free, so summed outputs weigh alike. A single output keeps the KL alone.
/// With <c>model</c> and <c>weights</c>, the measure also has a <see cref="HarmMeasure.MeasureWeight"/> that replaces one
/// weight at a time on one session (the weights become overridable initializers of a probe copy), so no model is written
/// or loaded per probe.
/// </summary>
public static class SensitivityHarm
{
    /// <param name="original">The unchanged model, already open.</param>
    /// <param name="data">Inputs to measure on (labels, if any, are not used).</param>
    /// <param name="options">Session settings for the candidates.</param>
    /// <param name="workDirectory">Where candidates are written (for models with external data: the original model's
    /// folder, so relative data paths resolve). Default: the system temp folder.</param>
    /// <param name="model">The parsed model <paramref name="original"/> runs, for the one-session probes (with <paramref name="weights"/>).</param>
    /// <param name="weights">Float initializers the probes may replace (the prunable layers' weights).</param>
    public static HarmMeasure Create(ModelRunner original, Dataset data, ModelRunnerOptions? options = null, string? workDirectory = null,
        ModelProto? model = null, IReadOnlyCollection<string>? weights = null)
    {
        ArgumentNullException.ThrowIfNull(original);
        ArgumentNullException.ThrowIfNull(data);
        if (data.Count == 0)
        {
            throw CompressException.ForFile(data.Source, DiagnosticCodes.DataEmpty, data.Source);
        }
        string[] output = [.. original.Outputs.Where(o => o.ElementType != TensorElementType.Other).Select(o => o.Name)];
        if (output.Length == 0)
        {
            throw CompressException.ForFile(original.ModelPath, DiagnosticCodes.OutputMismatch, original.ModelPath, "(first output)", "not a numeric tensor", "sensitivity");
        }
        // reference[sample][output]
        IReadOnlyList<TensorData[]> referenceOutputs = original.RunDataset(data, output).Outputs;
        float[][][] reference = [.. referenceOutputs.Select(o => o.Select(t => t.Data).ToArray())];
        // Token outputs ([1, tokens, ...]) of data with an attention mask ([1, tokens]): only the real tokens' rows count,
        // padding positions' values are not part of what the model computes for the sample (rows[sample][output], null: all).
        int maskInput = ActivationCollector.MaskInput(data.InputNames);
        bool[]?[][] rows = [.. referenceOutputs.Select((outs, s) => outs.Select(t => TokenRows(maskInput >= 0 ? data.GetSample(s)[maskInput] : null, t)).ToArray())];
        // The reference's real-token values, taken once: every probe compares against them.
        float[][][] keptReference = [.. reference.Select((r, s) => r.Select((values, o) => rows[s][o] is { } keep ? Kept(values, keep) : values).ToArray())];
        var kl = new bool[output.Length];
        // With several outputs each one's harm includes its (scale-free) relative squared error, so the outputs weigh alike.
        bool relative = output.Length > 1;
        var meanSquare = new double[output.Length];
        for (int o = 0; o < output.Length; o++)
        {
            int bad = Array.FindIndex(reference, r => r[o].Any(v => !float.IsFinite(v)));
            if (bad >= 0)
            {
                throw CompressException.ForFile(original.ModelPath, DiagnosticCodes.NonFiniteOutputs, original.ModelPath, output[o], data.GetSampleSource(bad));
            }
            kl[o] = reference.All(r => r[o].Length > 1) && original.Outputs.First(x => x.Name == output[o]).Shape is not { Count: > 2 };
            meanSquare[o] = kl[o] && !relative ? 0 : keptReference.Average(r => r[o].Length == 0 ? 0 : r[o].Average(x => (double)x * x));
        }
        string[] parts = [.. output.Select((n, o) => kl[o]
            ? $"KL divergence of softmax('{n}') vs the original" + (relative ? " + squared difference / mean square of the original" : "")
            : $"squared difference of '{n}' / mean square of the original")];
        string name = parts.Length == 1 ? "mean " + parts[0] : $"mean over the {parts.Length} outputs of: {string.Join("; ", parts)}";
        double Harm(IReadOnlyList<TensorData[]> outputs, string path)
        {
            double sum = 0;
            for (int s = 0; s < reference.Length; s++)
            {
                for (int o = 0; o < output.Length; o++)
                {
                    float[] a = reference[s][o], b = outputs[s][o].Data;
                    if (a.Length != b.Length)
                    {
                        throw CompressException.ForFile(path, DiagnosticCodes.OutputMismatch, path, output[o], $"{b.Length} values where the original has {a.Length}", "sensitivity");
                    }
                    if (kl[o])
                    {
                        sum += KlDivergence(a, b);
                    }
                    if (!kl[o] || relative)
                    {
                        float[] kept = keptReference[s][o];
                        sum += SquaredDifference(kept, rows[s][o] is { } keep ? Kept(b, keep) : b) / Math.Max(meanSquare[o] * kept.Length, 1e-30);
                    }
                }
            }
            return sum / ((double)reference.Length * output.Length);
        }
        (Func<string, float[], double?> Measure, Action Release)? probe = model?.Graph != null && weights is { Count: > 0 }
            ? ProbeSession(original, data, model, weights, output, options, workDirectory, Harm) : null;
        return new HarmMeasure(name, data.Count, candidate =>
        {
            string path = Path.Combine(workDirectory ?? Path.GetTempPath(), $"cob-sensitivity-{Environment.ProcessId}-{Guid.NewGuid():N}.onnx");
            File.WriteAllBytes(path, candidate.ToByteArray());
            try
            {
                using var runner = new ModelRunner(path, options);
                return Harm(runner.RunDataset(data, output).Outputs, path);
            }
            finally
            {
                File.Delete(path);
            }
        }) { MeasureWeight = probe?.Measure, Release = probe?.Release };
    }

    /// <summary>
    /// One session on a copy of <paramref name="model"/> whose <paramref name="weights"/> (float initializers) are also
    /// graph inputs, so each probe feeds one replaced weight; opened on first use and kept for the measure's lifetime
    /// (its file is deleted once open). Null for a weight it does not know or of another size (the caller writes a model).
    /// </summary>
    private static (Func<string, float[], double?> Measure, Action Release) ProbeSession(ModelRunner original, Dataset data, ModelProto model, IReadOnlyCollection<string> weights,
        string[] output, ModelRunnerOptions? options, string? workDirectory, Func<IReadOnlyList<TensorData[]>, string, double> harm)
    {
        var shapes = new Dictionary<string, long[]>(StringComparer.Ordinal);
        var wanted = new HashSet<string>(weights, StringComparer.Ordinal);
        var initializers = new HashSet<string>(model.Graph.Initializer.Select(t => t.Name), StringComparer.Ordinal);
        foreach (TensorProto t in model.Graph.Initializer)
        {
            if (wanted.Contains(t.Name) && t.DataType == (int)TensorProto.Types.DataType.Float)
            {
                shapes[t.Name] = [.. t.Dims];
            }
        }
        ModelRunner? runner = null;
        IReadOnlyList<TensorData>[]? samples = null;
        void Release()
        {
            runner?.Dispose();
            runner = null;
            samples = null;
        }
        return ((weight, values) =>
        {
            if (!shapes.TryGetValue(weight, out long[]? dims) || dims.Aggregate(1L, (a, d) => a * d) != values.Length)
            {
                return null;
            }
            if (runner == null)
            {
                string path = Path.Combine(workDirectory ?? Path.GetTempPath(), $"cob-sensitivity-{Environment.ProcessId}-{Guid.NewGuid():N}.onnx");
                // The probe copy's inputs: the real inputs, then the probed weights. ONNX Runtime lets a run replace an
                // initializer only if it is also a graph input and the model's IR version is 4 or later; below IR 4 every
                // initializer must be an input and ORT treats them all as constants (none overridable, so every probe
                // would write a model). The copy is therefore raised to IR 4 (IR 4 only dropped that rule), and the other
                // initializers are taken out of its inputs, so ORT still folds them as constants.
                List<ValueInfoProto> savedInputs = [.. model.Graph.Input];
                long savedIr = model.IrVersion;
                try
                {
                    model.Graph.Input.Clear();
                    model.Graph.Input.AddRange(savedInputs.Where(i => !initializers.Contains(i.Name)));
                    foreach ((string n, long[] d) in shapes)
                    {
                        var vi = new ValueInfoProto { Name = n, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float, Shape = new TensorShapeProto() } } };
                        vi.Type.TensorType.Shape.Dim.AddRange(d.Select(x => new TensorShapeProto.Types.Dimension { DimValue = x }));
                        model.Graph.Input.Add(vi);
                    }
                    model.IrVersion = Math.Max(savedIr, 4);
                    using (FileStream f = File.Create(path))
                    {
                        model.WriteTo(f);
                    }
                }
                finally
                {
                    model.Graph.Input.Clear();
                    model.Graph.Input.AddRange(savedInputs);
                    model.IrVersion = savedIr;
                }
                try
                {
                    runner = new ModelRunner(path, options);
                }
                finally
                {
                    File.Delete(path);
                }
                samples = [.. Enumerable.Range(0, data.Count).Select(i => original.SampleFor(data, i))];
                // What ONNX Runtime actually lets a run replace (its optimizer may have folded or renamed some).
                foreach (string n in shapes.Keys.Where(n => !runner.OverridableInitializers.Contains(n)).ToList())
                {
                    shapes.Remove(n);
                }
                if (!shapes.ContainsKey(weight))
                {
                    return null;
                }
            }
            var feed = new TensorData(values, dims) { Name = weight };
            var outputs = new TensorData[samples!.Length][];
            try
            {
                for (int s = 0; s < samples.Length; s++)
                {
                    outputs[s] = runner.RunWithInitializers(samples[s], output, [feed]);
                }
            }
            catch (CompressException e) when (e.Code is DiagnosticCodes.OrtRunFailed or DiagnosticCodes.SourceRejectedByOrt)
            {
                // The shortcut is an optimization only: when ONNX Runtime will not take the replaced weight, every later
                // probe writes its model instead (the plain path, which measures the same thing).
                shapes.Clear();
                return null;
            }
            return harm(outputs, runner.ModelPath);
        }, Release);
    }

    /// <summary>
    /// Which token rows of <paramref name="output"/> ([1, tokens, ...]) are real tokens by <paramref name="mask"/>
    /// ([1, tokens], 0 at padding); null when the shapes do not match that or every row is real or none is.
    /// </summary>
    internal static bool[]? TokenRows(TensorData? mask, TensorData output)
    {
        if (mask is not { Shape: [1, long tokens] } || output.Shape.Length < 3 || output.Shape[0] != 1 || output.Shape[1] != tokens || mask.Data.Length != tokens)
        {
            return null;
        }
        bool[] keep = [.. mask.Data.Select(v => v != 0f)];
        return keep.All(k => k) || !keep.Any(k => k) ? null : keep;
    }

    /// <summary>The values of the rows <paramref name="keep"/> marks, in order.</summary>
    private static float[] Kept(float[] values, bool[] keep)
    {
        int width = values.Length / keep.Length;
        var kept = new float[keep.Count(k => k) * width];
        for (int r = 0, at = 0; r < keep.Length; r++)
        {
            if (keep[r])
            {
                values.AsSpan(r * width, width).CopyTo(kept.AsSpan(at));
                at += width;
            }
        }
        return kept;
    }

    /// <summary>KL(softmax(p) || softmax(q)) over all values (one sample's output); NaN when q has non-finite values.</summary>
    public static double KlDivergence(ReadOnlySpan<float> p, ReadOnlySpan<float> q)
    {
        double maxP = double.NegativeInfinity, maxQ = double.NegativeInfinity;
        for (int i = 0; i < p.Length; i++)
        {
            maxP = Math.Max(maxP, p[i]);
            maxQ = Math.Max(maxQ, q[i]);
        }
        double sumP = 0, sumQ = 0;
        for (int i = 0; i < p.Length; i++)
        {
            sumP += Math.Exp(p[i] - maxP);
            sumQ += Math.Exp(q[i] - maxQ);
        }
        double logZp = maxP + Math.Log(sumP), logZq = maxQ + Math.Log(sumQ);
        double kl = 0;
        for (int i = 0; i < p.Length; i++)
        {
            double logP = p[i] - logZp, logQ = q[i] - logZq;
            kl += Math.Exp(logP) * (logP - logQ);
        }
        return Math.Max(0, kl);
    }

    private static double SquaredDifference(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double sum = 0;
        for (int i = 0; i < a.Length; i++)
        {
            double d = (double)a[i] - b[i];
            sum += d * d;
        }
        return sum;
    }
}
