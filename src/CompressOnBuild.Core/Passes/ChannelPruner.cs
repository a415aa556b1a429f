using System.Globalization;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Structured pruning (Channels:f). A producer layer P (MatMul/Gemm, or Conv when enabled) is pruned only when its
/// output reaches exactly one consumer layer C through a chain the pass can follow: per-output bias Adds (constant
/// [N] or [1, N] after MatMul/Gemm; [N, 1, ...] or [1, N, 1, ...] on the channel axis after Conv), elementwise unary
/// activations (Relu, LeakyRelu, Sigmoid, Tanh, Elu, Selu, Softplus, HardSigmoid, Identity, single-output Dropout)
/// and, after a Conv, BatchNormalization (constant scale/B/mean/var of this node only), MaxPool/AveragePool and one
/// Flatten (axis 1) or Reshape to [batch, channels x spatial] (constant shape; the input's shape must be known
/// statically) before a MatMul/Gemm. The round(f x N) outputs of P with the smallest L1 norm of their weights are
/// removed from P's weight and bias, the chain's per-channel constants and C's input dimension (MatMul/Gemm rows,
/// S of them per channel after a Flatten of S spatial positions; Conv input channels); C = MatMul or Gemm without
/// transA, or Conv with group 1 after a Conv without Flatten. Weights may be initializers, Constants or a Reshape of
/// a float initializer by an int64 initializer (both are resized). Everything else is skipped with its reason
/// (graph outputs, fan-out, Concat/Add of two tensors, grouped Convs, shared biases...), so the graph stays connected.
/// <para>
/// With an activation source, each consumer is refit by least squares on the original model's calibration
/// activations of its input: W'_kept = W_kept + D, bias += d, where [D; d] minimises
/// || [X_kept 1] [D; d] - X_removed W_removed ||^2 + ridge ||D||^2, i.e. the kept inputs and the bias absorb what
/// the removed ones contributed to the consumer's pre-activation output. For MatMul/Gemm the rows of X are the input
/// rows (the bias part only when the consumer is a Gemm with a constant per-output C). For a Conv consumer the rows
/// are im2col patches of its input (pads/auto_pad, strides, dilations; up to 32,768 patches evenly spaced over
/// samples x output positions, fewer for wide layers) and the unknowns, per output channel, are the kept input
/// channels x kernel positions plus the bias; a Conv without a bias input gets one. Grouped/depthwise Conv
/// consumers are never reached (their producer is skipped: each output sees only its group's channels), and Conv
/// consumers with more than 2,304 inputs per output (channels x kernel) are pruned without refit, listed as skipped
/// with that reason. X^T X and X^T T are computed with the Kernels' fp32 GEMM, the solve (Cholesky)
/// in double.
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

        /// <summary>The producer itself until the chain to the consumer layer has been followed.</summary>
        public required PrunableLayer Consumer { get; set; }

        /// <summary>Constant per-channel tensors to slice: initializer name and the axis (counted from the end) that holds the channels.</summary>
        public List<(string Name, int FromEnd)> Biases { get; } = [];

        public List<string> Tensors { get; } = [];

        public int[] Keep { get; set; } = [];

        /// <summary>Values per channel on the consumer's input: 1, or the spatial size when a Flatten/Reshape sits between a Conv and a MatMul/Gemm.</summary>
        public long Spatial { get; set; } = 1;

        /// <summary>A Reshape's constant int64 shape whose last element (channels x spatial) must shrink with the channels.</summary>
        public string? ReshapeShape { get; set; }
    }

    public static void Run(PassGraph g, List<PrunableLayer> layers, PruningOptions options, string displayName, ActivationSource? activations,
        List<PrunedLayer> pruned, List<SkippedNode> skipped, List<string> reconstructed)
    {
        Dictionary<string, List<(NodeProto Node, int Index)>> consumers = PrunableLayers.Uses(g);
        HashSet<string> outer = g.OuterUses();
        var byNode = new Dictionary<NodeProto, PrunableLayer>(ReferenceEqualityComparer.Instance);
        foreach (PrunableLayer l in layers)
        {
            byNode[l.Node] = l;
        }
        bool UsedOnceBy(string name, NodeProto node) =>
            !outer.Contains(name) && consumers.TryGetValue(name, out var u) && u.Count == 1 && ReferenceEquals(u[0].Node, node);
        bool Resizable(string weight) =>
            g.IsConstantInitializer(weight) || (g.Producers.TryGetValue(weight, out NodeProto? p) && (p.OpType == "Constant" || ReshapedWeight(g, p)));
        Dictionary<string, long[]>? shapes = null;

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
            if (conv && activations == null)
            {
                // Measured on mnist-lenet5 (Channels:0.3): 10.4 points of top-1 without the refit, 0.5 with it.
                Skip("Conv channels are pruned only with calibration activations (CalibrationData) for the least-squares refit");
                continue;
            }
            if (conv && PassGraph.IntAttr(p.Node, "group", 1) != 1)
            {
                Skip("grouped Conv channels are not pruned");
                continue;
            }
            if (!Resizable(p.WeightName))
            {
                Skip($"weight '{p.WeightName}' comes through a node other than a Reshape of initializers; its shape cannot change");
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
                    plan.Biases.Add((b, 1));
                }
                else if (TensorUtil.ElementCount(g.Initializers[b]) != 1)
                {
                    why = $"bias '{b}' is not one value per output";
                }
            }
            // Conv output rank (batch, channels, spatial...): per-channel constants are aligned to axis 1 from the right.
            int rank = p.Dims.Length;
            bool flat = false;
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
                    bool ok = conv && !flat
                        ? c.Node.OpType == "Conv" && PassGraph.IntAttr(c.Node, "group", 1) == 1 && c.Reduction / c.KernelSize == p.Outputs
                        : (c.Node.OpType == "MatMul" || (c.Node.OpType == "Gemm" && PassGraph.IntAttr(c.Node, "transA", 0) == 0)) && c.Reduction == p.Outputs * plan.Spatial;
                    if (!ok || !Resizable(c.WeightName))
                    {
                        why = $"its consumer {c.Node.OpType} '{c.Label}' cannot take fewer inputs here";
                        break;
                    }
                    consumer = c;
                    break;
                }
                string domain = ModelChecker.NormalizeDomain(u.Domain);
                bool singleOutput = u.Output.Count == 1 || u.Output.Skip(1).All(o => o.Length == 0 || (!consumers.ContainsKey(o) && !outer.Contains(o)));
                if (domain.Length == 0 && (Unary.Contains(u.OpType) || (conv && !flat && u.OpType is "MaxPool" or "AveragePool")) && index == 0 && singleOutput)
                {
                    t = u.Output[0];
                    continue;
                }
                if (domain.Length == 0 && u.OpType == "Add" && !flat && u.Input.Count == 2)
                {
                    // A per-output bias: [N] or [1, N] after MatMul/Gemm; [N, 1, ...] or [1, N, 1, ...] (channel axis) after Conv.
                    string other = u.Input[1 - index];
                    if (g.IsConstantInitializer(other) && UsedOnceBy(other, u) && TensorUtil.ElementCount(g.Initializers[other]) == p.Outputs
                        && ChannelAxisFromEnd(g.Initializers[other].Dims, conv ? rank : 2, p.Outputs) is int fromEnd)
                    {
                        plan.Biases.Add((other, fromEnd));
                        t = u.Output[0];
                        continue;
                    }
                }
                if (domain.Length == 0 && u.OpType == "BatchNormalization" && conv && !flat && index == 0 && singleOutput && u.Input.Count == 5
                    && u.Input.Skip(1).All(i => g.IsConstantInitializer(i) && UsedOnceBy(i, u) && g.Initializers[i].Dims.Count == 1 && g.Initializers[i].Dims[0] == p.Outputs))
                {
                    plan.Biases.AddRange(u.Input.Skip(1).Select(i => (i, 1)));
                    t = u.Output[0];
                    continue;
                }
                if (domain.Length == 0 && conv && !flat && index == 0 && u.OpType is "Flatten" or "Reshape")
                {
                    // Conv -> Flatten/Reshape -> MatMul/Gemm: channel c becomes the consumer's inputs c*S .. c*S+S-1 (S = spatial size).
                    shapes ??= PrunableLayers.PropagateShapes(g);
                    string? flatWhy = FlattenCheck(g, u, shapes.GetValueOrDefault(t), p.Outputs, out long spatial, out string? shapeName);
                    if (flatWhy == null && shapeName != null && !UsedOnceBy(shapeName, u))
                    {
                        flatWhy = $"its shape '{shapeName}' is shared";
                    }
                    if (flatWhy != null)
                    {
                        why = $"its output reaches {u.OpType} '{OnnxNames.Label(u)}', and {flatWhy}";
                        break;
                    }
                    flat = true;
                    plan.Spatial = spatial;
                    plan.ReshapeShape = shapeName;
                    t = u.Output[0];
                    continue;
                }
                why = $"its output reaches {u.OpType} '{OnnxNames.Label(u)}', which this pass cannot follow to a consumer layer";
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
            plan.Consumer = consumer!;
            plans.Add(plan);
        }
        if (plans.Count == 0)
        {
            return;
        }

        // Calibration activations of every consumer's input, from the unchanged model.
        var refit = new Dictionary<PrunableLayer, Activation>();
        if (activations != null && options.Reconstruct)
        {
            var wanted = new List<Plan>();
            foreach (Plan pl in plans)
            {
                if (pl.Consumer.Node.OpType == "Conv" && ConvRefitSkip(pl.Consumer) is { } reason)
                {
                    skipped.Add(new SkippedNode(pl.Consumer.Label, "Conv", "no least-squares refit: " + reason));
                    continue;
                }
                wanted.Add(pl);
            }
            if (wanted.Count > 0)
            {
                IReadOnlyDictionary<string, Activation> values = activations(g.Model, wanted.Select(pl => pl.Consumer.Node.Input[0]).Distinct(StringComparer.Ordinal).ToList());
                foreach (Plan pl in wanted)
                {
                    string name = pl.Consumer.Node.Input[0];
                    bool convConsumer = pl.Consumer.Node.OpType == "Conv";
                    int channels = pl.Consumer.Reduction / pl.Consumer.KernelSize;
                    if (!values.TryGetValue(name, out Activation? a) || TensorUtil.ElementCount(a.Shape) != a.Data.Length || a.Data.Length == 0
                        || (convConsumer ? a.Shape.Length != pl.Consumer.Dims.Length || a.Shape[1] != channels : a.Shape.Length < 2 || a.Shape[^1] != pl.Consumer.Reduction))
                    {
                        throw new CompressException(DiagnosticCodes.DataShape, "calibration activations", name,
                            convConsumer ? $"expected [samples, {channels}, spatial...] values" : $"expected [rows, {pl.Consumer.Reduction}] values") { File = displayName };
                    }
                    refit[pl.Consumer] = a;
                }
            }
        }

        var keepOut = plans.ToDictionary(pl => pl.Producer, pl => pl.Keep);
        // The consumer's kept inputs in its own units: channels of a Conv, rows of a MatMul/Gemm (channel x spatial after a Flatten).
        var keepIn = plans.ToDictionary(pl => pl.Consumer, pl => pl.Spatial == 1 ? pl.Keep
            : pl.Keep.SelectMany(c => Enumerable.Range((int)(c * pl.Spatial), (int)pl.Spatial)).ToArray());
        foreach (Plan pl in plans)
        {
            foreach ((string b, int fromEnd) in pl.Biases)
            {
                TensorProto old = g.Initializers[b];
                float[] values = PassGraph.Floats(old, displayName);
                long[] dims = [.. old.Dims];
                dims[^fromEnd] = pl.Keep.Length;
                // All other axes have size 1 (ChannelAxisFromEnd, BatchNormalization's 1-D inputs): element c is channel c.
                PrunableLayers.SetConstant(g, b, pl.Keep.Select(i => values[i]).ToArray(), dims);
            }
            foreach (string t in pl.Tensors)
            {
                g.RemoveValueInfo(t);
            }
            if (pl.ReshapeShape != null)
            {
                long[] shape = TensorUtil.ToInt64Array(g.Initializers[pl.ReshapeShape]);
                shape[^1] = pl.Keep.Length * pl.Spatial;
                ReplaceInitializer(g, TensorUtil.FromInt64(pl.ReshapeShape, shape, [.. g.Initializers[pl.ReshapeShape].Dims]));
            }
        }
        foreach (PrunableLayer l in layers.Where(l => keepOut.ContainsKey(l) || keepIn.ContainsKey(l)))
        {
            int[] outs = keepOut.GetValueOrDefault(l) ?? Enumerable.Range(0, l.Outputs).ToArray();
            int[] ins = keepIn.GetValueOrDefault(l) ?? Enumerable.Range(0, l.Reduction / l.KernelSize).ToArray();
            long before = l.Data.Length, nonzeroBefore = PrunableLayers.CountNonzeros(l.Data);
            float[]? delta = null, biasDelta = null;
            int k = l.KernelSize;
            if (refit.TryGetValue(l, out Activation? a))
            {
                (float[] x, int rows) = l.Node.OpType == "Conv"
                    ? Im2Col(a, l, MaxPatchRows(l.Reduction))
                    : (a.Data, a.Data.Length / l.Reduction);
                (delta, biasDelta) = Refit(g, l, ins, outs, x, rows, options.RidgeFactor, displayName);
                reconstructed.Add(l.Label);
            }
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
                            v += delta[(ii * k + s) * outs.Length + oi];
                        }
                        int at = conv || transB ? (oi * ins.Length + ii) * k + s : ii * outs.Length + oi;
                        data[at] = v;
                    }
                }
            }
            dims = conv ? [outs.Length, ins.Length, .. l.Dims.Skip(2)] : transB ? [outs.Length, ins.Length] : [ins.Length, outs.Length];
            SetWeight(g, l.WeightName, data, dims);
            if (biasDelta != null)
            {
                if (l.Node.Input.Count < 3 || l.Node.Input[2].Length == 0)
                {
                    // A Conv without bias gets one, so the refit can absorb the removed channels' mean contribution.
                    string name = g.Unique(l.WeightName + "_bias");
                    g.AddInitializer(TensorUtil.FromFloats(name, new float[outs.Length], outs.Length));
                    if (l.Node.Input.Count < 3)
                    {
                        l.Node.Input.Add(name);
                    }
                    else
                    {
                        l.Node.Input[2] = name;
                    }
                }
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
    /// Least-squares correction of a consumer that keeps input units <paramref name="ins"/> (MatMul/Gemm rows; Conv
    /// input channels, each with its KernelSize kernel positions). <paramref name="x"/> holds <paramref name="rows"/>
    /// rows of the consumer's reduction (MatMul/Gemm: input rows; Conv: im2col patches, index c x KernelSize + s).
    /// Returns D ([kept reduction, outs], row-major) and the bias change per kept output: null unless the consumer
    /// is a Gemm with a constant per-output C of its own, or a Conv whose bias is a constant of its own or absent (the
    /// caller then adds one). The bias must already hold the kept outputs, which callers ensure by slicing biases first.
    /// </summary>
    private static (float[] Delta, float[]? Bias) Refit(PassGraph g, PrunableLayer l, int[] ins, int[] outs, float[] x, int rows, double ridgeFactor, string displayName)
    {
        int features = l.Reduction;
        int k = l.KernelSize;
        int[] kept = ins.SelectMany(c => Enumerable.Range(c * k, k)).ToArray();
        int[] removed = Enumerable.Range(0, features).Except(kept).ToArray();
        bool intercept = false;
        double biasScale = 1;
        NodeProto n = l.Node;
        bool ownConstantBias = n.Input.Count > 2 && n.Input[2].Length > 0 && g.IsConstantInitializer(n.Input[2])
            && TensorUtil.ElementCount(g.Initializers[n.Input[2]]) == outs.Length && g.Graph.Node.Sum(m => m.Input.Count(i => i == n.Input[2])) == 1
            && !g.OuterUses().Contains(n.Input[2]);
        if (n.OpType == "Gemm" && ownConstantBias && PassGraph.FloatAttr(n, "beta", 1f) != 0f)
        {
            intercept = true;
            biasScale = PassGraph.FloatAttr(n, "alpha", 1f) / PassGraph.FloatAttr(n, "beta", 1f);
        }
        else if (n.OpType == "Conv" && (ownConstantBias || n.Input.Count < 3 || n.Input[2].Length == 0))
        {
            intercept = true;
        }
        int p = kept.Length + (intercept ? 1 : 0);
        // Design matrix Z = [X_kept (1)] and its transpose, removed inputs X_R and their weights W_R (kept outputs).
        var zt = new float[p * rows];
        var z = new float[rows * p];
        var xr = new float[rows * removed.Length];
        for (int s = 0; s < rows; s++)
        {
            ReadOnlySpan<float> row = x.AsSpan(s * features, features);
            for (int j = 0; j < kept.Length; j++)
            {
                zt[j * rows + s] = z[s * p + j] = row[kept[j]];
            }
            if (intercept)
            {
                zt[kept.Length * rows + s] = z[s * p + kept.Length] = 1f;
            }
            for (int j = 0; j < removed.Length; j++)
            {
                xr[s * removed.Length + j] = row[removed[j]];
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
        for (int i = 0; i < kept.Length; i++)
        {
            meanDiag += gram[i * p + i];
        }
        double ridge = Math.Max(ridgeFactor * meanDiag / Math.Max(1, kept.Length), 1e-8);
        for (int i = 0; i < p; i++)
        {
            gram[i * p + i] += i < kept.Length ? ridge : 1e-8 * rows;
        }
        double[] solution = CholeskySolve(gram, rhs, p, outs.Length, displayName);
        var delta = new float[kept.Length * outs.Length];
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
                bias[oi] = (float)(solution[kept.Length * outs.Length + oi] * biasScale);
            }
        }
        return (delta, bias);
    }

    /// <summary>Largest reduction (input channels x kernel positions) of a Conv consumer that is refit; larger ones are skipped (the normal equations grow as its square, the solve as its cube).</summary>
    private const int MaxConvRefitFeatures = 2304;

    /// <summary>
    /// Patches sampled for a Conv refit: at most 32,768, and no more than 2^23 floats of
    /// patch matrix (32 MB; 3,640 rows at the largest refit reduction), evenly spaced over all samples and output positions.
    /// </summary>
    private static int MaxPatchRows(int features) => Math.Min(32_768, (1 << 23) / Math.Max(1, features));

    /// <summary>Why a Conv consumer cannot be refit (null: it can).</summary>
    private static string? ConvRefitSkip(PrunableLayer c)
    {
        if (PassGraph.IntAttr(c.Node, "group", 1) != 1)
        {
            return "grouped/depthwise Conv (each output sees only its group's inputs) is not refit";
        }
        if (c.Reduction > MaxConvRefitFeatures)
        {
            return $"{c.Reduction} inputs per output (channels x kernel) is more than the {MaxConvRefitFeatures} the refit solves";
        }
        return null;
    }

    /// <summary>
    /// im2col of a Conv's input activations [samples, C, spatial...] for its weight [M, C, kernel...]: up to
    /// <paramref name="maxRows"/> rows (evenly spaced over samples x output positions), each the C x KernelSize
    /// values the Conv multiplies with its weight at that output position (pads, auto_pad, strides and dilations as in
    /// the ONNX Conv; zero outside the input).
    /// </summary>
    internal static (float[] Patches, int Rows) Im2Col(Activation a, PrunableLayer conv, int maxRows) => Im2Col(a, conv, maxRows, 0, int.MaxValue);

    /// <summary>
    /// Rows [<paramref name="first"/>, first + <paramref name="count"/>) of <see cref="Im2Col(Activation, PrunableLayer, int)"/>'s
    /// selection (for building X^T X chunk by chunk); Rows is the number returned.
    /// </summary>
    internal static (float[] Patches, int Rows) Im2Col(Activation a, PrunableLayer conv, int maxRows, int first, int count)
    {
        NodeProto n = conv.Node;
        int sp = conv.Dims.Length - 2;
        int channels = (int)a.Shape[1];
        long[] inDims = [.. a.Shape.Skip(2)];
        long[] kernel = [.. conv.Dims.Skip(2)];
        (long[] outDims, long[] begin, long[] strides, long[] dil) = PrunableLayers.SlidingWindow(n, inDims, kernel);
        long positions = outDims.Aggregate(1L, (x, y) => x * y);
        long inSize = inDims.Aggregate(1L, (x, y) => x * y);
        int samples = (int)(a.Data.Length / (channels * inSize));
        long total2 = samples * positions;
        int selected = (int)Math.Min(total2, maxRows);
        int rows = Math.Max(0, (int)Math.Min((long)selected - first, count));
        int k = conv.KernelSize;
        int features = channels * k;
        var result = new float[(long)rows * features];
        var outAt = new long[sp];
        var kAt = new long[sp];
        for (int r = 0; r < rows; r++)
        {
            long pick = total2 == selected ? first + r : (first + r) * total2 / selected;
            int sample = (int)(pick / positions);
            long pos = pick % positions;
            for (int i = sp - 1; i >= 0; i--)
            {
                outAt[i] = pos % outDims[i];
                pos /= outDims[i];
            }
            Span<float> row = result.AsSpan(r * features, features);
            for (int s = 0; s < k; s++)
            {
                long rest = s;
                for (int i = sp - 1; i >= 0; i--)
                {
                    kAt[i] = rest % kernel[i];
                    rest /= kernel[i];
                }
                long offset = 0;
                bool inside = true;
                for (int i = 0; i < sp; i++)
                {
                    long coord = outAt[i] * strides[i] - begin[i] + kAt[i] * dil[i];
                    if (coord < 0 || coord >= inDims[i])
                    {
                        inside = false;
                        break;
                    }
                    offset = offset * inDims[i] + coord;
                }
                if (!inside)
                {
                    continue;
                }
                long baseAt = (long)sample * channels * inSize + offset;
                for (int c = 0; c < channels; c++)
                {
                    row[c * k + s] = a.Data[baseAt + c * inSize];
                }
            }
        }
        return (result, rows);
    }

    /// <summary>
    /// The channel axis, counted from the end, of a per-channel constant added to a tensor of rank
    /// <paramref name="rank"/> whose channels are on axis 1 (rank 2: the last axis): the constant has
    /// <paramref name="channels"/> there and 1 everywhere else. Null when it does not line up.
    /// </summary>
    private static int? ChannelAxisFromEnd(Google.Protobuf.Collections.RepeatedField<long> dims, int rank, int channels)
    {
        int fromEnd = rank - 1;
        if (dims.Count < fromEnd || dims.Count > rank || dims[^fromEnd] != channels)
        {
            return null;
        }
        for (int i = 0; i < dims.Count; i++)
        {
            if (i != dims.Count - fromEnd && dims[i] != 1)
            {
                return null;
            }
        }
        return fromEnd;
    }

    /// <summary>
    /// Whether a Flatten (axis 1) or a Reshape to [batch, channels x spatial] of a Conv's output [batch, channels,
    /// spatial...] keeps every channel's values together (null) or why not. <paramref name="shapeName"/>: the
    /// Reshape's shape initializer when its last element must shrink (null for Flatten or a -1 there).
    /// </summary>
    private static string? FlattenCheck(PassGraph g, NodeProto u, long[]? shape, int channels, out long spatial, out string? shapeName)
    {
        spatial = 0;
        shapeName = null;
        if (shape == null || shape.Length < 3 || shape[1] != channels)
        {
            return "the shape of its input is not known statically";
        }
        spatial = shape.Skip(2).Aggregate(1L, (x, y) => x * y);
        if (u.OpType == "Flatten")
        {
            return PassGraph.IntAttr(u, "axis", 1) == 1 ? null : "it does not flatten at axis 1";
        }
        if (u.Input.Count != 2 || !g.IsConstantInitializer(u.Input[1]) || g.Initializers[u.Input[1]].DataType != (int)TensorProto.Types.DataType.Int64
            || PassGraph.IntAttr(u, "allowzero", 0) != 0)
        {
            return "its shape is not a constant";
        }
        long[] target = TensorUtil.ToInt64Array(g.Initializers[u.Input[1]]);
        if (target.Length != 2 || !(target[0] == 0 || target[0] == shape[0] || (target[0] == -1 && target[1] != -1))
            || !(target[1] == -1 || target[1] == channels * spatial))
        {
            return $"its shape [{string.Join(",", target)}] is not [batch, channels x spatial]";
        }
        shapeName = target[1] == -1 ? null : u.Input[1];
        return null;
    }

    /// <summary>A weight computed by Reshape(float initializer, int64 shape initializer) (the only users were checked when the layer was found).</summary>
    private static bool ReshapedWeight(PassGraph g, NodeProto reshape) =>
        reshape.OpType == "Reshape" && reshape.Input.Count == 2 && g.IsConstantInitializer(reshape.Input[0]) && g.IsConstantInitializer(reshape.Input[1])
        && g.Initializers[reshape.Input[1]].DataType == (int)TensorProto.Types.DataType.Int64;

    /// <summary>Stores a resized weight: in its initializer or Constant, or for Reshape(data, shape) as the data with <paramref name="dims"/> and that shape.</summary>
    private static void SetWeight(PassGraph g, string name, float[] data, long[] dims)
    {
        if (!g.IsConstantInitializer(name) && g.Producers.TryGetValue(name, out NodeProto? reshape) && reshape.OpType == "Reshape")
        {
            PrunableLayers.SetConstant(g, reshape.Input[0], data, dims);
            TensorProto shape = g.Initializers[reshape.Input[1]];
            ReplaceInitializer(g, TensorUtil.FromInt64(shape.Name, dims, dims.Length));
            g.RemoveValueInfo(name);
            return;
        }
        PrunableLayers.SetConstant(g, name, data, dims);
    }

    private static void ReplaceInitializer(PassGraph g, TensorProto t)
    {
        int at = g.Graph.Initializer.IndexOf(g.Initializers[t.Name]);
        g.Graph.Initializer[at] = t;
        g.Initializers[t.Name] = t;
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
