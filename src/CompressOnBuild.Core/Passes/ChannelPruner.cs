using System.Globalization;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Structured pruning (Channels:f). A producer layer P (MatMul/Gemm, or Conv when enabled) is pruned only when its
/// output reaches exactly one consumer layer C through a chain the pass can follow: per-channel bias Adds (constant
/// [N] or [1, N]), elementwise unary activations (Relu, LeakyRelu, Sigmoid, Tanh, Elu, Selu, Softplus, HardSigmoid,
/// Identity, single-output Dropout) and, between Convs, MaxPool/AveragePool. The round(f x N) outputs of P with the
/// smallest L1 norm of their weights are removed from P's weight and bias, the chain's biases and C's input
/// dimension (MatMul/Gemm rows, Conv input channels); C = MatMul or Gemm without transA for a MatMul/Gemm producer,
/// Conv with group 1 for a Conv producer. Everything else is skipped with its reason (graph outputs, fan-out,
/// Flatten/Reshape between Conv and Gemm, weights behind a Reshape, shared biases...), so the graph stays connected.
/// <para>
/// With an activation source, each MatMul/Gemm consumer is refit by least squares on the original model's
/// calibration activations X of its input: W'_kept = W_kept + D, bias += d, where [D; d] minimises
/// || [X_kept 1] [D; d] - X_removed W_removed ||^2 + ridge ||D||^2, i.e. the kept inputs and the bias absorb what
/// the removed ones contributed (the bias part only when the consumer is a Gemm with a constant per-output C).
/// </para>
/// </summary>
internal static class ChannelPruner
{
    private static readonly HashSet<string> Unary = new(StringComparer.Ordinal)
    {
        "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "HardSigmoid", "Identity", "Dropout",
    };

    private sealed class Plan
    {
        public required PrunableLayer Producer { get; init; }

        public required PrunableLayer Consumer { get; init; }

        /// <summary>Constant per-output biases to slice: (initializer name, elements).</summary>
        public List<string> Biases { get; } = [];

        public List<string> Tensors { get; } = [];

        public int[] Keep { get; set; } = [];
    }

    public static void Run(PassGraph g, List<PrunableLayer> layers, PruningOptions options, string displayName, ActivationSource? activations,
        List<PrunedLayer> pruned, List<SkippedNode> skipped, List<string> reconstructed)
    {
        var consumers = new Dictionary<string, List<(NodeProto Node, int Index)>>(StringComparer.Ordinal);
        foreach (NodeProto n in g.Graph.Node)
        {
            for (int i = 0; i < n.Input.Count; i++)
            {
                if (n.Input[i].Length > 0)
                {
                    (consumers.TryGetValue(n.Input[i], out var list) ? list : consumers[n.Input[i]] = []).Add((n, i));
                }
            }
        }
        HashSet<string> outer = g.OuterUses();
        var byNode = new Dictionary<NodeProto, PrunableLayer>(ReferenceEqualityComparer.Instance);
        foreach (PrunableLayer l in layers)
        {
            byNode[l.Node] = l;
        }
        bool UsedOnceBy(string name, NodeProto node) =>
            !outer.Contains(name) && consumers.TryGetValue(name, out var u) && u.Count == 1 && ReferenceEquals(u[0].Node, node);
        bool Resizable(string weight) =>
            g.IsConstantInitializer(weight) || (g.Producers.TryGetValue(weight, out NodeProto? p) && p.OpType == "Constant");

        var plans = new List<Plan>();
        foreach (PrunableLayer p in layers)
        {
            string label = p.Label;
            void Skip(string why) => skipped.Add(new SkippedNode(label, p.Node.OpType, why));
            bool conv = p.Node.OpType == "Conv";
            if (conv && !options.PruneConvChannels)
            {
                Skip("Conv channel pruning is turned off in the options");
                continue;
            }
            if (conv && PassGraph.IntAttr(p.Node, "group", 1) != 1)
            {
                Skip("grouped Conv channels are not pruned");
                continue;
            }
            if (!Resizable(p.WeightName))
            {
                Skip($"weight '{p.WeightName}' comes through a Reshape; its shape cannot change");
                continue;
            }
            var plan = new Plan { Producer = p, Consumer = p };
            string? why = null;
            if (p.Node.Input.Count > 2 && p.Node.Input[2].Length > 0)
            {
                string b = p.Node.Input[2];
                if (!g.IsConstantInitializer(b) || !UsedOnceBy(b, p.Node))
                {
                    why = $"bias '{b}' is not a constant used by this node only";
                }
                else if (TensorUtil.ElementCount(g.Initializers[b]) == p.Outputs && g.Initializers[b].Dims.Count >= 1 && g.Initializers[b].Dims[^1] == p.Outputs)
                {
                    plan.Biases.Add(b);
                }
                else if (TensorUtil.ElementCount(g.Initializers[b]) != 1)
                {
                    why = $"bias '{b}' is not one value per output";
                }
            }
            PrunableLayer? consumer = null;
            string t = p.Node.Output[0];
            while (why == null)
            {
                plan.Tensors.Add(t);
                if (outer.Contains(t))
                {
                    why = $"'{t}' is a graph output or used inside a subgraph";
                    break;
                }
                List<(NodeProto Node, int Index)> uses = consumers.GetValueOrDefault(t) ?? [];
                if (uses.Count != 1)
                {
                    why = $"'{t}' feeds {uses.Count} nodes; only a single chain to one consumer layer is followed";
                    break;
                }
                (NodeProto u, int index) = uses[0];
                if (byNode.TryGetValue(u, out PrunableLayer? c) && index == 0)
                {
                    bool ok = conv
                        ? c.Node.OpType == "Conv" && PassGraph.IntAttr(c.Node, "group", 1) == 1
                        : c.Node.OpType == "MatMul" || (c.Node.OpType == "Gemm" && PassGraph.IntAttr(c.Node, "transA", 0) == 0);
                    if (!ok || !Resizable(c.WeightName))
                    {
                        why = $"its consumer {c.Node.OpType} '{c.Label}' cannot take fewer inputs here";
                        break;
                    }
                    consumer = c;
                    break;
                }
                string domain = ModelChecker.NormalizeDomain(u.Domain);
                if (domain.Length == 0 && (Unary.Contains(u.OpType) || (conv && u.OpType is "MaxPool" or "AveragePool")) && index == 0
                    && (u.Output.Count == 1 || u.Output.Skip(1).All(o => o.Length == 0 || (!consumers.ContainsKey(o) && !outer.Contains(o)))))
                {
                    t = u.Output[0];
                    continue;
                }
                if (domain.Length == 0 && u.OpType == "Add" && !conv && u.Input.Count == 2)
                {
                    string other = u.Input[1 - index];
                    if (g.IsConstantInitializer(other) && UsedOnceBy(other, u) && TensorUtil.ElementCount(g.Initializers[other]) == p.Outputs
                        && g.Initializers[other].Dims.Count is 1 or 2 && g.Initializers[other].Dims[^1] == p.Outputs)
                    {
                        plan.Biases.Add(other);
                        t = u.Output[0];
                        continue;
                    }
                }
                why = $"its output reaches {u.OpType} '{Int8DynamicQuantizer.Label(u)}', which this pass cannot follow to a consumer layer";
            }
            if (why != null)
            {
                Skip(why);
                continue;
            }
            int remove = (int)Math.Round(options.ChannelFraction * p.Outputs);
            int keep = Math.Max(1, p.Outputs - remove);
            if (keep == p.Outputs)
            {
                Skip($"{options.ChannelFraction.ToString(CultureInfo.InvariantCulture)} of {p.Outputs} outputs rounds to none");
                continue;
            }
            // L1 norm of each output's weights; keep the largest.
            var norms = new double[p.Outputs];
            for (int o = 0; o < p.Outputs; o++)
            {
                for (int r = 0; r < p.Reduction; r++)
                {
                    norms[o] += Math.Abs(p.Data[p.Index(o, r)]);
                }
            }
            plan.Keep = Enumerable.Range(0, p.Outputs).OrderByDescending(o => norms[o]).ThenBy(o => o).Take(keep).Order().ToArray();
            plans.Add(new Plan { Producer = p, Consumer = consumer! });
            plans[^1].Biases.AddRange(plan.Biases);
            plans[^1].Tensors.AddRange(plan.Tensors);
            plans[^1].Keep = plan.Keep;
        }
        if (plans.Count == 0)
        {
            return;
        }

        // Calibration activations of every MatMul/Gemm consumer's input, from the unchanged model.
        var refit = new Dictionary<PrunableLayer, Activation>();
        if (activations != null && options.Reconstruct)
        {
            List<Plan> dense = plans.Where(pl => pl.Consumer.Node.OpType != "Conv").ToList();
            if (dense.Count > 0)
            {
                IReadOnlyDictionary<string, Activation> values = activations(g.Model, dense.Select(pl => pl.Consumer.Node.Input[0]).Distinct(StringComparer.Ordinal).ToList());
                foreach (Plan pl in dense)
                {
                    string name = pl.Consumer.Node.Input[0];
                    if (!values.TryGetValue(name, out Activation? a) || a.Shape.Length < 2 || a.Shape[^1] != pl.Consumer.Reduction
                        || TensorUtil.ElementCount(a.Shape) != a.Data.Length || a.Data.Length == 0)
                    {
                        throw new CompressException(DiagnosticCodes.DataShape, "calibration activations", name,
                            $"expected [rows, {pl.Consumer.Reduction}] values") { File = displayName };
                    }
                    refit[pl.Consumer] = a;
                }
            }
        }

        var keepOut = plans.ToDictionary(pl => pl.Producer, pl => pl.Keep);
        var keepIn = plans.ToDictionary(pl => pl.Consumer, pl => pl.Keep);
        foreach (Plan pl in plans)
        {
            foreach (string b in pl.Biases)
            {
                TensorProto old = g.Initializers[b];
                float[] values = PassGraph.Floats(old, displayName);
                long[] dims = [.. old.Dims];
                dims[^1] = pl.Keep.Length;
                PrunableLayers.SetConstant(g, b, pl.Keep.Select(i => values[i]).ToArray(), dims);
            }
            foreach (string t in pl.Tensors)
            {
                g.RemoveValueInfo(t);
            }
        }
        foreach (PrunableLayer l in layers.Where(l => keepOut.ContainsKey(l) || keepIn.ContainsKey(l)))
        {
            int[] outs = keepOut.GetValueOrDefault(l) ?? Enumerable.Range(0, l.Outputs).ToArray();
            int[] ins = keepIn.GetValueOrDefault(l) ?? Enumerable.Range(0, l.Reduction / l.KernelSize).ToArray();
            long before = l.Data.Length, nonzeroBefore = PrunableLayers.CountNonzeros(l.Data);
            float[]? delta = null, biasDelta = null;
            if (refit.TryGetValue(l, out Activation? a))
            {
                (delta, biasDelta) = Refit(g, l, ins, outs, a, options.RidgeFactor, displayName);
                reconstructed.Add(l.Label);
            }
            int k = l.KernelSize;
            var data = new float[outs.Length * ins.Length * k];
            long[] dims;
            bool conv = l.Node.OpType == "Conv";
            bool transB = l.Node.OpType == "Gemm" && PassGraph.IntAttr(l.Node, "transB", 0) != 0;
            for (int oi = 0; oi < outs.Length; oi++)
            {
                for (int ii = 0; ii < ins.Length; ii++)
                {
                    for (int s = 0; s < k; s++)
                    {
                        float v = l.Data[l.Index(outs[oi], ins[ii] * k + s)];
                        if (delta != null)
                        {
                            v += delta[ii * outs.Length + oi];
                        }
                        int at = conv || transB ? (oi * ins.Length + ii) * k + s : ii * outs.Length + oi;
                        data[at] = v;
                    }
                }
            }
            dims = conv ? [outs.Length, ins.Length, .. l.Dims.Skip(2)] : transB ? [outs.Length, ins.Length] : [ins.Length, outs.Length];
            PrunableLayers.SetConstant(g, l.WeightName, data, dims);
            if (biasDelta != null)
            {
                string b = l.Node.Input[2];
                float[] bias = PassGraph.Floats(g.Initializers[b], displayName);
                for (int oi = 0; oi < outs.Length; oi++)
                {
                    bias[oi] += biasDelta[oi];
                }
                PrunableLayers.SetConstant(g, b, bias);
            }
            pruned.Add(new PrunedLayer(l.Label, l.Node.OpType, l.WeightName, before, nonzeroBefore, data.Length, PrunableLayers.CountNonzeros(data), l.Outputs, outs.Length));
        }
    }

    /// <summary>
    /// Least-squares correction of a MatMul/Gemm consumer that keeps inputs <paramref name="ins"/>: returns D
    /// ([ins, outs], row-major) and the bias change per kept output (null without a per-output constant Gemm C
    /// that belongs to this node alone; Gemm C must already hold the kept outputs, which callers ensure by slicing
    /// biases first).
    /// </summary>
    private static (float[] Delta, float[]? Bias) Refit(PassGraph g, PrunableLayer l, int[] ins, int[] outs, Activation a, double ridgeFactor, string displayName)
    {
        int features = l.Reduction;
        int rows = a.Data.Length / features;
        int[] removed = Enumerable.Range(0, features).Except(ins).ToArray();
        bool intercept = false;
        double biasScale = 1;
        if (l.Node.OpType == "Gemm" && l.Node.Input.Count > 2 && l.Node.Input[2].Length > 0 && g.IsConstantInitializer(l.Node.Input[2])
            && TensorUtil.ElementCount(g.Initializers[l.Node.Input[2]]) == outs.Length && g.Graph.Node.Sum(n => n.Input.Count(i => i == l.Node.Input[2])) == 1
            && PassGraph.FloatAttr(l.Node, "beta", 1f) != 0f)
        {
            intercept = true;
            biasScale = PassGraph.FloatAttr(l.Node, "alpha", 1f) / PassGraph.FloatAttr(l.Node, "beta", 1f);
        }
        int p = ins.Length + (intercept ? 1 : 0);
        // Design matrix Z = [X_kept (1)] and its transpose, removed inputs X_R and their weights W_R (kept outputs).
        var zt = new float[p * rows];
        var xr = new float[rows * removed.Length];
        for (int s = 0; s < rows; s++)
        {
            ReadOnlySpan<float> x = a.Data.AsSpan(s * features, features);
            for (int j = 0; j < ins.Length; j++)
            {
                zt[j * rows + s] = x[ins[j]];
            }
            if (intercept)
            {
                zt[ins.Length * rows + s] = 1f;
            }
            for (int j = 0; j < removed.Length; j++)
            {
                xr[s * removed.Length + j] = x[removed[j]];
            }
        }
        var wr = new float[removed.Length * outs.Length];
        for (int j = 0; j < removed.Length; j++)
        {
            for (int oi = 0; oi < outs.Length; oi++)
            {
                wr[j * outs.Length + oi] = l.Data[l.Index(outs[oi], removed[j])];
            }
        }
        var z = new float[rows * p];
        for (int i = 0; i < p; i++)
        {
            for (int s = 0; s < rows; s++)
            {
                z[s * p + i] = zt[i * rows + s];
            }
        }
        // T = X_R W_R (what the removed inputs contributed), G = Z^T Z, R = Z^T T: the Kernels' GEMM.
        var target = new float[rows * outs.Length];
        Gemm.Multiply(xr, wr, target, rows, outs.Length, removed.Length);
        var gramF = new float[p * p];
        Gemm.Multiply(zt, z, gramF, p, p, rows);
        var rhsF = new float[p * outs.Length];
        Gemm.Multiply(zt, target, rhsF, p, outs.Length, rows);
        double[] gram = [.. gramF.Select(v => (double)v)];
        double[] rhs = [.. rhsF.Select(v => (double)v)];
        double meanDiag = 0;
        for (int i = 0; i < ins.Length; i++)
        {
            meanDiag += gram[i * p + i];
        }
        double ridge = Math.Max(ridgeFactor * meanDiag / Math.Max(1, ins.Length), 1e-8);
        for (int i = 0; i < p; i++)
        {
            gram[i * p + i] += i < ins.Length ? ridge : 1e-8 * rows;
        }
        double[] solution = CholeskySolve(gram, rhs, p, outs.Length, displayName);
        var delta = new float[ins.Length * outs.Length];
        for (int i = 0; i < delta.Length; i++)
        {
            delta[i] = (float)solution[i];
        }
        float[]? bias = null;
        if (intercept)
        {
            bias = new float[outs.Length];
            for (int oi = 0; oi < outs.Length; oi++)
            {
                bias[oi] = (float)(solution[ins.Length * outs.Length + oi] * biasScale);
            }
        }
        return (delta, bias);
    }

    /// <summary>Solves A X = B for symmetric positive definite A ([n, n]) and B ([n, m]), row-major.</summary>
    private static double[] CholeskySolve(double[] a, double[] b, int n, int m, string displayName)
    {
        var lower = new double[n * n];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j <= i; j++)
            {
                double sum = a[i * n + j];
                for (int k = 0; k < j; k++)
                {
                    sum -= lower[i * n + k] * lower[j * n + k];
                }
                if (i == j)
                {
                    if (!(sum > 0))
                    {
                        throw new CompressException(DiagnosticCodes.DataShape, "calibration activations", "least-squares refit",
                            "the activations are degenerate (not positive definite even with the ridge term)") { File = displayName };
                    }
                    lower[i * n + i] = Math.Sqrt(sum);
                }
                else
                {
                    lower[i * n + j] = sum / lower[j * n + j];
                }
            }
        }
        var x = (double[])b.Clone();
        for (int c = 0; c < m; c++)
        {
            for (int i = 0; i < n; i++)
            {
                double sum = x[i * m + c];
                for (int k = 0; k < i; k++)
                {
                    sum -= lower[i * n + k] * x[k * m + c];
                }
                x[i * m + c] = sum / lower[i * n + i];
            }
            for (int i = n - 1; i >= 0; i--)
            {
                double sum = x[i * m + c];
                for (int k = i + 1; k < n; k++)
                {
                    sum -= lower[k * n + i] * x[k * m + c];
                }
                x[i * m + c] = sum / lower[i * n + i];
            }
        }
        return x;
    }
}
