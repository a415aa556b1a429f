using System.Globalization;
using System.Numerics.Tensors;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Structured pruning (Channels:f) by channel groups. A group is the set of tensors that carry the same channels:
/// starting at a layer's output (MatMul/Gemm, or Conv with group 1 when enabled) it follows, in both directions,
/// <list type="bullet">
/// <item>elementwise unary ops (Relu, LeakyRelu, Sigmoid, Tanh, HardSigmoid, HardSwish, Clip with constant bounds,
/// Elu, Selu, Softplus, Identity, Dropout...), pools (Max/Average/Lp, global ones: channels stay on axis 1);</item>
/// <item>BatchNormalization and InstanceNormalization (their per-channel constants are sliced with the channels);</item>
/// <item>Add/Sub/Mul/Div/Max/Min/Sum/Mean/PRelu: with a constant of one value per channel on the channel axis
/// ([C,1,1], [1,C,1,1]; [C] or [1,C] for MatMul/Gemm outputs) the constant is sliced; with another tensor the two are
/// tied (a residual Add, or the Mul of a squeeze-excitation block with its trunk) and that tensor's producers join;</item>
/// <item>depthwise Convs (group = input channels, one output per channel): they follow the group; their weight,
/// bias and group count are sliced with it.</item>
/// </list>
/// Every layer producing one of the group's tensors is a producer (its output channels are removed), every
/// MatMul/Gemm (without transA) or group-1 Conv reading one at input 0 a consumer (its input channels are removed; a
/// Flatten (axis 1) or Reshape to [batch, channels x spatial] before a MatMul/Gemm removes S rows per channel). A
/// Concat on the channel axis makes its output a group of its own whose channels are its inputs' groups side by side.
/// One keep set per group. Without activations (or without the refit): the channels with the largest summed
/// importance over the group's producers (L1 norm of each output's weights, times |scale / sqrt(var + eps)| of a
/// BatchNormalization right after it, normalized per producer); round(f x C) are removed. With them, for every group
/// whose consumers read its channels directly (no Flatten, at most <see cref="MaxRefitFeatures"/> inputs per output)
/// and that feeds no Concat, <see cref="ChannelSelection"/> measures on the original model's activations the order in
/// which to remove channels and the consumers' relative output error after each removal; the Lagrangian allocation
/// of <see cref="SensitivityPruner.Allocate"/> then spreads over these groups the multiply-adds that round(f x C)
/// channels of each would remove (the producers', consumers' and depthwise multiply-adds per channel), at least
/// summed error, in steps of 8 channels for groups of 32 or more channels that are a multiple of 8 (blocked kernels).
/// Groups not measured lose round(f x C) by norm as before. A group that reaches anything else (a graph output, an op this pass does
/// not know, a grouped Conv, a shared constant, a layer left alone) is kept whole, and its producers are listed as
/// skipped with the reason; a Concat whose output cannot be pruned keeps its inputs whole too.
/// <para>
/// With an activation source, each consumer is refit by least squares, in graph order (reconstruction as in channel
/// pruning by He et al. 2017): on its input in the model as pruned so far (X', kept inputs only, the earlier
/// consumers already refit) to what it computed on the unchanged model (X W): W'_kept = W_kept + D, bias += d, where
/// [D; d] minimises || [X' 1] [D; d] - (X W - X' W_kept) ||^2 + ridge ||D||^2, so the error of the layers before it
/// is absorbed too. For MatMul/Gemm the rows of X are the input rows (the bias part only when the consumer is a Gemm
/// with a constant per-output C). For a Conv consumer the rows are im2col patches of its input (pads/auto_pad,
/// strides, dilations; up to 32,768 patches evenly spaced over samples x output positions, the same ones in both
/// models) and the unknowns, per output channel, are the kept input channels x kernel positions plus the bias; a Conv
/// without a bias input gets one. The normal equations are accumulated in chunks with the Kernels' fp32 GEMM, the
/// solve (Cholesky) in double; consumers with more than 4,608 inputs per output (channels x kernel) are pruned
/// without refit, listed as skipped with that reason. Consumers whose inputs do not depend on each other share one
/// collection of each model's activations, so the calibration data runs through both models about once per
/// dependency level (ResNet18: 17 times).
/// </para>
/// </summary>
internal static class ChannelPruner
{
    private static readonly HashSet<string> Unary = new(StringComparer.Ordinal)
    {
        "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Identity", "Dropout", "Clip",
        "Neg", "Abs", "Erf", "Gelu", "Mish", "ThresholdedRelu",
    };

    private static readonly HashSet<string> Pools = new(StringComparer.Ordinal) { "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool" };

    private static readonly HashSet<string> Elementwise = new(StringComparer.Ordinal) { "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu" };

    /// <summary>Largest reduction (input channels x kernel positions) of a consumer that is refit; larger ones are pruned without refit.</summary>
    private const int MaxRefitFeatures = 4608;

    /// <summary>Patches (Conv) or rows (MatMul/Gemm) a refit uses at most, evenly spaced.</summary>
    private const int MaxRefitRows = 32_768;

    /// <summary>Floats of calibration activations collected in one call (several consumer inputs at once).</summary>
    private const long ActivationBudget = 1L << 26;

    private sealed class Group
    {
        /// <summary>Channels on axis 1 of a rank-<see cref="Rank"/> tensor (Conv outputs); otherwise on the last axis.</summary>
        public required bool Conv { get; init; }

        public required int Rank { get; init; }

        public HashSet<string> Tensors { get; } = new(StringComparer.Ordinal);

        /// <summary>Tensors that only change shape with the group (Flatten/Reshape outputs before a MatMul/Gemm).</summary>
        public List<string> Reshaped { get; } = [];

        public List<PrunableLayer> Producers { get; } = [];

        public List<Use> Consumers { get; } = [];

        /// <summary>Per-channel constants to slice: initializer and the axis (counted from the end) that holds the channels.</summary>
        public List<(string Name, int FromEnd)> Constants { get; } = [];

        public List<NodeProto> Depthwise { get; } = [];

        /// <summary>Set when the group is a Concat's output: its channels are the inputs' groups side by side.</summary>
        public NodeProto? Concat { get; set; }

        public bool FeedsConcat { get; set; }

        /// <summary>Why the group keeps all of its channels (null: it can be pruned).</summary>
        public string? Pinned { get; set; }

        public int Channels { get; set; } = -1;

        /// <summary>Channels kept (ascending); null: all.</summary>
        public int[]? Keep { get; set; }
    }

    private sealed class Use
    {
        public required PrunableLayer Layer { get; init; }

        /// <summary>Consumer inputs per channel: 1, or the spatial size after a Flatten/Reshape.</summary>
        public long Spatial { get; init; } = 1;

        /// <summary>Reached through a Flatten/Reshape (a MatMul/Gemm reading a Conv output's channels).</summary>
        public bool Flattened { get; init; }

        /// <summary>A Reshape's constant int64 shape whose last element (channels x spatial) shrinks with the channels.</summary>
        public string? ReshapeShape { get; init; }
    }

    public static void Run(PassGraph g, List<PrunableLayer> layers, PruningOptions options, string displayName, ActivationSource? activations,
        List<PrunedLayer> pruned, List<SkippedNode> skipped, List<string> reconstructed)
    {
        Dictionary<string, List<(NodeProto Node, int Index)>> uses = PrunableLayers.Uses(g);
        HashSet<string> outer = g.OuterUses();
        var byNode = new Dictionary<NodeProto, PrunableLayer>(ReferenceEqualityComparer.Instance);
        foreach (PrunableLayer l in layers)
        {
            byNode[l.Node] = l;
        }
        var excluded = new HashSet<string>(options.ExcludedNodes, StringComparer.Ordinal);
        bool UsedOnceBy(string name, NodeProto node) =>
            !outer.Contains(name) && uses.TryGetValue(name, out var u) && u.Count == 1 && ReferenceEquals(u[0].Node, node);
        bool Resizable(string weight) =>
            g.IsConstantInitializer(weight) || (g.Producers.TryGetValue(weight, out NodeProto? p) && (p.OpType == "Constant" || ReshapedWeight(g, p)));
        bool Standard(NodeProto n) => ModelChecker.NormalizeDomain(n.Domain).Length == 0;
        bool ProducerLayer(NodeProto n, out PrunableLayer l) =>
            byNode.TryGetValue(n, out l!) && (n.OpType != "Conv" || PassGraph.IntAttr(n, "group", 1) == 1);
        Dictionary<string, long[]>? shapes = null;

        var groupOf = new Dictionary<string, Group>(StringComparer.Ordinal);
        var groups = new List<Group>();
        var nodesSeen = new HashSet<NodeProto>(ReferenceEqualityComparer.Instance);
        var concatSeeds = new Queue<(string Tensor, bool Conv, int Rank)>();

        void Explore(Group grp, string seed)
        {
            var queue = new Queue<string>([seed]);
            void Pin(string why) => grp.Pinned ??= why;

            // A channelwise node met from any side: its per-channel constants are recorded, its other data inputs and its output join the group.
            string? Follow(NodeProto u)
            {
                if (!Standard(u) || u.Output.Count == 0 || u.Output[0].Length == 0)
                {
                    return "";
                }
                if (!u.Output.Skip(1).All(o => o.Length == 0 || (!uses.ContainsKey(o) && !outer.Contains(o))))
                {
                    return "its extra outputs are used";
                }
                if (nodesSeen.Contains(u))
                {
                    return null;
                }
                var data = new List<string>();
                if (Unary.Contains(u.OpType))
                {
                    if (!u.Input.Skip(1).All(i => i.Length == 0 || (g.IsConstantInitializer(i) && TensorUtil.ElementCount(g.Initializers[i]) == 1)))
                    {
                        return "its extra inputs are not single constants";
                    }
                    data.Add(u.Input[0]);
                }
                else if (Pools.Contains(u.OpType) && grp.Conv)
                {
                    data.Add(u.Input[0]);
                }
                else if (u.OpType is "BatchNormalization" or "InstanceNormalization" && grp.Conv)
                {
                    foreach (string i in u.Input.Skip(1))
                    {
                        if (!g.IsConstantInitializer(i) || !UsedOnceBy(i, u) || g.Initializers[i].Dims.Count != 1)
                        {
                            return $"its parameter '{i}' is not a 1-D constant of its own";
                        }
                        grp.Constants.Add((i, 1));
                    }
                    data.Add(u.Input[0]);
                }
                else if (Elementwise.Contains(u.OpType))
                {
                    foreach (string i in u.Input.Where(i => i.Length > 0).Distinct(StringComparer.Ordinal))
                    {
                        if (!g.IsConstantInitializer(i))
                        {
                            data.Add(i);
                            continue;
                        }
                        if (TensorUtil.ElementCount(g.Initializers[i]) == 1)
                        {
                            continue;
                        }
                        if (ChannelAxis(g.Initializers[i].Dims, grp) is not int fromEnd)
                        {
                            return $"its constant '{i}' [{string.Join(",", g.Initializers[i].Dims)}] is not one value per channel";
                        }
                        if (!UsedOnceBy(i, u))
                        {
                            return $"its per-channel constant '{i}' is shared with other nodes";
                        }
                        grp.Constants.Add((i, fromEnd));
                    }
                }
                else if (u.OpType == "Conv" && IsDepthwise(g, u))
                {
                    if (excluded.Contains(OnnxNames.Label(u)))
                    {
                        return "it is excluded by the options";
                    }
                    if (!UsedOnceBy(u.Input[1], u) || (u.Input.Count > 2 && u.Input[2].Length > 0 && (!g.IsConstantInitializer(u.Input[2]) || !UsedOnceBy(u.Input[2], u))))
                    {
                        return "its weight or bias is shared or not a constant";
                    }
                    grp.Depthwise.Add(u);
                    data.Add(u.Input[0]);
                }
                else if (u.OpType == "Conv")
                {
                    return $"it is a grouped Conv (group {PassGraph.IntAttr(u, "group", 1)}, not one output per input channel)";
                }
                else
                {
                    return "";
                }
                nodesSeen.Add(u);
                data.ForEach(queue.Enqueue);
                queue.Enqueue(u.Output[0]);
                return null;
            }

            while (queue.Count > 0)
            {
                string t = queue.Dequeue();
                if (groupOf.TryGetValue(t, out Group? other))
                {
                    if (other != grp)
                    {
                        Pin($"'{t}' ties these channels to a Concat's");
                        other.Pinned ??= $"'{t}' ties these channels to a Concat's";
                    }
                    continue;
                }
                groupOf[t] = grp;
                grp.Tensors.Add(t);
                if (outer.Contains(t))
                {
                    Pin($"'{t}' is a graph output or used inside a subgraph");
                }
                if (g.Producers.TryGetValue(t, out NodeProto? p))
                {
                    if (ProducerLayer(p, out PrunableLayer pl) && p.Output[0] == t)
                    {
                        if (!grp.Producers.Contains(pl))
                        {
                            grp.Producers.Add(pl);
                        }
                    }
                    else if (p.OpType == "Concat" && Standard(p))
                    {
                        if (grp.Concat == null || ReferenceEquals(grp.Concat, p))
                        {
                            grp.Concat = p;
                        }
                        else
                        {
                            Pin("it joins the outputs of two Concats");
                        }
                    }
                    else if (Follow(p) is { } why)
                    {
                        Pin(byNode.ContainsKey(p) || p.OpType is "MatMul" or "Gemm" or "Conv"
                            ? $"'{t}' comes from {p.OpType} '{OnnxNames.Label(p)}', which is not pruned (excluded, too small, or its weight cannot change){(why.Length > 0 ? "; " + why : "")}"
                            : $"'{t}' comes from {p.OpType} '{OnnxNames.Label(p)}', which channel pruning cannot follow{(why.Length > 0 ? " (" + why + ")" : "")}");
                    }
                }
                else if (!g.IsConstantInitializer(t))
                {
                    Pin($"'{t}' is a graph input");
                }
                foreach ((NodeProto u, int index) in uses.GetValueOrDefault(t) ?? [])
                {
                    string label = OnnxNames.Label(u);
                    if (Standard(u) && index == 0 && (u.OpType is "MatMul" or "Gemm" || (u.OpType == "Conv" && PassGraph.IntAttr(u, "group", 1) == 1)))
                    {
                        if (!byNode.TryGetValue(u, out PrunableLayer? c))
                        {
                            Pin($"its consumer {u.OpType} '{label}' is not pruned (excluded, too small, or its weight cannot change)");
                        }
                        else if (!grp.Consumers.Any(x => ReferenceEquals(x.Layer, c)))
                        {
                            grp.Consumers.Add(new Use { Layer = c });
                        }
                        continue;
                    }
                    if (Standard(u) && index == 0 && grp.Conv && u.OpType is "Flatten" or "Reshape")
                    {
                        // Conv -> Flatten/Reshape -> MatMul/Gemm: channel c becomes the consumer's inputs c*S .. c*S+S-1 (S = spatial size).
                        shapes ??= PrunableLayers.PropagateShapes(g);
                        long[]? shape = shapes.GetValueOrDefault(t);
                        string? flatWhy = FlattenCheck(g, u, shape, shape is { Length: >= 2 } ? (int)shape[1] : -1, out long spatial, out string? shapeName);
                        if (flatWhy == null && shapeName != null && !UsedOnceBy(shapeName, u))
                        {
                            flatWhy = $"its shape '{shapeName}' is shared";
                        }
                        string flat = u.Output[0];
                        List<(NodeProto Node, int Index)> next = uses.GetValueOrDefault(flat) ?? [];
                        PrunableLayer? mm = null;
                        if (flatWhy == null && (outer.Contains(flat) || next.Count != 1 || next[0].Index != 0 || !byNode.TryGetValue(next[0].Node, out mm)
                            || !(mm.Node.OpType == "MatMul" || (mm.Node.OpType == "Gemm" && PassGraph.IntAttr(mm.Node, "transA", 0) == 0))))
                        {
                            flatWhy = "its output does not feed exactly one pruned MatMul/Gemm";
                        }
                        if (flatWhy != null)
                        {
                            Pin($"'{t}' reaches {u.OpType} '{label}', and {flatWhy}");
                            continue;
                        }
                        grp.Reshaped.Add(flat);
                        grp.Consumers.Add(new Use { Layer = mm!, Spatial = spatial, ReshapeShape = shapeName, Flattened = true });
                        continue;
                    }
                    if (Standard(u) && u.OpType == "Concat")
                    {
                        long axis = PassGraph.IntAttr(u, "axis", 1);
                        bool onChannels = grp.Conv ? axis == 1 || axis == 1 - grp.Rank : axis == -1;
                        if (!onChannels)
                        {
                            Pin($"'{t}' is concatenated by '{label}' on an axis other than the channels");
                            continue;
                        }
                        grp.FeedsConcat = true;
                        concatSeeds.Enqueue((u.Output[0], grp.Conv, grp.Rank));
                        continue;
                    }
                    if (index != 0 && !(Standard(u) && Elementwise.Contains(u.OpType)))
                    {
                        Pin($"'{t}' is input {index} of {u.OpType} '{label}', which channel pruning cannot follow");
                        continue;
                    }
                    if (Follow(u) is { } why)
                    {
                        Pin($"'{t}' reaches {u.OpType} '{label}', which channel pruning cannot follow{(why.Length > 0 ? " (" + why + ")" : "")}");
                    }
                }
            }
        }

        foreach (PrunableLayer p in layers)
        {
            if (!ProducerLayer(p.Node, out _) || groupOf.ContainsKey(p.Node.Output[0]))
            {
                continue;
            }
            bool conv = p.Node.OpType == "Conv";
            var grp = new Group { Conv = conv, Rank = conv ? p.Dims.Length : 2 };
            groups.Add(grp);
            Explore(grp, p.Node.Output[0]);
            while (concatSeeds.Count > 0)
            {
                (string t, bool c, int rank) = concatSeeds.Dequeue();
                if (!groupOf.ContainsKey(t))
                {
                    var h = new Group { Conv = c, Rank = rank };
                    groups.Add(h);
                    Explore(h, t);
                }
            }
        }

        // Channel counts and checks: producers' groups first, then Concat outputs (whose inputs may be Concat outputs too).
        var biasOf = new Dictionary<PrunableLayer, string>();
        foreach (Group grp in groups.Where(x => x.Concat == null))
        {
            grp.Pinned ??= CheckProducers(grp);
        }
        for (bool changed = true; changed;)
        {
            changed = false;
            foreach (Group h in groups.Where(x => x.Concat != null && x.Channels < 0))
            {
                List<Group?> inputs = [.. h.Concat!.Input.Select(i => groupOf.GetValueOrDefault(i))];
                if (inputs.Any(i => i == null))
                {
                    h.Pinned ??= $"Concat '{OnnxNames.Label(h.Concat)}' also joins tensors that no pruned layer produces";
                }
                if (inputs.Any(i => i != null && i.Concat != null && i.Channels < 0 && i.Pinned == null))
                {
                    continue;
                }
                h.Channels = inputs.All(i => i is { Channels: > 0 }) ? inputs.Sum(i => i!.Channels) : 0;
                h.Pinned ??= h.Channels == 0 ? $"the channel counts of Concat '{OnnxNames.Label(h.Concat)}'s inputs are not known" : null;
                changed = true;
            }
        }
        foreach (Group grp in groups)
        {
            grp.Pinned ??= grp.Channels <= 0 ? "its channel count is not known" : CheckUses(grp);
        }
        // A Concat whose channels must all stay keeps its inputs whole.
        for (bool changed = true; changed;)
        {
            changed = false;
            foreach (Group h in groups.Where(x => x.Concat != null && x.Pinned != null))
            {
                foreach (Group i in h.Concat!.Input.Select(i => groupOf.GetValueOrDefault(i)).OfType<Group>().Where(i => i.Pinned == null))
                {
                    i.Pinned = $"its channels are concatenated by '{OnnxNames.Label(h.Concat)}' into channels that cannot be pruned ({h.Pinned})";
                    changed = true;
                }
            }
        }

        string? CheckProducers(Group grp)
        {
            if (grp.Producers.Count == 0)
            {
                return "no pruned layer produces these channels";
            }
            grp.Channels = grp.Producers[0].Outputs;
            if (grp.Producers.Any(p => p.Outputs != grp.Channels || (p.Node.OpType == "Conv") != grp.Conv))
            {
                grp.Channels = -1;
                return $"the layers tied here ({string.Join(", ", grp.Producers.Select(p => "'" + p.Label + "'"))}) have different numbers or kinds of outputs";
            }
            if (grp.Concat != null)
            {
                return $"these channels are also tied to the output of Concat '{OnnxNames.Label(grp.Concat)}'";
            }
            foreach (PrunableLayer p in grp.Producers)
            {
                bool conv = p.Node.OpType == "Conv";
                if (conv && !options.PruneConvChannels)
                {
                    return "Conv channel pruning is turned off in the options";
                }
                if (conv && activations == null)
                {
                    // Measured on mnist-lenet5 (Channels:0.3): 10.4 points of top-1 without the refit, 0.5 with it.
                    return "Conv channels are pruned only with calibration activations (CalibrationData) for the least-squares refit";
                }
                if (!Resizable(p.WeightName))
                {
                    return $"weight '{p.WeightName}' of '{p.Label}' comes through a node other than a Reshape of initializers; its shape cannot change";
                }
                if (p.Node.Input.Count > 2 && p.Node.Input[2].Length > 0)
                {
                    string b = p.Node.Input[2];
                    if (!g.IsConstantInitializer(b) || !UsedOnceBy(b, p.Node))
                    {
                        return $"bias '{b}' of '{p.Label}' is not a constant used by this node only";
                    }
                    TensorProto bt = g.Initializers[b];
                    if (TensorUtil.ElementCount(bt) == p.Outputs && bt.Dims.Count >= 1 && bt.Dims[^1] == p.Outputs)
                    {
                        biasOf[p] = b;
                    }
                    else if (TensorUtil.ElementCount(bt) != 1)
                    {
                        return $"bias '{b}' of '{p.Label}' is not one value per output";
                    }
                }
            }
            return null;
        }

        string? CheckUses(Group grp)
        {
            int c = grp.Channels;
            if (grp.Consumers.Count == 0 && !grp.FeedsConcat)
            {
                return "its channels reach no layer that could take fewer inputs";
            }
            foreach (Use u in grp.Consumers)
            {
                PrunableLayer l = u.Layer;
                bool ok = l.Node.OpType == "Conv"
                    ? grp.Conv && !u.Flattened && l.Reduction / l.KernelSize == c
                    : (!grp.Conv || u.Flattened || grp.Rank == 2) && (l.Node.OpType == "MatMul" || PassGraph.IntAttr(l.Node, "transA", 0) == 0) && l.Reduction == c * u.Spatial;
                if (!ok || !Resizable(l.WeightName))
                {
                    return $"its consumer {l.Node.OpType} '{l.Label}' cannot take fewer inputs here";
                }
            }
            foreach ((string name, int fromEnd) in grp.Constants)
            {
                if (TensorUtil.ElementCount(g.Initializers[name]) != c || g.Initializers[name].Dims[^fromEnd] != c)
                {
                    return $"constant '{name}' does not hold one value per channel ({c})";
                }
            }
            foreach (NodeProto d in grp.Depthwise)
            {
                TensorProto w = g.Initializers[d.Input[1]];
                if (w.Dims[0] != c || (d.Input.Count > 2 && d.Input[2].Length > 0 && TensorUtil.ElementCount(g.Initializers[d.Input[2]]) != c))
                {
                    return $"depthwise Conv '{OnnxNames.Label(d)}' does not have one output per channel ({c})";
                }
            }
            return null;
        }

        // One keep set per group: with calibration activations (and the refit on), chosen by reconstruction and
        // allocated across the groups from the measured errors; otherwise by the producers' weight norms.
        List<Group> open = [.. groups.Where(x => x.Pinned == null && x.Concat == null)];
        Dictionary<Group, (int[] Order, double[] Error)> measured = activations != null && options.Reconstruct
            ? MeasureGroups(g, [.. open.Where(Selectable)], activations, shapes ??= PrunableLayers.PropagateShapes(g), displayName)
            : [];
        Dictionary<Group, int> removeCount = AllocateRemovals(open, measured, options.ChannelFraction,
            measured.Count == 0 ? [] : open.ToDictionary(x => x, x => ChannelCost(g, x, shapes!)));
        foreach (Group grp in open)
        {
            int c = grp.Channels;
            int remove = removeCount[grp];
            if (remove == 0)
            {
                string why = measured.ContainsKey(grp)
                    ? "the measured reconstruction error made its channels the most costly to remove; the allocation took the requested fraction from other groups"
                    : $"{options.ChannelFraction.ToString(CultureInfo.InvariantCulture)} of {c} outputs rounds to none";
                foreach (PrunableLayer p in grp.Producers)
                {
                    skipped.Add(new SkippedNode(p.Label, p.Node.OpType, why));
                }
                continue;
            }
            if (measured.TryGetValue(grp, out var sel))
            {
                var gone = new HashSet<int>(sel.Order.Take(remove));
                grp.Keep = [.. Enumerable.Range(0, c).Where(o => !gone.Contains(o))];
                continue;
            }
            double[] importance = Importance(g, grp.Producers, uses, displayName);
            grp.Keep = Enumerable.Range(0, c).OrderByDescending(o => importance[o]).ThenBy(o => o).Take(c - remove).Order().ToArray();
        }
        // Concat outputs: their inputs' keep sets side by side, once every input is settled.
        var settled = new HashSet<Group>(groups.Where(x => x.Concat == null || x.Pinned != null));
        for (bool changed = true; changed;)
        {
            changed = false;
            foreach (Group h in groups.Where(x => !settled.Contains(x)))
            {
                List<Group> inputs = [.. h.Concat!.Input.Select(i => groupOf[i])];
                if (!inputs.All(settled.Contains))
                {
                    continue;
                }
                var keep = new List<int>();
                int offset = 0;
                foreach (Group ig in inputs)
                {
                    keep.AddRange((ig.Keep ?? Enumerable.Range(0, ig.Channels)).Select(k => k + offset));
                    offset += ig.Channels;
                }
                h.Keep = keep.Count < h.Channels ? [.. keep] : null;
                settled.Add(h);
                changed = true;
            }
        }
        foreach (Group grp in groups.Where(x => x.Pinned != null))
        {
            foreach (PrunableLayer p in grp.Producers)
            {
                skipped.Add(new SkippedNode(p.Label, p.Node.OpType, grp.Pinned!));
            }
        }
        List<Group> cut = [.. groups.Where(x => x.Keep != null)];
        foreach (PrunableLayer l in layers.Where(l => !ProducerLayer(l.Node, out _)))
        {
            if (!cut.Any(x => x.Depthwise.Contains(l.Node)))
            {
                skipped.Add(new SkippedNode(l.Label, "Conv", IsDepthwise(g, l.Node)
                    ? "depthwise Conv: its channels follow its input's, which were not pruned"
                    : $"grouped Conv (group {PassGraph.IntAttr(l.Node, "group", 1)}): its output channels are not pruned"));
            }
        }
        if (cut.Count == 0)
        {
            return;
        }

        var keepOut = new Dictionary<PrunableLayer, int[]>();
        var keepIn = new Dictionary<PrunableLayer, int[]>();
        foreach (Group grp in cut)
        {
            foreach (PrunableLayer p in grp.Producers)
            {
                keepOut[p] = grp.Keep!;
            }
            foreach (Use u in grp.Consumers)
            {
                keepIn[u.Layer] = u.Spatial == 1 ? grp.Keep! : grp.Keep!.SelectMany(c => Enumerable.Range((int)(c * u.Spatial), (int)u.Spatial)).ToArray();
            }
        }

        ModelProto? unchanged = activations != null && options.Reconstruct ? g.Model.Clone() : null;

        foreach (Group grp in cut)
        {
            int[] keep = grp.Keep!;
            foreach ((string b, int fromEnd) in grp.Constants.Concat(grp.Producers.Where(biasOf.ContainsKey).Select(p => (biasOf[p], 1))))
            {
                SliceConstant(g, b, fromEnd, keep, displayName);
            }
            foreach (NodeProto d in grp.Depthwise)
            {
                TensorProto w = g.Initializers[d.Input[1]];
                long before = TensorUtil.ElementCount(w);
                long nonzeroBefore = PrunableLayers.CountNonzeros(PassGraph.Floats(w, displayName));
                SliceConstant(g, d.Input[1], w.Dims.Count, keep, displayName);
                if (d.Input.Count > 2 && d.Input[2].Length > 0)
                {
                    SliceConstant(g, d.Input[2], 1, keep, displayName);
                }
                AttributeProto group = d.Attribute.First(a => a.Name == "group");
                group.I = keep.Length;
                float[] after = PassGraph.Floats(g.Initializers[d.Input[1]], displayName);
                pruned.Add(new PrunedLayer(OnnxNames.Label(d), "Conv", d.Input[1], before, nonzeroBefore, after.Length, PrunableLayers.CountNonzeros(after), grp.Channels, keep.Length));
            }
            foreach (string t in grp.Tensors.Concat(grp.Reshaped))
            {
                g.RemoveValueInfo(t);
            }
            foreach (Use u in grp.Consumers.Where(u => u.ReshapeShape != null))
            {
                long[] shape = TensorUtil.ToInt64Array(g.Initializers[u.ReshapeShape!]);
                shape[^1] = keep.Length * u.Spatial;
                ReplaceInitializer(g, TensorUtil.FromInt64(u.ReshapeShape!, shape, [.. g.Initializers[u.ReshapeShape!].Dims]));
            }
        }
        List<PrunableLayer> touched = [.. layers.Where(l => keepOut.ContainsKey(l) || keepIn.ContainsKey(l))];
        var written = new Dictionary<PrunableLayer, float[]>();
        foreach (PrunableLayer l in touched)
        {
            written[l] = WriteLayer(g, l, keepOut.GetValueOrDefault(l), keepIn.GetValueOrDefault(l), null, null, displayName);
        }

        // Sequential least-squares refit of the consumers (as in channel pruning by reconstruction): each consumer, in
        // graph order, is fit on its input in the model as pruned so far (the earlier consumers already refit) to what
        // it computed on the unchanged model; consumers whose inputs do not depend on each other share one collection.
        if (unchanged != null)
        {
            var wanted = new List<PrunableLayer>();
            foreach (PrunableLayer l in touched.Where(keepIn.ContainsKey))
            {
                if (l.Reduction > MaxRefitFeatures)
                {
                    skipped.Add(new SkippedNode(l.Label, l.Node.OpType, $"no least-squares refit: {l.Reduction} inputs per output (channels x kernel) is more than the {MaxRefitFeatures} the refit solves"));
                    continue;
                }
                wanted.Add(l);
            }
            foreach (List<PrunableLayer> batch in SequentialBatches(g, wanted))
            {
                List<string> names = [.. batch.Select(l => l.Node.Input[0]).Distinct(StringComparer.Ordinal)];
                Dictionary<string, Activation> before = new(activations!(unchanged, names), StringComparer.Ordinal);
                Dictionary<string, Activation> now = new(activations!(g.Model, names), StringComparer.Ordinal);
                foreach (PrunableLayer l in batch)
                {
                    int[] ins = keepIn[l];
                    int[] outs = keepOut.GetValueOrDefault(l) ?? Enumerable.Range(0, l.Outputs).ToArray();
                    Activation a = CheckedActivation(l, l.Reduction / l.KernelSize, before, displayName);
                    Activation a2 = CheckedActivation(l, ins.Length, now, displayName);
                    (float[] delta, float[]? bias) = Refit(g, l, ins, outs, a, a2, options.RidgeFactor, displayName);
                    written[l] = WriteLayer(g, l, keepOut.GetValueOrDefault(l), ins, delta, bias, displayName);
                    reconstructed.Add(l.Label);
                }
                // Each batch's activations (hundreds of MB for a ResNet stage at 256 samples) are garbage now: return
                // them before the next collection rather than let both models' copies pile up (a ResNet18 run without
                // this reached 7 GB and was OOM-killed on a shared 24 GB machine).
                before.Clear();
                now.Clear();
                GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
            }
        }
        foreach (PrunableLayer l in touched)
        {
            int outs = keepOut.TryGetValue(l, out int[]? o) ? o.Length : l.Outputs;
            pruned.Add(new PrunedLayer(l.Label, l.Node.OpType, l.WeightName, l.Data.Length, PrunableLayers.CountNonzeros(l.Data), written[l].Length, PrunableLayers.CountNonzeros(written[l]), l.Outputs, outs));
        }
    }

    /// <summary>
    /// A group whose keep set can be chosen by reconstruction: it feeds no Concat, and every consumer reads its
    /// channels directly (no Flatten/Reshape) with at most <see cref="MaxRefitFeatures"/> inputs per output.
    /// </summary>
    private static bool Selectable(Group grp) =>
        !grp.FeedsConcat && grp.Consumers.Count > 0 && grp.Consumers.All(u => !u.Flattened && u.Spatial == 1 && u.Layer.Reduction <= MaxRefitFeatures);

    /// <summary>
    /// For each group, the greedy removal order of its channels and the consumers' summed relative output error after
    /// each removal (<see cref="ChannelSelection"/>), from the unchanged model's calibration activations (collected in
    /// batches of at most <see cref="ActivationBudget"/> floats, released after each).
    /// </summary>
    private static Dictionary<Group, (int[] Order, double[] Error)> MeasureGroups(PassGraph g, List<Group> selectable, ActivationSource activations,
        Dictionary<string, long[]> shapes, string displayName)
    {
        var result = new Dictionary<Group, (int[] Order, double[] Error)>();
        if (selectable.Count == 0)
        {
            return result;
        }
        List<PrunableLayer> consumers = [.. selectable.SelectMany(x => x.Consumers.Select(u => u.Layer))];
        var grams = new Dictionary<PrunableLayer, double[]>();
        var batch = new List<PrunableLayer>();
        long floats = 0;
        void Flush()
        {
            if (batch.Count == 0)
            {
                return;
            }
            List<string> names = [.. batch.Select(l => l.Node.Input[0]).Distinct(StringComparer.Ordinal)];
            Dictionary<string, Activation> values = new(activations(g.Model, names), StringComparer.Ordinal);
            foreach (PrunableLayer l in batch)
            {
                Activation a = CheckedActivation(l, l.Reduction / l.KernelSize, values, displayName);
                if (!TensorStats.AllFinite(a.Data))
                {
                    throw CompressException.ForFile(displayName, DiagnosticCodes.NonFiniteOutputs, displayName, l.Node.Input[0], "one of the calibration samples (channel selection)");
                }
                grams[l] = ChannelSelection.Gram(l, InputHessian(l, a), l.KernelSize);
            }
            values.Clear();
            batch.Clear();
            floats = 0;
            // A group whose consumers are all measured is reduced to its curve now, so at most a batch's Grams
            // ([channels, channels] doubles each) are held at once.
            foreach (Group grp in selectable.Where(x => !result.ContainsKey(x) && x.Consumers.All(u => grams.ContainsKey(u.Layer))))
            {
                result[grp] = ChannelSelection.Greedy([.. grp.Consumers.Select(u => grams[u.Layer])], grp.Channels);
                grp.Consumers.ForEach(u => grams.Remove(u.Layer));
            }
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        }
        foreach (PrunableLayer l in consumers)
        {
            long size = shapes.TryGetValue(l.Node.Input[0], out long[]? sh) ? sh.Aggregate(1L, (x, y) => x * Math.Max(1, y)) : 0;
            if (batch.Count > 0 && floats + size > ActivationBudget / 512)
            {
                Flush();
            }
            batch.Add(l);
            floats += size;
        }
        Flush();
        return result;
    }

    /// <summary>
    /// Multiply-adds per sample that go with one channel of a group: its producers' output (reduction x output
    /// positions), its consumers' input (kernel x outputs x output positions) and its depthwise Convs; 0 when a shape
    /// is not known.
    /// </summary>
    private static long ChannelCost(PassGraph g, Group grp, Dictionary<string, long[]> shapes)
    {
        // Output positions of a layer: a Conv's spatial size; for MatMul/Gemm the rows per sample of its input (its
        // dims between the first and the last; 1 when not known, as for 2-D inputs).
        long Positions(NodeProto n)
        {
            if (n.OpType == "Conv")
            {
                return shapes.TryGetValue(n.Output[0], out long[]? s) && s.Length >= 3 ? s.Skip(2).Aggregate(1L, (a, b) => a * Math.Max(1, b)) : 0;
            }
            return shapes.TryGetValue(n.Input[0], out long[]? x) && x.Length >= 3 ? x[1..^1].Aggregate(1L, (a, b) => a * Math.Max(1, b)) : 1;
        }
        long total = 0;
        foreach (PrunableLayer p in grp.Producers)
        {
            long at = Positions(p.Node);
            if (at == 0)
            {
                return 0;
            }
            total += p.Reduction * at;
        }
        foreach (Use u in grp.Consumers)
        {
            long at = Positions(u.Layer.Node);
            if (at == 0)
            {
                return 0;
            }
            total += (long)u.Layer.KernelSize * u.Layer.Outputs * at * u.Spatial;
        }
        foreach (NodeProto d in grp.Depthwise)
        {
            long at = Positions(d);
            if (at == 0)
            {
                return 0;
            }
            total += g.Initializers[d.Input[1]].Dims.Skip(2).Aggregate(1L, (a, b) => a * b) * at;
        }
        return total;
    }

    /// <summary>X^T X of a consumer's input units (im2col patches for a Conv), up to <see cref="ChannelSelection.MaxRows"/> rows evenly spaced.</summary>
    private static double[] InputHessian(PrunableLayer l, Activation a)
    {
        int n = l.Reduction;
        int chunk = HessianAccumulator.ChunkRows(n);
        var accumulator = new HessianAccumulator(n);
        if (l.Node.OpType == "Conv")
        {
            for (int first = 0; ; first += chunk)
            {
                (float[] x, int rows) = Im2Col(a, l, ChannelSelection.MaxRows, first, chunk);
                if (rows == 0)
                {
                    break;
                }
                accumulator.Add(x, rows);
            }
            return accumulator.Hessian();
        }
        int total = a.Data.Length / n;
        int selected = Math.Min(total, ChannelSelection.MaxRows);
        for (int first = 0; first < selected; first += chunk)
        {
            int rows = Math.Min(chunk, selected - first);
            var x = new float[(long)rows * n];
            for (int r = 0; r < rows; r++)
            {
                long pick = (long)(first + r) * total / selected;
                a.Data.AsSpan((int)(pick * n), n).CopyTo(x.AsSpan(r * n, n));
            }
            accumulator.Add(x, rows);
        }
        return accumulator.Hessian();
    }

    /// <summary>
    /// Channels to remove per group. Without measurements: round(f x C) each. With them, the measured groups together
    /// lose as many channels as f of each would, spread by the Lagrangian allocation of
    /// <see cref="SensitivityPruner.Allocate"/> over their error curves (the least summed error), in steps of 8
    /// channels for groups whose count is a multiple of 8 (kernels run faster on such counts); every group keeps at
    /// least one step.
    /// </summary>
    private static Dictionary<Group, int> AllocateRemovals(List<Group> open, Dictionary<Group, (int[] Order, double[] Error)> measured, double fraction,
        Dictionary<Group, long> cost)
    {
        var result = new Dictionary<Group, int>();
        foreach (Group grp in open)
        {
            result[grp] = (int)Math.Round(fraction * grp.Channels);
        }
        List<Group> curved = [.. open.Where(measured.ContainsKey)];
        if (curved.Count == 0)
        {
            return result;
        }
        int Step(Group grp) => grp.Channels % 8 == 0 && grp.Channels >= 32 ? 8 : 1;
        bool flops = curved.All(x => cost.GetValueOrDefault(x) > 0);
        long Unit(Group grp) => flops ? cost[grp] : 1;
        long target = curved.Sum(x => result[x] * Unit(x));
        var curves = new List<IReadOnlyList<SensitivityPoint>>();
        foreach (Group grp in curved)
        {
            int step = Step(grp);
            double[] error = measured[grp].Error;
            var points = new List<SensitivityPoint>();
            for (int k = step; k <= grp.Channels - step; k += step)
            {
                points.Add(new SensitivityPoint((double)k / grp.Channels, k * Unit(grp), error[k - 1]));
            }
            curves.Add(points);
        }
        long[] chosen = SensitivityPruner.Allocate([.. curved.Select(x => x.Channels * Unit(x))], new long[curved.Count], curves, target);
        for (int i = 0; i < curved.Count; i++)
        {
            Group grp = curved[i];
            int step = Step(grp);
            result[grp] = (int)Math.Clamp(Math.Round((double)chosen[i] / Unit(grp) / step) * step, 0, grp.Channels - step);
        }
        return result;
    }

    /// <summary>
    /// Writes a layer's weight with outputs <paramref name="keepOut"/> and input units <paramref name="keepIn"/> (null:
    /// all) from its original values, plus <paramref name="delta"/> ([kept reduction, outs]) when given, and adds
    /// <paramref name="biasDelta"/> to its bias (a Conv without bias gets one). Returns the weight written.
    /// </summary>
    private static float[] WriteLayer(PassGraph g, PrunableLayer l, int[]? keepOut, int[]? keepIn, float[]? delta, float[]? biasDelta, string displayName)
    {
        int[] outs = keepOut ?? Enumerable.Range(0, l.Outputs).ToArray();
        int[] ins = keepIn ?? Enumerable.Range(0, l.Reduction / l.KernelSize).ToArray();
        int k = l.KernelSize;
        var data = new float[outs.Length * ins.Length * k];
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
        long[] dims = conv ? [outs.Length, ins.Length, .. l.Dims.Skip(2)] : transB ? [outs.Length, ins.Length] : [ins.Length, outs.Length];
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
        return data;
    }

    /// <summary>
    /// The consumers in graph order, cut into batches whose members' inputs do not depend on another member (so one
    /// collection of the model as pruned so far serves the whole batch), each batch at most
    /// <see cref="ActivationBudget"/> floats of activations when the shapes are known.
    /// </summary>
    private static List<List<PrunableLayer>> SequentialBatches(PassGraph g, List<PrunableLayer> wanted)
    {
        var order = new Dictionary<NodeProto, int>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < g.Graph.Node.Count; i++)
        {
            order[g.Graph.Node[i]] = i;
        }
        Dictionary<string, long[]> shapes = PrunableLayers.PropagateShapes(g);
        HashSet<NodeProto> Ancestors(string tensor)
        {
            var seen = new HashSet<NodeProto>(ReferenceEqualityComparer.Instance);
            var stack = new Stack<string>([tensor]);
            while (stack.Count > 0)
            {
                if (g.Producers.TryGetValue(stack.Pop(), out NodeProto? p) && seen.Add(p))
                {
                    foreach (string i in p.Input.Where(i => i.Length > 0))
                    {
                        stack.Push(i);
                    }
                }
            }
            return seen;
        }
        var batches = new List<List<PrunableLayer>>();
        var current = new List<PrunableLayer>();
        long floats = 0;
        foreach (PrunableLayer l in wanted.OrderBy(l => order.GetValueOrDefault(l.Node, int.MaxValue)))
        {
            HashSet<NodeProto> ancestors = Ancestors(l.Node.Input[0]);
            long size = shapes.TryGetValue(l.Node.Input[0], out long[]? sh) ? sh.Aggregate(1L, (x, y) => x * y) : 0;
            if (current.Count > 0 && (current.Any(c => ancestors.Contains(c.Node)) || floats + size > ActivationBudget / 512))
            {
                batches.Add(current);
                current = [];
                floats = 0;
            }
            current.Add(l);
            floats += size;
        }
        if (current.Count > 0)
        {
            batches.Add(current);
        }
        return batches;
    }

    /// <summary>A Conv with one output per input channel (group = channels = outputs, weight [C, 1, k...]) whose weight is a constant initializer.</summary>
    private static bool IsDepthwise(PassGraph g, NodeProto n)
    {
        long group = PassGraph.IntAttr(n, "group", 1);
        return n.OpType == "Conv" && group > 1 && n.Input.Count >= 2 && g.IsConstantInitializer(n.Input[1])
            && g.Initializers[n.Input[1]] is { Dims.Count: >= 3 } w && w.Dims[0] == group && w.Dims[1] == 1;
    }

    /// <summary>
    /// The channel axis, counted from the end, of a constant broadcast against a group's tensors (rank R, channels on
    /// axis 1 for Conv outputs: R - 1 from the end; the last axis otherwise): every other axis of the constant has size 1.
    /// </summary>
    private static int? ChannelAxis(Google.Protobuf.Collections.RepeatedField<long> dims, Group grp)
    {
        int fromEnd = grp.Conv ? grp.Rank - 1 : 1;
        if (dims.Count < fromEnd || (grp.Conv && dims.Count > grp.Rank))
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

    /// <summary>Keeps the entries <paramref name="keep"/> of axis <paramref name="fromEnd"/> (counted from the end) of a constant initializer.</summary>
    private static void SliceConstant(PassGraph g, string name, int fromEnd, int[] keep, string displayName)
    {
        TensorProto old = g.Initializers[name];
        float[] values = PassGraph.Floats(old, displayName);
        long[] dims = [.. old.Dims];
        int axis = dims.Length - fromEnd;
        long inner = dims.Skip(axis + 1).Aggregate(1L, (a, b) => a * b);
        long outerCount = dims.Take(axis).Aggregate(1L, (a, b) => a * b);
        long n = dims[axis];
        var result = new float[outerCount * keep.Length * inner];
        long at = 0;
        for (long o = 0; o < outerCount; o++)
        {
            foreach (int c in keep)
            {
                values.AsSpan((int)((o * n + c) * inner), (int)inner).CopyTo(result.AsSpan((int)at, (int)inner));
                at += inner;
            }
        }
        dims[axis] = keep.Length;
        PrunableLayers.SetConstant(g, name, result, dims);
    }

    /// <summary>
    /// Importance of each channel of a group: per producer, the L1 norm of each output's weights times |scale / sqrt(var + eps)|
    /// of a BatchNormalization its output goes through (directly or after a per-output bias Add), divided by the
    /// producer's mean, summed over the producers.
    /// </summary>
    private static double[] Importance(PassGraph g, List<PrunableLayer> producers, Dictionary<string, List<(NodeProto Node, int Index)>> uses, string displayName)
    {
        int c = producers[0].Outputs;
        var sum = new double[c];
        foreach (PrunableLayer p in producers)
        {
            var norms = new double[c];
            for (int o = 0; o < c; o++)
            {
                for (int r = 0; r < p.Reduction; r++)
                {
                    norms[o] += Math.Abs(p.Data[p.Index(o, r)]);
                }
            }
            if (BatchNormScale(g, p, uses, displayName) is { } scale)
            {
                for (int o = 0; o < c; o++)
                {
                    norms[o] *= Math.Abs(scale[o]);
                }
            }
            double mean = norms.Average();
            for (int o = 0; o < c; o++)
            {
                sum[o] += mean > 0 ? norms[o] / mean : 0;
            }
        }
        return sum;
    }

    /// <summary>scale / sqrt(var + epsilon) of the BatchNormalization a layer's output reaches (directly, or through one Add), null if none.</summary>
    private static double[]? BatchNormScale(PassGraph g, PrunableLayer p, Dictionary<string, List<(NodeProto Node, int Index)>> uses, string displayName)
    {
        string t = p.Node.Output[0];
        for (int step = 0; step < 2; step++)
        {
            if (uses.GetValueOrDefault(t) is not [var (u, index)])
            {
                return null;
            }
            if (u.OpType == "BatchNormalization" && index == 0 && u.Input.Count == 5 && g.IsConstantInitializer(u.Input[1]) && g.IsConstantInitializer(u.Input[4]))
            {
                float[] scale = PassGraph.Floats(g.Initializers[u.Input[1]], displayName), variance = PassGraph.Floats(g.Initializers[u.Input[4]], displayName);
                if (scale.Length != p.Outputs || variance.Length != p.Outputs)
                {
                    return null;
                }
                double eps = PassGraph.FloatAttr(u, "epsilon", 1e-5f);
                return [.. scale.Select((s, i) => s / Math.Sqrt(Math.Max(0, variance[i]) + eps))];
            }
            if (u.OpType != "Add")
            {
                return null;
            }
            t = u.Output[0];
        }
        return null;
    }

    private static Activation CheckedActivation(PrunableLayer l, int units, Dictionary<string, Activation> values, string displayName)
    {
        string name = l.Node.Input[0];
        bool conv = l.Node.OpType == "Conv";
        if (!values.TryGetValue(name, out Activation? a) || TensorUtil.ElementCount(a.Shape) != a.Data.Length || a.Data.Length == 0
            || (conv ? a.Shape.Length != l.Dims.Length || a.Shape[1] != units : a.Shape.Length < 2 || a.Shape[^1] != units))
        {
            throw CompressException.ForFile(displayName, DiagnosticCodes.DataShape, "calibration activations", name,
                conv ? $"expected [samples, {units}, spatial...] values" : $"expected [rows, {units}] values");
        }
        return a;
    }

    /// <summary>
    /// Least-squares correction of a consumer that keeps input units <paramref name="ins"/> (MatMul/Gemm rows; Conv
    /// input channels, each with its KernelSize kernel positions) and outputs <paramref name="outs"/>:
    /// <paramref name="before"/> is its input on the unchanged model (all units), <paramref name="now"/> its input on
    /// the model as pruned so far (the kept units only). With X the rows of before (MatMul/Gemm: input rows; Conv:
    /// im2col patches, index c x KernelSize + s; at most <see cref="MaxRefitRows"/>, evenly spaced, the same rows of
    /// both), X' those of now and Z = [X' 1], it solves (Z^T Z + ridge) [D; d] = Z^T (X W - X' W_kept), accumulated in
    /// chunks: the kept weights plus D and the bias plus d give on X' what the unchanged layer gave on X. Returns D
    /// ([kept reduction, outs], row-major) and d: null unless the consumer is a Gemm with a constant per-output C of its
    /// own, or a Conv whose bias is a constant of its own or absent (the caller then adds one).
    /// </summary>
    private static (float[] Delta, float[]? Bias) Refit(PassGraph g, PrunableLayer l, int[] ins, int[] outs, Activation before, Activation now, double ridgeFactor, string displayName)
    {
        int features = l.Reduction;
        int k = l.KernelSize;
        int[] kept = ins.SelectMany(c => Enumerable.Range(c * k, k)).ToArray();
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
        bool conv = n.OpType == "Conv";
        int f2 = kept.Length;
        int p = f2 + (intercept ? 1 : 0);
        int m = outs.Length;
        // The layer's weights over all inputs and over the kept ones, [features, outs] and [f2, outs].
        var wAll = new float[(long)features * m];
        var wKept = new float[(long)f2 * m];
        for (int r = 0; r < features; r++)
        {
            for (int oi = 0; oi < m; oi++)
            {
                wAll[(long)r * m + oi] = l.Data[l.Index(outs[oi], r)];
            }
        }
        for (int j = 0; j < f2; j++)
        {
            for (int oi = 0; oi < m; oi++)
            {
                wKept[(long)j * m + oi] = l.Data[l.Index(outs[oi], kept[j])];
            }
        }
        var gramF = new float[(long)p * p];
        var rhsF = new float[(long)p * m];
        int totalRows = conv ? int.MaxValue : (int)(before.Data.Length / features);
        int chunk = Math.Max(1, (1 << 22) / Math.Max(features, m));
        int used = 0;
        (float[] X, int Rows) Rows(Activation a, int width, int start)
        {
            if (conv)
            {
                return Im2Col(a, l, MaxRefitRows, start, chunk);
            }
            int selected = Math.Min(totalRows, MaxRefitRows);
            int rows = Math.Max(0, Math.Min(selected - start, chunk));
            var x = new float[(long)rows * width];
            for (int r = 0; r < rows; r++)
            {
                long pick = totalRows == selected ? start + r : (long)(start + r) * totalRows / selected;
                a.Data.AsSpan((int)(pick * width), width).CopyTo(x.AsSpan(r * width, width));
            }
            return (x, rows);
        }
        for (int start = 0; ; start += chunk)
        {
            (float[] x, int rows) = Rows(before, features, start);
            if (rows == 0)
            {
                break;
            }
            (float[] x2, int rows2) = Rows(now, f2, start);
            if (rows2 != rows)
            {
                throw CompressException.ForFile(displayName, DiagnosticCodes.DataShape, "calibration activations", n.Input[0],
                    "the pruned model's input to this layer does not line up with the original's");
            }
            // Target: X W - X' W_kept.
            var target = new float[(long)rows * m];
            var current = new float[(long)rows * m];
            Gemm.Multiply(x, wAll, target, rows, m, features);
            Gemm.Multiply(x2, wKept, current, rows, m, f2);
            TensorPrimitives.Subtract(target, current, target);
            var z = new float[(long)rows * p];
            for (int r = 0; r < rows; r++)
            {
                x2.AsSpan(r * f2, f2).CopyTo(z.AsSpan(r * p, f2));
                if (intercept)
                {
                    z[(long)r * p + f2] = 1f;
                }
            }
            float[] zt = PassGraph.Transpose(z, rows, p);
            Gemm.Multiply(zt, z, gramF, p, p, rows, accumulate: true);
            Gemm.Multiply(zt, target, rhsF, p, m, rows, accumulate: true);
            used += rows;
        }
        double[] normal = [.. gramF.Select(v => (double)v)];
        double[] rhs = [.. rhsF.Select(v => (double)v)];
        double meanDiag = 0;
        for (int i = 0; i < f2; i++)
        {
            meanDiag += normal[(long)i * p + i];
        }
        double ridge = Math.Max(ridgeFactor * meanDiag / Math.Max(1, f2), 1e-8);
        for (int i = 0; i < p; i++)
        {
            normal[(long)i * p + i] += i < f2 ? ridge : 1e-8 * Math.Max(1, used);
        }
        double[] solution = CholeskySolve(normal, rhs, p, m, displayName);
        var delta = new float[f2 * m];
        for (int i = 0; i < delta.Length; i++)
        {
            delta[i] = (float)solution[i];
        }
        float[]? bias = null;
        if (intercept)
        {
            bias = new float[m];
            for (int oi = 0; oi < m; oi++)
            {
                bias[oi] = (float)(solution[(long)f2 * m + oi] * biasScale);
            }
        }
        return (delta, bias);
    }

    /// <summary>Solves A X = B for symmetric positive definite A ([n, n]) and B ([n, m]), row-major (Cholesky; row operations vectorized).</summary>
    private static double[] CholeskySolve(double[] a, double[] b, int n, int m, string displayName)
    {
        var lower = new double[(long)n * n];
        for (int i = 0; i < n; i++)
        {
            ReadOnlySpan<double> li = lower.AsSpan(i * n, n);
            for (int j = 0; j <= i; j++)
            {
                double sum = a[(long)i * n + j] - TensorPrimitives.Dot(li[..j], lower.AsSpan(j * n, j));
                if (i == j)
                {
                    if (!(sum > 0))
                    {
                        throw CompressException.ForFile(displayName, DiagnosticCodes.DataShape, "calibration activations", "least-squares refit",
                            "the activations are degenerate (not positive definite even with the ridge term)");
                    }
                    lower[(long)i * n + i] = Math.Sqrt(sum);
                }
                else
                {
                    lower[(long)i * n + j] = sum / lower[(long)j * n + j];
                }
            }
        }
        var x = (double[])b.Clone();
        // L y = b, row by row: y_i = (b_i - sum_k<i L_ik y_k) / L_ii.
        for (int i = 0; i < n; i++)
        {
            Span<double> xi = x.AsSpan(i * m, m);
            for (int k = 0; k < i; k++)
            {
                double f = lower[(long)i * n + k];
                if (f != 0)
                {
                    TensorPrimitives.MultiplyAdd(x.AsSpan(k * m, m), -f, xi, xi);
                }
            }
            TensorPrimitives.Divide(xi, lower[(long)i * n + i], xi);
        }
        // L^T x = y, from the bottom: x_i = (y_i - sum_k>i L_ki x_k) / L_ii.
        for (int i = n - 1; i >= 0; i--)
        {
            Span<double> xi = x.AsSpan(i * m, m);
            for (int k = i + 1; k < n; k++)
            {
                double f = lower[(long)k * n + i];
                if (f != 0)
                {
                    TensorPrimitives.MultiplyAdd(x.AsSpan(k * m, m), -f, xi, xi);
                }
            }
            TensorPrimitives.Divide(xi, lower[(long)i * n + i], xi);
        }
        return x;
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
}
