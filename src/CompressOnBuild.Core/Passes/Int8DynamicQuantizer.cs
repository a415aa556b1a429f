using System.Globalization;
using System.Numerics.Tensors;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Quantization;
using CompressOnBuild.Core.Quantization.Ops;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Dynamic int8 weight quantization. Every MatMul and Gemm in the main graph whose weight (input B) is a constant
/// float32 matrix becomes one com.microsoft DynamicQuantizeMatMul node: ONNX Runtime quantizes the activation to
/// uint8 per call (per tensor, asymmetric) and multiplies it with the stored 8-bit weight in an integer GEMM,
/// then applies activation scale x per-column weight scale and adds the bias in float. Graph inputs and outputs
/// stay float32.
/// <para>
/// Weights are symmetric per output channel: scale_j = max|W[:, j]| / 127, levels in [-127, 127], round half
/// to even, zero point 0. On x64 CPUs without AVX-VNNI / AVX512-VNNI, ORT's uint8 x int8 kernel multiplies with
/// vpmaddubsw, which adds two adjacent u8*s8 products into a saturating int16: 255*127*2 = 64770 &gt; 32767, so a
/// bright activation next to a large weight is silently clipped. The default encoding therefore stores the same
/// 255 levels as uint8 with zero point 128 (<see cref="WeightEncoding.UInt8"/>): ORT runs u8 x u8 by widening
/// to int16 first (vpmaddwd), exact on every CPU, with no loss of resolution. <see cref="WeightEncoding.Int8"/>
/// (fastest on VNNI) and <see cref="WeightEncoding.Int8ReducedRange"/> (7-bit, ORT's reduce_range) are options.
/// The Passes tests measure all three on the corpus.
/// </para>
/// Gemm: alpha is folded into the weight before quantizing, transB is applied to the stored weight, transA
/// becomes a Transpose node, and beta*C becomes the bias input when C is a constant of N elements (or one);
/// any other C is added by an Add node (after a Mul when beta != 1).
/// Gather tables and LSTM weights are lowered afterwards by <see cref="GatherLowering"/> and <see cref="LstmLowering"/>.
/// </summary>
public static class Int8DynamicQuantizer
{
    public const string QuantizedOpType = "DynamicQuantizeMatMul";

    /// <summary>Quantizes <paramref name="model"/> in place (the caller passes a copy) and reports what it did.</summary>
    /// <exception cref="CompressException">CMPR0202 when a weight to quantize holds NaN or infinity.</exception>
    public static QuantizationSummary Apply(ModelProto model, QuantizationOptions options, string modelDisplayName)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(modelDisplayName);
        long before = model.CalculateSize();

        string? already = QuantizedOperators.Describe(model);
        if (already != null)
        {
            return new QuantizationSummary
            {
                ModelDisplayName = modelDisplayName,
                WeightEncoding = options.WeightEncoding,
                AlreadyQuantized = true,
                AlreadyQuantizedReason = already,
                ModelBytesBefore = before,
                ModelBytesAfter = before,
            };
        }
        if (model.Graph == null)
        {
            throw new CompressException(DiagnosticCodes.ModelInvalid, modelDisplayName, "it has no graph") { File = modelDisplayName };
        }

        // Weights behind Reshape/Transpose/... of initializers become plain initializers first (see PassGraph).
        var graph = new PassGraph(model);
        int folded = graph.FoldConstantShapeOps(modelDisplayName);
        var rewriter = new Rewriter(graph, options, modelDisplayName);
        rewriter.Run();
        GatherLowering.Bytes tables = GatherLowering.Apply(graph, GatherLowering.Scheme.Int8PerRow, options.ExcludedNodes, options.MinimumWeightElements, rewriter.Quantized, rewriter.Skipped, modelDisplayName);
        LstmLowering.Bytes recurrent = LstmLowering.Apply(graph, EncodingLevels.Of(options.WeightEncoding, modelDisplayName), options.ExcludedNodes, options.MinimumWeightElements, rewriter.Quantized, rewriter.Skipped, modelDisplayName);
        if (rewriter.Quantized.Count > 0)
        {
            PassGraph.DropInitializerInputs(model);
            PassGraph.StripDebugTraces(model);
        }
        long after = rewriter.Quantized.Count == 0 && folded == 0 ? before : model.CalculateSize();
        return new QuantizationSummary
        {
            ModelDisplayName = modelDisplayName,
            WeightEncoding = options.WeightEncoding,
            Quantized = rewriter.Quantized,
            Skipped = rewriter.Skipped,
            ModelBytesBefore = before,
            ModelBytesAfter = after,
            FloatWeightBytes = rewriter.FloatWeightBytes + tables.Float + recurrent.Float,
            QuantizedWeightBytes = rewriter.QuantizedWeightBytes + tables.Quantized + recurrent.Quantized,
        };
    }

    private sealed class Rewriter(PassGraph g, QuantizationOptions options, string displayName)
    {
        private readonly ModelProto model = g.Model;
        private readonly GraphProto _graph = g.Graph;
        private readonly ReplacedConstants _replaced = new();
        private readonly Dictionary<string, (string Quantized, string Scale, string ZeroPoint, int K, int N)> _done = new(StringComparer.Ordinal);
        private readonly Dictionary<string, (string Q, string Scale, string ZeroPoint)> _dynamicQuantized = new(StringComparer.Ordinal);
        private string? _convBlocked;
        private bool _convQuantized;

        public List<QuantizedNode> Quantized { get; } = [];

        public List<SkippedNode> Skipped { get; } = [];

        public long FloatWeightBytes { get; private set; }

        public long QuantizedWeightBytes { get; private set; }

        private EncodingLevels Levels => EncodingLevels.Of(options.WeightEncoding, displayName);

        private float LevelsPerSide => Levels.LevelsPerSide;

        public void Run()
        {
            _ = Levels; // reject an unknown encoding before touching anything
            _convBlocked = options.QuantizeConv ? ConvBlockedReason() : null;
            List<WeightSite> candidates = WeightSites.Find(g, displayName, OpTypes, options.ExcludedNodes,
                options.MinimumWeightElements, Skipped, ConvWeightSite);
            foreach (WeightSite c in candidates)
            {
                // Every weight is checked before the graph changes, so a bad one leaves the model untouched.
                ThrowIfNotFinite(c.Weight);
            }
            foreach (WeightSite c in candidates)
            {
                if (c.IsConv)
                {
                    RewriteConv(c);
                }
                else
                {
                    Rewrite(c);
                }
            }
            g.Commit();
            if (Quantized.Count > 0)
            {
                _replaced.RemoveUnused(g);
            }
            if (Quantized.Any(q => q.OpType != "Conv"))
            {
                EnsureOpset(OnnxNames.MicrosoftDomain, 1);
            }
            if (_convQuantized)
            {
                EnsureOpset("", 11);
            }
        }

        private static readonly IReadOnlySet<string> OpTypes = new HashSet<string>(StringComparer.Ordinal) { "MatMul", "Gemm", "Conv" };

        private WeightSite? ConvWeightSite(NodeProto node, Action<string> skip)
        {
            if (!options.QuantizeConv)
            {
                skip("Conv quantization is turned off in the options");
                return null;
            }
            if (!TryResolveConstant(node.Input[1], out ResolvedConstant? weight, out string? why))
            {
                skip(why!);
                return null;
            }
            if (weight!.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
            {
                skip($"weight '{node.Input[1]}' is {TensorUtil.DataTypeName(weight.Tensor.DataType)}, not float32");
                return null;
            }
            if (_convBlocked != null)
            {
                skip(_convBlocked);
                return null;
            }
            long elements = weight.Dims.Aggregate(1L, (a, b) => a * b);
            if (weight.Dims.Length < 3 || weight.Dims[0] <= 0)
            {
                skip($"weight '{node.Input[1]}' has rank {weight.Dims.Length}; Conv weights are [M, C/group, k...]");
                return null;
            }
            if (elements < options.MinimumWeightElements || elements > int.MaxValue / 2)
            {
                skip($"weight '{node.Input[1]}' has {elements} elements, outside the range this pass quantizes (minimum {options.MinimumWeightElements})");
                return null;
            }
            if (node.Input.Count > 2 && node.Input[2].Length > 0)
            {
                if (!TryResolveConstant(node.Input[2], out ResolvedConstant? bias, out _)
                    || bias!.Tensor.DataType != (int)TensorProto.Types.DataType.Float
                    || bias.Dims.Aggregate(1L, (a, b) => a * b) != weight.Dims[0])
                {
                    skip($"Conv bias '{node.Input[2]}' is not a constant float32 vector of {weight.Dims[0]} elements");
                    return null;
                }
            }
            return new WeightSite { Node = node, Weight = weight, IsConv = true };
        }

        /// <summary>Null when Conv can use opset-11 DynamicQuantizeLinear; otherwise why not.</summary>
        private string? ConvBlockedReason() => OpsetChanges.BlockingReason(model, 11, "Conv needs default opset 11 (DynamicQuantizeLinear)");

        private void ThrowIfNotFinite(ResolvedConstant w)
        {
            if (!TensorStats.AllFinite(Floats(w.Tensor)))
            {
                throw new CompressException(DiagnosticCodes.NonFiniteWeights, displayName, w.SourceName) { File = displayName };
            }
        }

        private bool TryResolveConstant(string name, out ResolvedConstant? value, out string? why) => g.TryResolveConstant(name, displayName, out value, out why);

        private void Rewrite(WeightSite c)
        {
            NodeProto node = c.Node;
            string weightName = node.Input[1];
            int k = (int)(c.TransB ? c.Weight.Dims[1] : c.Weight.Dims[0]);
            int n = (int)(c.TransB ? c.Weight.Dims[0] : c.Weight.Dims[1]);
            string key = weightName + (c.TransB ? "|T" : "") + (c.Alpha != 1f ? "|a" + c.Alpha.ToString("R", CultureInfo.InvariantCulture) : "");
            if (!_done.TryGetValue(key, out var stored))
            {
                (stored, float error) = QuantizeWeight(c, weightName, k, n);
                _done[key] = stored;
                _weightErrors[key] = error;
            }
            float maxError = _weightErrors[key];

            var inserted = new List<NodeProto>();
            string a = node.Input[0];
            if (c.TransA)
            {
                string transposed = Unique(a + "_transposed");
                var t = new NodeProto { OpType = "Transpose", Name = "" };
                t.Input.Add(a);
                t.Output.Add(transposed);
                t.Attribute.Add(new AttributeProto { Name = "perm", Type = AttributeProto.Types.AttributeType.Ints, Ints = { 1, 0 } });
                inserted.Add(t);
                a = transposed;
            }

            var q = new NodeProto { OpType = QuantizedOpType, Domain = OnnxNames.MicrosoftDomain, Name = node.Name.Length > 0 ? node.Name : Unique(Label(node) + "_quant") };
            q.Input.Add(a);
            q.Input.Add(stored.Quantized);
            q.Input.Add(stored.Scale);
            q.Input.Add(stored.ZeroPoint);
            q.Output.Add(node.Output[0]);
            inserted.Add(q);

            if (node.OpType == "Gemm" && node.Input.Count > 2 && node.Input[2].Length > 0 && c.Beta != 0f)
            {
                string cName = node.Input[2];
                if (TryBias(cName, c.Beta, n, out string? bias))
                {
                    q.Input.Add(bias!);
                }
                else
                {
                    string product = Unique(Label(node) + "_matmul");
                    q.Output[0] = product;
                    string addend = cName;
                    if (c.Beta != 1f)
                    {
                        string betaName = Unique(Label(node) + "_beta");
                        AddInitializer(TensorUtil.FromFloats(betaName, [c.Beta]));
                        addend = Unique(cName + "_scaled");
                        var mul = new NodeProto { OpType = "Mul", Name = "" };
                        mul.Input.Add(cName);
                        mul.Input.Add(betaName);
                        mul.Output.Add(addend);
                        inserted.Add(mul);
                    }
                    var add = new NodeProto { OpType = "Add", Name = "" };
                    add.Input.Add(product);
                    add.Input.Add(addend);
                    add.Output.Add(node.Output[0]);
                    inserted.Add(add);
                }
            }

            if (node.OpType == "MatMul")
            {
                FoldBiasAdd(node, q, n);
            }

            g.Replace(node, inserted);
            Touch(weightName, c.Weight);
            Quantized.Add(new QuantizedNode(Label(node), node.OpType, weightName, k, n, maxError));
        }

        /// <summary>
        /// MatMul followed by its only consumer Add(y, constant bias of N elements) (the usual exported Linear
        /// layer): the bias becomes DynamicQuantizeMatMul's bias input and the Add goes. A [1, .., 1, N] bias is
        /// folded only when the activation's rank is known to be at least the bias rank (so broadcasting cannot
        /// have raised the output rank).
        /// </summary>
        private void FoldBiasAdd(NodeProto matmul, NodeProto quantized, int n)
        {
            string y = matmul.Output[0];
            if (g.Outer.Contains(y))
            {
                return;
            }
            IReadOnlyList<NodeProto> users = g.Consumers(y);
            if (users.Count != 1)
            {
                return;
            }
            NodeProto add = users[0];
            if (add.OpType != "Add" || ModelChecker.NormalizeDomain(add.Domain).Length != 0 || add.Input.Count != 2 || add.Input[0] == add.Input[1])
            {
                return;
            }
            string other = add.Input[0] == y ? add.Input[1] : add.Input[0];
            if (!TryResolveConstant(other, out ResolvedConstant? cv, out _) || cv!.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
            {
                return;
            }
            long[] dims = cv.Dims;
            bool fits = (dims.Length == 1 && dims[0] == n)
                || (dims.Length >= 2 && dims[^1] == n && dims[..^1].All(d => d == 1) && KnownRank(matmul.Input[0]) >= dims.Length);
            if (!fits)
            {
                return;
            }
            string bias = Unique(other + "_bias");
            AddInitializer(TensorUtil.FromFloats(bias, Floats(cv.Tensor), n));
            QuantizedWeightBytes += (long)n * 4;
            quantized.Input.Add(bias);
            quantized.Output[0] = add.Output[0];
            g.RemoveNode(add);
            g.DropValueInfo(y);
            Touch(other, cv);
        }

        /// <summary>The rank of a value when the graph states it (input/value_info shape, Reshape to a constant shape, Flatten); else -1.</summary>
        private int KnownRank(string name)
        {
            ValueInfoProto? info = g.ValueInfoOf(name);
            if (info?.Type?.TensorType?.Shape is { } shape)
            {
                return shape.Dim.Count;
            }
            if (g.Producers.TryGetValue(name, out NodeProto? producer) && OnnxNames.IsDefaultDomain(producer))
            {
                if (producer.OpType == "Flatten")
                {
                    return 2;
                }
                if (producer.OpType == "Reshape" && producer.Input.Count == 2 && TryResolveConstant(producer.Input[1], out ResolvedConstant? s, out _))
                {
                    return (int)s!.Dims.Aggregate(1L, (a, b) => a * b);
                }
            }
            return -1;
        }

        /// <summary>
        /// Quantizes one weight in channel-major order (row j of the [N, K] view is output channel j): per-channel
        /// max-abs, quantize, dequantize to measure the error; then stores it as [K, N] for DynamicQuantizeMatMul.
        /// </summary>
        private ((string, string, string, int, int) Stored, float MaxError) QuantizeWeight(WeightSite c, string weightName, int k, int n)
        {
            float[] data = Floats(c.Weight.Tensor);
            float[] channelMajor = c.TransB ? data : PassGraph.Transpose(data, k, n);
            if (c.Alpha != 1f)
            {
                TensorPrimitives.Multiply(channelMajor, c.Alpha, channelMajor);
            }
            (byte zero, byte min, byte max, bool unsigned, _) = Levels;
            var maxAbs = new float[n];
            TensorStats.RowMaxAbs(channelMajor, n, k, maxAbs);
            var scales = new float[n];
            var quantized = new byte[(long)n * k];
            var roundTrip = new float[k];
            float maxError = 0f;
            for (int j = 0; j < n; j++)
            {
                float scale = maxAbs[j] / LevelsPerSide;
                // An all-zero (or all-denormal) channel: any positive scale maps it to the zero point.
                scales[j] = scale >= 1e-30f && float.IsFinite(scale) ? scale : 1f;
                ReadOnlySpan<float> row = channelMajor.AsSpan(j * k, k);
                Span<byte> qRow = quantized.AsSpan(j * k, k);
                if (unsigned)
                {
                    QuantizationKernels.Quantize(row, scales[j], zero, qRow, min, max);
                    QuantizationKernels.Dequantize(qRow, scales[j], zero, roundTrip);
                }
                else
                {
                    Span<sbyte> sRow = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, sbyte>(qRow);
                    QuantizationKernels.Quantize(row, scales[j], (sbyte)zero, sRow, (sbyte)min, (sbyte)max);
                    QuantizationKernels.Dequantize(sRow, scales[j], (sbyte)zero, roundTrip);
                }
                maxError = MathF.Max(maxError, ErrorMetrics.MaxAbsDifference(row, roundTrip));
            }
            byte[] kMajor = PassGraph.Transpose(quantized, n, k);
            var zeros = new byte[n];
            Array.Fill(zeros, zero);

            string baseName = weightName + (c.TransB ? "_t" : "");
            string qName = Unique(baseName + "_quantized");
            string sName = Unique(baseName + "_scale");
            string zName = Unique(baseName + "_zero_point");
            if (unsigned)
            {
                AddInitializer(TensorUtil.FromUInt8(qName, kMajor, k, n));
                AddInitializer(TensorUtil.FromUInt8(zName, zeros, n));
            }
            else
            {
                AddInitializer(TensorUtil.FromInt8(qName, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, sbyte>(kMajor), k, n));
                AddInitializer(TensorUtil.FromInt8(zName, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, sbyte>(zeros.AsSpan()), n));
            }
            AddInitializer(TensorUtil.FromFloats(sName, scales, n));
            FloatWeightBytes += (long)data.Length * 4;
            QuantizedWeightBytes += kMajor.Length + zeros.Length + (long)scales.Length * 4;
            return ((qName, sName, zName, k, n), maxError);
        }

        /// <summary>
        /// Conv -> DynamicQuantizeLinear(X) -> ConvInteger(uint8 x uint8, weight zero point 128) -> Cast(float)
        /// -> Mul(x_scale * w_scale[M, 1, ...]) [-> Add(bias[M, 1, ...])].
        /// </summary>
        private void RewriteConv(WeightSite c)
        {
            NodeProto node = c.Node;
            string label = Label(node);
            string weightName = node.Input[1];
            long[] dims = c.Weight.Dims;
            int m = (int)dims[0];
            int perChannel = (int)(dims.Aggregate(1L, (a, b) => a * b) / m);
            long[] channelShape = [m, .. Enumerable.Repeat(1L, dims.Length - 2)];

            if (!_done.TryGetValue("conv|" + weightName, out var stored))
            {
                float[] data = Floats(c.Weight.Tensor);
                var maxAbs = new float[m];
                TensorStats.RowMaxAbs(data, m, perChannel, maxAbs);
                var scales = new float[m];
                var q = new byte[data.Length];
                var roundTrip = new float[perChannel];
                float maxError = 0f;
                for (int j = 0; j < m; j++)
                {
                    float scale = maxAbs[j] / 127f;
                    scales[j] = scale >= 1e-30f && float.IsFinite(scale) ? scale : 1f;
                    ReadOnlySpan<float> row = data.AsSpan(j * perChannel, perChannel);
                    Span<byte> qRow = q.AsSpan(j * perChannel, perChannel);
                    QuantizationKernels.Quantize(row, scales[j], (byte)128, qRow, 1, 255);
                    QuantizationKernels.Dequantize(qRow, scales[j], (byte)128, roundTrip);
                    maxError = MathF.Max(maxError, ErrorMetrics.MaxAbsDifference(row, roundTrip));
                }
                stored = (Unique(weightName + "_quantized"), Unique(weightName + "_scale"), Unique(weightName + "_zero_point"), perChannel, m);
                AddInitializer(TensorUtil.FromUInt8(stored.Quantized, q, dims));
                AddInitializer(TensorUtil.FromFloats(stored.Scale, scales, channelShape));
                AddInitializer(TensorUtil.FromUInt8(stored.ZeroPoint, [128]));
                _done["conv|" + weightName] = stored;
                FloatWeightBytes += (long)data.Length * 4;
                QuantizedWeightBytes += q.Length + 1 + (long)m * 4;
                _convErrors[weightName] = maxError;
            }

            // The helper nodes stay unnamed (names are optional; on small models they were 3-4% of the file).
            var inserted = new List<NodeProto>();
            string x = node.Input[0];
            if (!_dynamicQuantized.TryGetValue(x, out var xq))
            {
                xq = (Unique(x + "_quantized"), Unique(x + "_scale"), Unique(x + "_zero_point"));
                var dql = new NodeProto { OpType = "DynamicQuantizeLinear", Name = "" };
                dql.Input.Add(x);
                dql.Output.Add(xq.Q);
                dql.Output.Add(xq.Scale);
                dql.Output.Add(xq.ZeroPoint);
                inserted.Add(dql);
                _dynamicQuantized[x] = xq;
            }
            string integerOut = Unique(label + "_int32");
            var conv = new NodeProto { OpType = "ConvInteger", Name = node.Name.Length > 0 ? node.Name : Unique(label + "_quant") };
            conv.Input.Add(xq.Q);
            conv.Input.Add(stored.Quantized);
            conv.Input.Add(xq.ZeroPoint);
            conv.Input.Add(stored.ZeroPoint);
            conv.Output.Add(integerOut);
            conv.Attribute.AddRange(node.Attribute.Select(a => a.Clone()));
            inserted.Add(conv);

            string floatOut = Unique(label + "_float");
            var cast = new NodeProto { OpType = "Cast", Name = "" };
            cast.Input.Add(integerOut);
            cast.Output.Add(floatOut);
            cast.Attribute.Add(new AttributeProto { Name = "to", Type = AttributeProto.Types.AttributeType.Int, I = (long)TensorProto.Types.DataType.Float });
            inserted.Add(cast);

            string combined = Unique(label + "_output_scale");
            var scaleMul = new NodeProto { OpType = "Mul", Name = "" };
            scaleMul.Input.Add(xq.Scale);
            scaleMul.Input.Add(stored.Scale);
            scaleMul.Output.Add(combined);
            inserted.Add(scaleMul);

            bool hasBias = node.Input.Count > 2 && node.Input[2].Length > 0;
            string scaledOut = hasBias ? Unique(label + "_scaled") : node.Output[0];
            var rescale = new NodeProto { OpType = "Mul", Name = "" };
            rescale.Input.Add(floatOut);
            rescale.Input.Add(combined);
            rescale.Output.Add(scaledOut);
            inserted.Add(rescale);

            if (hasBias)
            {
                TryResolveConstant(node.Input[2], out ResolvedConstant? bias, out _);
                string biasName = Unique(node.Input[2] + "_channels");
                AddInitializer(TensorUtil.FromFloats(biasName, Floats(bias!.Tensor), channelShape));
                QuantizedWeightBytes += (long)m * 4;
                var add = new NodeProto { OpType = "Add", Name = "" };
                add.Input.Add(scaledOut);
                add.Input.Add(biasName);
                add.Output.Add(node.Output[0]);
                inserted.Add(add);
                Touch(node.Input[2], bias);
            }

            g.Replace(node, inserted);
            Touch(weightName, c.Weight);
            _convQuantized = true;
            Quantized.Add(new QuantizedNode(label, "Conv", weightName, perChannel, m, _convErrors[weightName]));
        }

        private readonly Dictionary<string, float> _convErrors = new(StringComparer.Ordinal);
        private readonly Dictionary<string, float> _weightErrors = new(StringComparer.Ordinal);

        /// <summary>beta * C as a [N] bias input when C is a constant with N elements (or one); else false.</summary>
        private bool TryBias(string cName, float beta, int n, out string? bias)
        {
            bias = null;
            if (!TryResolveConstant(cName, out ResolvedConstant? cv, out _) || cv!.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
            {
                return false;
            }
            long count = 1;
            foreach (long d in cv.Dims)
            {
                count *= d;
            }
            bool vector = count == n && (cv.Dims.Length == 1 || (cv.Dims.Length == 2 && cv.Dims[0] == 1));
            if (!vector && count != 1)
            {
                return false;
            }
            float[] values = PassGraph.BiasValues(Floats(cv.Tensor), vector, n, beta);
            bias = Unique(cName + "_bias");
            AddInitializer(TensorUtil.FromFloats(bias, values, n));
            QuantizedWeightBytes += (long)n * 4;
            Touch(cName, cv);
            return true;
        }

        /// <summary>Marks the constant read as <paramref name="name"/> and what computed it for removal once unused.</summary>
        private void Touch(string name, ResolvedConstant value) => _replaced.Add(name, value);

        private void EnsureOpset(string domain, long version) => g.EnsureOpset(domain, version);

        private void AddInitializer(TensorProto t) => g.AddInitializer(t);

        private string Unique(string name) => g.Unique(name);

        private float[] Floats(TensorProto t) => PassGraph.Floats(t, displayName);

        private static string Label(NodeProto node) => OnnxNames.Label(node);
    }
}
