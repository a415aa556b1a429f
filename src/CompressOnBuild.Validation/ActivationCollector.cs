using CompressOnBuild.Core;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using Google.Protobuf;

namespace CompressOnBuild.Validation;

/// <summary>
/// Collects intermediate activations for calibration-driven passes (pruning's activation-aware ranking and
/// least-squares reconstruction): the requested tensors are exposed as extra graph outputs of a temporary copy of
/// the model, which ONNX Runtime runs over the first samples of a data set. Values are concatenated along the
/// batch axis (<see cref="Activation.Shape"/>[0] = rows of all runs).
/// </summary>
public static class ActivationCollector
{
    /// <summary>
    /// An <see cref="ActivationSource"/> for <see cref="Pruner.Apply"/> over the first <paramref name="maxSamples"/>
    /// samples of <paramref name="calibration"/> (its input names must match the model's).
    /// </summary>
    /// <param name="workDirectory">Where the temporary model is written; for models with external data, the
    /// directory of the original model so relative data paths resolve. Default: the system temp folder.</param>
    public static ActivationSource Create(Dataset calibration, int maxSamples = 512, ModelRunnerOptions? options = null, string? workDirectory = null)
    {
        ArgumentNullException.ThrowIfNull(calibration);
        return (model, names) => Collect(model, names, calibration, maxSamples, options, workDirectory);
    }

    public static Dictionary<string, Activation> Collect(ModelProto model, IReadOnlyList<string> tensorNames, Dataset data, int maxSamples = 512,
        ModelRunnerOptions? options = null, string? workDirectory = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tensorNames);
        ArgumentNullException.ThrowIfNull(data);
        if (data.Count == 0)
        {
            throw new CompressException(DiagnosticCodes.DataEmpty, data.Source);
        }
        ModelProto copy = model.Clone();
        foreach (string name in tensorNames.Where(n => copy.Graph.Output.All(o => o.Name != n)))
        {
            // Element type only; ORT infers the shape.
            copy.Graph.Output.Add(new ValueInfoProto
            {
                Name = name,
                Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float } },
            });
        }
        string path = Path.Combine(workDirectory ?? Path.GetTempPath(), $"cob-activations-{Environment.ProcessId}-{Guid.NewGuid():N}.onnx");
        File.WriteAllBytes(path, copy.ToByteArray());
        try
        {
            using var runner = new ModelRunner(path, options);
            int[] order = [.. runner.Inputs.Select(i => IndexOf(data.InputNames, i.Name, data.Source))];
            int samples = maxSamples > 0 ? Math.Min(maxSamples, data.Count) : data.Count;
            int batch = runner.HasDynamicBatch && data.CanBatch ? Math.Max(1, runner.Options.BatchSize) : 1;
            var values = tensorNames.ToDictionary(n => n, _ => new List<float>(), StringComparer.Ordinal);
            var shapes = new Dictionary<string, long[]>(StringComparer.Ordinal);
            for (int start = 0; start < samples; start += batch)
            {
                int n = Math.Min(batch, samples - start);
                IReadOnlyList<TensorData> inputs = n == 1 ? data.GetSample(start) : data.GetBatch(start, n);
                TensorData[] outputs = runner.Run([.. order.Select(i => inputs[i])], tensorNames);
                for (int i = 0; i < tensorNames.Count; i++)
                {
                    string name = tensorNames[i];
                    TensorData t = outputs[i];
                    values[name].AddRange(t.Data);
                    if (t.Shape.Length == 0)
                    {
                        throw new CompressException(DiagnosticCodes.DataShape, data.Source, name, "the activation is a scalar; per-feature statistics need a batch axis");
                    }
                    shapes[name] = shapes.TryGetValue(name, out long[]? s) ? [s[0] + t.Shape[0], .. t.Shape[1..]] : t.Shape;
                }
            }
            return tensorNames.ToDictionary(n => n, n => new Activation([.. values[n]], shapes[n]), StringComparer.Ordinal);
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static int IndexOf(IReadOnlyList<string> names, string name, string source)
    {
        for (int i = 0; i < names.Count; i++)
        {
            if (names[i] == name)
            {
                return i;
            }
        }
        throw new CompressException(DiagnosticCodes.DataShape, source, name, "the calibration data has no values for this model input");
    }
}
