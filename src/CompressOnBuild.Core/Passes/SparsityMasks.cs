using CompressOnBuild.Kernels;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// The element selection behind Magnitude, Global and NofM pruning; the threshold comes from the Kernels'
/// selection (<see cref="Sparsity.KthLargestMagnitude(ReadOnlySpan{float}, int)"/>) and zeroing below it from
/// <see cref="Sparsity.ApplyMagnitudeThreshold(Span{float}, float)"/>; only ties and the N:M groups loop here.
/// </summary>
internal static class SparsityMasks
{
    /// <summary>
    /// Sets exactly <paramref name="count"/> elements (over all <paramref name="tensors"/> together) to zero: those
    /// with the smallest |w|; of the ties at the threshold the first ones (tensor order, then element order) are kept.
    /// Elements that are already zero count as the smallest.
    /// </summary>
    public static void ZeroSmallest(IReadOnlyList<float[]> tensors, long count) => ZeroSmallest(tensors, null, count);

    /// <summary>
    /// As <see cref="ZeroSmallest(IReadOnlyList{float[]}, long)"/>, ranking by <paramref name="scores"/> (one array per
    /// tensor, same length) instead of |w| when given.
    /// </summary>
    public static void ZeroSmallest(IReadOnlyList<float[]> tensors, IReadOnlyList<float[]>? scores, long count)
    {
        long total = tensors.Sum(t => (long)t.Length);
        if (count <= 0 || total == 0)
        {
            return;
        }
        if (total > int.MaxValue)
        {
            throw new InvalidOperationException($"{total} weights are more than one selection can rank");
        }
        count = Math.Min(count, total);
        int keep = (int)(total - count);
        // Ranking values: |w| or the score; weights that are already zero rank as 0 (with the smallest).
        var ranked = new float[total];
        int at = 0;
        for (int t = 0; t < tensors.Count; t++)
        {
            float[] w = tensors[t];
            for (int i = 0; i < w.Length; i++, at++)
            {
                ranked[at] = w[i] == 0f ? 0f : scores == null ? MathF.Abs(w[i]) : scores[t][i];
            }
        }
        if (keep == 0)
        {
            foreach (float[] w in tensors)
            {
                Array.Clear(w);
            }
            return;
        }
        float threshold = Sparsity.KthLargestMagnitude(ranked, keep);
        long greater = 0;
        foreach (float r in ranked)
        {
            if (r > threshold)
            {
                greater++;
            }
        }
        long tiesToKeep = keep - greater;
        at = 0;
        foreach (float[] w in tensors)
        {
            if (scores == null)
            {
                // Below the threshold in one vectorized pass; ties at the threshold below.
                Sparsity.ApplyMagnitudeThreshold(w, threshold);
            }
            for (int i = 0; i < w.Length; i++, at++)
            {
                float r = ranked[at];
                if (r < threshold)
                {
                    w[i] = 0f;
                }
                else if (r == threshold)
                {
                    if (tiesToKeep > 0)
                    {
                        tiesToKeep--;
                    }
                    else
                    {
                        w[i] = 0f;
                    }
                }
            }
        }
    }

    /// <summary>
    /// In every group of <paramref name="m"/> consecutive weights along the layer's reduction axis (Conv: along input
    /// channels at each kernel position), keeps the <paramref name="n"/> largest |w| (or <see cref="PrunableLayer.Scores"/>) (first wins on ties) and zeroes
    /// the rest. A trailing group shorter than m keeps at most n.
    /// </summary>
    public static void KeepNofM(PrunableLayer layer, int n, int m)
    {
        float[] w = layer.Data;
        float[]? scores = layer.Scores;
        float Score(int i) => scores == null ? MathF.Abs(w[i]) : scores[i];
        int channels = layer.Reduction / layer.KernelSize;
        Span<int> group = stackalloc int[m];
        for (int o = 0; o < layer.Outputs; o++)
        {
            for (int s = 0; s < layer.KernelSize; s++)
            {
                for (int c0 = 0; c0 < channels; c0 += m)
                {
                    int len = Math.Min(m, channels - c0);
                    for (int j = 0; j < len; j++)
                    {
                        group[j] = layer.Index(o, (c0 + j) * layer.KernelSize + s);
                    }
                    // Insertion sort by |w| descending; stable, so the earlier element wins a tie.
                    for (int a = 1; a < len; a++)
                    {
                        int idx = group[a];
                        int b = a - 1;
                        while (b >= 0 && Score(group[b]) < Score(idx))
                        {
                            group[b + 1] = group[b];
                            b--;
                        }
                        group[b + 1] = idx;
                    }
                    for (int j = n; j < len; j++)
                    {
                        w[group[j]] = 0f;
                    }
                }
            }
        }
    }
}
