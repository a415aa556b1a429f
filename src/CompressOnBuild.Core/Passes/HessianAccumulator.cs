using CompressOnBuild.Kernels;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// H = 2/m X^T X of a layer input X ([m, k], rows added chunk by chunk, so the whole of X never has to be in memory at
/// once), for GPTQ and SparseGPT. X^T X is symmetric: only its upper blocks of <see cref="Block"/> x <see cref="Block"/>
/// are computed, each by <see cref="Gemm"/> from a transposed copy of the chunk and a copy of the block's columns,
/// about half the multiply-adds of the full product; the blocks are independent and run in parallel, and each
/// block's sum runs in the same order whatever the number of threads (the result does not depend on the machine's
/// core count).
/// </summary>
internal sealed class HessianAccumulator
{
    private const int Block = 256;

    /// <summary>Rows per chunk the helpers feed <see cref="Add"/>: about 4M values.</summary>
    internal static int ChunkRows(int k) => Math.Max(1, (1 << 22) / Math.Max(1, k));

    private readonly int _k;
    private readonly int _blocks;
    private readonly (int Row, int Column)[] _pairs;
    private readonly float[][] _sums;

    public HessianAccumulator(int k)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        _k = k;
        _blocks = (k + Block - 1) / Block;
        _pairs = [.. from i in Enumerable.Range(0, _blocks) from j in Enumerable.Range(i, _blocks - i) select (i, j)];
        _sums = [.. _pairs.Select(p => new float[Width(p.Row) * Width(p.Column)])];
    }

    /// <summary>Rows added so far.</summary>
    public long Rows { get; private set; }

    private int Width(int block) => Math.Min(Block, _k - block * Block);

    /// <summary>Adds the <paramref name="rows"/> rows of <paramref name="x"/> (row-major [rows, k]).</summary>
    public void Add(float[] x, int rows)
    {
        if (rows <= 0)
        {
            return;
        }
        if (x.Length < (long)rows * _k)
        {
            throw new ArgumentException($"{rows} rows of {_k} need {(long)rows * _k} values; got {x.Length}.");
        }
        int k = _k;
        // xt: X^T ([k, rows]), so the rows of block i are contiguous; columns: block j's columns of X ([rows, width]).
        float[] xt = PassGraph.Transpose(x.Length == (long)rows * k ? x : x[..(rows * k)], rows, k);
        var columns = new float[_blocks][];
        for (int b = 0; b < _blocks; b++)
        {
            int w = Width(b);
            var c = new float[(long)rows * w];
            for (int r = 0; r < rows; r++)
            {
                Array.Copy(x, (long)r * k + b * Block, c, (long)r * w, w);
            }
            columns[b] = c;
        }
        Parallel.For(0, _pairs.Length, p =>
        {
            (int i, int j) = _pairs[p];
            int wi = Width(i), wj = Width(j);
            Gemm.Multiply(xt.AsSpan(i * Block * rows, wi * rows), columns[j], _sums[p], wi, wj, rows, accumulate: true);
        });
        Rows += rows;
    }

    /// <summary>2/m X^T X in double, the full symmetric [k, k] matrix (all zero when no rows were added).</summary>
    public double[] Hessian()
    {
        int k = _k;
        var h = new double[(long)k * k];
        double scale = 2.0 / Math.Max(1, Rows);
        for (int p = 0; p < _pairs.Length; p++)
        {
            (int bi, int bj) = _pairs[p];
            int wi = Width(bi), wj = Width(bj);
            float[] s = _sums[p];
            for (int r = 0; r < wi; r++)
            {
                for (int c = 0; c < wj; c++)
                {
                    double v = s[r * wj + c] * scale;
                    int i = bi * Block + r, j = bj * Block + c;
                    h[(long)i * k + j] = v;
                    h[(long)j * k + i] = v;
                }
            }
        }
        return h;
    }

    /// <summary>
    /// H of the rows of <paramref name="x"/> ([m, k] row-major) whose <paramref name="rowMask"/> entry is not zero (all
    /// rows when null, or when the mask leaves no row), in chunks.
    /// </summary>
    public static double[] Of(float[] x, int k, float[]? rowMask = null)
    {
        int m = x.Length / k;
        if (rowMask != null && (rowMask.Length != m || !rowMask.Any(v => v != 0f)))
        {
            rowMask = null;
        }
        var acc = new HessianAccumulator(k);
        int chunk = ChunkRows(k);
        var buffer = new float[(long)Math.Min(chunk, m) * k];
        int filled = 0;
        for (int r = 0; r < m; r++)
        {
            if (rowMask != null && rowMask[r] == 0f)
            {
                continue;
            }
            Array.Copy(x, (long)r * k, buffer, (long)filled * k, k);
            if (++filled == chunk)
            {
                acc.Add(buffer, filled);
                filled = 0;
            }
        }
        acc.Add(buffer, filled);
        return acc.Hessian();
    }
}
