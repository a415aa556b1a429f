using System.Numerics.Tensors;

namespace CompressOnBuild.Validation;

/// <summary>How the primary output is judged.</summary>
public enum OutputKind
{
    /// <summary>Chosen from the output's shape and name (see <see cref="EmbeddingMetrics.Choose"/>).</summary>
    Auto,
    /// <summary>Class scores: top-1 accuracy and agreement.</summary>
    Classification,
    /// <summary>Embedding or feature vectors (per token: mean-pooled): cosine, nearest-neighbour agreement, similarity rank correlation.</summary>
    Embedding,
}

/// <summary>Original against compressed embeddings (one vector per sample; per-token outputs mean-pooled first).</summary>
public sealed class EmbeddingMetrics
{
    /// <summary>A sample's nearest neighbour counts as clear when its cosine beats the second nearest by at least this
    /// much in the original model; below it, any perturbation may flip the tie and the agreement measures noise.</summary>
    public const double ClearMargin = 0.02;

    /// <summary>At most this many samples (evenly spaced) enter the pairwise metrics (their cost grows with the square).</summary>
    public const int MaxPairwiseSamples = 2000;

    /// <summary>How each sample's output became one vector, e.g. "mean over attention_mask tokens".</summary>
    public required string Pooling { get; init; }

    /// <summary>Mean over samples of the cosine between original and compressed (pooled) embeddings.</summary>
    public required double MeanCosine { get; init; }

    /// <summary>Smallest such cosine.</summary>
    public required double MinCosine { get; init; }

    /// <summary>Samples in the pairwise metrics (all, or an evenly spaced subset of <see cref="MaxPairwiseSamples"/>).</summary>
    public required int PairwiseSamples { get; init; }

    /// <summary>Samples whose nearest other sample is clear in the original (margin &gt;= <see cref="ClearMargin"/>).</summary>
    public required int ClearNeighborSamples { get; init; }

    /// <summary>Fraction of the clear samples whose nearest other sample is the same in both models; null when none is clear.</summary>
    public double? NeighborAgreement { get; init; }

    /// <summary>Fraction of all pairwise samples whose nearest other sample is the same (ties included: noisy).</summary>
    public double? NeighborAgreementAll { get; init; }

    /// <summary>Spearman rank correlation of all pairwise cosine similarities, original against compressed; null below 3 samples.</summary>
    public double? SimilarityCorrelation { get; init; }

    /// <summary>
    /// The kind used for an output: the user's choice, else classification when the data has labels, else embedding for a
    /// per-token output [batch, tokens, dim], a vector with unit trailing dimensions ([1, 512, 1, 1]) or an output named
    /// like an embedding/feature/pooled output, unless its values are probabilities (non-negative, summing to 1: a
    /// softmax); else classification. Returns the kind and why.
    /// </summary>
    public static (OutputKind Kind, string Reason) Choose(OutputKind requested, string outputName, IReadOnlyList<long> shape, bool hasLabels,
        bool isProbabilities = false)
    {
        ArgumentNullException.ThrowIfNull(outputName);
        ArgumentNullException.ThrowIfNull(shape);
        if (requested != OutputKind.Auto)
        {
            return (requested, "set by Metric");
        }
        if (hasLabels)
        {
            return (OutputKind.Classification, "the data has labels");
        }
        string text = "[" + string.Join(",", shape) + "]";
        if (isProbabilities)
        {
            return (OutputKind.Classification, $"output {text} holds probabilities (non-negative, summing to 1)");
        }
        int nonUnit = shape.Skip(1).Count(d => d != 1);
        if (shape.Count == 3 && shape[1] > 1 && shape[2] > 1)
        {
            return (OutputKind.Embedding, $"output {text} is per token");
        }
        if (shape.Count >= 3 && nonUnit == 1)
        {
            return (OutputKind.Embedding, $"output {text} is a feature vector");
        }
        string name = outputName.ToLowerInvariant();
        if (shape.Count == 2 && (name.Contains("embed", StringComparison.Ordinal) || name.Contains("feature", StringComparison.Ordinal)
            || name.Contains("pool", StringComparison.Ordinal)))
        {
            return (OutputKind.Embedding, $"output '{outputName}' {text} is named as an embedding");
        }
        return (OutputKind.Classification, $"output {text} is scores per class");
    }

    /// <summary>True when <paramref name="values"/> are non-negative and sum to 1 (within 1e-3): a softmax output.</summary>
    public static bool IsProbabilities(ReadOnlySpan<float> values)
    {
        if (values.Length < 2 || TensorPrimitives.Min(values) < 0)
        {
            return false;
        }
        return Math.Abs(TensorPrimitives.Sum(values) - 1) <= 1e-3;
    }

    /// <summary>One vector per sample: per-token outputs [1, tokens, dim] are averaged over the tokens whose
    /// <paramref name="mask"/> value is non-zero (all tokens without a mask); anything else is used flattened.</summary>
    public static float[] Pool(TensorData output, float[]? mask)
    {
        ArgumentNullException.ThrowIfNull(output);
        long[] s = output.Shape;
        if (s.Length != 3 || s[0] != 1 || s[1] <= 1)
        {
            return output.Data;
        }
        int tokens = (int)s[1], dim = (int)s[2];
        bool useMask = mask != null && mask.Length == tokens;
        float[] pooled = new float[dim];
        int count = 0;
        for (int t = 0; t < tokens; t++)
        {
            if (useMask && mask![t] == 0)
            {
                continue;
            }
            TensorPrimitives.Add(pooled, output.Data.AsSpan(t * dim, dim), pooled);
            count++;
        }
        if (count > 0)
        {
            TensorPrimitives.Divide(pooled, count, pooled);
        }
        return pooled;
    }

    /// <summary>Compares pooled embeddings <paramref name="a"/> (original) and <paramref name="b"/> (compressed), one per sample.</summary>
    public static EmbeddingMetrics Compare(IReadOnlyList<float[]> a, IReadOnlyList<float[]> b, string pooling)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (a.Count != b.Count || a.Count == 0)
        {
            throw new ArgumentException("Both models need the same, non-zero number of embeddings.", nameof(b));
        }
        int n = a.Count;
        double sum = 0, min = double.MaxValue;
        for (int i = 0; i < n; i++)
        {
            double c = Cosine(a[i], b[i]);
            sum += c;
            min = Math.Min(min, c);
        }
        int[] subset = DatasetLoader.SubsetIndices(n, MaxPairwiseSamples);
        int m = subset.Length;
        if (m < 3)
        {
            return new EmbeddingMetrics { Pooling = pooling, MeanCosine = sum / n, MinCosine = min, PairwiseSamples = m, ClearNeighborSamples = 0 };
        }
        float[][] ua = [.. subset.Select(i => Normalized(a[i]))];
        float[][] ub = [.. subset.Select(i => Normalized(b[i]))];
        long pairs = (long)m * (m - 1) / 2;
        // Each similarity is a float (the dot product of float vectors), so float arrays hold them exactly: half the
        // memory of doubles (2,000 samples: 2 x 8 MB instead of 2 x 16 MB), the same values and ranks.
        float[] simA = new float[pairs];
        float[] simB = new float[pairs];
        int[] nearestA = new int[m], nearestB = new int[m];
        double[] bestA = new double[m], secondA = new double[m], bestB = new double[m];
        Array.Fill(bestA, double.NegativeInfinity);
        Array.Fill(secondA, double.NegativeInfinity);
        Array.Fill(bestB, double.NegativeInfinity);
        long k = 0;
        for (int i = 0; i < m; i++)
        {
            for (int j = i + 1; j < m; j++, k++)
            {
                float sa = TensorPrimitives.Dot(ua[i], ua[j]);
                float sb = TensorPrimitives.Dot(ub[i], ub[j]);
                simA[k] = sa;
                simB[k] = sb;
                Offer(i, j, sa, bestA, secondA, nearestA);
                Offer(j, i, sa, bestA, secondA, nearestA);
                OfferBest(i, j, sb, bestB, nearestB);
                OfferBest(j, i, sb, bestB, nearestB);
            }
        }
        int clear = 0, clearSame = 0, same = 0;
        for (int i = 0; i < m; i++)
        {
            bool agree = nearestA[i] == nearestB[i];
            same += agree ? 1 : 0;
            if (bestA[i] - secondA[i] >= ClearMargin)
            {
                clear++;
                clearSame += agree ? 1 : 0;
            }
        }
        return new EmbeddingMetrics
        {
            Pooling = pooling,
            MeanCosine = sum / n,
            MinCosine = min,
            PairwiseSamples = m,
            ClearNeighborSamples = clear,
            NeighborAgreement = clear == 0 ? null : (double)clearSame / clear,
            NeighborAgreementAll = (double)same / m,
            SimilarityCorrelation = SpearmanDestructive(simA, simB),
        };
    }

    private static void Offer(int i, int j, double s, double[] best, double[] second, int[] nearest)
    {
        if (s > best[i])
        {
            second[i] = best[i];
            best[i] = s;
            nearest[i] = j;
        }
        else if (s > second[i])
        {
            second[i] = s;
        }
    }

    private static void OfferBest(int i, int j, double s, double[] best, int[] nearest)
    {
        if (s > best[i])
        {
            best[i] = s;
            nearest[i] = j;
        }
    }

    /// <summary>Cosine of two vectors (the shared kernel, sums in double); 1 when both are zero, 0 when only one is.</summary>
    internal static double Cosine(float[] x, float[] y) =>
        Math.Clamp(Kernels.ErrorMetrics.CosineSimilarity(x, y), -1, 1);

    private static float[] Normalized(float[] v)
    {
        float norm = TensorPrimitives.Norm(v);
        float[] u = new float[v.Length];
        if (norm > 0)
        {
            TensorPrimitives.Divide(v, norm, u);
        }
        return u;
    }

    /// <summary>Spearman's rank correlation (average ranks for ties); 1 when both are constant, 0 when only one is.</summary>
    internal static double Spearman(double[] x, double[] y)
    {
        int[] order = new int[x.Length];
        int[] rx = new int[x.Length], ry = new int[y.Length];
        Ranks((double[])x.Clone(), order, rx);
        Ranks((double[])y.Clone(), order, ry);
        return Spearman(rx, ry);
    }

    /// <summary>
    /// As <see cref="Spearman(double[], double[])"/> on float values, in the memory of the two arrays plus two int arrays
    /// of their length: <paramref name="x"/> and <paramref name="y"/> are sorted in place (their order is lost), and
    /// <paramref name="y"/>'s ranks are written over <paramref name="x"/>'s storage once <paramref name="x"/>'s ranks
    /// are known. The pairwise similarities of 2,000 samples (two million pairs) take 32 MB in all (88 MB with double
    /// arrays and ranks).
    /// </summary>
    internal static double SpearmanDestructive(float[] x, float[] y)
    {
        if (x.Length != y.Length)
        {
            throw new ArgumentException("Both lists need the same length.", nameof(y));
        }
        int[] order = new int[x.Length];
        int[] rx = new int[x.Length];
        Ranks(x, order, rx);
        Span<int> ry = System.Runtime.InteropServices.MemoryMarshal.Cast<float, int>(x.AsSpan());
        Ranks(y, order, ry);
        return Spearman(rx, ry);
    }

    /// <summary>The correlation of two rank lists, each rank stored doubled (an integer: ties share half ranks).</summary>
    private static double Spearman(ReadOnlySpan<int> rx2, ReadOnlySpan<int> ry2)
    {
        double mean = (rx2.Length + 1) / 2.0;
        double sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < rx2.Length; i++)
        {
            double dx = rx2[i] / 2.0 - mean, dy = ry2[i] / 2.0 - mean;
            sxy += dx * dy;
            sxx += dx * dx;
            syy += dy * dy;
        }
        if (sxx == 0 || syy == 0)
        {
            return sxx == syy ? 1 : 0;
        }
        return sxy / Math.Sqrt(sxx * syy);
    }

    /// <summary>
    /// Twice each value's rank into <paramref name="ranks2"/> (1-based; tied values share the average rank, so twice it
    /// is an integer and <c>rank2 / 2.0</c> is the exact rank). Sorts <paramref name="values"/> in place;
    /// <paramref name="order"/> is scratch space of the same length.
    /// </summary>
    private static void Ranks<T>(T[] values, int[] order, Span<int> ranks2) where T : IComparable<T>
    {
        for (int i = 0; i < order.Length; i++)
        {
            order[i] = i;
        }
        Array.Sort(values, order);
        for (int i = 0; i < values.Length;)
        {
            int j = i;
            while (j + 1 < values.Length && values[j + 1].CompareTo(values[i]) == 0)
            {
                j++;
            }
            // (i + j) / 2.0 + 1, doubled.
            int rank2 = checked(i + j + 2);
            for (int t = i; t <= j; t++)
            {
                ranks2[order[t]] = rank2;
            }
            i = j + 1;
        }
    }
}
