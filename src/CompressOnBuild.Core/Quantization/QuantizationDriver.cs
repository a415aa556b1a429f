using CompressOnBuild.Kernels;

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
            if (checkedSources.Add(site.Weight.SourceName) && !TensorStats.AllFinite(context.Floats(site.Weight.Tensor)))
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
}
