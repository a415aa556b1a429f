namespace CompressOnBuild.Core.Passes;

/// <summary>How quantized weights are stored. All are symmetric per output channel (column of the [K, N] weight).</summary>
public enum WeightEncoding
{
    /// <summary>
    /// int8 in [-127, 127], zero point 0. Fastest on VNNI / ARM dot-product CPUs; on AVX2 without VNNI ORT's
    /// u8s8 kernel (vpmaddubsw) can saturate int16 when two adjacent products add up beyond 32767.
    /// </summary>
    Int8 = 0,

    /// <summary>
    /// The same 255 levels stored as uint8 with zero point 128 (q + 128 in [1, 255]). ORT runs uint8 x uint8
    /// through a kernel that widens to int16 before multiplying, so nothing saturates on any x64 CPU.
    /// </summary>
    UInt8 = 1,

    /// <summary>int8 in [-63, 63] (7 bits, ORT's "reduce_range"): no saturation in u8s8 kernels, half the resolution.</summary>
    Int8ReducedRange = 2,

    /// <summary>
    /// int8 in [-127, 127], zero point 0, with every same-sign pair of adjacent K elements (k = 2i, 2i + 1) of an
    /// output channel at most 128 levels apart from zero in sum, so ORT's u8s8 kernel cannot saturate on AVX2
    /// either (see <see cref="Quantization.AdjacentPairBound"/>): runs on ORT's fast u8s8 (VNNI) kernels, exact on
    /// every CPU; where a pair needs it the channel scale grows (measured on all-MiniLM-L6-v2: see docs/results.md).
    /// </summary>
    Int8PairBounded = 3,
}

/// <summary>How a <see cref="WeightEncoding"/> stores its symmetric levels (one table for every int8 pass).</summary>
/// <param name="Zero">Stored code of 0.</param>
/// <param name="Min">Smallest stored code (as a byte; reinterpret as sbyte when not <paramref name="Unsigned"/>).</param>
/// <param name="Max">Largest stored code.</param>
/// <param name="Unsigned">Stored as uint8 rather than int8.</param>
/// <param name="LevelsPerSide">Levels on each side of zero: the weight scale is max |w| / this.</param>
internal readonly record struct EncodingLevels(byte Zero, byte Min, byte Max, bool Unsigned, float LevelsPerSide)
{
    /// <summary>Scales and codes keep adjacent same-sign pairs within <see cref="Quantization.AdjacentPairBound.MaxPairLevels"/>.</summary>
    public bool PairBounded { get; init; }

    /// <summary>
    /// Per-channel scales are made float16-exact (rounded up) before the codes are computed, so they can be stored as
    /// float16 (<see cref="Quantization.HalfScales"/>); a channel set outside float16's normal range keeps float32 scales.
    /// </summary>
    public bool HalfScales { get; init; }

    /// <exception cref="CompressException">CMPR0003 for a value that is not a known encoding.</exception>
    public static EncodingLevels Of(WeightEncoding encoding, string displayName) => encoding switch
    {
        WeightEncoding.Int8 => new(0, unchecked((byte)(sbyte)-127), 127, false, 127f),
        WeightEncoding.UInt8 => new(128, 1, 255, true, 127f),
        WeightEncoding.Int8ReducedRange => new(0, unchecked((byte)(sbyte)-63), 63, false, 63f),
        WeightEncoding.Int8PairBounded => new(0, unchecked((byte)(sbyte)-127), 127, false, 127f) { PairBounded = true },
        _ => throw CompressException.ForFile(displayName, DiagnosticCodes.InvalidOption, displayName, "WeightEncoding", encoding,
            "expected Int8, UInt8, Int8ReducedRange or Int8PairBounded"),
    };
}

/// <summary>Settings for <see cref="Int8DynamicQuantizer"/>.</summary>
public sealed class QuantizationOptions
{
    /// <summary>
    /// The default storage: <see cref="WeightEncoding.Int8PairBounded"/>. ORT 1.31.1 runs int8 weights on its u8s8
    /// kernels (VNNI where the CPU has it: all-MiniLM-L6-v2 at 0.37x of fp32 latency against 0.69x with uint8 weights,
    /// which run on the widening u8u8 kernel), and the adjacent-pair bound keeps the AVX2 (no VNNI) u8s8 kernel from
    /// saturating, so the result does not depend on the CPU that runs it. <see cref="WeightEncoding.UInt8"/> (same
    /// 255 levels, slower) and <see cref="WeightEncoding.Int8"/> (no bound) remain options.
    /// </summary>
    public const WeightEncoding DefaultWeightEncoding = WeightEncoding.Int8PairBounded;

    public static QuantizationOptions Default { get; } = new();

    public WeightEncoding WeightEncoding { get; init; } = DefaultWeightEncoding;

    /// <summary>Weights with fewer elements than this stay float (the int8 copy plus scales would not be smaller). Default 16.</summary>
    public long MinimumWeightElements { get; init; } = 16;

    /// <summary>
    /// Also quantize Conv (DynamicQuantizeLinear + ConvInteger + per-channel rescale). ORT's CPU ConvInteger takes
    /// only uint8 weights with one zero point, so Conv weights are always stored as uint8 with zero point 128
    /// (the same symmetric 255 levels), whatever <see cref="WeightEncoding"/> says. Needs default opset 11; older
    /// models are raised to 11 only when every operator they use means the same there. Default true.
    /// </summary>
    public bool QuantizeConv { get; init; } = true;

    /// <summary>
    /// Store the scale vectors (per-channel weight scales, per-row embedding scales, smoothing factors) and the
    /// quantized products' biases as float16 behind a Cast that ONNX Runtime folds at load
    /// (<see cref="Quantization.HalfScales"/>): about 2 bytes per output channel and per table row less. Default true;
    /// false stores them as float32, as the streaming path's chunked MatMuls (<see cref="StreamingQuantizer"/>) always
    /// do (the layers it lowers through the registry follow this option).
    /// </summary>
    public bool Float16Scales { get; init; } = true;

    /// <summary>
    /// Calibration activations (the item's data). When set, MatMul/Gemm inputs whose measured int8 error drops by
    /// smoothing get SmoothQuant scaling (<see cref="Quantization.SmoothQuant"/>: one Mul before the layers, the
    /// weights' input rows scaled); null (default): no smoothing. Every row of every input is held at once; the
    /// smoothing uses only their channel maxima and <see cref="Quantization.SmoothQuant.MeasuredRows"/> evenly spaced
    /// rows, which <see cref="SmoothingRows"/> supplies without holding the rest.
    /// </summary>
    public ActivationSource? Activations { get; init; }

    /// <summary>
    /// The same smoothing as <see cref="Activations"/> (which it replaces when both are set), from each input's
    /// <see cref="ActivationRows"/> (collected with at most <see cref="Quantization.SmoothQuant.MeasuredRows"/> rows
    /// kept): the same factors as from all rows, in a bounded amount of memory. The worker collects these.
    /// </summary>
    public ActivationRowSource? SmoothingRows { get; init; }

    /// <summary>Rows <see cref="SmoothingRows"/> keeps per input (the rows the smoothing measures its errors on).</summary>
    public const int SmoothingMeasuredRows = Quantization.SmoothQuant.MeasuredRows;

    /// <summary>
    /// Samples the worker collects <see cref="SmoothingRows"/> from (each layer input's channel maxima over all of
    /// them, and <see cref="SmoothingMeasuredRows"/> of their rows: for a 6-layer 384-wide encoder about 33 MB, where
    /// holding every row of 32 padded 128-token sentences took about 270 MB).
    /// </summary>
    public const int SmoothingSamples = 32;

    /// <summary>Node names (or, for unnamed nodes, their first output) that must stay float.</summary>
    public IReadOnlyCollection<string> ExcludedNodes { get; init; } = [];
}
