using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization;

/// <summary>
/// Scale vectors (per-channel weight scales, per-row table scales, smoothing factors) and the biases of the quantized
/// products stored as float16 initializers behind one Cast to float32, which ONNX Runtime folds into a float32
/// constant when it loads the model (so nothing changes at run time and the quantized operators still read float32). The values are made float16-exact before the
/// codes are computed from them, so the stored model means exactly what the pass measured: a weight scale is rounded
/// up to the next float16 (the codes still fit their range and the pair bound, the step is at most 2^-10 coarser), a
/// smoothing factor to the nearest float16. A scale vector with any value outside float16's normal range (2^-14 to
/// 65504, where the relative rounding would grow) stays float32, as does a vector too short to pay for its Cast node
/// (<see cref="Worth"/>) and everything in a model below opset 6 (whose Cast takes a string type). A bias is the one value rounded without compensation: to the nearest float16 (relative
/// error at most 2^-11, absolute at most 2^-25 below 2^-14), far below the int8 error of the product it is added to;
/// a bias vector with a value beyond 65504 stays float32.
/// </summary>
internal static class HalfScales
{
    /// <summary>Smallest normal float16 (2^-14).</summary>
    public const float SmallestNormal = 6.1035156e-5f;

    /// <summary>Largest finite float16.</summary>
    public const float Largest = 65504f;

    /// <summary>Whether <paramref name="graph"/>'s model can hold float16 scales (a default-domain Cast with an integer type).</summary>
    public static bool Allowed(PassGraph graph) => graph.OnnxOpset >= 6;

    /// <summary>
    /// Whether storing <paramref name="count"/> values named <paramref name="name"/> as float16 saves more bytes
    /// (2 per value) than the Cast node it needs costs (its input and output names and about 40 bytes of structure),
    /// so small vectors of small models stay float32.
    /// </summary>
    public static bool Worth(int count, string name) => 2L * count > 2L * name.Length + 40;

    /// <summary>
    /// Rounds every value of <paramref name="scales"/> up to the next float16 value, in place, when all of them are
    /// within the normal float16 range; otherwise leaves them as they are and returns false.
    /// </summary>
    public static bool TryRoundUp(Span<float> scales)
    {
        if (!InRange(scales))
        {
            return false;
        }
        for (int i = 0; i < scales.Length; i++)
        {
            scales[i] = RoundUp(scales[i]);
        }
        return true;
    }

    /// <summary>
    /// Rounds every value of <paramref name="values"/> to the nearest float16 value, in place, when all of them are
    /// within the normal float16 range; otherwise leaves them as they are and returns false.
    /// </summary>
    public static bool TryRoundNearest(Span<float> values)
    {
        if (!InRange(values))
        {
            return false;
        }
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (float)(Half)values[i];
        }
        return true;
    }

    /// <summary>
    /// Rounds every value of <paramref name="values"/> to the nearest float16 value (subnormals included), in place, when
    /// all of them are finite and at most 65504 in magnitude; otherwise leaves them as they are and returns false.
    /// </summary>
    public static bool TryRoundBias(Span<float> values)
    {
        foreach (float v in values)
        {
            if (!float.IsFinite(v) || MathF.Abs(v) > Largest)
            {
                return false;
            }
        }
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (float)(Half)values[i];
        }
        return true;
    }

    /// <summary>The smallest float16 value &gt;= <paramref name="v"/> (v positive and in range), as a float.</summary>
    public static float RoundUp(float v)
    {
        Half h = (Half)v;
        if ((float)h < v)
        {
            h = BitConverter.UInt16BitsToHalf((ushort)(BitConverter.HalfToUInt16Bits(h) + 1));
        }
        return (float)h;
    }

    /// <summary>Whether every |value| is 0 or within [2^-14, 65504] after rounding up (and finite).</summary>
    public static bool InRange(ReadOnlySpan<float> values)
    {
        foreach (float v in values)
        {
            float a = MathF.Abs(v);
            if (!float.IsFinite(v) || (a != 0f && (a < SmallestNormal || a > Largest)))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>A FLOAT16 tensor of <paramref name="values"/> (float16-exact values: see <see cref="TryRoundUp"/>).</summary>
    public static TensorProto Tensor(string name, ReadOnlySpan<float> values, params long[] dims)
    {
        var bits = new ushort[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            Half h = (Half)values[i];
            if ((float)h != values[i])
            {
                throw new ArgumentException($"tensor '{name}': value {values[i]} at {i} is not float16-exact", nameof(values));
            }
            bits[i] = BitConverter.HalfToUInt16Bits(h);
        }
        return TensorUtil.FromRaw(name, TensorProto.Types.DataType.Float16, System.Runtime.InteropServices.MemoryMarshal.AsBytes(bits.AsSpan()), dims);
    }
}
