using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Per input feature (MatMul/Gemm: last axis of the input; Conv: channel axis 1) RMS and mean of a layer's input
/// over the calibration samples, for activation-aware ranking and bias correction.
/// </summary>
internal sealed class FeatureStats(double[] rms, double[] mean)
{
    public double[] Rms { get; } = rms;

    public double[] Mean { get; } = mean;

    /// <summary>Stats for every layer whose input can be read per feature; CMPR0303 when an activation does not fit.</summary>
    public static Dictionary<PrunableLayer, FeatureStats> Collect(PassGraph g, List<PrunableLayer> layers, ActivationSource source, string displayName)
    {
        var usable = layers.Where(l => !(l.Node.OpType == "Gemm" && PassGraph.IntAttr(l.Node, "transA", 0) != 0)).ToList();
        List<string> names = usable.Select(l => l.Node.Input[0]).Distinct(StringComparer.Ordinal).ToList();
        if (names.Count == 0)
        {
            return [];
        }
        IReadOnlyDictionary<string, Activation> values = source(g.Model, names);
        var result = new Dictionary<PrunableLayer, FeatureStats>();
        var cache = new Dictionary<(string, int), FeatureStats>();
        foreach (PrunableLayer l in usable)
        {
            string name = l.Node.Input[0];
            if (!values.TryGetValue(name, out Activation? a))
            {
                throw CompressException.ForFile(displayName, DiagnosticCodes.DataShape, "calibration activations", name, "the activation source returned no values for it");
            }
            bool conv = l.Node.OpType == "Conv";
            int axis = conv ? 1 : a.Shape.Length - 1;
            int features = l.Reduction / l.KernelSize;
            if (a.Shape.Length < 2 || axis < 0 || a.Shape[axis] != features || TensorUtil.ElementCount(a.Shape) != a.Data.Length || a.Data.Length == 0)
            {
                throw CompressException.ForFile(displayName, DiagnosticCodes.DataShape, "calibration activations", name,
                    $"shape [{string.Join(",", a.Shape)}] with {a.Data.Length} values does not give {features} features on axis {axis}");
            }
            if (!cache.TryGetValue((name, axis), out FeatureStats? st))
            {
                cache[(name, axis)] = st = Compute(a, axis);
            }
            result[l] = st;
        }
        return result;
    }

    public static FeatureStats Compute(Activation a, int axis)
    {
        int features = (int)a.Shape[axis];
        long inner = 1;
        for (int i = axis + 1; i < a.Shape.Length; i++)
        {
            inner *= a.Shape[i];
        }
        var sum = new double[features];
        var squares = new double[features];
        long count = a.Data.Length / features;
        for (long i = 0; i < a.Data.Length; i++)
        {
            int f = (int)(i / inner % features);
            double v = a.Data[i];
            sum[f] += v;
            squares[f] += v * v;
        }
        return new FeatureStats(squares.Select(s => Math.Sqrt(s / count)).ToArray(), sum.Select(s => s / count).ToArray());
    }

    private static int Feature(PrunableLayer l, int reduction) => reduction / l.KernelSize;

    /// <summary>|w| x RMS(input feature) per weight element.</summary>
    public float[] Scores(PrunableLayer l)
    {
        var scores = new float[l.Data.Length];
        for (int o = 0; o < l.Outputs; o++)
        {
            for (int r = 0; r < l.Reduction; r++)
            {
                int i = l.Index(o, r);
                scores[i] = (float)(Math.Abs(l.Data[i]) * Rms[Feature(l, r)]);
            }
        }
        return scores;
    }

    /// <summary>
    /// Adds E[x] x (original - pruned weights) per output to the layer's bias (Gemm C scaled by alpha/beta, Conv B),
    /// when that bias is a constant initializer of one value per output read by this node only. False otherwise.
    /// </summary>
    public bool CorrectBias(PassGraph g, PrunableLayer l, float[] original, string displayName)
    {
        NodeProto n = l.Node;
        if (n.Input.Count < 3 || n.Input[2].Length == 0 || !g.IsConstantInitializer(n.Input[2]))
        {
            return false;
        }
        string biasName = n.Input[2];
        // From the graph's indexes (pruning changes no node's inputs): a scan of every node per layer was quadratic.
        if (g.NodeUses(biasName) != 1 || g.Outer.Contains(biasName))
        {
            return false;
        }
        float[] bias = PassGraph.Floats(g.Initializers[biasName], displayName);
        if (bias.Length != l.Outputs)
        {
            return false;
        }
        double scale = 1;
        if (n.OpType == "Gemm")
        {
            float beta = PassGraph.FloatAttr(n, "beta", 1f);
            if (beta == 0f)
            {
                return false;
            }
            scale = PassGraph.FloatAttr(n, "alpha", 1f) / beta;
        }
        for (int o = 0; o < l.Outputs; o++)
        {
            double shift = 0;
            for (int r = 0; r < l.Reduction; r++)
            {
                int i = l.Index(o, r);
                shift += (original[i] - l.Data[i]) * Mean[Feature(l, r)];
            }
            bias[o] += (float)(shift * scale);
        }
        PrunableLayers.SetConstant(g, biasName, bias);
        return true;
    }
}
