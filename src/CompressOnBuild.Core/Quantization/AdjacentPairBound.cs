namespace CompressOnBuild.Core.Quantization;

/// <summary>
/// Int8 weights that ONNX Runtime's u8 x s8 GEMM cannot saturate on any x64 CPU
/// (<see cref="Passes.WeightEncoding.Int8PairBounded"/>). Without VNNI, MLAS multiplies with vpmaddubsw, which adds
/// the two products of adjacent K elements (k = 2i, 2i + 1 of one output column) into a saturating int16; with
/// activations in [0, 255] that sum stays within int16 whenever |q[2i]| + |q[2i+1]| &lt;= 128 for pairs of the same
/// sign (255 x 128 = 32640 &lt;= 32767; pairs of opposite signs are bounded by 255 x 127). The channel's scale is
/// therefore max(max|w| / 127, max same-sign |w[2i]| + |w[2i+1]| / 128), and a pair that rounding pushes to 129 gives
/// one level back on the element that rounding moved furthest. VNNI, ARM and the float reference compute the same
/// integers exactly, so the stored model gives the same results on every CPU.
/// </summary>
internal static class AdjacentPairBound
{
    /// <summary>Largest |q[2i]| + |q[2i+1]| allowed for a same-sign pair.</summary>
    public const int MaxPairLevels = 128;

    /// <summary>
    /// The largest |v[2i]| + |v[2i+1]| over same-sign pairs of the <paramref name="count"/> elements
    /// v[start], v[start + stride], ... (pairs counted from the first element; an odd last element pairs with nothing).
    /// </summary>
    public static float MaxSameSignPair(ReadOnlySpan<float> v, int start, int count, int stride)
    {
        float max = 0f;
        for (int i = 0; i + 1 < count; i += 2)
        {
            float a = v[start + i * stride], b = v[start + (i + 1) * stride];
            if ((a > 0f && b > 0f) || (a < 0f && b < 0f))
            {
                max = MathF.Max(max, MathF.Abs(a) + MathF.Abs(b));
            }
        }
        return max;
    }

    /// <summary>The channel scale: max|w| / 127, raised where a same-sign pair would need more than 128 levels.</summary>
    public static float Scale(float maxAbs, float maxPair) => MathF.Max(maxAbs / 127f, maxPair / MaxPairLevels);

    /// <summary>
    /// Brings every same-sign pair of the quantized <paramref name="q"/> (same layout as <paramref name="v"/>) back to at
    /// most <see cref="MaxPairLevels"/> levels; returns how many pairs it changed. Only pairs that rounding pushed one
    /// level over are possible when the scale came from <see cref="Scale"/>.
    /// </summary>
    public static int Enforce(ReadOnlySpan<float> v, float scale, Span<sbyte> q, int start, int count, int stride)
    {
        int changed = 0;
        for (int i = 0; i + 1 < count; i += 2)
        {
            int ia = start + i * stride, ib = start + (i + 1) * stride;
            int a = q[ia], b = q[ib];
            if (!((a > 0 && b > 0) || (a < 0 && b < 0)))
            {
                continue;
            }
            int excess = Math.Abs(a) + Math.Abs(b) - MaxPairLevels;
            while (excess > 0)
            {
                // Take the level from the element whose rounding overshot the most (ties: the first).
                float overA = Math.Abs(q[ia]) - MathF.Abs(v[ia] / scale);
                float overB = Math.Abs(q[ib]) - MathF.Abs(v[ib] / scale);
                int at = overB > overA ? ib : ia;
                q[at] = (sbyte)(q[at] - Math.Sign(q[at]));
                excess--;
            }
            changed++;
        }
        return changed;
    }

    /// <summary>
    /// Symmetric per-row scales of a [rows, k] matrix (one output channel per row, K along the row) for
    /// <paramref name="levels"/>: max|row| / levels, raised by the pair bound when <see cref="EncodingLevels.PairBounded"/>;
    /// an all-zero (or denormal) row gets scale 1.
    /// </summary>
    public static void RowScales(ReadOnlySpan<float> data, int rows, int k, Passes.EncodingLevels levels, Span<float> scales)
    {
        Kernels.TensorStats.RowMaxAbs(data, rows, k, scales);
        for (int r = 0; r < rows; r++)
        {
            float scale = levels.PairBounded ? Scale(scales[r], MaxSameSignPair(data, r * k, k, 1)) : scales[r] / levels.LevelsPerSide;
            scales[r] = scale >= 1e-30f && float.IsFinite(scale) ? scale : 1f;
        }
    }
}
