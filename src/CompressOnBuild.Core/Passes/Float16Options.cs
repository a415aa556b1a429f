namespace CompressOnBuild.Core.Passes;

/// <summary>Settings for <see cref="Float16Converter"/>.</summary>
public sealed class Float16Options
{
    /// <summary>
    /// Operators kept in float32 by default even though the pass knows their float16 form. Two groups:
    /// <list type="bullet">
    /// <item>Ops ORT 1.31's CPU provider has no float16 kernel for on x64 (measured by the Passes test
    /// Default_block_list_covers_the_ops_ort_cpu_has_no_float16_kernel_for): ORT would insert a Cast pair around
    /// each of them anyway; keeping them float32 lets consecutive ones share Casts. Their weights (BatchNormalization,
    /// InstanceNormalization, PRelu slopes) stay float32, which costs little.</item>
    /// <item>Ops whose results can exceed the float16 range (65504) or lose too much in half (exponentials, powers,
    /// sums and products of many values), or that take float parameters that must stay exact (resize scales).</item>
    /// </list>
    /// Natively float16 on ORT CPU (not blocked): Conv, MatMul, Gemm, Add, Sub, Mul, Div, Max, Min, Sum, Mean, Round,
    /// Identity, Reshape, Flatten, Concat, Transpose, Clip, and the data-movement ops.
    /// </summary>
    public static IReadOnlySet<string> DefaultBlockedOps { get; } = new HashSet<string>(StringComparer.Ordinal)
    {
        // no float16 kernel in ORT CPU (x64)
        "PRelu", "Relu", "LeakyRelu", "Elu", "Selu", "HardSigmoid", "HardSwish", "Softsign", "Sigmoid", "Tanh", "Abs", "Neg",
        "Sqrt", "Reciprocal", "Floor", "Ceil", "Erf", "Log", "Sin", "Cos", "Softmax", "LogSoftmax", "MaxPool", "AveragePool",
        "GlobalAveragePool", "GlobalMaxPool", "LpPool", "LRN", "BatchNormalization", "InstanceNormalization",
        "LayerNormalization", "ReduceMean", "ReduceMax", "ReduceMin", "Gelu", "Mish", "ThresholdedRelu", "Shrink",
        // range or exactness
        "Exp", "Pow", "Softplus", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp",
        "ReduceProd", "CumSum", "Resize", "Upsample", "TopK", "Range",
    };

    public static Float16Options Default { get; } = new();

    /// <summary>Operator types that stay float32 (with Casts around them). Default <see cref="DefaultBlockedOps"/>.</summary>
    public IReadOnlySet<string> BlockedOps { get; init; } = DefaultBlockedOps;

    /// <summary>Node names (or, for unnamed nodes, their first output) that must stay float32.</summary>
    public IReadOnlyCollection<string> ExcludedNodes { get; init; } = [];
}

/// <summary>What <see cref="Float16Converter.Apply"/> did.</summary>
public sealed class Float16Summary
{
    public required string ModelDisplayName { get; init; }

    /// <summary>The model already stores its weights in float16 (no float32 weights): left unchanged.</summary>
    public bool AlreadyFloat16 { get; init; }

    /// <summary>The model runs quantized operators: left unchanged (CMPR0201 in the CLI).</summary>
    public bool AlreadyQuantized { get; init; }

    /// <summary>Why the model was left unchanged, e.g. "26 FLOAT16 initializers and no FLOAT32 weights".</summary>
    public string? UnchangedReason { get; init; }

    /// <summary>Nodes now computing in float16.</summary>
    public int ConvertedNodes { get; init; }

    /// <summary>Float nodes that stay float32, and why (blocked op, excluded, no float16 form known, subgraph).</summary>
    public IReadOnlyList<SkippedNode> KeptFloat32 { get; init; } = [];

    /// <summary>Initializers and Constant tensors converted to float16.</summary>
    public int ConvertedTensors { get; init; }

    /// <summary>Elements in those tensors.</summary>
    public long ConvertedElements { get; init; }

    /// <summary>Finite weight values beyond +-65504 that were clamped (the CLI should warn when &gt; 0).</summary>
    public long ClampedValues { get; init; }

    /// <summary>Cast nodes added at the graph edges and around float32 nodes.</summary>
    public int CastsInserted { get; init; }

    /// <summary>Nothing was converted and the model was not already float16 or quantized.</summary>
    public bool NothingConverted => !AlreadyFloat16 && !AlreadyQuantized && ConvertedNodes == 0 && ConvertedTensors == 0;

    public long ModelBytesBefore { get; init; }

    public long ModelBytesAfter { get; init; }

    /// <summary>ModelBytesAfter / ModelBytesBefore.</summary>
    public double SizeRatio => ModelBytesBefore == 0 ? 1.0 : (double)ModelBytesAfter / ModelBytesBefore;
}
