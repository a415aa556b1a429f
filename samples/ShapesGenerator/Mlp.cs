using System.Numerics;
using System.Runtime.InteropServices;

namespace CompressOnBuild.Samples.Shapes;

/// <summary>A 784-H-C multilayer perceptron with ReLU, trained with minibatch SGD with momentum on softmax
/// cross-entropy. Weights are stored as ONNX Gemm expects them with transB = 0: W1 [784, H], W2 [H, C].</summary>
public sealed class Mlp
{
    public Mlp(int inputs, int hidden, int classes, int seed)
    {
        Inputs = inputs;
        Hidden = hidden;
        Classes = classes;
        W1 = new float[inputs * hidden];
        B1 = new float[hidden];
        W2 = new float[hidden * classes];
        B2 = new float[classes];
        var rng = new Random(seed);
        Init(W1, Math.Sqrt(2.0 / inputs), rng);
        Init(W2, Math.Sqrt(2.0 / hidden), rng);
    }

    public int Inputs { get; }

    public int Hidden { get; }

    public int Classes { get; }

    public float[] W1 { get; }

    public float[] B1 { get; }

    public float[] W2 { get; }

    public float[] B2 { get; }

    /// <summary>Trains on <paramref name="x"/> (count x Inputs, values in [0, 1]) with labels <paramref name="y"/>.</summary>
    public void Train(float[] x, int[] y, int epochs, int batchSize, float learningRate, int seed, Action<int, double>? onEpoch = null)
    {
        int count = y.Length;
        var order = Enumerable.Range(0, count).ToArray();
        var rng = new Random(seed);
        var gW1 = new float[W1.Length];
        var gB1 = new float[B1.Length];
        var gW2 = new float[W2.Length];
        var gB2 = new float[B2.Length];
        var vW1 = new float[W1.Length];
        var vB1 = new float[B1.Length];
        var vW2 = new float[W2.Length];
        var vB2 = new float[B2.Length];
        var hidden = new float[Hidden];
        var logits = new float[Classes];
        var dHidden = new float[Hidden];
        const float momentum = 0.9f;

        for (int epoch = 0; epoch < epochs; epoch++)
        {
            rng.Shuffle(order);
            double loss = 0;
            float lr = learningRate * (1 - 0.5f * epoch / Math.Max(1, epochs));
            for (int start = 0; start < count; start += batchSize)
            {
                int end = Math.Min(count, start + batchSize);
                Array.Clear(gW1);
                Array.Clear(gB1);
                Array.Clear(gW2);
                Array.Clear(gB2);
                for (int b = start; b < end; b++)
                {
                    int n = order[b];
                    ReadOnlySpan<float> sample = x.AsSpan(n * Inputs, Inputs);
                    Forward(sample, hidden, logits);
                    loss += SoftmaxInPlace(logits, y[n]);
                    // dLoss/dLogits = softmax - onehot.
                    logits[y[n]] -= 1;
                    for (int h = 0; h < Hidden; h++)
                    {
                        float sum = 0;
                        for (int c = 0; c < Classes; c++)
                        {
                            gW2[h * Classes + c] += hidden[h] * logits[c];
                            sum += W2[h * Classes + c] * logits[c];
                        }
                        dHidden[h] = hidden[h] > 0 ? sum : 0;
                    }
                    for (int c = 0; c < Classes; c++)
                    {
                        gB2[c] += logits[c];
                    }
                    Add(gB1, dHidden, 1);
                    for (int i = 0; i < Inputs; i++)
                    {
                        float xi = sample[i];
                        if (xi != 0)
                        {
                            Add(gW1.AsSpan(i * Hidden, Hidden), dHidden, xi);
                        }
                    }
                }
                float scale = -lr / (end - start);
                Step(W1, vW1, gW1, scale, momentum);
                Step(B1, vB1, gB1, scale, momentum);
                Step(W2, vW2, gW2, scale, momentum);
                Step(B2, vB2, gB2, scale, momentum);
            }
            onEpoch?.Invoke(epoch + 1, loss / count);
        }
    }

    public int Predict(ReadOnlySpan<float> sample)
    {
        var hidden = new float[Hidden];
        var logits = new float[Classes];
        Forward(sample, hidden, logits);
        int best = 0;
        for (int c = 1; c < Classes; c++)
        {
            if (logits[c] > logits[best])
            {
                best = c;
            }
        }
        return best;
    }

    public double Accuracy(float[] x, int[] y)
    {
        int correct = 0;
        for (int n = 0; n < y.Length; n++)
        {
            if (Predict(x.AsSpan(n * Inputs, Inputs)) == y[n])
            {
                correct++;
            }
        }
        return (double)correct / y.Length;
    }

    private void Forward(ReadOnlySpan<float> sample, Span<float> hidden, Span<float> logits)
    {
        B1.CopyTo(hidden);
        for (int i = 0; i < Inputs; i++)
        {
            float xi = sample[i];
            if (xi != 0)
            {
                Add(hidden, W1.AsSpan(i * Hidden, Hidden), xi);
            }
        }
        for (int h = 0; h < Hidden; h++)
        {
            hidden[h] = Math.Max(0, hidden[h]);
        }
        B2.CopyTo(logits);
        for (int h = 0; h < Hidden; h++)
        {
            for (int c = 0; c < Classes; c++)
            {
                logits[c] += hidden[h] * W2[h * Classes + c];
            }
        }
    }

    /// <summary>Turns logits into probabilities and returns the cross-entropy of <paramref name="label"/>.</summary>
    private static double SoftmaxInPlace(Span<float> logits, int label)
    {
        float max = float.MinValue;
        foreach (float v in logits)
        {
            max = Math.Max(max, v);
        }
        float sum = 0;
        for (int c = 0; c < logits.Length; c++)
        {
            logits[c] = MathF.Exp(logits[c] - max);
            sum += logits[c];
        }
        for (int c = 0; c < logits.Length; c++)
        {
            logits[c] /= sum;
        }
        return -Math.Log(Math.Max(logits[label], 1e-12f));
    }

    /// <summary>target += source * factor, vectorized.</summary>
    private static void Add(Span<float> target, ReadOnlySpan<float> source, float factor)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && target.Length >= Vector<float>.Count)
        {
            Span<Vector<float>> t = MemoryMarshal.Cast<float, Vector<float>>(target);
            ReadOnlySpan<Vector<float>> s = MemoryMarshal.Cast<float, Vector<float>>(source);
            var f = new Vector<float>(factor);
            for (int v = 0; v < t.Length; v++)
            {
                t[v] += s[v] * f;
            }
            i = t.Length * Vector<float>.Count;
        }
        for (; i < target.Length; i++)
        {
            target[i] += source[i] * factor;
        }
    }

    private static void Step(float[] weights, float[] velocity, float[] gradient, float scale, float momentum)
    {
        for (int i = 0; i < weights.Length; i++)
        {
            velocity[i] = momentum * velocity[i] + scale * gradient[i];
            weights[i] += velocity[i];
        }
    }

    private static void Init(float[] weights, double std, Random rng)
    {
        for (int i = 0; i < weights.Length; i++)
        {
            double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
            weights[i] = (float)(std * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
    }
}
