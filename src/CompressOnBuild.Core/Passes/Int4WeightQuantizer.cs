using System.Numerics.Tensors;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Quantization;
using CompressOnBuild.Core.Quantization.Ops;
using CompressOnBuild.Core.Quantization.Schemes;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Weight-only 4-bit quantization: every main-graph MatMul and Gemm whose weight B is a constant float32 matrix
/// becomes one com.microsoft MatMulNBits node (bits = 4): Y = A x dequant(B)^T + bias, with B stored as uint8
/// [N, K/block, block/2] (two codes per byte, the even one in the low nibble), one float scale per block of
/// <see cref="Int4Options.BlockSize"/> weights along K ([N * K/block]), and for asymmetric blocks packed 4-bit zero
/// points ([N * ceil((K/block)/2)]); a last partial block is padded with zeros. Codes round half to even.
/// Gemm: alpha is folded into the weight, transB decides the stored layout, transA becomes a Transpose node, and
/// beta*C becomes the bias input when C is a constant of N elements (or one); any other C is added by an Add
/// node (after a Mul when beta != 1). The activations stay float; ORT dequantizes blocks inside its GEMM.
/// The operators and their lowerings are the Int4Weights entries of <see cref="OpRegistry"/> (MatMul, Gemm, Gather),
/// run by <see cref="QuantizationDriver"/>; this class keeps the block math the lowerings and streaming share.
/// </summary>
public static class Int4WeightQuantizer
{
    public const string QuantizedOpType = "MatMulNBits";

    /// <summary>After the lowerings: the recurrent layers with float weights, reported as float with why (the streaming path does the same).</summary>
    internal static void ReportRecurrentFloat(LoweringContext c, string displayName) =>
        LstmLowering.ReportFloat(c.Graph, LstmLowering.RecurrentOps, op => $"ONNX Runtime has no 4-bit {op} kernel; its weights stay float32" + (op == "LSTM" ? " (Int8Dynamic quantizes LSTM weights)" : ""), c.Skipped, displayName);

    /// <summary>Quantizes <paramref name="model"/> in place (the caller passes a copy) and reports what it did.</summary>
    /// <exception cref="CompressException">CMPR0003 for a block size other than 16/32/64/128, an accuracy level outside 0..4 or GPTQ without activations;
    /// CMPR0303 when a GPTQ activation does not fit its layer;
    /// CMPR0202 when a weight to quantize holds NaN or infinity; CMPR0103 for a model without a graph.</exception>
    public static Int4Summary Apply(ModelProto model, Int4Options options, string displayName)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(displayName);
        ValidateOptions(options, displayName);
        PassRun run = QuantizationDriver.Quantize(model, displayName, QuantizationScheme.Int4Weights,
            g => new Int4Context(g, options, displayName), c => ReportRecurrentFloat(c, displayName));
        var context = (Int4Context?)run.Context;
        return new Int4Summary
        {
            ModelDisplayName = displayName,
            BlockSize = options.BlockSize,
            Symmetric = options.Symmetric,
            Method = options.Method == Int4Method.Gptq ? "GPTQ" : "RTN",
            AlreadyQuantized = run.AlreadyQuantized != null,
            AlreadyQuantizedReason = run.AlreadyQuantized,
            RoundedToNearest = context?.RoundedToNearest ?? [],
            Quantized = context?.Quantized ?? [],
            Skipped = context?.Skipped ?? [],
            ModelBytesBefore = run.BytesBefore,
            ModelBytesAfter = run.BytesAfter,
            Float16Weights = run.Float16Weights,
            FloatWeightBytes = context?.FloatWeightBytes ?? 0,
            QuantizedWeightBytes = context?.QuantizedWeightBytes ?? 0,
        };
    }

    /// <summary>CMPR0003 for a block size other than 16/32/64/128 or an accuracy level outside 0..4.</summary>
    internal static void ValidateOptions(Int4Options options, string displayName)
    {
        if (options.BlockSize is not (16 or 32 or 64 or 128))
        {
            throw new CompressException(DiagnosticCodes.InvalidOption, displayName, "BlockSize", options.BlockSize, "it must be 16, 32, 64 or 128");
        }
        if (options.AccuracyLevel is < 0 or > 4)
        {
            throw new CompressException(DiagnosticCodes.InvalidOption, displayName, "AccuracyLevel", options.AccuracyLevel, "it must be 0 (unset) to 4");
        }
        if (options.Method == Int4Method.Gptq && options.Activations == null)
        {
            throw new CompressException(DiagnosticCodes.InvalidOption, displayName, "Quantization", "Int4Weights:gptq", "GPTQ needs CalibrationData (representative inputs)");
        }
        if (!(options.GptqDampening > 0 && options.GptqDampening < 1))
        {
            throw new CompressException(DiagnosticCodes.InvalidOption, displayName, "GptqDampening", options.GptqDampening, "it must be above 0 and below 1");
        }
    }

    /// <summary>Base name of the packed weight initializer ("_scales" and "_zero_points" are appended for the others).</summary>
    internal static string QuantizedBaseName(string weightName) => weightName + "_q4";

    /// <summary>Name of a MatMulNBits node replacing an unnamed node (before making it unique).</summary>
    internal static string NodeBaseName(string label) => label + "_q4";

    /// <summary>Dims of the packed weight: [N, K/block (rounded up), block/2].</summary>
    internal static long[] PackedDims(int k, int n, int blockSize) => [n, (k + blockSize - 1) / blockSize, blockSize / 2];

    /// <summary>
    /// The MatMulNBits node: inputs A, B, scales and zero points ("" when symmetric; the caller drops a trailing
    /// empty one or appends g_idx and bias), attributes K, N, bits, block_size and accuracy_level when set.
    /// </summary>
    internal static NodeProto MatMulNBitsNode(string name, string a, string b, string scales, string? zeroPoints, string output, int k, int n, Int4Options options)
    {
        var q = new NodeProto { OpType = QuantizedOpType, Domain = OnnxNames.MicrosoftDomain, Name = name };
        q.Input.Add(a);
        q.Input.Add(b);
        q.Input.Add(scales);
        q.Input.Add(zeroPoints ?? "");
        q.Output.Add(output);
        q.Attribute.Add(PassGraph.IntAttribute("K", k));
        q.Attribute.Add(PassGraph.IntAttribute("N", n));
        q.Attribute.Add(PassGraph.IntAttribute("bits", 4));
        q.Attribute.Add(PassGraph.IntAttribute("block_size", options.BlockSize));
        if (options.AccuracyLevel != 0)
        {
            q.Attribute.Add(PassGraph.IntAttribute("accuracy_level", options.AccuracyLevel));
        }
        return q;
    }

    /// <summary>
    /// Quantizes one channel-major [n, k] matrix block-wise. Returns codes packed [n, blocks, block/2], scales
    /// [n * blocks], packed zero points [n * ceil(blocks/2)] (null when symmetric) and the largest |w - dequantized|.
    /// <paramref name="mseSearch"/>: each block's range is the MSE-optimal clip (<see cref="SearchScale"/>), else min/max.
    /// </summary>
    internal static (byte[] Packed, float[] Scales, byte[]? ZeroPoints, float MaxError) QuantizeBlocks(
        float[] channelMajor, int n, int k, int blockSize, bool symmetric, bool mseSearch = false)
    {
        int blocks = (k + blockSize - 1) / blockSize;
        int zpBytesPerRow = (blocks + 1) / 2;
        var packed = new byte[(long)n * blocks * blockSize / 2];
        var scales = new float[n * blocks];
        byte[]? zeroPoints = symmetric ? null : new byte[n * zpBytesPerRow];
        // Rows are independent: chunks of rows run in parallel (the MSE search tries 34 ranges per block).
        const int RowsPerChunk = 64;
        int chunks = (n + RowsPerChunk - 1) / RowsPerChunk;
        var chunkErrors = new float[chunks];
        Parallel.For(0, chunks, chunk =>
        {
            var codes = new byte[blocks * blockSize];
            var blockZeros = new byte[blocks];
            var padded = new float[blockSize];
            var roundTrip = new float[blockSize];
            float maxError = 0f;
            for (int row = chunk * RowsPerChunk; row < Math.Min(n, (chunk + 1) * RowsPerChunk); row++)
            {
                ReadOnlySpan<float> w = channelMajor.AsSpan(row * k, k);
                for (int b = 0; b < blocks; b++)
                {
                    int start = b * blockSize;
                    int len = Math.Min(blockSize, k - start);
                    padded.AsSpan().Clear();
                    w.Slice(start, len).CopyTo(padded);
                    (float scale, byte zero) = BlockParameters(padded, symmetric, mseSearch);
                    Span<byte> blockCodes = codes.AsSpan(start, blockSize);
                    if (scale < 0f)
                    {
                        // The kernels take positive scales: x / s = (-x) / |s|, and half-to-even rounding is odd-symmetric.
                        TensorPrimitives.Negate(padded, padded);
                        QuantizationKernels.Quantize(padded, -scale, zero, blockCodes, 0, 15);
                        QuantizationKernels.Dequantize(blockCodes, -scale, zero, roundTrip);
                        TensorPrimitives.Negate(padded, padded);
                        TensorPrimitives.Negate(roundTrip, roundTrip);
                    }
                    else
                    {
                        QuantizationKernels.Quantize(padded, scale, zero, blockCodes, 0, 15);
                        QuantizationKernels.Dequantize(blockCodes, scale, zero, roundTrip);
                    }
                    maxError = MathF.Max(maxError, ErrorMetrics.MaxAbsDifference(padded.AsSpan(0, len), roundTrip.AsSpan(0, len)));
                    scales[row * blocks + b] = scale;
                    blockZeros[b] = zero;
                }
                Int4Kernels.Pack(codes, packed.AsSpan(row * blocks * blockSize / 2, blocks * blockSize / 2));
                if (zeroPoints != null)
                {
                    Int4Kernels.Pack(blockZeros, zeroPoints.AsSpan(row * zpBytesPerRow, zpBytesPerRow));
                }
            }
            chunkErrors[chunk] = maxError;
        });
        return (packed, scales, zeroPoints, chunkErrors.Length == 0 ? 0f : chunkErrors.Max());
    }

    /// <summary>
    /// A block's scale and zero point. Symmetric: the value of largest magnitude lands exactly on code 0 (level -8),
    /// so the scale carries that value's sign; the other side reaches at most +8, clamped to 7; zero point 8.
    /// Asymmetric: min..max (widened to include 0) over 15 steps, zero point rounded half to even. An all-zero
    /// block gets scale 1 (every code is the zero point). With <paramref name="mseSearch"/>, the range is then
    /// searched for the smallest squared rounding error of the block (<see cref="SearchScale"/>).
    /// </summary>
    internal static (float Scale, byte Zero) BlockParameters(ReadOnlySpan<float> block, bool symmetric, bool mseSearch = false)
    {
        float scale;
        byte zero;
        float min = 0f, max = 0f;
        if (symmetric)
        {
            int at = TensorPrimitives.IndexOfMaxMagnitude(block);
            scale = block[at] / -8f;
            zero = 8;
        }
        else
        {
            min = MathF.Min(0f, TensorPrimitives.Min(block));
            max = MathF.Max(0f, TensorPrimitives.Max(block));
            scale = (max - min) / 15f;
            zero = AsymmetricZero(min, scale);
        }
        if (!(MathF.Abs(scale) >= 1e-30f) || !float.IsFinite(scale))
        {
            return (1f, zero);
        }
        return mseSearch ? SearchScale(block, symmetric, scale, zero, min, max) : (scale, zero);
    }

    private static byte AsymmetricZero(float min, float scale) =>
        scale > 0f && float.IsFinite(scale) ? (byte)Math.Clamp(MathF.Round(-min / scale, MidpointRounding.ToEven), 0f, 15f) : (byte)0;

    /// <summary>Candidate ranges tried by <see cref="SearchScale"/>: the full range times 1 - i/40, i = 0..<see cref="ShrinkSteps"/>.</summary>
    internal const int ShrinkSteps = 16;

    /// <summary>
    /// MSE-optimal clipping: among the block's min/max scale (<paramref name="scale"/>, <paramref name="zero"/>) and
    /// narrower ranges (1 - i/40 of it, down to 60%: the few largest values are clipped so that the many small ones
    /// get finer steps), the one whose round trip has the smallest sum of squared errors over the block; symmetric
    /// blocks also try each range with the largest magnitude on +7 instead of -8 (the sign of the scale flipped).
    /// The min/max choice wins ties, so a block it already fits exactly keeps it.
    /// </summary>
    internal static (float Scale, byte Zero) SearchScale(ReadOnlySpan<float> block, bool symmetric, float scale, byte zero, float min, float max)
    {
        float bestScale = scale;
        byte bestZero = zero;
        double best = RoundTripError(block, scale, zero);
        for (int i = 0; i <= ShrinkSteps; i++)
        {
            float f = 1f - i / 40f;
            for (int variant = 0; variant < 2; variant++)
            {
                float s;
                byte z;
                if (symmetric)
                {
                    // i = 0 with the min/max sign is the starting point; the flipped sign puts the largest magnitude on +7.
                    s = variant == 0 ? scale * f : -scale * f * 8f / 7f;
                    z = 8;
                }
                else
                {
                    s = (max - min) * f / 15f;
                    z = AsymmetricZero(min * f, s);
                    if (variant == 1)
                    {
                        break;
                    }
                }
                if (!(MathF.Abs(s) >= 1e-30f) || !float.IsFinite(s))
                {
                    continue;
                }
                double e = RoundTripError(block, s, z);
                if (e < best)
                {
                    (best, bestScale, bestZero) = (e, s, z);
                }
            }
        }
        return (bestScale, bestZero);
    }

    /// <summary>Sum of squared differences between the block and its 4-bit round trip with this scale and zero point.</summary>
    internal static double RoundTripError(ReadOnlySpan<float> block, float scale, byte zero)
    {
        double sum = 0;
        float inv = 1f / scale;
        foreach (float x in block)
        {
            float q = (Math.Clamp(MathF.Round(x * inv, MidpointRounding.ToEven) + zero, 0f, 15f) - zero) * scale;
            float d = x - q;
            sum += d * d;
        }
        return sum;
    }
}
