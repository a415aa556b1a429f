using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace CompressOnBuild.Core.Tests.Onnx;

/// <summary>Runs a model in ONNX Runtime on deterministic random inputs (float32, float16 or bool) and returns every output as float32.</summary>
internal static class OrtHelper
{
    public static Dictionary<string, float[]> RunRandom(string modelPath, int seed = 7) =>
        RunRandom(new InferenceSession(modelPath), seed);

    public static Dictionary<string, float[]> RunRandom(byte[] modelBytes, int seed = 7) =>
        RunRandom(new InferenceSession(modelBytes), seed);

    private static Dictionary<string, float[]> RunRandom(InferenceSession session, int seed)
    {
        using (session)
        {
            var rng = new Random(seed);
            var inputs = new List<NamedOnnxValue>();
            foreach ((string name, NodeMetadata meta) in session.InputMetadata)
            {
                int[] dims = meta.Dimensions.Select(d => d <= 0 ? 1 : d).ToArray();
                int count = dims.Aggregate(1, (a, b) => a * b);
                if (meta.ElementType == typeof(bool))
                {
                    var data = new bool[count];
                    for (int i = 0; i < count; i++)
                    {
                        data[i] = rng.Next(2) == 1;
                    }
                    inputs.Add(NamedOnnxValue.CreateFromTensor(name, new DenseTensor<bool>(data, dims)));
                }
                else if (meta.ElementType == typeof(Float16))
                {
                    var data = new Float16[count];
                    for (int i = 0; i < count; i++)
                    {
                        data[i] = (Float16)(float)rng.NextDouble();
                    }
                    inputs.Add(NamedOnnxValue.CreateFromTensor(name, new DenseTensor<Float16>(data, dims)));
                }
                else
                {
                    var data = new float[count];
                    for (int i = 0; i < count; i++)
                    {
                        data[i] = (float)rng.NextDouble();
                    }
                    inputs.Add(NamedOnnxValue.CreateFromTensor(name, new DenseTensor<float>(data, dims)));
                }
            }
            using IDisposableReadOnlyCollection<DisposableNamedOnnxValue> results = session.Run(inputs);
            var outputs = new Dictionary<string, float[]>(StringComparer.Ordinal);
            foreach (DisposableNamedOnnxValue r in results)
            {
                outputs[r.Name] = r.Value switch
                {
                    Tensor<float> f => f.ToArray(),
                    Tensor<Float16> h => h.ToArray().Select(x => (float)x).ToArray(),
                    _ => throw new InvalidOperationException("unexpected output type " + r.Value?.GetType()),
                };
            }
            return outputs;
        }
    }
}
