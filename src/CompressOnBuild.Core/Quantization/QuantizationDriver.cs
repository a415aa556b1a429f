using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization;

/// <summary>
/// The steps every weight-quantizing pass runs, in order: move the constants only one If/Loop/Scan body reads into
/// it; then in the main graph and every body, rewrite dense Einsums as MatMul and fold constant shape operators, and
/// find the sites of the scheme's lowerings (<see cref="WeightSites.Find"/>); check every weight before anything is
/// lowered, let the scheme prepare (GPTQ collects the main graph's activations), lower each graph's sites in graph
/// order, remove the float constants nothing reads any more, and import the opsets the rewrites asked for.
/// </summary>
internal static class QuantizationDriver
{
    /// <summary>
    /// Runs the steps on <paramref name="context"/>'s graph and its bodies (the context is left on the main graph);
    /// returns how many graph rewrites came before the lowering (constants moved, Einsums and shape operators folded).
    /// </summary>
    /// <exception cref="CompressException">CMPR0202 when a weight to quantize holds NaN or infinity (nothing is lowered then).</exception>
    public static int Run(LoweringContext context, IReadOnlyCollection<IOperatorLowering> lowerings)
    {
        PassGraph main = context.Graph;
        int rewritten = main.LocalizeSubgraphConstants();
        // Dense Einsums become MatMuls only for a scheme that quantizes MatMul through the registry.
        bool einsumAsMatMul = lowerings.Any(l => l.OpType == "MatMul" && l.Domain.Length == 0);
        var scopes = new List<(PassGraph Graph, List<WeightSite> Sites)>();
        foreach (PassGraph scope in main.WithSubgraphs())
        {
            context.UseScope(scope);
            rewritten += einsumAsMatMul ? DenseEinsum.Rewrite(scope, context.DisplayName) : 0;
            // Weights behind Reshape/Transpose/... of initializers become plain initializers first (see PassGraph).
            rewritten += scope.FoldConstantShapeOps(context.DisplayName);
            scopes.Add((scope, WeightSites.Find(context, lowerings)));
        }
        var checkedSources = new HashSet<string>(StringComparer.Ordinal);
        foreach (WeightSite site in scopes.SelectMany(s => s.Sites))
        {
            if (!site.ChecksItsOwnValues && checkedSources.Add(site.Weight.SourceName) && !context.AllFinite(site.Weight.Tensor))
            {
                context.UseScope(main);
                throw new CompressException(DiagnosticCodes.NonFiniteWeights, context.DisplayName, site.Weight.SourceName) { File = context.DisplayName };
            }
        }
        context.UseScope(main);
        context.Prepare(scopes[0].Sites);
        foreach ((PassGraph scope, List<WeightSite> sites) in scopes)
        {
            context.UseScope(scope);
            foreach (WeightSite site in sites)
            {
                site.Lowering.Lower(context, site);
            }
            scope.Commit();
            if (sites.Count > 0)
            {
                context.Replaced.RemoveUnused(scope);
            }
        }
        context.UseScope(main);
        if (context.Quantized.Count > 0)
        {
            context.ApplyOpsets();
        }
        return rewritten;
    }

    /// <summary>
    /// A whole weight-quantizing pass over <paramref name="model"/> (in place): a model that already runs quantized
    /// operators is left as it is; a float16 model is lifted to float32 compute (<see cref="Float16Lift"/>); then
    /// <see cref="Run"/> over <paramref name="scheme"/>'s registry entries, <paramref name="afterLowering"/> (operators
    /// the pass still lowers itself), the float16 weights left float put back, and the model tidied when something changed.
    /// </summary>
    /// <exception cref="CompressException">CMPR0103 for a model without a graph; CMPR0202 (see <see cref="Run"/>).</exception>
    public static PassRun Quantize(ModelProto model, string displayName, QuantizationScheme scheme,
        Func<PassGraph, LoweringContext> makeContext, Action<LoweringContext>? afterLowering = null)
    {
        if (model.Graph == null)
        {
            throw new CompressException(DiagnosticCodes.ModelInvalid, displayName, "it has no graph") { File = displayName };
        }
        long before = model.CalculateSize();
        if (QuantizedOperators.Describe(model) is { } already)
        {
            return new PassRun(before, before, already, null, null);
        }
        // A float16 model is quantized from its float16 weights, in float32 compute (see Float16Lift).
        Float16Lift? lift = Float16Lift.Apply(model, displayName);
        LoweringContext context = makeContext(new PassGraph(model));
        int rewritten = Run(context, OpRegistry.For(scheme));
        afterLowering?.Invoke(context);
        bool changed = context.Quantized.Count > 0;
        int restored = lift?.Finish(model, changed) ?? 0;
        if (changed)
        {
            PassGraph.DropInitializerInputs(model);
            PassGraph.StripDebugTraces(model);
        }
        long after = !changed && (rewritten == 0 || lift != null) ? before : model.CalculateSize();
        string? float16 = lift == null || !changed ? null : Float16Lift.Describe(lift.LiftedTensors, restored);
        return new PassRun(before, after, null, context, float16);
    }
}

/// <summary>What <see cref="QuantizationDriver.Quantize"/> did, for the pass's summary.</summary>
/// <param name="BytesBefore">Serialized size before.</param>
/// <param name="BytesAfter">Serialized size after (equal to before when nothing changed).</param>
/// <param name="AlreadyQuantized">Why the model counts as already quantized (then nothing ran), else null.</param>
/// <param name="Context">The context the lowerings filled (null when already quantized).</param>
/// <param name="Float16Weights">The float16 lift's description when a float16 model was quantized, else null.</param>
internal sealed record PassRun(long BytesBefore, long BytesAfter, string? AlreadyQuantized, LoweringContext? Context, string? Float16Weights);
