using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Tests.Passes;
using CompressOnBuild.Onnx;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;

namespace CompressOnBuild.Core.Tests.Pruning;

/// <summary>
/// An <see cref="ActivationSource"/> for the tests: runs the first <c>samples</c> test images of a corpus model in ORT
/// with the requested tensors exposed as extra graph outputs (what CompressOnBuild.Validation's ActivationCollector
/// does for the worker; Core tests do not reference Validation).
/// </summary>
internal static class TestActivations
{
    public static ActivationSource Corpus(string id, int samples) => (model, names) =>
    {
        (float[] images, _) = CorpusEval.Data(id);
        int batch = Math.Min(CorpusEval.Spec(id).Batch, samples);
        return Run(model, names, images, samples, batch, CorpusEval.ShapeFor(id));
    };

    /// <summary>
    /// <paramref name="samples"/> evenly spaced test images of a corpus model (indices floor(i x count / samples)), as the
    /// CLI picks --calibration-samples.
    /// </summary>
    public static float[] EvenlySpacedImages(string id, int samples)
    {
        (float[] images, _) = CorpusEval.Data(id);
        int count = images.Length / 784;
        var picked = new float[samples * 784];
        for (int i = 0; i < samples; i++)
        {
            images.AsSpan((int)((long)i * count / samples) * 784, 784).CopyTo(picked.AsSpan(i * 784));
        }
        return picked;
    }

    /// <summary>Activations of the <see cref="EvenlySpacedImages"/>.</summary>
    public static ActivationSource EvenlySpaced(string id, int samples) => (model, names) =>
        Run(model, names, EvenlySpacedImages(id, samples), samples, Math.Min(CorpusEval.Spec(id).Batch, samples), CorpusEval.ShapeFor(id));

    public static Dictionary<string, Activation> Run(ModelProto model, IReadOnlyList<string> names, float[] inputs, int samples, int batch, Func<int, long[]> shapeFor)
    {
        ModelProto copy = model.Clone();
        foreach (string name in names.Where(n => copy.Graph.Output.All(o => o.Name != n)))
        {
            copy.Graph.Output.Add(new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float } } });
        }
        using var options = new SessionOptions { IntraOpNumThreads = 2 };
        using var session = new InferenceSession(copy.ToByteArray(), options);
        string input = session.InputNames[0];
        int perSample = (int)shapeFor(1).Aggregate(1L, (a, d) => a * d);
        var data = names.ToDictionary(n => n, _ => new List<float>());
        var shapes = new Dictionary<string, long[]>();
        for (int start = 0; start < samples; start += batch)
        {
            int b = Math.Min(batch, samples - start);
            float[] chunk = inputs.AsSpan(start * perSample, b * perSample).ToArray();
            using OrtValue value = OrtValue.CreateTensorValueFromMemory(chunk, shapeFor(b));
            using var run = new RunOptions();
            using IDisposableReadOnlyCollection<OrtValue> outputs = session.Run(run, [input], [value], [.. names]);
            for (int i = 0; i < names.Count; i++)
            {
                data[names[i]].AddRange(outputs[i].GetTensorDataAsSpan<float>().ToArray());
                long[] shape = outputs[i].GetTensorTypeAndShape().Shape;
                shapes[names[i]] = shapes.TryGetValue(names[i], out long[]? s) ? [s[0] + shape[0], .. shape[1..]] : shape;
            }
        }
        return names.ToDictionary(n => n, n => new Activation([.. data[n]], shapes[n]));
    }
}
