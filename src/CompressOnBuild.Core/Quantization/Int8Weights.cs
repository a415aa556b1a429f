using System.Runtime.InteropServices;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Kernels;

namespace CompressOnBuild.Core.Quantization;

/// <summary>
/// Symmetric per-output-channel 8-bit weights in one of the <see cref="EncodingLevels"/>: channel-major [N, K] floats
/// (row j = output channel j, K along the row) to codes and scales, and back. Used by the Int8Dynamic encoding and by
/// <see cref="SmoothQuant"/>'s simulation, so both see the same levels.
/// </summary>
internal static class Int8Weights
{
    /// <summary>
    /// Codes ([N, K], uint8 or int8 reinterpreted as bytes), per-channel scales (pair-bounded when the levels say so;
    /// float16-exact when <see cref="EncodingLevels.HalfScales"/> and every scale is in float16's normal range: then
    /// <c>Half</c> is true) and the largest |w - dequantized(w)|.
    /// </summary>
    public static (byte[] Codes, float[] Scales, float MaxError, bool Half) Quantize(ReadOnlySpan<float> channelMajor, int n, int k, EncodingLevels levels)
    {
        (byte zero, byte min, byte max, bool unsigned, _) = levels;
        var scales = new float[n];
        AdjacentPairBound.RowScales(channelMajor, n, k, levels, scales);
        // Rounded up: max|w| / scale and the pair sums stay within the levels, so the codes below fit as before.
        bool half = levels.HalfScales && HalfScales.TryRoundUp(scales);
        var codes = new byte[(long)n * k];
        var roundTrip = new float[k];
        float maxError = 0f;
        for (int j = 0; j < n; j++)
        {
            ReadOnlySpan<float> row = channelMajor.Slice(j * k, k);
            Span<byte> qRow = codes.AsSpan(j * k, k);
            if (unsigned)
            {
                QuantizationKernels.Quantize(row, scales[j], zero, qRow, min, max);
                QuantizationKernels.Dequantize(qRow, scales[j], zero, roundTrip);
            }
            else
            {
                Span<sbyte> sRow = MemoryMarshal.Cast<byte, sbyte>(qRow);
                QuantizationKernels.Quantize(row, scales[j], (sbyte)zero, sRow, (sbyte)min, (sbyte)max);
                if (levels.PairBounded)
                {
                    AdjacentPairBound.Enforce(row, scales[j], sRow, 0, k, 1);
                }
                QuantizationKernels.Dequantize(sRow, scales[j], (sbyte)zero, roundTrip);
            }
            maxError = MathF.Max(maxError, ErrorMetrics.MaxAbsDifference(row, roundTrip));
        }
        return (codes, scales, maxError, half);
    }

    /// <summary>The weights as the quantized model computes with them (quantized, then dequantized), channel-major.</summary>
    public static float[] Dequantized(ReadOnlySpan<float> channelMajor, int n, int k, EncodingLevels levels)
    {
        var result = new float[(long)n * k];
        Dequantized(channelMajor, n, k, levels, result);
        return result;
    }

    /// <summary><see cref="Dequantized(ReadOnlySpan{float}, int, int, EncodingLevels)"/> into <paramref name="result"/> (n x k values).</summary>
    public static void Dequantized(ReadOnlySpan<float> channelMajor, int n, int k, EncodingLevels levels, Span<float> result)
    {
        (byte[] codes, float[] scales, _, _) = Quantize(channelMajor, n, k, levels);
        for (int j = 0; j < n; j++)
        {
            Span<byte> qRow = codes.AsSpan(j * k, k);
            if (levels.Unsigned)
            {
                QuantizationKernels.Dequantize(qRow, scales[j], levels.Zero, result.Slice(j * k, k));
            }
            else
            {
                QuantizationKernels.Dequantize(MemoryMarshal.Cast<byte, sbyte>(qRow), scales[j], (sbyte)levels.Zero, result.Slice(j * k, k));
            }
        }
    }
}
