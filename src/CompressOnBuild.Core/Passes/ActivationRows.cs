using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// What activation smoothing (<see cref="Quantization.SmoothQuant"/>) measures on for one layer input of
/// <paramref name="Width"/> channels: the largest |x| of every channel over all <paramref name="TotalRows"/> calibration
/// rows, and at most <see cref="ActivationRowSampler.MaxRows"/> of those rows, evenly spaced (row
/// ⌊i · TotalRows / m⌋ for i &lt; m), row-major in <paramref name="Rows"/>. A row is the last axis of the tensor; rows
/// are counted over every run in sample order, as <see cref="Activation"/> concatenates them.
/// </summary>
public sealed record ActivationRows(float[] ColumnMaxAbs, long TotalRows, float[] Rows, int Width)
{
    /// <summary>Rows held in <see cref="Rows"/>.</summary>
    public int Count => Width == 0 ? 0 : Rows.Length / Width;

    /// <summary>
    /// The same from every value of <paramref name="activation"/> (rows of its last axis); null when it has no values or
    /// its values are not whole rows of that width.
    /// </summary>
    public static ActivationRows? From(Activation activation, int maxRows)
    {
        ArgumentNullException.ThrowIfNull(activation);
        long[] shape = activation.Shape;
        if (shape.Length == 0 || shape[^1] <= 0 || shape[^1] > int.MaxValue || activation.Data.Length == 0 || activation.Data.Length % shape[^1] != 0)
        {
            return null;
        }
        var sampler = new ActivationRowSampler(maxRows);
        sampler.Count(activation.Data, shape);
        if (sampler.NeedsSecondPass)
        {
            sampler.Take(activation.Data, shape);
        }
        return sampler.Result();
    }
}

/// <summary>
/// Supplies <see cref="ActivationRows"/> for layer inputs of the unchanged model (always the same calibration samples);
/// CompressOnBuild.Validation's ActivationCollector.CollectRows provides one. A name whose values are not whole rows maps to null.
/// </summary>
public delegate IReadOnlyDictionary<string, ActivationRows?> ActivationRowSource(ModelProto originalModel, IReadOnlyList<string> tensorNames);

/// <summary>
/// Builds <see cref="ActivationRows"/> from a tensor's values as they come, one run at a time, without holding them:
/// <see cref="Count"/> every run's values once (channel maxima, the row count, and the first <see cref="MaxRows"/>
/// rows); when there were more rows than that (<see cref="NeedsSecondPass"/>), the evenly spaced ones depend on the
/// total, so the same values are given again, in the same order, to <see cref="Take"/>. Memory: one
/// [<see cref="MaxRows"/>, width] array, whatever the number of runs.
/// </summary>
public sealed class ActivationRowSampler
{
    private float[]? _columnMax;
    private float[]? _rows;
    private long _total;
    private int _width = -1;
    private bool _invalid;
    private long _taken;
    private long _seen;
    private int _selected;

    /// <param name="maxRows">Most rows kept (at least 1).</param>
    public ActivationRowSampler(int maxRows)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxRows, 1);
        MaxRows = maxRows;
    }

    /// <summary>Most rows kept.</summary>
    public int MaxRows { get; }

    /// <summary>True after the first pass when the rows to keep are not the first ones (more rows than <see cref="MaxRows"/>).</summary>
    public bool NeedsSecondPass => !_invalid && _total > MaxRows;

    /// <summary>First pass: one run's values of shape <paramref name="shape"/> (rows of its last axis).</summary>
    public void Count(ReadOnlySpan<float> values, IReadOnlyList<long> shape)
    {
        if (!Accept(values, shape, out int width))
        {
            return;
        }
        _columnMax ??= new float[width];
        _rows ??= new float[(long)MaxRows * width];
        int rows = values.Length / width;
        for (int r = 0; r < rows; r++)
        {
            ReadOnlySpan<float> row = values.Slice(r * width, width);
            TensorStats.AccumulateMaxAbs(row, _columnMax, KernelSelector.Current);
            if (_total < MaxRows)
            {
                row.CopyTo(_rows.AsSpan((int)_total * width, width));
            }
            _total++;
        }
    }

    /// <summary>Second pass (only when <see cref="NeedsSecondPass"/>): the same runs' values again, in the same order.</summary>
    /// <exception cref="InvalidOperationException">The second pass gives more rows than the first.</exception>
    public void Take(ReadOnlySpan<float> values, IReadOnlyList<long> shape)
    {
        if (!NeedsSecondPass)
        {
            return;
        }
        int width = _width;
        int rows = width == 0 ? 0 : values.Length / width;
        for (int r = 0; r < rows; r++, _seen++)
        {
            if (_seen >= _total)
            {
                throw new InvalidOperationException("the second pass over the activations gave more rows than the first");
            }
            // The selected global rows increase strictly (total > max), so slot i is rewritten only after the first
            // pass's row i is no longer needed.
            if (_selected < MaxRows && _seen == Selected(_selected))
            {
                values.Slice(r * width, width).CopyTo(_rows.AsSpan(_selected * width, width));
                _selected++;
            }
        }
        _taken = _seen;
    }

    /// <summary>The statistics; null when no run gave whole rows of one width (then nothing can be measured).</summary>
    /// <exception cref="InvalidOperationException">The second pass was needed and gave other rows than the first.</exception>
    public ActivationRows? Result()
    {
        if (_invalid || _total == 0 || _width <= 0)
        {
            return null;
        }
        if (NeedsSecondPass && (_taken != _total || _selected != MaxRows))
        {
            throw new InvalidOperationException($"the second pass over the activations gave {_taken} rows, the first {_total}");
        }
        int kept = (int)Math.Min(_total, MaxRows);
        float[] rows = kept * (long)_width == _rows!.Length ? _rows : _rows[..(kept * _width)];
        return new ActivationRows(_columnMax!, _total, rows, _width);
    }

    /// <summary>The global index of kept row <paramref name="i"/>: ⌊i · total / m⌋, m = min(total, <see cref="MaxRows"/>).</summary>
    private long Selected(int i) => (long)((Int128)i * _total / Math.Min(_total, MaxRows));

    private bool Accept(ReadOnlySpan<float> values, IReadOnlyList<long> shape, out int width)
    {
        width = 0;
        if (_invalid || values.Length == 0)
        {
            return false; // an empty run (say, a sequence of no tokens) adds no rows
        }
        long w = shape.Count == 0 ? 0 : shape[^1];
        if (w <= 0 || w > int.MaxValue || values.Length % w != 0 || (_width >= 0 && _width != w))
        {
            // A scalar, or a last axis that changes between runs: not rows of one layer input.
            _invalid = true;
            return false;
        }
        _width = width = (int)w;
        return true;
    }
}
