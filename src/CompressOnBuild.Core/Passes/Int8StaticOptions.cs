namespace CompressOnBuild.Core.Passes;

/// <summary>The observed float range of one tensor.</summary>
public readonly record struct TensorRange(float Min, float Max);

/// <summary>Activation ranges from calibration (CompressOnBuild.Validation.Calibrator), by tensor name.</summary>
public sealed class CalibrationResult
{
    public required IReadOnlyDictionary<string, TensorRange> Ranges { get; init; }

    /// <summary>"MinMax", "Percentile 99.99", ...</summary>
    public string Method { get; init; } = "MinMax";

    /// <summary>Samples the ranges were collected from.</summary>
    public int Samples { get; init; }
}

/// <summary>How <see cref="Int8StaticQuantizer"/> stores activations.</summary>
public enum ActivationType
{
    /// <summary>uint8, asymmetric: [min(0, lo), max(0, hi)] over 255 levels with a zero point in 0..255 (the default).</summary>
    UInt8,

    /// <summary>
    /// int8, symmetric: zero point 0 and scale max(|lo|, |hi|) / 127, the [-127, 127] range ONNX Runtime's own
    /// quantizer uses for symmetric int8 activations (ActivationSymmetric). A Relu cannot be folded into such a
    /// QuantizeLinear (that needs the type's minimum as zero point), so it stays as an op on the dequantized values.
    /// </summary>
    Int8,
}

/// <summary>Settings for <see cref="Int8StaticQuantizer"/>.</summary>
public sealed class Int8StaticOptions
{
    public static Int8StaticOptions Default { get; } = new();

    /// <summary>
    /// Weight storage (symmetric per channel). Default <see cref="WeightEncoding.Int8PairBounded"/>: int8 codes with
    /// every same-sign pair that ORT's u8s8 kernels add into one int16 on CPUs without VNNI (vpmaddubsw) kept within
    /// 128 levels, in the K order QLinearConv / QGemm / QLinearMatMul read (see KPairs), so no CPU saturates, at close
    /// to 8-bit precision. Before, 7-bit weights (<see cref="WeightEncoding.Int8ReducedRange"/>, 63 levels a side)
    /// avoided saturation at half the precision: ResNet18 (BN folded, per channel) mean feature cosine 0.9921 with
    /// them on 100 photos, see docs/results.md for the pair-bounded numbers.
    /// </summary>
    public WeightEncoding WeightEncoding { get; init; } = WeightEncoding.Int8PairBounded;

    /// <summary>
    /// One scale per output channel (needs default opset 13; older models are raised when safe), else one per weight
    /// tensor (opset 10 is enough, but the model is still raised to 13 when safe, for ORT's integer MaxPool). Default true.
    /// </summary>
    public bool PerChannel { get; init; } = true;

    /// <summary>Activation storage. Default <see cref="ActivationType.UInt8"/> (asymmetric).</summary>
    public ActivationType ActivationType { get; init; } = ActivationType.UInt8;

    /// <summary>Weights with fewer elements than this stay float. Default 16.</summary>
    public long MinimumWeightElements { get; init; } = 16;

    /// <summary>
    /// A Conv whose reduction per output value (input channels per group x kernel elements) is below this stays
    /// float. Default 64: ORT 1.31's QLinearConv on a 1-channel 5x5 input layer (reduction 25) took 5x the time of
    /// the float NCHWc Conv in a profile of mnist-lenet5, and such layers hold few weights. 0 quantizes every Conv.
    /// </summary>
    public long MinimumConvReduction { get; init; } = 64;

    /// <summary>Node names (or, for unnamed nodes, their first output) that must stay float.</summary>
    public IReadOnlyCollection<string> ExcludedNodes { get; init; } = [];
}

/// <summary>What <see cref="Int8StaticQuantizer.Apply"/> did.</summary>
public sealed class Int8StaticSummary
{
    public required string ModelDisplayName { get; init; }

    public WeightEncoding WeightEncoding { get; init; }

    public ActivationType ActivationType { get; init; }

    /// <summary>Whether weights got one scale per output channel (false when asked so, or when the opset could not be raised to 13).</summary>
    public bool PerChannel { get; init; }

    public bool AlreadyQuantized { get; init; }

    /// <summary>For a model with float16 weights: how the pass handled them (see Float16Lift); null otherwise.</summary>
    public string? Float16Weights { get; init; }

    public string? AlreadyQuantizedReason { get; init; }

    /// <summary>Quantized Conv/MatMul/Gemm nodes (Rows = reduction size, Columns = output channels).</summary>
    public IReadOnlyList<QuantizedNode> Quantized { get; init; } = [];

    public IReadOnlyList<SkippedNode> Skipped { get; init; } = [];

    /// <summary>Activation tensors that got a QuantizeLinear/DequantizeLinear pair.</summary>
    public int QuantizedActivations { get; init; }

    /// <summary>Default opset before the pass when it was raised (to 13, or to the highest of 12..10 with per-tensor weights when 13 cannot be reached), else null.</summary>
    public long? OpsetRaisedFrom { get; init; }

    /// <summary>Default opset after the pass when it was raised, else null.</summary>
    public long? OpsetRaisedTo { get; init; }

    /// <summary>What the pass did about an opset below 13 and why (raised, rewritten operators, per-tensor fallback), else null.</summary>
    public string? OpsetNote { get; init; }

    /// <summary>BatchNormalization nodes folded into the Conv before them (weights and bias).</summary>
    public int FoldedBatchNormalizations { get; init; }

    public bool NothingToQuantize => !AlreadyQuantized && Quantized.Count == 0;

    /// <summary>Serialized bytes before the pass (the streaming path: the .onnx plus its external data).</summary>
    public long ModelBytesBefore { get; internal set; }

    /// <summary>Serialized bytes after the pass (the streaming path: the written .onnx plus its data file).</summary>
    public long ModelBytesAfter { get; internal set; }

    public double SizeRatio => ModelBytesBefore == 0 ? 1.0 : (double)ModelBytesAfter / ModelBytesBefore;
}
