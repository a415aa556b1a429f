namespace CompressOnBuild.Core.Passes;

/// <summary>One node the pass rewrote.</summary>
/// <param name="Node">Node name (or first output when unnamed).</param>
/// <param name="OpType">The original operator (MatMul or Gemm).</param>
/// <param name="Weight">The float weight it used.</param>
/// <param name="Rows">K: the reduction dimension of the weight.</param>
/// <param name="Columns">N: output channels (one scale each).</param>
/// <param name="MaxAbsWeightError">Largest |w - dequantized(w)| over the weight (at most half a step).</param>
public sealed record QuantizedNode(string Node, string OpType, string Weight, int Rows, int Columns, float MaxAbsWeightError);

/// <summary>One candidate node the pass left in float, and why.</summary>
public sealed record SkippedNode(string Node, string OpType, string Reason);

/// <summary>One measured smoothing decision: the input, the alpha chosen (0: none), summed squared output errors.</summary>
public sealed record SmoothingOutcome(string Input, float Alpha, double ErrorWithout, double ErrorWith);

/// <summary>What <see cref="Int8DynamicQuantizer.Apply"/> did.</summary>
public sealed class QuantizationSummary
{
    public required string ModelDisplayName { get; init; }

    public required WeightEncoding WeightEncoding { get; init; }

    /// <summary>The model already holds quantized operators; it was left unchanged (the CLI warns CMPR0201).</summary>
    public bool AlreadyQuantized { get; init; }

    /// <summary>Why it counts as already quantized, e.g. "3 QuantizeLinear, 3 DequantizeLinear nodes".</summary>
    public string? AlreadyQuantizedReason { get; init; }

    public IReadOnlyList<QuantizedNode> Quantized { get; init; } = [];

    public IReadOnlyList<SkippedNode> Skipped { get; init; } = [];

    /// <summary>Nothing was quantized and the model was not already quantized (the CLI warns CMPR0203).</summary>
    public bool NothingToQuantize => !AlreadyQuantized && Quantized.Count == 0;

    /// <summary>Serialized model size before the pass.</summary>
    public long ModelBytesBefore { get; init; }

    /// <summary>Serialized model size after the pass (equal to before when nothing changed).</summary>
    public long ModelBytesAfter { get; init; }

    /// <summary>Bytes of the float weights that were replaced.</summary>
    public long FloatWeightBytes { get; init; }

    /// <summary>Bytes of the integer weights, scales, zero points and biases that replaced them.</summary>
    public long QuantizedWeightBytes { get; init; }

    /// <summary>For a model with float16 weights: how the pass handled them (see Float16Lift); null otherwise.</summary>
    public string? Float16Weights { get; init; }

    /// <summary>
    /// Layer inputs whose activation smoothing was measured (Int8Dynamic with calibration activations), each with
    /// the alpha chosen (0: left unsmoothed) and the simulated output error without and with it.
    /// </summary>
    public IReadOnlyList<SmoothingOutcome> Smoothing { get; init; } = [];

    /// <summary>ModelBytesAfter / ModelBytesBefore.</summary>
    public double SizeRatio => ModelBytesBefore == 0 ? 1.0 : (double)ModelBytesAfter / ModelBytesBefore;
}
