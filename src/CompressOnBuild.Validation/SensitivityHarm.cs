using CompressOnBuild.Core;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using Google.Protobuf;

namespace CompressOnBuild.Validation;

/// <summary>
/// The label-free <see cref="HarmMeasure"/> behind sensitivity pruning: the original model's primary output (its first
/// numeric output) is computed once on the data; a candidate is written to a temporary file, run in ONNX Runtime on the
/// same samples, and its harm is the mean over samples of KL(softmax(original) || softmax(candidate)), the softmax taken
/// over all of one sample's output values (natural log; for a classifier that is its class axis). Outputs with one value per sample use the mean squared difference divided by the mean
/// square of the original instead.
/// </summary>
public static class SensitivityHarm
{
    /// <param name="original">The unchanged model, already open.</param>
    /// <param name="data">Inputs to measure on (labels, if any, are not used).</param>
    /// <param name="options">Session settings for the candidates.</param>
    /// <param name="workDirectory">Where candidates are written (for models with external data: the original model's
    /// folder, so relative data paths resolve). Default: the system temp folder.</param>
    public static HarmMeasure Create(ModelRunner original, Dataset data, ModelRunnerOptions? options = null, string? workDirectory = null)
    {
        ArgumentNullException.ThrowIfNull(original);
        ArgumentNullException.ThrowIfNull(data);
        if (data.Count == 0)
        {
            throw CompressException.ForFile(data.Source, DiagnosticCodes.DataEmpty, data.Source);
        }
        string output = original.Outputs.FirstOrDefault(o => o.ElementType != TensorElementType.Other)?.Name
            ?? throw CompressException.ForFile(original.ModelPath, DiagnosticCodes.OutputMismatch, original.ModelPath, "(first output)", "not a numeric tensor", "sensitivity");
        float[][] reference = [.. original.RunDataset(data, [output]).Outputs.Select(o => o[0].Data)];
        int bad = Array.FindIndex(reference, r => r.Any(v => !float.IsFinite(v)));
        if (bad >= 0)
        {
            throw CompressException.ForFile(original.ModelPath, DiagnosticCodes.NonFiniteOutputs, original.ModelPath, output, data.GetSampleSource(bad));
        }
        bool kl = reference.All(r => r.Length > 1);
        double meanSquare = kl ? 0 : reference.Average(r => r.Average(v => (double)v * v));
        string name = kl
            ? $"mean KL divergence of softmax('{output}') vs the original"
            : $"mean squared difference of '{output}' / mean square of the original";
        return new HarmMeasure(name, data.Count, candidate =>
        {
            string path = Path.Combine(workDirectory ?? Path.GetTempPath(), $"cob-sensitivity-{Environment.ProcessId}-{Guid.NewGuid():N}.onnx");
            File.WriteAllBytes(path, candidate.ToByteArray());
            try
            {
                using var runner = new ModelRunner(path, options);
                IReadOnlyList<TensorData[]> outputs = runner.RunDataset(data, [output]).Outputs;
                double sum = 0;
                for (int s = 0; s < reference.Length; s++)
                {
                    float[] a = reference[s], b = outputs[s][0].Data;
                    if (a.Length != b.Length)
                    {
                        throw CompressException.ForFile(path, DiagnosticCodes.OutputMismatch, path, output, $"{b.Length} values where the original has {a.Length}", "sensitivity");
                    }
                    sum += kl ? KlDivergence(a, b) : SquaredDifference(a, b) / Math.Max(meanSquare * a.Length, 1e-30);
                }
                return sum / reference.Length;
            }
            finally
            {
                File.Delete(path);
            }
        });
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
