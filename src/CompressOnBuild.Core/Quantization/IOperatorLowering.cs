using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization;

/// <summary>
/// How one scheme quantizes one operator: which nodes are its weight sites (and why the others stay float), and
/// the rewrite of one site. Registered once in <see cref="OpRegistry"/>; <see cref="QuantizationDriver"/> calls
/// <see cref="FindSite"/> for every node of <see cref="OpType"/>/<see cref="Domain"/> in the main graph and in each
/// If/Loop/Scan body (<see cref="LoweringContext.Graph"/> is the graph the node is in), rejects weights
/// shared with anything that stays float, checks every weight, then calls <see cref="Lower"/> per site in graph order.
/// docs/architecture.md walks through adding one.
/// </summary>
internal interface IOperatorLowering
{
    /// <summary>The ONNX operator handled, e.g. "MatMul".</summary>
    string OpType { get; }

    /// <summary>Its domain: "" for ai.onnx, "com.microsoft" for ORT's contrib operators.</summary>
    string Domain { get; }

    /// <summary>
    /// True when every node of this type is a weight layer (MatMul, Gemm, Conv): nodes excluded by the options are
    /// reported as skipped without asking <see cref="FindSite"/>. False when only some are
    /// (a Gather is a layer only over a constant float table): those are reported only when <see cref="FindSite"/>
    /// returns a site or a reason.
    /// </summary>
    bool AlwaysALayer { get; }

    /// <summary>
    /// The weight site of <paramref name="node"/> (in <see cref="LoweringContext.Graph"/>), or null: after calling <paramref name="skip"/> with the
    /// reason when the layer stays float, or without it when the node is not a weight layer at all. Must not change
    /// the graph (every site is found and checked before anything is lowered).
    /// </summary>
    WeightSite? FindSite(LoweringContext context, NodeProto node, Action<string> skip);

    /// <summary>
    /// Rewrites <paramref name="site"/>: encodes its weight through the scheme in <paramref name="context"/> (once per
    /// weight, see <see cref="LoweringContext.Encoded{T}"/>), replaces the node with <see cref="PassGraph.Replace"/>,
    /// marks the float constants it stopped reading (<see cref="LoweringContext.Replaced"/>), requests opsets and
    /// adds one <see cref="Passes.QuantizedNode"/>.
    /// </summary>
    void Lower(LoweringContext context, WeightSite site);
}

/// <summary>A lowering for one scheme's context type (the cast is done once here).</summary>
internal abstract class OperatorLowering<TContext> : IOperatorLowering where TContext : LoweringContext
{
    public abstract string OpType { get; }

    public virtual string Domain => "";

    public virtual bool AlwaysALayer => true;

    public WeightSite? FindSite(LoweringContext context, NodeProto node, Action<string> skip) => FindSite((TContext)context, node, skip);

    public void Lower(LoweringContext context, WeightSite site) => Lower((TContext)context, site);

    protected abstract WeightSite? FindSite(TContext context, NodeProto node, Action<string> skip);

    protected abstract void Lower(TContext context, WeightSite site);
}
