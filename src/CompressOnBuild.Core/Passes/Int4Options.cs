namespace CompressOnBuild.Core.Passes;

/// <summary>How <see cref="Int4WeightQuantizer"/> picks the 4-bit codes.</summary>
public enum Int4Method
{
    /// <summary>Round to nearest, block by block (no data needed).</summary>
    Rtn = 0,

    /// <summary>
    /// Second-order error feedback from calibration activations (<see cref="Int4Gptq"/>): minimizes the layer's
    /// output error on the calibration inputs instead of the weight error. Needs <see cref="Int4Options.Activations"/>.
    /// </summary>
    Gptq = 1,
}

/// <summary>Settings for <see cref="Int4WeightQuantizer"/>.</summary>
public sealed class Int4Options
{
    public static Int4Options Default { get; } = new();

    /// <summary>Weights per scale along K: 16, 32, 64 or 128 (default 32; smaller is more accurate, larger smaller).</summary>
    public int BlockSize { get; init; } = 32;

    /// <summary>
    /// true (default): levels -8..7 around zero point 8 (the zero_points input is omitted), the block's largest
    /// magnitude mapped exactly onto -8. false: per-block min/max with a stored 4-bit zero point.
    /// </summary>
    public bool Symmetric { get; init; } = true;

    /// <summary>
    /// MatMulNBits accuracy_level: 0 = unset (ORT's most accurate float32 path), 4 = int8 activations (faster,
    /// less accurate). Default 0.
    /// </summary>
    public long AccuracyLevel { get; init; }

    /// <summary>Weights with fewer elements than this stay float. Default 64.</summary>
    public long MinimumWeightElements { get; init; } = 64;

    /// <summary>Node names (or, for unnamed nodes, their first output) that must stay float.</summary>
    public IReadOnlyCollection<string> ExcludedNodes { get; init; } = [];

    public Int4Method Method { get; init; } = Int4Method.Rtn;

    /// <summary>
    /// true (default): each block's range is the one (of min/max and narrower clips) with the smallest squared
    /// rounding error over the block (<see cref="Int4WeightQuantizer.SearchScale"/>), for RTN, GPTQ and embedding
    /// tables alike. false: min/max ranges (every weight within half a step). The streaming path (models over 1.5 GB)
    /// always takes min/max ranges.
    /// </summary>
    public bool MseScales { get; init; } = true;

    /// <summary>
    /// GPTQ (default true): quantize the inputs from the largest Hessian diagonal down, with every block's scale fixed
    /// first from the weights (static groups, so the layout stays plain MatMulNBits blocks); false: in input order,
    /// each block's scale chosen from the error-corrected weights when the block is reached.
    /// </summary>
    public bool GptqActOrder { get; init; } = true;

    /// <summary>Calibration activations of the layers' inputs, for <see cref="Int4Method.Gptq"/>.</summary>
    public ActivationSource? Activations { get; init; }

    /// <summary>GPTQ: dampening added to the Hessian's diagonal, as a fraction of its mean diagonal (default 0.01).</summary>
    public double GptqDampening { get; init; } = 0.01;
}

/// <summary>What <see cref="Int4WeightQuantizer.Apply"/> did.</summary>
public sealed class Int4Summary
{
    public required string ModelDisplayName { get; init; }

    public int BlockSize { get; init; }

    public bool Symmetric { get; init; }

    /// <summary>"RTN" or "GPTQ" (the method asked for; <see cref="RoundedToNearest"/> lists layers GPTQ could not take).</summary>
    public string Method { get; init; } = "RTN";

    /// <summary>With GPTQ: labels of layers quantized round-to-nearest instead (transposed input, or a Hessian that would not factorize).</summary>
    public IReadOnlyList<string> RoundedToNearest { get; init; } = [];

    /// <summary>The model already holds quantized operators; it was left unchanged (CMPR0201 in the CLI).</summary>
    public bool AlreadyQuantized { get; init; }

    /// <summary>For a model with float16 weights: how the pass handled them (see Float16Lift); null otherwise.</summary>
    public string? Float16Weights { get; init; }

    public string? AlreadyQuantizedReason { get; init; }

    /// <summary>Rewritten nodes; Rows = K, Columns = N, MaxAbsWeightError = largest |w - dequantized(w)|.</summary>
    public IReadOnlyList<QuantizedNode> Quantized { get; init; } = [];

    public IReadOnlyList<SkippedNode> Skipped { get; init; } = [];

    /// <summary>Nothing was quantized and the model was not already quantized (CMPR0203 in the CLI).</summary>
    public bool NothingToQuantize => !AlreadyQuantized && Quantized.Count == 0;

    public long ModelBytesBefore { get; init; }

    public long ModelBytesAfter { get; init; }

    /// <summary>Bytes of the float weights that were replaced.</summary>
    public long FloatWeightBytes { get; init; }

    /// <summary>Bytes of the packed weights, scales, zero points and biases that replaced them.</summary>
    public long QuantizedWeightBytes { get; init; }

    public double SizeRatio => ModelBytesBefore == 0 ? 1.0 : (double)ModelBytesAfter / ModelBytesBefore;
}
