namespace CompressOnBuild.Validation;

/// <summary>A dense tensor as float values (row-major) with its shape; <see cref="Name"/> when it has one.</summary>
public sealed record TensorData(float[] Data, long[] Shape)
{
    /// <summary>The tensor's name (model input/output or TensorProto name), when known.</summary>
    public string? Name { get; init; }

    /// <summary>Product of the dimensions.</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, d) => a * d);

    /// <summary>"[1,3,224,224]".</summary>
    public string ShapeText => "[" + string.Join(",", Shape) + "]";
}

/// <summary>
/// Validation samples ready to feed a model: per sample one tensor per model input (batch dimension 1 for
/// per-sample sources), optional integer labels and optional reference outputs (ONNX test data sets).
/// </summary>
public sealed class Dataset
{
    private readonly List<TensorData[]>? samples;
    private readonly Func<int, TensorData[]>? decode;
    private readonly List<TensorData[]?>? references;
    private readonly List<string> sampleSources;
    private readonly bool? canBatch;

    internal Dataset(string source, IReadOnlyList<string> inputNames, List<TensorData[]> samples, List<string> sampleSources,
        int[]? labels, List<TensorData[]?>? references)
    {
        Source = source;
        InputNames = inputNames;
        this.samples = samples;
        this.sampleSources = sampleSources;
        Labels = labels;
        this.references = references;
    }

    /// <summary>A data set too large to hold decoded: samples are decoded again on every access.</summary>
    internal Dataset(string source, IReadOnlyList<string> inputNames, Func<int, TensorData[]> decode, List<string> sampleSources,
        int[]? labels, List<TensorData[]?>? references, bool canBatch)
    {
        Source = source;
        InputNames = inputNames;
        this.decode = decode;
        this.sampleSources = sampleSources;
        Labels = labels;
        this.references = references;
        this.canBatch = canBatch;
    }

    /// <summary>True when the samples are held in memory; false when they are decoded on each access (large image sets).</summary>
    public bool IsInMemory => samples != null;

    /// <summary>The data set path it was loaded from.</summary>
    public string Source { get; }

    /// <summary>Model input names, in model order; every sample has one tensor per name.</summary>
    public IReadOnlyList<string> InputNames { get; }

    /// <summary>Number of samples.</summary>
    public int Count => sampleSources.Count;

    /// <summary>Class index per sample, or null when the data set has no labels.</summary>
    public IReadOnlyList<int>? Labels { get; }

    /// <summary>True when some samples carry reference outputs (output_*.pb).</summary>
    public bool HasReferenceOutputs => references != null && references.Any(r => r != null);

    /// <summary>The tensors of sample <paramref name="index"/>, in <see cref="InputNames"/> order.</summary>
    public IReadOnlyList<TensorData> GetSample(int index) => samples != null ? samples[index] : decode!(index);

    /// <summary>Reference outputs of a sample (positional, named as stored), or null.</summary>
    public IReadOnlyList<TensorData>? GetReferenceOutputs(int index) => references?[index];

    /// <summary>The file (or file and record) a sample came from, for messages.</summary>
    public string GetSampleSource(int index) => sampleSources[index];

    /// <summary>True when all samples have leading dimension 1 and equal shapes, so they can be stacked into batches.</summary>
    public bool CanBatch
    {
        get
        {
            if (canBatch is { } known)
            {
                return known;
            }
            if (samples == null || samples.Count == 0)
            {
                return false;
            }
            TensorData[] first = samples[0];
            foreach (TensorData[] s in samples)
            {
                for (int i = 0; i < s.Length; i++)
                {
                    if (s[i].Shape.Length == 0 || s[i].Shape[0] != 1 || !s[i].Shape.AsSpan().SequenceEqual(first[i].Shape))
                    {
                        return false;
                    }
                }
            }
            return true;
        }
    }

    /// <summary>Samples [start, start+count) stacked along dimension 0, one tensor per input. Requires <see cref="CanBatch"/>.</summary>
    public IReadOnlyList<TensorData> GetBatch(int start, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(start);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(start + count, Count);
        if (count == 1)
        {
            return GetSample(start);
        }
        IReadOnlyList<TensorData>[] rows = new IReadOnlyList<TensorData>[count];
        for (int k = 0; k < count; k++)
        {
            rows[k] = GetSample(start + k);
        }
        TensorData[] batch = new TensorData[rows[0].Count];
        for (int i = 0; i < batch.Length; i++)
        {
            int per = rows[0][i].Data.Length;
            float[] data = new float[per * count];
            for (int k = 0; k < count; k++)
            {
                TensorData t = rows[k][i];
                if (t.Data.Length != per)
                {
                    throw new InvalidOperationException("Samples of different shapes cannot be batched.");
                }
                t.Data.CopyTo(data, k * per);
            }
            long[] shape = (long[])rows[0][i].Shape.Clone();
            shape[0] = count;
            batch[i] = new TensorData(data, shape) { Name = InputNames[i] };
        }
        return batch;
    }
}
