namespace CompressOnBuild.Validation;

/// <summary>
/// A deterministic stand-in data set for models without ValidationData: uniform [0, 1) values for every input
/// (dynamic dimensions taken as 1). Good for agreement-type checks (the same inputs go to both models); it has no labels.
/// </summary>
public static class RandomInputs
{
    public static Dataset Create(ModelInputs inputs, int samples, int seed)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        var rng = new Random(seed);
        var all = new List<TensorData[]>(samples);
        var sources = new List<string>(samples);
        for (int s = 0; s < samples; s++)
        {
            var tensors = new TensorData[inputs.Count];
            for (int i = 0; i < inputs.Count; i++)
            {
                TensorInfo info = inputs[i];
                long[] shape = info.Shape.Select(d => d < 0 ? 1 : d).ToArray();
                long count = shape.Aggregate(1L, (a, d) => checked(a * d));
                var data = new float[count];
                for (long k = 0; k < count; k++)
                {
                    data[k] = info.ElementType is TensorElementType.UInt8 ? rng.Next(256) : (float)rng.NextDouble();
                }
                tensors[i] = new TensorData(data, shape) { Name = info.Name };
            }
            all.Add(tensors);
            sources.Add($"random sample {s} (seed {seed})");
        }
        return new Dataset("random inputs", inputs.Select(i => i.Name).ToList(), all, sources, labels: null, references: null);
    }
}
