using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Quantization;
using CompressOnBuild.Core.Quantization.Ops;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;
using DataType = CompressOnBuild.Onnx.TensorProto.Types.DataType;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Static int8 quantization in QDQ form. Conv, MatMul and Gemm with constant float32 weights read their activation
/// through QuantizeLinear -> DequantizeLinear (uint8, asymmetric, range from calibration), their weight through a
/// DequantizeLinear of int8 data (symmetric, per output channel: Conv axis 0, MatMul axis 1, Gemm axis 0 with transB
/// else 1) and their bias through a DequantizeLinear of int32 data with scale = activation scale x weight scale.
/// Their result (after a single following Relu, which ORT then folds into the zero point) gets a Q/DQ pair when a
/// later quantized node reads it, directly or through MaxPool/Reshape/Flatten/Transpose/Squeeze/Unsqueeze, which
/// keep the pair's parameters so ORT runs them on uint8. ORT's optimizer turns these patterns into QLinearConv,
/// QLinearMatMul, QGemm, MatMulIntegerToFloat. Graph inputs and outputs stay float32. A Conv whose only consumer adds
/// a per-channel constant gets that constant folded into its bias first (CNTK-style exports), a 2-D MatMul plus a
/// constant bias Add becomes one Gemm, and a Relu -> MaxPool after a layer that stays float is reordered to
/// MaxPool -> Relu so ORT pools in float rather than in uint8 NCHW (see <c>MovePoolsAheadOfRelus</c>).
/// With <see cref="ActivationType.Int8"/> activations are int8 with zero point 0 and scale max(|min|, |max|) / 127.
/// ORT can fold a Relu into a QuantizeLinear only when the zero point is the type's minimum, so a Relu after a
/// quantized node stays: the node's result gets the Q/DQ pair, with the Relu output's range (the negative side is
/// clipped anyway), and the Relu, like MaxPool, passes those parameters on; a Relu -> MaxPool is then reordered after
/// quantized nodes too, so the pool reads the integer kernel's output.
/// </summary>
public static class Int8StaticQuantizer
{
    /// <summary>The operators this pass places Q/DQ around itself: the registry's pass-owned list for Int8Static.</summary>
    private static readonly IReadOnlySet<string> OwnOpTypes = OpRegistry.PassOwnedOpTypes(QuantizationScheme.Int8Static);

    private static readonly HashSet<string> UInt8Passthrough = new(StringComparer.Ordinal)
    {
        "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
    };

    /// <summary>With zero point 0, Relu is max(q, 0) on the quantized values: it keeps its input's parameters too.</summary>
    private static readonly HashSet<string> Int8Passthrough = new(UInt8Passthrough, StringComparer.Ordinal) { "Relu" };

    /// <summary>The tensors whose ranges <see cref="Apply"/> needs: activation inputs and results of the nodes it would quantize.</summary>
    public static IReadOnlyList<string> TensorsToCalibrate(ModelProto model, Int8StaticOptions options) => TensorsToCalibrate(model, options, null);

    /// <summary><see cref="TensorsToCalibrate(ModelProto, Int8StaticOptions)"/>; <paramref name="configure"/> sets up each graph index the pass builds (the streaming path's external-data reader).</summary>
    internal static IReadOnlyList<string> TensorsToCalibrate(ModelProto model, Int8StaticOptions options, Action<PassGraph>? configure)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        if (model.Graph == null || QuantizedOperators.Describe(model) != null)
        {
            return [];
        }
        var work = model.Clone();
        Float16Lift.Apply(work, "calibration");
        var rewriter = new Rewriter(Index(work, configure), options, "calibration", null);
        return rewriter.Plan();
    }

    private static PassGraph Index(ModelProto model, Action<PassGraph>? configure)
    {
        var g = new PassGraph(model);
        configure?.Invoke(g);
        return g;
    }

    /// <summary>
    /// The model to collect <see cref="TensorsToCalibrate"/> on: <paramref name="model"/> itself, or for a model with
    /// float16 weights a float32-compute copy of it (<see cref="Float16Lift"/>, the same names <see cref="Apply"/> sees),
    /// whose tensors are all float32 as the calibrator reads them.
    /// </summary>
    public static ModelProto CalibrationModel(ModelProto model)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model.Graph == null || QuantizedOperators.Describe(model) != null || !Float16Lift.HasFloat16Weights(model))
        {
            return model;
        }
        ModelProto work = model.Clone();
        Float16Lift.Apply(work, "calibration");
        return work;
    }

    /// <summary>Quantizes <paramref name="model"/> in place (the caller passes a copy) with the calibrated ranges.</summary>
    /// <exception cref="CompressException">CMPR0202 for NaN/infinite weights, CMPR0103 for a model without a graph.</exception>
    public static Int8StaticSummary Apply(ModelProto model, CalibrationResult calibration, Int8StaticOptions options, string displayName) =>
        Apply(model, calibration, options, displayName, null);

    /// <summary>
    /// <see cref="Apply(ModelProto, CalibrationResult, Int8StaticOptions, string)"/>; <paramref name="configure"/> sets up
    /// each graph index the pass builds (<see cref="StreamingQuantizer"/>: weights read from external data when used,
    /// quantized weights written to the output's data file as they are made).
    /// </summary>
    internal static Int8StaticSummary Apply(ModelProto model, CalibrationResult calibration, Int8StaticOptions options, string displayName, Action<PassGraph>? configure)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(calibration);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(displayName);
        if (model.Graph == null)
        {
            throw CompressException.ForFile(displayName, DiagnosticCodes.ModelInvalid, displayName, "it has no graph");
        }
        long before = model.CalculateSize();
        if (QuantizedOperators.Describe(model) is { } already)
        {
            return new Int8StaticSummary
            {
                ModelDisplayName = displayName, WeightEncoding = options.WeightEncoding, ActivationType = options.ActivationType, AlreadyQuantized = true,
                AlreadyQuantizedReason = already, ModelBytesBefore = before, ModelBytesAfter = before,
            };
        }
        // A float16 model is quantized from its float16 weights, in float32 compute (see Float16Lift).
        Float16Lift? lift = Float16Lift.Apply(model, displayName);
        var rewriter = new Rewriter(Index(model, configure), options, displayName, lift?.Alias(calibration) ?? calibration);
        rewriter.Run();
        // ONNX Runtime has no QDQ LSTM kernel: LSTM weights go int8 through DynamicQuantizeLSTM (activations quantized
        // per step at run time), on a fresh index of the rewritten graph.
        var recurrent = new RecurrentContext(Index(model, configure), EncodingLevels.Of(options.WeightEncoding, displayName), displayName,
            options.ExcludedNodes, options.MinimumWeightElements);
        QuantizationDriver.Run(recurrent, OpRegistry.For(QuantizationScheme.Int8Static));
        LstmLowering.ReportFloat(recurrent.Graph, Int8DynamicQuantizer.NoInt8Kernel, op => $"ONNX Runtime has no quantized {op} kernel (only DynamicQuantizeLSTM); its weights stay float32", recurrent.Skipped, displayName);
        rewriter.Quantized.AddRange(recurrent.Quantized);
        rewriter.Skipped.AddRange(recurrent.Skipped);
        int restored = lift?.Finish(model, rewriter.Quantized.Count > 0) ?? 0;
        return new Int8StaticSummary
        {
            ModelDisplayName = displayName,
            WeightEncoding = options.WeightEncoding,
            ActivationType = options.ActivationType,
            PerChannel = rewriter.PerChannel,
            Quantized = rewriter.Quantized,
            Skipped = rewriter.Skipped,
            QuantizedActivations = rewriter.Activations,
            OpsetRaisedFrom = rewriter.OpsetRaisedFrom,
            OpsetRaisedTo = rewriter.OpsetRaisedTo,
            OpsetNote = rewriter.OpsetNote,
            FoldedBatchNormalizations = rewriter.FoldedBatchNormalizations,
            ModelBytesBefore = before,
            ModelBytesAfter = model.CalculateSize(), // also when nothing was quantized: constant folding may still have changed the model
            Float16Weights = lift == null || rewriter.Quantized.Count == 0 ? null : Float16Lift.Describe(lift.LiftedTensors, restored),
        };
    }

    /// <summary>Asymmetric uint8 parameters covering [min, max] and zero.</summary>
    public static (float Scale, byte ZeroPoint) ActivationParameters(TensorRange r)
    {
        float min = MathF.Min(0f, r.Min), max = MathF.Max(0f, r.Max);
        float scale = (max - min) / 255f;
        if (!(scale > 1e-30f) || !float.IsFinite(scale))
        {
            return (1f, 0);
        }
        return (scale, (byte)Math.Clamp(MathF.Round(-min / scale, MidpointRounding.ToEven), 0f, 255f));
    }

    /// <summary>
    /// Symmetric int8 parameters: zero point 0, scale max(|min|, |max|) / 127, so the range maps onto [-127, 127]
    /// (ONNX Runtime's quantizer: symmetric int8 range (-127, 127), scale = 2 absmax / 254).
    /// </summary>
    public static float SymmetricActivationScale(TensorRange r)
    {
        float absMax = MathF.Max(MathF.Abs(r.Min), MathF.Abs(r.Max));
        float scale = absMax / 127f;
        return scale > 1e-30f && float.IsFinite(scale) ? scale : 1f;
    }

    private sealed class Candidate
    {
        public required NodeProto Node { get; init; }

        /// <summary>Reads the weight as floats (from the model's tensor; called again after <see cref="ReleaseWeight"/>).</summary>
        public required Func<float[]> LoadWeight { get; init; }

        private float[]? _weight;

        /// <summary>
        /// The weight as floats, read on first use: holding every candidate's weight as floats at once doubled the
        /// model in memory while the pass (and the calibration plan) ran.
        /// </summary>
        public float[] Weight => _weight ??= LoadWeight();

        /// <summary>Drops the float copy of the weight (read again if asked for).</summary>
        public void ReleaseWeight() => _weight = null;

        public required long[] Dims { get; init; }

        public required List<NodeProto> Chain { get; init; }

        public required List<string> Sources { get; init; }

        /// <summary>Weight axis of the output channels.</summary>
        public int Axis { get; init; }

        public float[]? Bias { get; init; }

        public List<string> BiasSources { get; init; } = [];

        /// <summary>The tensor to quantize after the node: its output, or (uint8) the output of a single following Relu.</summary>
        public required string Result { get; init; }

        /// <summary>
        /// The calibrated tensor whose range sets <see cref="Result"/>'s parameters: <see cref="Result"/>, or (int8) the
        /// output of the Relu that follows the node, directly or after a MaxPool.
        /// </summary>
        public required string RangeTensor { get; init; }

        /// <summary>The [min, max] of a Clip after the node whose output is <see cref="RangeTensor"/>, else null.</summary>
        public (float Low, float High)? ClipBounds { get; init; }

        /// <summary>The tensor that gets the pair after the node: <see cref="Result"/>, or the node's own output when ORT could not fold the Clip.</summary>
        public string Quantize { get; set; } = "";
    }

    /// <summary>A Q/DQ pair: the DequantizeLinear output, scale and zero-point initializers and their values (uint8 0..255 or int8 -128..127).</summary>
    private sealed record QParams(string Dq, string Scale, string ZeroPoint, float ScaleValue, int ZeroValue);

    private sealed class Rewriter(PassGraph g, Int8StaticOptions options, string displayName, CalibrationResult? calibration)
    {
        private readonly Dictionary<string, QParams> _quantized = new(StringComparer.Ordinal);

        /// <summary>The values of <see cref="_quantized"/> by their DequantizeLinear output (unique names).</summary>
        private readonly Dictionary<string, QParams> _byDq = new(StringComparer.Ordinal);
        private readonly List<string> _removable = [];
        private readonly List<NodeProto> _removableNodes = [];
        private Dictionary<string, List<NodeProto>> _consumers = new(StringComparer.Ordinal);

        public List<QuantizedNode> Quantized { get; } = [];

        public List<SkippedNode> Skipped { get; } = [];

        public int Activations { get; private set; }

        public bool PerChannel { get; private set; }

        public long? OpsetRaisedFrom { get; private set; }

        /// <summary>BatchNormalization nodes folded into the Conv before them.</summary>
        public int FoldedBatchNormalizations { get; private set; }

        /// <summary>Default opset the model ends at (set by Run; null when no opset with QDQ can be reached).</summary>
        private long? _targetOpset;

        /// <summary>Raised from (null: not raised) and to.</summary>
        public long? OpsetRaisedTo { get; private set; }

        /// <summary>What was done about the opset and why, for the report; null when the model already had 13 or more.</summary>
        public string? OpsetNote { get; private set; }

        private float Levels => EncodingLevels.Of(options.WeightEncoding, displayName).LevelsPerSide;

        private bool Int8Activations => options.ActivationType == ActivationType.Int8;

        private HashSet<string> Passthrough => Int8Activations ? Int8Passthrough : UInt8Passthrough;

        private (float Scale, int ZeroPoint) Parameters(TensorRange r)
        {
            if (Int8Activations)
            {
                return (SymmetricActivationScale(r), 0);
            }
            (float scale, byte zero) = ActivationParameters(r);
            return (scale, zero);
        }

        /// <summary>Decides opset handling and candidates; returns the tensors needing ranges.</summary>
        public List<string> Plan()
        {
            List<Candidate> candidates = Prepare();
            var names = new List<string>();
            foreach (Candidate c in candidates)
            {
                names.Add(c.Node.Input[0]);
                names.Add(c.RangeTensor);
            }
            return names.Distinct(StringComparer.Ordinal).ToList();
        }

        public void Run()
        {
            _ = EncodingLevels.Of(options.WeightEncoding, displayName); // CMPR0003 for an unknown encoding, before anything changes
            if (options.ActivationType is not (ActivationType.UInt8 or ActivationType.Int8))
            {
                throw new CompressException(DiagnosticCodes.InvalidOption, displayName, "ActivationType", options.ActivationType, "use UInt8 or Int8");
            }
            long opset = g.OnnxOpset;
            // QuantizeLinear/DequantizeLinear need default opset 10, their per-channel axis 13, and MaxPool has uint8/int8
            // kernels from 12. The model is raised as far as its nodes allow (rewritten to their new form where their
            // meaning changed, see OpsetRaise): to 13 with per-channel weights when possible, else to the highest
            // of 12..10 with per-tensor weights, else (below 10 and nothing can be raised) nothing is quantized.
            string? blocked13 = OpsetRaise.BlockingReason(g.Model, 13, "per-channel QDQ needs default opset 13");
            _targetOpset = blocked13 == null ? Math.Max(opset, 13) : OpsetRaise.Highest(g.Model, [12, 11, 10]);
            PerChannel = options.PerChannel && _targetOpset >= 13;
            if (_targetOpset == null)
            {
                string reason = OpsetRaise.BlockingReason(g.Model, 10, "QDQ needs default opset 10")!;
                OpsetNote = reason;
                foreach (NodeProto n in g.Graph.Node.Where(n => OwnOpTypes.Contains(n.OpType) && OnnxNames.IsDefaultDomain(n)))
                {
                    Skipped.Add(new SkippedNode(OnnxNames.Label(n), n.OpType, reason));
                }
                return;
            }
            if (blocked13 != null && options.PerChannel)
            {
                OpsetNote = $"per-tensor weights at default opset {_targetOpset}: {blocked13}";
            }
            // Every weight is checked before the graph changes, so a bad one leaves the model untouched.
            foreach (NodeProto n in g.Graph.Node.Where(n => OwnOpTypes.Contains(n.OpType) && ModelChecker.NormalizeDomain(n.Domain).Length == 0))
            {
                foreach (string input in n.Input.Skip(1).Where(i => i.Length > 0))
                {
                    if (g.TryConstantFloat(input, displayName, out float[] values, out _, out _, out _) && !TensorStats.AllFinite(values))
                    {
                        throw CompressException.ForFile(displayName, DiagnosticCodes.NonFiniteWeights, displayName, input);
                    }
                }
            }
            List<Candidate> candidates = Prepare();
            foreach (Candidate c in candidates)
            {
                if (!TensorStats.AllFinite(c.Weight) || (c.Bias != null && !TensorStats.AllFinite(c.Bias)))
                {
                    throw CompressException.ForFile(displayName, DiagnosticCodes.NonFiniteWeights, displayName, c.Node.Input[1]);
                }
                c.ReleaseWeight();
            }
            Rewrite(candidates);
            if (Quantized.Count == 0)
            {
                return;
            }
            // Weight chains left without readers go. How many node inputs read each name, counted once and lowered as
            // nodes go (a set of reads rebuilt after every removal was quadratic in the graph's size).
            HashSet<string> outer = g.OuterUses();
            var reads = new Dictionary<string, int>(StringComparer.Ordinal);
            var present = new HashSet<NodeProto>(ReferenceEqualityComparer.Instance);
            foreach (NodeProto n in g.Graph.Node)
            {
                present.Add(n);
                foreach (string i in n.Input)
                {
                    reads[i] = reads.GetValueOrDefault(i) + 1;
                }
            }
            var gone = new HashSet<NodeProto>(ReferenceEqualityComparer.Instance);
            // A chain lists each node after the ones it reads: walked backwards, a node's reader has gone first.
            foreach (NodeProto n in Enumerable.Reverse(_removableNodes))
            {
                if (present.Contains(n) && !gone.Contains(n) && !n.Output.Any(o => outer.Contains(o) || reads.GetValueOrDefault(o) > 0))
                {
                    gone.Add(n);
                    foreach (string i in n.Input)
                    {
                        reads[i]--;
                    }
                }
            }
            PassGraph.RemoveAll(g.Graph.Node, gone.Contains);
            g.RemoveUnusedInitializers(_removable);
            // Per-tensor weights need only opset 10, but the model is raised to 13 too when that is safe: before
            // opset 12 MaxPool has no uint8/int8 kernel, so ORT pools the dequantized floats between DQ and Q.
            long target = _targetOpset!.Value;
            if (opset < target)
            {
                OpsetRaisedFrom = opset;
                OpsetRaisedTo = target;
                IReadOnlyList<string> rewritten = OpsetRaise.Raise(g.Model, target);
                string how = rewritten.Count == 0 ? "" : $"; rewritten to their opset-{target} form: {string.Join(", ", rewritten)}";
                OpsetNote = OpsetNote == null
                    ? $"default opset {opset} raised to {target}{(PerChannel ? " for per-channel weights" : "")}{how}"
                    : $"{OpsetNote}; raised from {opset}{how}";
            }
            PassGraph.DropInitializerInputs(g.Model);
            PassGraph.StripDebugTraces(g.Model);
        }

        private void BuildConsumers()
        {
            _consumers = new Dictionary<string, List<NodeProto>>(StringComparer.Ordinal);
            foreach (NodeProto n in g.Graph.Node)
            {
                foreach (string i in n.Input.Where(i => i.Length > 0))
                {
                    (_consumers.TryGetValue(i, out var list) ? list : _consumers[i] = []).Add(n);
                }
            }
        }

        private List<NodeProto> Consumers(string name) => _consumers.GetValueOrDefault(name) ?? [];

        /// <summary>The structural rewrites (constant shape ops folded, bias Adds into Conv/Gemm, MaxPool ahead of Relu), then the candidates.</summary>
        private List<Candidate> Prepare()
        {
            g.FoldConstantShapeOps(displayName);
            FoldBatchNormalizations();
            FoldConvAdds();
            FuseMatMulAdds();
            List<Candidate> candidates = FindCandidates();
            if (MovePoolsAheadOfRelus(candidates))
            {
                Skipped.Clear();
                candidates = FindCandidates();
            }
            return candidates;
        }

        /// <summary>
        /// Conv (constant weight, no bias or a constant one) whose only consumer is an inference BatchNormalization with
        /// constant parameters: the normalization goes into the weight and bias (W' = W s, b' = (b - mean) s + B with
        /// s = scale / sqrt(var + epsilon) per output channel), and the Conv takes over the BatchNormalization's output
        /// name (its calibrated range). ORT does this fold itself only for float weights: with a DequantizeLinear on the
        /// weight it leaves Conv -> BatchNormalization, the Conv has no QuantizeLinear after it and runs in float.
        /// </summary>
        private void FoldBatchNormalizations()
        {
            BuildConsumers();
            HashSet<string> outer = g.OuterUses();
            var removed = new List<NodeProto>();
            foreach (NodeProto conv in g.Graph.Node.Where(n => OnnxNames.Is(n, "Conv") && n.Input.Count >= 2).ToList())
            {
                string y = conv.Output[0];
                if (outer.Contains(y) || Consumers(y) is not [{ OpType: "BatchNormalization" } bn] || !OnnxNames.IsDefaultDomain(bn)
                    || bn.Input.Count != 5 || bn.Input[0] != y || bn.Output.Skip(1).Any(o => o.Length > 0)
                    || PassGraph.IntAttr(bn, "spatial", 1) != 1 || PassGraph.IntAttr(bn, "training_mode", 0) != 0
                    || !g.TryConstantFloat(conv.Input[1], displayName, out float[] w, out long[] wDims, out _, out List<string> wSources)
                    || wDims.Length < 3 || wDims[0] <= 0)
                {
                    continue;
                }
                long m = wDims[0];
                var parameters = new float[4][];
                var sources = new List<string>(wSources);
                bool ok = true;
                for (int i = 0; i < 4 && ok; i++)
                {
                    ok = g.TryConstantFloat(bn.Input[i + 1], displayName, out parameters[i], out _, out _, out List<string> s) && parameters[i].Length == m;
                    sources.AddRange(s);
                }
                float[] bias = new float[m];
                if (ok && conv.Input.Count > 2 && conv.Input[2].Length > 0)
                {
                    ok = g.TryConstantFloat(conv.Input[2], displayName, out float[] old, out _, out _, out List<string> bSources) && old.Length == m;
                    if (ok)
                    {
                        old.CopyTo(bias, 0);
                        sources.AddRange(bSources);
                    }
                }
                double epsilon = PassGraph.FloatAttr(bn, "epsilon", 1e-5f);
                if (!ok || parameters.Any(p => !TensorStats.AllFinite(p)) || parameters[3].Any(v => !(v + epsilon > 0)))
                {
                    continue;
                }
                (float[] gamma, float[] beta, float[] mean, float[] variance) = (parameters[0], parameters[1], parameters[2], parameters[3]);
                var folded = new float[w.Length];
                long perChannel = w.Length / m;
                for (long c = 0; c < m; c++)
                {
                    double s = gamma[c] / Math.Sqrt(variance[c] + epsilon);
                    for (long i = c * perChannel; i < (c + 1) * perChannel; i++)
                    {
                        folded[i] = (float)(w[i] * s);
                    }
                    bias[c] = (float)((bias[c] - (double)mean[c]) * s + beta[c]);
                }
                string label = OnnxNames.Label(conv);
                string weightName = g.Unique(label + "_bn_weight");
                string biasName = g.Unique(label + "_bn_bias");
                g.AddInitializer(TensorUtil.FromFloats(weightName, folded, wDims));
                g.AddInitializer(TensorUtil.FromFloats(biasName, bias, m));
                while (conv.Input.Count < 3)
                {
                    conv.Input.Add("");
                }
                conv.Input[1] = weightName;
                conv.Input[2] = biasName;
                // An unnamed node is labelled by its first output: keep the Conv's label (exclusions name it so).
                conv.Name = label;
                conv.Output[0] = bn.Output[0];
                g.Producers[bn.Output[0]] = conv;
                g.DropValueInfo(y);
                removed.Add(bn);
                _removable.AddRange(sources);
                FoldedBatchNormalizations++;
            }
            RemoveNodesAndCommit(removed);
        }

        /// <summary>Conv (no bias or constant bias) whose only consumer is Add(constant with one value per channel): fold into the bias.</summary>
        private void FoldConvAdds()
        {
            BuildConsumers();
            HashSet<string> outer = g.OuterUses();
            var removed = new List<NodeProto>();
            foreach (NodeProto conv in g.Graph.Node.Where(n => n.OpType == "Conv" && ModelChecker.NormalizeDomain(n.Domain).Length == 0).ToList())
            {
                string y = conv.Output[0];
                if (outer.Contains(y) || Consumers(y) is not [{ OpType: "Add" } add] || add.Input.Count != 2
                    || !g.TryConstantFloat(conv.Input[1], displayName, out _, out long[] wDims, out _, out _) || wDims.Length < 3)
                {
                    continue;
                }
                string other = add.Input[0] == y ? add.Input[1] : add.Input[0];
                if (!g.TryConstantFloat(other, displayName, out float[] addend, out long[] aDims, out _, out List<string> aSources))
                {
                    continue;
                }
                long m = wDims[0];
                // Right-aligned against the output [N, M, spatial...]: one value per channel, 1 everywhere else.
                int rank = wDims.Length;
                bool perChannel = addend.Length == m && aDims.Length <= rank && aDims.Length >= rank - 1;
                for (int i = 0; perChannel && i < aDims.Length; i++)
                {
                    int outAxis = rank - aDims.Length + i;
                    perChannel = aDims[i] == (outAxis == 1 ? m : 1) || (aDims[i] == 1 && m == 1);
                }
                if (!perChannel)
                {
                    continue;
                }
                float[] bias = new float[m];
                if (conv.Input.Count > 2 && conv.Input[2].Length > 0)
                {
                    if (!g.TryConstantFloat(conv.Input[2], displayName, out float[] old, out _, out _, out _) || old.Length != m)
                    {
                        continue;
                    }
                    old.CopyTo(bias, 0);
                }
                for (int i = 0; i < m; i++)
                {
                    bias[i] += addend[i];
                }
                string biasName = g.Unique(OnnxNames.Label(conv) + "_folded_bias");
                g.AddInitializer(TensorUtil.FromFloats(biasName, bias, m));
                while (conv.Input.Count < 3)
                {
                    conv.Input.Add("");
                }
                conv.Input[2] = biasName;
                // An unnamed node is labelled by its first output: keep the Conv's label (exclusions name it so).
                conv.Name = OnnxNames.Label(conv);
                conv.Output[0] = add.Output[0];
                g.Producers[add.Output[0]] = conv;
                g.DropValueInfo(y);
                removed.Add(add);
                _removable.AddRange(aSources);
            }
            RemoveNodesAndCommit(removed);
        }

        /// <summary>
        /// MatMul(A, constant 2-D B) whose only consumer adds a constant [N] or [1, N] vector, with A known to be 2-D,
        /// becomes one Gemm with that vector as C (the same values). ORT then runs a single QGemm (int32 bias, float
        /// output allowed) where it ran QLinearMatMul, DequantizeLinear and a float Add (mnist-8's last layer).
        /// </summary>
        private void FuseMatMulAdds()
        {
            if (g.OnnxOpset < 7)
            {
                return;
            }
            BuildConsumers();
            HashSet<string> outer = g.OuterUses();
            var excluded = new HashSet<string>(options.ExcludedNodes, StringComparer.Ordinal);
            foreach (NodeProto mm in g.Graph.Node.Where(n => n.OpType == "MatMul" && ModelChecker.NormalizeDomain(n.Domain).Length == 0 && n.Input.Count == 2).ToList())
            {
                string y = mm.Output[0];
                if (excluded.Contains(OnnxNames.Label(mm)) || outer.Contains(y)
                    || Consumers(y) is not [{ OpType: "Add" } add] || ModelChecker.NormalizeDomain(add.Domain).Length != 0 || add.Input.Count != 2 || add.Input[0] == add.Input[1]
                    || !g.TryConstantFloat(mm.Input[1], displayName, out float[] w, out long[] wDims, out _, out _) || wDims.Length != 2 || w.Length < options.MinimumWeightElements
                    || !IsMatrix(mm.Input[0]))
                {
                    continue;
                }
                string other = add.Input[0] == y ? add.Input[1] : add.Input[0];
                if (!g.TryConstantFloat(other, displayName, out float[] c, out long[] cDims, out _, out _) || c.Length != wDims[1]
                    || !(cDims.Length == 1 || (cDims.Length == 2 && cDims[0] == 1)) || !TensorStats.AllFinite(c))
                {
                    continue;
                }
                // The MatMul's label (its name, or for an unnamed one its output): the Gemm takes the Add's output,
                // whose label OpTypesToQuantize excludes, and exclusions (NodesToExclude, the tuner's) name the MatMul.
                var gemm = new NodeProto { OpType = "Gemm", Name = OnnxNames.Label(mm), Domain = mm.Domain };
                gemm.Input.Add(mm.Input[0]);
                gemm.Input.Add(mm.Input[1]);
                gemm.Input.Add(other);
                gemm.Output.Add(add.Output[0]);
                // At the Add's place: A and B are defined before the MatMul, C before the Add (written by Commit, in one pass).
                g.Replace(add, [gemm]);
                g.RemoveNode(mm);
                g.Producers[gemm.Output[0]] = gemm;
                g.Producers.Remove(y);
                g.DropValueInfo(y);
            }
            g.Commit();
            BuildConsumers();
        }

        /// <summary>The main graph's outputs by name (the first of a repeated name); the rewrites before <see cref="Rewrite"/> do not change them.</summary>
        private Dictionary<string, ValueInfoProto>? _outputs;

        private Dictionary<string, ValueInfoProto> Outputs()
        {
            if (_outputs == null)
            {
                _outputs = new Dictionary<string, ValueInfoProto>(StringComparer.Ordinal);
                foreach (ValueInfoProto o in g.Graph.Output)
                {
                    _outputs.TryAdd(o.Name, o);
                }
            }
            return _outputs;
        }

        /// <summary>
        /// Removes <paramref name="nodes"/> from the graph and writes the dropped value_info, in one pass each. Not
        /// through <see cref="PassGraph.RemoveNode"/>: its consumer index, built from the node list that still holds
        /// them, would make them the producers of the outputs their Conv took over.
        /// </summary>
        private void RemoveNodesAndCommit(List<NodeProto> nodes)
        {
            var gone = new HashSet<NodeProto>(nodes, ReferenceEqualityComparer.Instance);
            PassGraph.RemoveAll(g.Graph.Node, gone.Contains);
            g.Commit();
            BuildConsumers();
        }

        /// <summary>True when <paramref name="name"/> is known to have rank 2 (declared shape, Flatten, Gemm, or a Reshape to a constant 2-element shape).</summary>
        private bool IsMatrix(string name)
        {
            // Declared as a graph input, in value_info or as a graph output (the first of these, in that order).
            ValueInfoProto? declared = g.ValueInfoOf(name) ?? Outputs().GetValueOrDefault(name);
            if (declared?.Type?.TensorType?.Shape is { } shape)
            {
                return shape.Dim.Count == 2;
            }
            if (!g.Producers.TryGetValue(name, out NodeProto? p) || ModelChecker.NormalizeDomain(p.Domain).Length != 0)
            {
                return false;
            }
            return p.OpType is "Flatten" or "Gemm"
                || (p.OpType == "Reshape" && p.Input.Count == 2 && g.IsConstantInitializer(p.Input[1])
                    && g.Initializers[p.Input[1]] is { DataType: (int)DataType.Int64 } s && s.Dims.Count == 1 && s.Dims[0] == 2);
        }

        /// <summary>
        /// Relu -> MaxPool after a node that stays float, when a quantized node reads the pooled tensor, becomes
        /// MaxPool -> Relu: the same values (max commutes with max(0, .)) under the same output name. ORT then drops the
        /// Relu into the QuantizeLinear (zero point 0) and pools in float. In the original order it moves the
        /// QuantizeLinear above the MaxPool and pools uint8 in NCHW, which took 590 us against 58 us for the float
        /// MaxPool on lenet5's first layer (ORT 1.31 profile, batch 64) and made static int8 slower than float.
        /// </summary>
        private bool MovePoolsAheadOfRelus(List<Candidate> candidates)
        {
            var quantizedNodes = new HashSet<NodeProto>(candidates.Select(c => c.Node), ReferenceEqualityComparer.Instance);
            HashSet<string> outer = g.OuterUses();
            // Each moved MaxPool by the Relu it goes in front of; the node list is rewritten once at the end.
            var moved = new Dictionary<NodeProto, NodeProto>(ReferenceEqualityComparer.Instance);
            foreach (NodeProto relu in g.Graph.Node.Where(n => n.OpType == "Relu" && ModelChecker.NormalizeDomain(n.Domain).Length == 0).ToList())
            {
                string r = relu.Output[0];
                if (outer.Contains(r) || Consumers(r) is not [{ OpType: "MaxPool" } pool] || ModelChecker.NormalizeDomain(pool.Domain).Length != 0
                    || pool.Input[0] != r || pool.Output.Count != 1 || PassGraph.IntAttr(pool, "ceil_mode", 0) != 0
                    || (!Int8Activations && g.Producers.TryGetValue(relu.Input[0], out NodeProto? producer) && quantizedNodes.Contains(producer))
                    || !FeedsQuantized(pool.Output[0], quantizedNodes))
                {
                    continue;
                }
                string y = pool.Output[0];
                string pooled = g.Unique(y + "_before_relu");
                pool.Input[0] = relu.Input[0];
                pool.Output[0] = pooled;
                relu.Input[0] = pooled;
                relu.Output[0] = y;
                moved[relu] = pool;
                g.Producers[pooled] = pool;
                g.Producers[y] = relu;
                g.Producers.Remove(r);
                g.DropValueInfo(r);
            }
            if (moved.Count == 0)
            {
                return false;
            }
            var pools = new HashSet<NodeProto>(moved.Values, ReferenceEqualityComparer.Instance);
            var nodes = new List<NodeProto>(g.Graph.Node.Count);
            foreach (NodeProto n in g.Graph.Node)
            {
                if (pools.Contains(n))
                {
                    continue;
                }
                if (moved.TryGetValue(n, out NodeProto? pool))
                {
                    nodes.Add(pool);
                }
                nodes.Add(n);
            }
            g.Graph.Node.Clear();
            g.Graph.Node.AddRange(nodes);
            g.Commit();
            BuildConsumers();
            return true;
        }

        private List<Candidate> FindCandidates()
        {
            var result = new List<Candidate>();
            var excluded = new HashSet<string>(options.ExcludedNodes, StringComparer.Ordinal);
            HashSet<string> outer = g.OuterUses();
            foreach (PassGraph body in g.WithSubgraphs().Skip(1))
            {
                foreach (NodeProto n in body.Graph.Node.Where(n => OnnxNames.IsDefaultDomain(n) && OwnOpTypes.Contains(n.OpType)))
                {
                    Skipped.Add(new SkippedNode(OnnxNames.Label(n), n.OpType,
                        $"it is inside the subgraph '{body.Graph.Name}'; calibration sees only main-graph values, so Int8 static quantizes the main graph (Int8 dynamic, Int4 and Float16 quantize bodies)"));
                }
            }
            foreach (NodeProto node in g.Graph.Node)
            {
                if (ModelChecker.NormalizeDomain(node.Domain).Length != 0 || node.OpType is not ("Conv" or "MatMul" or "Gemm") || node.Input.Count < 2)
                {
                    continue;
                }
                string label = OnnxNames.Label(node);
                void Skip(string reason) => Skipped.Add(new SkippedNode(label, node.OpType, reason));
                if (excluded.Contains(label))
                {
                    Skip("excluded by the options");
                    continue;
                }
                WeightSite? site = node.OpType == "Conv"
                    ? WeightSites.ConvSite(g, displayName, options.MinimumWeightElements, node, Skip)
                    : WeightSites.MatrixSite(g, displayName, options.MinimumWeightElements, node, Skip);
                if (site == null)
                {
                    continue;
                }
                TensorProto weightTensor = site.Weight.Tensor;
                long[] dims = site.Weight.Dims;
                long weightElements = dims.Aggregate(1L, (a, b) => a * b);
                List<NodeProto> chain = site.Weight.Chain;
                List<string> sources = [node.Input[1], site.Weight.SourceName, .. site.Weight.ChainInputs];
                int axis = site.Axis;
                if (node.OpType == "Conv")
                {
                    long reduction = weightElements / dims[0];
                    if (reduction < options.MinimumConvReduction)
                    {
                        Skip($"its reduction per output value is {reduction} (input channels per group x kernel), below {options.MinimumConvReduction}: ORT's QLinearConv is slower than the float Conv there");
                        continue;
                    }
                }
                else if (site.TransA || site.Alpha != 1f)
                {
                    Skip("Gemm with transA or alpha != 1 is not quantized statically");
                    continue;
                }
                if (Consumers(node.Input[1]).Any(u => !ReferenceEquals(u, node)) || outer.Contains(node.Input[1]))
                {
                    Skip($"weight '{node.Input[1]}' is shared with another node or graph output");
                    continue;
                }
                long channels = dims[axis];
                float[]? bias = null;
                var biasSources = new List<string>();
                if (node.Input.Count > 2 && node.Input[2].Length > 0)
                {
                    float beta = node.OpType == "Gemm" ? PassGraph.FloatAttr(node, "beta", 1f) : 1f;
                    if (!g.TryConstantFloat(node.Input[2], displayName, out float[] b, out long[] bDims, out _, out biasSources)
                        || !(b.Length == channels && (bDims.Length == 1 || (bDims.Length == 2 && bDims[0] == 1))))
                    {
                        Skip($"bias '{node.Input[2]}' is not a constant float32 vector of {channels} elements");
                        continue;
                    }
                    bias = b.Select(v => v * beta).ToArray();
                }
                string result2 = node.Output[0];
                string rangeTensor = result2;
                (float Low, float High)? clip = null;
                NodeProto? act = !outer.Contains(result2) && Consumers(result2) is [{ } only] && only.Input.Count > 0 && only.Input[0] == result2 ? only : null;
                if (act != null && OnnxNames.Is(act, "Clip"))
                {
                    // Only a Clip whose range holds 0 (Relu6 and the like): the pair's range always does.
                    clip = ClipBounds(act) is { } bounds && bounds.Low <= 0 && bounds.High >= 0 ? bounds : null;
                }
                if (act != null && (OnnxNames.Is(act, "Relu") || clip != null))
                {
                    // uint8: the pair goes after the Relu or Clip, which ORT then folds into the QuantizeLinear (Relu:
                    // zero point 0; Clip: the quantized range inside [min, max], see Rewrite). int8: the activation
                    // stays, the node's own output is quantized with the activation output's range.
                    rangeTensor = act.Output[0];
                    result2 = Int8Activations ? result2 : rangeTensor;
                }
                else if (Int8Activations && !outer.Contains(result2) && Consumers(result2) is [{ OpType: "MaxPool" } pool] && pool.Output.Count == 1
                    && !outer.Contains(pool.Output[0]) && Consumers(pool.Output[0]) is [{ OpType: "Relu" } pooledRelu]
                    && ModelChecker.NormalizeDomain(pool.Domain).Length == 0 && ModelChecker.NormalizeDomain(pooledRelu.Domain).Length == 0)
                {
                    // Relu -> MaxPool reordered by MovePoolsAheadOfRelus: the Relu output has the original pool output's name and range.
                    rangeTensor = pooledRelu.Output[0];
                }
                result.Add(new Candidate
                {
                    Node = node, LoadWeight = () => g.FloatsOf(weightTensor, displayName), Dims = dims, Chain = chain, Sources = sources, Axis = axis, Bias = bias,
                    BiasSources = biasSources, Result = result2, RangeTensor = rangeTensor, ClipBounds = clip,
                });
            }
            return result;
        }

        /// <summary>A Clip's constant [min, max] (attributes before opset 11, inputs from then on; a missing bound is unbounded), else null.</summary>
        private (float Low, float High)? ClipBounds(NodeProto clip)
        {
            if (g.OnnxOpset < 11)
            {
                return (PassGraph.FloatAttr(clip, "min", float.MinValue), PassGraph.FloatAttr(clip, "max", float.MaxValue));
            }
            float Bound(int index, float unbounded)
            {
                if (clip.Input.Count <= index || clip.Input[index].Length == 0)
                {
                    return unbounded;
                }
                return g.TryConstantFloat(clip.Input[index], displayName, out float[] v, out _, out _, out _) && v.Length == 1 ? v[0] : float.NaN;
            }
            float low = Bound(1, float.MinValue), high = Bound(2, float.MaxValue);
            return float.IsNaN(low) || float.IsNaN(high) ? null : (low, high);
        }

        /// <summary>True when a quantized node reads <paramref name="tensor"/>, directly or through passthrough ops.</summary>
        private bool FeedsQuantized(string tensor, HashSet<NodeProto> quantizedNodes, int depth = 0)
        {
            if (depth > 16 || Outputs().ContainsKey(tensor))
            {
                return false;
            }
            foreach (NodeProto c in Consumers(tensor))
            {
                if (quantizedNodes.Contains(c) && c.Input[0] == tensor)
                {
                    return true;
                }
                if (Passthrough.Contains(c.OpType) && c.Input[0] == tensor && FeedsQuantized(c.Output[0], quantizedNodes, depth + 1))
                {
                    return true;
                }
            }
            return false;
        }

        private void Rewrite(List<Candidate> all)
        {
            BuildConsumers();
            // Drop candidates without ranges for their input or result before deciding what feeds what.
            var candidates = new List<Candidate>();
            foreach (Candidate c in all)
            {
                if (!calibration!.Ranges.ContainsKey(c.Node.Input[0]))
                {
                    Skipped.Add(new SkippedNode(OnnxNames.Label(c.Node), c.Node.OpType, $"no calibration range for its input '{c.Node.Input[0]}'"));
                    continue;
                }
                candidates.Add(c);
            }
            var byNode = new Dictionary<NodeProto, Candidate>(ReferenceEqualityComparer.Instance);
            foreach (Candidate c in candidates)
            {
                byNode[c.Node] = c;
            }
            var quantizedNodes = new HashSet<NodeProto>(candidates.Select(c => c.Node), ReferenceEqualityComparer.Instance);
            var results = new Dictionary<string, Candidate>(StringComparer.Ordinal);
            HashSet<string> graphOutputs = g.Graph.Output.Select(o => o.Name).ToHashSet(StringComparer.Ordinal);
            foreach (Candidate c in candidates)
            {
                c.Quantize = c.Result;
                if (!calibration!.Ranges.TryGetValue(c.RangeTensor, out TensorRange range))
                {
                    continue;
                }
                if (c.Quantize != c.Node.Output[0] && c.ClipBounds is { } clip && ClipFoldedParameters(range, clip) == null)
                {
                    // ORT folds a Clip into the QuantizeLinear after it only when the quantized range lies inside
                    // [min, max]; where it would not, the pair goes on the node's own output (same values: the range
                    // is the Clip output's, inside [min, max]) and the Clip runs on the dequantized values.
                    c.Quantize = c.Node.Output[0];
                }
                // Conv and MatMul results are always quantized: ORT builds QLinearConv / QLinearMatMul only with a
                // QuantizeLinear after the node. Without one a Conv runs in float on dequantized inputs (also when
                // an activation other than Relu/Clip, an Add or a Mul follows it, which then read the dequantized
                // result), and a MatMul has a following bias Add folded into a float Gemm. A Gemm without the pair
                // still becomes QGemm with a float output, so it gets one only when a quantized node reads it.
                bool wanted = c.Node.OpType is "Conv" or "MatMul" || FeedsQuantized(c.Quantize, quantizedNodes);
                if (wanted)
                {
                    results[c.Quantize] = c;
                }
            }

            var nodes = new List<NodeProto>();
            foreach (NodeProto n in g.Graph.Node)
            {
                // Rewire inputs that have a Q/DQ pair.
                for (int i = 0; i < n.Input.Count; i++)
                {
                    if (_quantized.TryGetValue(n.Input[i], out QParams? qp))
                    {
                        n.Input[i] = qp.Dq;
                    }
                }
                if (byNode.TryGetValue(n, out Candidate? c))
                {
                    string x = n.Input[0];
                    if (!_byDq.TryGetValue(x, out QParams? xq))
                    {
                        xq = AddQdq(x, Parameters(calibration!.Ranges[x]), nodes);
                        n.Input[0] = xq.Dq;
                    }
                    QuantizeWeightAndBias(c, xq, nodes);
                    c.ReleaseWeight();
                }
                nodes.Add(n);
                foreach (string o in n.Output)
                {
                    if (results.TryGetValue(o, out Candidate? producer))
                    {
                        TensorRange range = calibration!.Ranges[producer.RangeTensor];
                        (float Scale, int ZeroPoint) p = producer.Quantize != producer.Node.Output[0] && producer.ClipBounds is { } clip
                            ? ClipFoldedParameters(range, clip)!.Value
                            : Parameters(range);
                        if (graphOutputs.Contains(o))
                        {
                            // A graph output keeps its name: the node writes a new tensor, the DequantizeLinear the output.
                            string renamed = g.Unique(o + "_quantized");
                            n.Output[n.Output.IndexOf(o)] = renamed;
                            AddQdq(renamed, p, nodes, dqName: o);
                        }
                        else
                        {
                            AddQdq(o, p, nodes);
                        }
                    }
                    else if (Passthrough.Contains(n.OpType) && n.Input.Count > 0 && o == n.Output[0]
                        && _byDq.GetValueOrDefault(n.Input[0]) is { } inQ && FeedsQuantized(o, quantizedNodes))
                    {
                        AddQdq(o, (inQ.ScaleValue, inQ.ZeroValue), nodes, inQ);
                    }
                }
            }
            g.Graph.Node.Clear();
            g.Graph.Node.AddRange(nodes);
        }

        /// <summary>
        /// uint8 parameters for a pair after a Clip(min, max) that ORT folds into the QuantizeLinear: its
        /// ClipQuantFusion needs scale x (0 - zero point) >= min and scale x (255 - zero point) <= max (float
        /// arithmetic, epsilon slack); the scale is nudged down by a few ulps where rounding alone breaks that.
        /// Null when it cannot hold (int8 activations, or a zero point that puts the lower end below min).
        /// </summary>
        private (float Scale, int ZeroPoint)? ClipFoldedParameters(TensorRange range, (float Low, float High) clip)
        {
            if (Int8Activations)
            {
                return null;
            }
            (float scale, int zero) = Parameters(new TensorRange(MathF.Max(range.Min, clip.Low), MathF.Min(range.Max, clip.High)));
            for (int i = 0; i < 8; i++)
            {
                if (scale * (0 - zero) >= clip.Low && scale * (255 - zero) <= clip.High)
                {
                    return (scale, zero);
                }
                scale = MathF.BitDecrement(scale);
            }
            return null;
        }

        private QParams AddQdq(string tensor, (float Scale, int ZeroPoint) p, List<NodeProto> nodes, QParams? share = null, string? dqName = null)
        {
            string scale = share?.Scale ?? g.Unique(tensor + "_s");
            string zero = share?.ZeroPoint ?? g.Unique(tensor + "_zp");
            if (share == null)
            {
                g.AddInitializer(TensorUtil.FromFloats(scale, [p.Scale]));
                // The zero point is always written, also int8's 0: it sets the type, and ORT's x64 rewrite of int8
                // Q/DQ pairs to uint8 (zero point + 128) only matches pairs that carry it.
                g.AddInitializer(Int8Activations
                    ? TensorUtil.FromRaw(zero, DataType.Int8, [unchecked((byte)(sbyte)p.ZeroPoint)])
                    : TensorUtil.FromUInt8(zero, [(byte)p.ZeroPoint]));
            }
            string q = g.Unique(tensor + "_q");
            string dq = dqName ?? g.Unique(tensor + "_dq");
            nodes.Add(g.Node("QuantizeLinear", null, [tensor, scale, zero], [q]));
            nodes.Add(g.Node("DequantizeLinear", null, [q, scale, zero], [dq]));
            var result = new QParams(dq, scale, zero, p.Scale, p.ZeroPoint);
            if (_quantized.TryGetValue(tensor, out QParams? replaced))
            {
                _byDq.Remove(replaced.Dq);
            }
            _quantized[tensor] = result;
            _byDq[dq] = result;
            Activations++;
            return result;
        }

        /// <summary>
        /// The index pairs (into the stored weight, first &lt; second) that ONNX Runtime's u8s8 kernels add as one
        /// int16 on CPUs without VNNI (<see cref="AdjacentPairBound"/>): K elements 2i and 2i + 1 of one output channel
        /// in the order the kernel reads K. MatMul/Gemm: K is the weight's non-channel axis. Conv: QLinearConv reorders
        /// [M, C/group, kernel] to K = (kernel position, input channel), input channel fastest; its indirect
        /// (ConvSym) kernels pair adjacent input channels of one kernel position, so those pairs are included too
        /// (the same pairs when C/group is even).
        /// </summary>
        private static List<(int A, int B)> KPairs(Candidate c)
        {
            var pairs = new List<(int, int)>();
            long[] d = c.Dims;
            if (c.Node.OpType == "Conv")
            {
                int m = (int)d[0], cg = (int)d[1], k = c.Weight.Length / m, kernel = k / cg;
                for (int oc = 0; oc < m; oc++)
                {
                    int baseIndex = oc * k;
                    int At(int r) => baseIndex + r % cg * kernel + r / cg;
                    for (int r = 0; r + 1 < k; r += 2)
                    {
                        pairs.Add((At(r), At(r + 1)));
                    }
                    if (cg % 2 != 0)
                    {
                        for (int p = 0; p < kernel; p++)
                        {
                            for (int ic = 0; ic + 1 < cg; ic += 2)
                            {
                                pairs.Add((baseIndex + ic * kernel + p, baseIndex + (ic + 1) * kernel + p));
                            }
                        }
                    }
                }
                return [.. pairs.Select(p => p.Item1 < p.Item2 ? p : (p.Item2, p.Item1))];
            }
            int rows = (int)d[0], cols = (int)d[1];
            if (c.Axis == 0)
            {
                // [N, K] (Gemm transB): K along each row.
                for (int n = 0; n < rows; n++)
                {
                    for (int i = 0; i + 1 < cols; i += 2)
                    {
                        pairs.Add((n * cols + i, n * cols + i + 1));
                    }
                }
            }
            else
            {
                // [K, N]: K down each column.
                for (int i = 0; i + 1 < rows; i += 2)
                {
                    for (int n = 0; n < cols; n++)
                    {
                        pairs.Add((i * cols + n, (i + 1) * cols + n));
                    }
                }
            }
            return pairs;
        }

        private void QuantizeWeightAndBias(Candidate c, QParams x, List<NodeProto> nodes)
        {
            NodeProto node = c.Node;
            string label = OnnxNames.Label(node);
            long[] dims = c.Dims;
            int channels = (int)dims[c.Axis];
            int inner = 1;
            for (int d = c.Axis + 1; d < dims.Length; d++)
            {
                inner *= (int)dims[d];
            }
            int perChannelCount = c.Weight.Length / channels;

            // Per channel (or one) symmetric scale.
            var maxAbs = new float[PerChannel ? channels : 1];
            for (int i = 0; i < c.Weight.Length; i++)
            {
                int ch = PerChannel ? i / inner % channels : 0;
                maxAbs[ch] = MathF.Max(maxAbs[ch], MathF.Abs(c.Weight[i]));
            }
            bool pairBounded = EncodingLevels.Of(options.WeightEncoding, displayName).PairBounded;
            List<(int A, int B)> pairs = pairBounded ? KPairs(c) : [];
            if (pairBounded)
            {
                // The pair bound raises a channel's scale where max|w| / 127 would let a same-sign pair exceed 128 levels.
                foreach ((int a, int b) in pairs)
                {
                    float wa = c.Weight[a], wb = c.Weight[b];
                    if ((wa > 0f && wb > 0f) || (wa < 0f && wb < 0f))
                    {
                        int ch = PerChannel ? a / inner % channels : 0;
                        maxAbs[ch] = MathF.Max(maxAbs[ch], (MathF.Abs(wa) + MathF.Abs(wb)) * Levels / AdjacentPairBound.MaxPairLevels);
                    }
                }
            }
            float[] scales = maxAbs.Select(m => m / Levels is var s && s >= 1e-30f && float.IsFinite(s) ? s : 1f).ToArray();
            bool unsigned = options.WeightEncoding == WeightEncoding.UInt8;
            float zero = unsigned ? 128f : 0f;
            var q = new byte[c.Weight.Length];
            float maxError = 0f;
            for (int i = 0; i < c.Weight.Length; i++)
            {
                float s = scales[PerChannel ? i / inner % channels : 0];
                float v = MathF.Round(c.Weight[i] / s, MidpointRounding.ToEven);
                v = Math.Clamp(v, -Levels, Levels);
                q[i] = unchecked((byte)(int)(v + zero));
                maxError = MathF.Max(maxError, MathF.Abs(v * s - c.Weight[i]));
            }
            if (pairBounded)
            {
                Span<sbyte> codes = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, sbyte>(q.AsSpan());
                foreach ((int a, int b) in pairs)
                {
                    float s = scales[PerChannel ? a / inner % channels : 0];
                    if (AdjacentPairBound.Enforce(c.Weight, s, codes, a, 2, b - a) > 0)
                    {
                        maxError = MathF.Max(maxError, MathF.Max(MathF.Abs(codes[a] * s - c.Weight[a]), MathF.Abs(codes[b] * s - c.Weight[b])));
                    }
                }
            }
            string wName = g.Unique(node.Input[1] + "_q");
            string sName = g.Unique(node.Input[1] + "_s");
            string zName = g.Unique(node.Input[1] + "_zp");
            long[] scaleDims = PerChannel ? [channels] : [];
            var zeros = Enumerable.Repeat(unchecked((byte)(int)zero), scales.Length).ToArray();
            if (unsigned)
            {
                g.AddInitializer(TensorUtil.FromUInt8(wName, q, dims));
                g.AddInitializer(TensorUtil.FromUInt8(zName, zeros, scaleDims));
            }
            else
            {
                g.AddInitializer(TensorUtil.FromRaw(wName, DataType.Int8, q, dims));
            }
            // int8 zero points are all 0, DequantizeLinear's default. ORT 1.31 fuses a Conv without them, but its
            // QGemm / QLinearMatMul selectors want the input present, so only Conv leaves it out.
            bool explicitZero = unsigned || node.OpType != "Conv";
            if (explicitZero && !unsigned)
            {
                g.AddInitializer(TensorUtil.FromRaw(zName, DataType.Int8, zeros, scaleDims));
            }
            g.AddInitializer(TensorUtil.FromFloats(sName, scales, scaleDims));
            string wDq = g.Unique(node.Input[1] + "_dq");
            NodeProto dqw = g.Node("DequantizeLinear", null, explicitZero ? [wName, sName, zName] : [wName, sName], [wDq]);
            if (PerChannel)
            {
                dqw.Attribute.Add(PassGraph.IntAttribute("axis", c.Axis));
            }
            nodes.Add(dqw);
            _removable.AddRange(c.Sources);
            _removableNodes.AddRange(c.Chain);
            node.Input[1] = wDq;

            if (c.Bias != null)
            {
                // int32 bias with scale = activation scale x weight scale (zero point 0, the input's default).
                var bq = new int[channels];
                var bScales = new float[PerChannel ? channels : 1];
                for (int j = 0; j < bScales.Length; j++)
                {
                    bScales[j] = x.ScaleValue * scales[j];
                }
                for (int j = 0; j < channels; j++)
                {
                    double v = Math.Round(c.Bias[j] / (double)bScales[PerChannel ? j : 0], MidpointRounding.ToEven);
                    bq[j] = (int)Math.Clamp(v, int.MinValue + 1.0, int.MaxValue);
                }
                string bName = g.Unique(node.Input[2] + "_q");
                string bsName = g.Unique(node.Input[2] + "_s");
                g.AddInitializer(TensorUtil.FromInt32(bName, bq, channels));
                g.AddInitializer(TensorUtil.FromFloats(bsName, bScales, scaleDims));
                string bDq = g.Unique(node.Input[2] + "_dq");
                NodeProto dqb = g.Node("DequantizeLinear", null, [bName, bsName], [bDq]);
                if (PerChannel)
                {
                    dqb.Attribute.Add(PassGraph.IntAttribute("axis", 0));
                }
                nodes.Add(dqb);
                _removable.AddRange(c.BiasSources);
                _removable.Add(node.Input[2]);
                node.Input[2] = bDq;
            }
            int k = perChannelCount;
            Quantized.Add(new QuantizedNode(label, node.OpType, c.Sources[0], k, channels, maxError));
        }
    }
}
