namespace CompressOnBuild.Core.Passes;

/// <summary>
/// The element selection behind Magnitude, Global and NofM pruning. Small private loops until the Kernels project
/// has the sparsity helpers (magnitude threshold selection, zero count); then these call them.
/// </summary>
internal static class SparsityMasks
{
    /// <summary>
    /// Sets exactly <paramref name="count"/> elements (over all <paramref name="tensors"/> together) to zero: those
    /// with the smallest |w|; ties at the threshold are taken in tensor order, then element order. Elements that are
    /// already zero count as the smallest.
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
        count = Math.Min(count, total);
        // Already-zero weights rank first whatever their score.
        float Score(int tensor, int i) => tensors[tensor][i] == 0f ? -1f : scores == null ? MathF.Abs(tensors[tensor][i]) : scores[tensor][i];
        var ranked = new float[total];
        long at = 0;
        for (int t = 0; t < tensors.Count; t++)
        {
            for (int i = 0; i < tensors[t].Length; i++)
            {
                ranked[at++] = Score(t, i);
            }
        }
        Array.Sort(ranked);
        float threshold = ranked[count - 1];
        long zeroed = 0;
        var atThreshold = new List<(int Tensor, int Index)>();
        for (int t = 0; t < tensors.Count; t++)
        {
            float[] w = tensors[t];
            for (int i = 0; i < w.Length; i++)
            {
                float s = Score(t, i);
                if (s < threshold)
                {
                    w[i] = 0f;
                    zeroed++;
                }
                else if (s == threshold)
                {
                    atThreshold.Add((t, i));
                }
            }
        }
        foreach ((int t, int i) in atThreshold)
        {
            if (zeroed >= count)
            {
                break;
            }
            tensors[t][i] = 0f;
            zeroed++;
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
