using CompressOnBuild.Kernels;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Activation-aware channel selection for <see cref="ChannelPruner"/> (channel selection by reconstruction, in the
/// family of ThiNet and of He et al. 2017). For a consumer with input units X (im2col patches for a Conv, rows for a
/// MatMul/Gemm; input channel c owns the units c x b .. c x b + b - 1) and weights W, channel c contributes
/// Z_c = X_c W_c to the consumer's output Y = sum_c Z_c. The channel Gram G_cd = &lt;Z_c, Z_d&gt; (over rows and outputs)
/// is computed from H = X^T X and P = W W^T without forming Z: G_cd = sum over the b x b block (c, d) of H o P.
/// Keeping a set K of channels with one coefficient each (least squares), the error left is
/// ||Y||^2 - g_K^T G_KK^-1 g_K with g = G 1; channels are removed greedily, each time the one whose removal raises the
/// error least (beta_c^2 / (G_KK^-1)_cc, with the inverse downdated per step), summed over the group's consumers, each
/// divided by its ||Y||^2. The least-squares refit of <see cref="ChannelPruner"/> (every kept weight free, not one
/// coefficient per channel) then does at least as well as this selection assumed.
/// </summary>
internal static class ChannelSelection
{
    /// <summary>Rows (im2col patches or input rows, evenly spaced) the Gram of a consumer is measured on.</summary>
    internal const int MaxRows = 8192;

    /// <summary>
    /// The channel Gram [channels, channels] (double) of consumer <paramref name="l"/> from <paramref name="h"/>, the
    /// X^T X of its input units ([Reduction, Reduction]), with <paramref name="block"/> consecutive units per channel.
    /// </summary>
    internal static double[] Gram(PrunableLayer l, double[] h, int block)
    {
        int n = l.Reduction;
        int m = l.Outputs;
        int channels = n / block;
        // W as [n, m] (input units x outputs), P = W W^T [n, n].
        var w = new float[(long)n * m];
        for (int r = 0; r < n; r++)
        {
            for (int o = 0; o < m; o++)
            {
                w[(long)r * m + o] = l.Data[l.Index(o, r)];
            }
        }
        float[] wt = PassGraph.Transpose(w, n, m);
        var p = new float[(long)n * n];
        Gemm.Multiply(w, wt, p, n, n, m);
        var gram = new double[(long)channels * channels];
        for (int i = 0; i < n; i++)
        {
            int c = i / block;
            long row = (long)i * n;
            for (int j = 0; j < n; j++)
            {
                gram[(long)c * channels + j / block] += h[row + j] * p[row + j];
            }
        }
        return gram;
    }

    /// <summary>
    /// Greedy backward elimination over the channels of one group given each consumer's channel Gram: the order in
    /// which channels are removed (all of them but one) and, after each removal, the summed relative error of the
    /// consumers' outputs (curve[k] = error with the first k + 1 removed channels gone).
    /// </summary>
    internal static (int[] Order, double[] Error) Greedy(IReadOnlyList<double[]> grams, int channels)
    {
        int consumers = grams.Count;
        var inverse = new double[consumers][];
        var beta = new double[consumers][];
        var energy = new double[consumers];
        for (int j = 0; j < consumers; j++)
        {
            double[] g = grams[j];
            double trace = 0;
            for (int c = 0; c < channels; c++)
            {
                trace += g[(long)c * channels + c];
            }
            double ridge = Math.Max(1e-6 * trace / channels, 1e-30);
            var a = (double[])g.Clone();
            for (int c = 0; c < channels; c++)
            {
                a[(long)c * channels + c] += ridge;
                for (int d = 0; d < channels; d++)
                {
                    energy[j] += g[(long)c * channels + d];
                }
            }
            inverse[j] = Invert(a, channels);
            // With every channel kept the coefficients are all 1 (up to the ridge): beta = A^-1 G 1.
            var rhs = new double[channels];
            for (int c = 0; c < channels; c++)
            {
                double s = 0;
                for (int d = 0; d < channels; d++)
                {
                    s += g[(long)c * channels + d];
                }
                rhs[c] = s;
            }
            beta[j] = new double[channels];
            for (int c = 0; c < channels; c++)
            {
                double s = 0;
                for (int d = 0; d < channels; d++)
                {
                    s += inverse[j][(long)c * channels + d] * rhs[d];
                }
                beta[j][c] = s;
            }
            energy[j] = Math.Max(energy[j], 1e-30);
        }
        var removed = new bool[channels];
        var order = new int[channels - 1];
        var error = new double[channels - 1];
        double total = 0;
        var column = new double[channels];
        for (int step = 0; step < channels - 1; step++)
        {
            int best = -1;
            double bestCost = double.PositiveInfinity;
            for (int c = 0; c < channels; c++)
            {
                if (removed[c])
                {
                    continue;
                }
                double cost = 0;
                for (int j = 0; j < consumers; j++)
                {
                    double d = inverse[j][(long)c * channels + c];
                    cost += d > 0 ? beta[j][c] * beta[j][c] / d / energy[j] : 0;
                }
                if (cost < bestCost)
                {
                    bestCost = cost;
                    best = c;
                }
            }
            removed[best] = true;
            order[step] = best;
            total += Math.Max(0, bestCost);
            error[step] = total;
            for (int j = 0; j < consumers; j++)
            {
                double[] inv = inverse[j];
                double pivot = inv[(long)best * channels + best];
                if (!(pivot > 0))
                {
                    continue;
                }
                for (int c = 0; c < channels; c++)
                {
                    column[c] = inv[(long)c * channels + best];
                }
                double factor = beta[j][best] / pivot;
                for (int c = 0; c < channels; c++)
                {
                    beta[j][c] -= column[c] * factor;
                    double f = column[c] / pivot;
                    if (f != 0)
                    {
                        System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(column, -f, inv.AsSpan(c * channels, channels), inv.AsSpan(c * channels, channels));
                    }
                }
                beta[j][best] = 0;
            }
        }
        return (order, error);
    }

    /// <summary>Inverse of a symmetric positive definite [n, n] matrix (Gauss-Jordan with partial pivoting, double).</summary>
    private static double[] Invert(double[] a, int n)
    {
        var m = (double[])a.Clone();
        var inv = new double[(long)n * n];
        for (int i = 0; i < n; i++)
        {
            inv[(long)i * n + i] = 1;
        }
        for (int col = 0; col < n; col++)
        {
            int pivot = col;
            for (int r = col + 1; r < n; r++)
            {
                if (Math.Abs(m[(long)r * n + col]) > Math.Abs(m[(long)pivot * n + col]))
                {
                    pivot = r;
                }
            }
            if (pivot != col)
            {
                Swap(m, pivot, col, n);
                Swap(inv, pivot, col, n);
            }
            double p = m[(long)col * n + col];
            if (p == 0)
            {
                continue;
            }
            System.Numerics.Tensors.TensorPrimitives.Divide(m.AsSpan(col * n, n), p, m.AsSpan(col * n, n));
            System.Numerics.Tensors.TensorPrimitives.Divide(inv.AsSpan(col * n, n), p, inv.AsSpan(col * n, n));
            for (int r = 0; r < n; r++)
            {
                double f = m[(long)r * n + col];
                if (r == col || f == 0)
                {
                    continue;
                }
                System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(m.AsSpan(col * n, n), -f, m.AsSpan(r * n, n), m.AsSpan(r * n, n));
                System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(inv.AsSpan(col * n, n), -f, inv.AsSpan(r * n, n), inv.AsSpan(r * n, n));
            }
        }
        return inv;
    }

    private static void Swap(double[] m, int a, int b, int n)
    {
        for (int i = 0; i < n; i++)
        {
            (m[(long)a * n + i], m[(long)b * n + i]) = (m[(long)b * n + i], m[(long)a * n + i]);
        }
    }
}
