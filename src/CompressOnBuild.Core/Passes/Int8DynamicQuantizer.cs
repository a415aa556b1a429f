using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Quantization;
using CompressOnBuild.Core.Quantization.Ops;
using CompressOnBuild.Core.Quantization.Schemes;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Dynamic int8 weight quantization. Every MatMul and Gemm in the main graph whose weight (input B) is a constant
/// float32 matrix becomes one com.microsoft DynamicQuantizeMatMul node: ONNX Runtime quantizes the activation to
/// uint8 per call (per tensor, asymmetric) and multiplies it with the stored 8-bit weight in an integer GEMM,
/// then applies activation scale x per-column weight scale and adds the bias in float. Graph inputs and outputs
/// stay float32.
/// <para>
/// Weights are symmetric per output channel: scale_j = max|W[:, j]| / 127, levels in [-127, 127], round half
/// to even, zero point 0. On x64 CPUs without AVX-VNNI / AVX512-VNNI, ORT's uint8 x int8 kernel multiplies with
/// vpmaddubsw, which adds two adjacent u8*s8 products into a saturating int16: 255*127*2 = 64770 &gt; 32767, so a
/// bright activation next to a large weight is silently clipped. The default encoding therefore stores the same
/// 255 levels as uint8 with zero point 128 (<see cref="WeightEncoding.UInt8"/>): ORT runs u8 x u8 by widening
/// to int16 first (vpmaddwd), exact on every CPU, with no loss of resolution. <see cref="WeightEncoding.Int8"/>
/// (fastest on VNNI) and <see cref="WeightEncoding.Int8ReducedRange"/> (7-bit, ORT's reduce_range) are options.
/// The Passes tests measure all three on the corpus.
/// </para>
/// Gemm: alpha is folded into the weight before quantizing, transB is applied to the stored weight, transA
/// becomes a Transpose node, and beta*C becomes the bias input when C is a constant of N elements (or one);
/// any other C is added by an Add node (after a Mul when beta != 1).
/// The operators and their lowerings are the Int8Dynamic entries of <see cref="OpRegistry"/> (MatMul, Gemm, Conv,
/// Gather), run by <see cref="QuantizationDriver"/>; LSTM weights are lowered afterwards by <see cref="LstmLowering"/>.
/// </summary>
public static class Int8DynamicQuantizer
{
    public const string QuantizedOpType = "DynamicQuantizeMatMul";

    /// <summary>Recurrent operators ONNX Runtime has no int8 kernel for (listed as float with that reason).</summary>
    internal static readonly IReadOnlySet<string> NoInt8Kernel = new HashSet<string>(StringComparer.Ordinal) { "GRU", "RNN" };

    /// <summary>After the lowerings: the GRU/RNN layers with float weights, reported as float with why (the streaming path does the same).</summary>
    internal static void ReportRecurrentFloat(LoweringContext c, string displayName) =>
        LstmLowering.ReportFloat(c.Graph, NoInt8Kernel, op => $"ONNX Runtime has no quantized {op} kernel (only DynamicQuantizeLSTM); its weights stay float32", c.Skipped, displayName);

    /// <summary>Quantizes <paramref name="model"/> in place (the caller passes a copy) and reports what it did.</summary>
    /// <exception cref="CompressException">CMPR0202 when a weight to quantize holds NaN or infinity.</exception>
    public static QuantizationSummary Apply(ModelProto model, QuantizationOptions options, string modelDisplayName)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(modelDisplayName);
        PassRun run = QuantizationDriver.Quantize(model, modelDisplayName, QuantizationScheme.Int8Dynamic,
            g => new Int8DynamicContext(g, options, modelDisplayName), c => ReportRecurrentFloat(c, modelDisplayName));
        return new QuantizationSummary
        {
            ModelDisplayName = modelDisplayName,
            WeightEncoding = options.WeightEncoding,
            AlreadyQuantized = run.AlreadyQuantized != null,
            AlreadyQuantizedReason = run.AlreadyQuantized,
            Quantized = run.Context?.Quantized ?? [],
            Skipped = run.Context?.Skipped ?? [],
            Smoothing = run.Context is Int8DynamicContext c
                ? [.. c.SmoothingDecisions.Select(d => new SmoothingOutcome(d.Input, d.Decision.Alpha, d.Decision.ErrorWithout, d.Decision.ErrorWith))]
                : [],
            ModelBytesBefore = run.BytesBefore,
            ModelBytesAfter = run.BytesAfter,
            FloatWeightBytes = run.Context?.FloatWeightBytes ?? 0,
            QuantizedWeightBytes = run.Context?.QuantizedWeightBytes ?? 0,
            Float16Weights = run.Float16Weights,
        };
    }
}
