using CompressOnBuild.Onnx;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;

namespace CompressOnBuild.Core.Tests.Passes;

/// <summary>Runs models in ONNX Runtime for the pass tests (a float input, the first float output).</summary>
internal sealed class Ort : IDisposable
{
    private readonly InferenceSession _session;
    private readonly string _input;
    private readonly string _output;

    public Ort(ModelProto model, GraphOptimizationLevel level = GraphOptimizationLevel.ORT_ENABLE_ALL, string? optimizedPath = null, int threads = 1)
    {
        using var options = new SessionOptions { GraphOptimizationLevel = level, IntraOpNumThreads = threads, InterOpNumThreads = 1 };
        if (optimizedPath != null)
        {
            options.OptimizedModelFilePath = optimizedPath;
        }
        _session = new InferenceSession(model.ToByteArray(), options);
        _input = _session.InputNames[0];
        _output = _session.OutputNames[0];
    }

    /// <summary>Runs one input of the given shape; returns the first output's elements.</summary>
    public float[] Run(float[] input, long[] shape)
    {
        using OrtValue value = OrtValue.CreateTensorValueFromMemory(input, shape);
        using var runOptions = new RunOptions();
        using IDisposableReadOnlyCollection<OrtValue> outputs = _session.Run(runOptions, [_input], [value], [_output]);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }

    /// <summary>Top-1 class per row of <paramref name="images"/> ([count, 784] pixels already preprocessed).</summary>
    public int[] Classify(float[] images, int count, int batch, Func<int, long[]> shapeForBatch)
    {
        var result = new int[count];
        for (int start = 0; start < count; start += batch)
        {
            int b = Math.Min(batch, count - start);
            float[] chunk = images.AsSpan(start * 784, b * 784).ToArray();
            float[] logits = Run(chunk, shapeForBatch(b));
            int classes = logits.Length / b;
            for (int i = 0; i < b; i++)
            {
                ReadOnlySpan<float> row = logits.AsSpan(i * classes, classes);
                int best = 0;
                for (int c = 1; c < classes; c++)
                {
                    if (row[c] > row[best])
                    {
                        best = c;
                    }
                }
                result[start + i] = best;
            }
        }
        return result;
    }

    /// <summary>Op types of the model ORT wrote to <paramref name="optimizedPath"/>.</summary>
    public static List<string> OptimizedOps(ModelProto model, string optimizedPath, GraphOptimizationLevel level)
    {
        using (new Ort(model, level, optimizedPath))
        {
        }
        ModelProto optimized = ModelProto.Parser.ParseFrom(File.ReadAllBytes(optimizedPath));
        return optimized.Graph.Node.Select(n => n.OpType).ToList();
    }

    public void Dispose() => _session.Dispose();
}

/// <summary>MNIST-format IDX files (big-endian header, then bytes).</summary>
internal static class Idx
{
    public static (byte[] Pixels, int Count) ReadImages(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        Assert.AreEqual(0x803, BigEndian(bytes, 0), $"{path}: not an idx3-ubyte file");
        int count = BigEndian(bytes, 4);
        int rows = BigEndian(bytes, 8), cols = BigEndian(bytes, 12);
        Assert.AreEqual(784, rows * cols);
        Assert.AreEqual(16 + count * 784, bytes.Length);
        return (bytes[16..], count);
    }

    public static byte[] ReadLabels(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        Assert.AreEqual(0x801, BigEndian(bytes, 0), $"{path}: not an idx1-ubyte file");
        int count = BigEndian(bytes, 4);
        Assert.AreEqual(8 + count, bytes.Length);
        return bytes[8..];
    }

    private static int BigEndian(byte[] b, int offset) => System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(b.AsSpan(offset));
}
