using CompressOnBuild.Kernels;

namespace CompressOnBuild.Core.Quantization;

/// <summary>
/// The steps every weight-quantizing pass runs, in order: fold constant shape operators, find the sites of the
/// scheme's lowerings (<see cref="WeightSites.Find"/>), check every weight before anything changes, let the scheme
/// prepare (GPTQ collects activations), lower each site in graph order, then remove the float constants nothing reads
/// any more and import the opsets the rewrites asked for.
/// </summary>
internal static class QuantizationDriver
{
    /// <summary>Runs the steps on <paramref name="context"/>'s graph; returns how many shape operators were folded.</summary>
    /// <exception cref="CompressException">CMPR0202 when a weight to quantize holds NaN or infinity (nothing is changed then but the folding).</exception>
    public static int Run(LoweringContext context, IReadOnlyCollection<IOperatorLowering> lowerings)
    {
        PassGraph g = context.Graph;
        // Weights behind Reshape/Transpose/... of initializers become plain initializers first (see PassGraph).
        int folded = g.FoldConstantShapeOps(context.DisplayName);
        List<WeightSite> sites = WeightSites.Find(context, lowerings);
        var checkedSources = new HashSet<string>(StringComparer.Ordinal);
        foreach (WeightSite site in sites)
        {
            if (checkedSources.Add(site.Weight.SourceName) && !TensorStats.AllFinite(context.Floats(site.Weight.Tensor)))
            {
                throw new CompressException(DiagnosticCodes.NonFiniteWeights, context.DisplayName, site.Weight.SourceName) { File = context.DisplayName };
            }
        }
        context.Prepare(sites);
        foreach (WeightSite site in sites)
        {
            site.Lowering.Lower(context, site);
        }
        g.Commit();
        if (context.Quantized.Count > 0)
        {
            context.Replaced.RemoveUnused(g);
            context.ApplyOpsets();
        }
        return folded;
    }
}
