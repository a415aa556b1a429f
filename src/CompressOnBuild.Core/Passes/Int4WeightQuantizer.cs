using System.Globalization;
using System.Numerics.Tensors;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Quantization;
using CompressOnBuild.Core.Quantization.Ops;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;
using DataType = CompressOnBuild.Onnx.TensorProto.Types.DataType;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Weight-only 4-bit quantization: every main-graph MatMul and Gemm whose weight B is a constant float32 matrix
/// becomes one com.microsoft MatMulNBits node (bits = 4): Y = A x dequant(B)^T + bias, with B stored as uint8
/// [N, K/block, block/2] (two codes per byte, the even one in the low nibble), one float scale per block of
/// <see cref="Int4Options.BlockSize"/> weights along K ([N * K/block]), and for asymmetric blocks packed 4-bit zero
/// points ([N * ceil((K/block)/2)]); a last partial block is padded with zeros. Codes round half to even.
/// Gemm: alpha is folded into the weight, transB decides the stored layout, transA becomes a Transpose node, and
/// beta*C becomes the bias input when C is a constant of N elements (or one); any other C is added by an Add
/// node (after a Mul when beta != 1). The activations stay float; ORT dequantizes blocks inside its GEMM.
/// </summary>
public static class Int4WeightQuantizer
{
    public const string QuantizedOpType = "MatMulNBits";

    /// <summary>Quantizes <paramref name="model"/> in place (the caller passes a copy) and reports what it did.</summary>
    /// <exception cref="CompressException">CMPR0003 for a block size other than 16/32/64/128, an accuracy level outside 0..4 or GPTQ without activations;
    /// CMPR0303 when a GPTQ activation does not fit its layer;
    /// CMPR0202 when a weight to quantize holds NaN or infinity; CMPR0103 for a model without a graph.</exception>
    public static Int4Summary Apply(ModelProto model, Int4Options options, string displayName)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(displayName);
        ValidateOptions(options, displayName);
        if (model.Graph == null)
        {
            throw new CompressException(DiagnosticCodes.ModelInvalid, displayName, "it has no graph") { File = displayName };
        }
        long before = model.CalculateSize();
        if (QuantizedOperators.Describe(model) is { } already)
        {
            return new Int4Summary
            {
                ModelDisplayName = displayName,
                BlockSize = options.BlockSize,
                Symmetric = options.Symmetric,
                AlreadyQuantized = true,
                AlreadyQuantizedReason = already,
                ModelBytesBefore = before,
                ModelBytesAfter = before,
            };
        }
        // Weights behind Reshape/Transpose/... of initializers become plain initializers first (see PassGraph).
        var graph = new PassGraph(model);
        int folded = graph.FoldConstantShapeOps(displayName);
        var rewriter = new Rewriter(graph, options, displayName);
        rewriter.Run();
        GatherLowering.Bytes tables = GatherLowering.Apply(graph, GatherLowering.Scheme.Int4(options.BlockSize, options.Symmetric), options.ExcludedNodes, options.MinimumWeightElements, rewriter.Quantized, rewriter.Skipped, displayName);
        LstmLowering.ReportFloat(graph, op => $"ONNX Runtime has no 4-bit {op} kernel; its weights stay float32" + (op == "LSTM" ? " (Int8Dynamic quantizes LSTM weights)" : ""), rewriter.Skipped, displayName);
        if (rewriter.Quantized.Count > 0)
        {
            PassGraph.DropInitializerInputs(model);
            PassGraph.StripDebugTraces(model);
        }
        return new Int4Summary
        {
            ModelDisplayName = displayName,
            BlockSize = options.BlockSize,
            Symmetric = options.Symmetric,
            Method = options.Method == Int4Method.Gptq ? "GPTQ" : "RTN",
            RoundedToNearest = rewriter.RoundedToNearest,
            Quantized = rewriter.Quantized,
            Skipped = rewriter.Skipped,
            ModelBytesBefore = before,
            ModelBytesAfter = rewriter.Quantized.Count == 0 && folded == 0 ? before : model.CalculateSize(),
            FloatWeightBytes = rewriter.FloatWeightBytes + tables.Float,
            QuantizedWeightBytes = rewriter.QuantizedWeightBytes + tables.Quantized,
        };
    }

    /// <summary>CMPR0003 for a block size other than 16/32/64/128 or an accuracy level outside 0..4.</summary>
    internal static void ValidateOptions(Int4Options options, string displayName)
    {
        if (options.BlockSize is not (16 or 32 or 64 or 128))
        {
            throw new CompressException(DiagnosticCodes.InvalidOption, displayName, "BlockSize", options.BlockSize, "it must be 16, 32, 64 or 128");
        }
        if (options.AccuracyLevel is < 0 or > 4)
        {
            throw new CompressException(DiagnosticCodes.InvalidOption, displayName, "AccuracyLevel", options.AccuracyLevel, "it must be 0 (unset) to 4");
        }
        if (options.Method == Int4Method.Gptq && options.Activations == null)
        {
            throw new CompressException(DiagnosticCodes.InvalidOption, displayName, "Quantization", "Int4Weights:gptq", "GPTQ needs CalibrationData (representative inputs)");
        }
        if (!(options.GptqDampening > 0 && options.GptqDampening < 1))
        {
            throw new CompressException(DiagnosticCodes.InvalidOption, displayName, "GptqDampening", options.GptqDampening, "it must be above 0 and below 1");
        }
    }

    /// <summary>Base name of the packed weight initializer ("_scales" and "_zero_points" are appended for the others).</summary>
    internal static string QuantizedBaseName(string weightName) => weightName + "_q4";

    /// <summary>Name of a MatMulNBits node replacing an unnamed node (before making it unique).</summary>
    internal static string NodeBaseName(string label) => label + "_q4";

    /// <summary>Dims of the packed weight: [N, K/block (rounded up), block/2].</summary>
    internal static long[] PackedDims(int k, int n, int blockSize) => [n, (k + blockSize - 1) / blockSize, blockSize / 2];

    /// <summary>
    /// The MatMulNBits node: inputs A, B, scales and zero points ("" when symmetric; the caller drops a trailing
    /// empty one or appends g_idx and bias), attributes K, N, bits, block_size and accuracy_level when set.
    /// </summary>
    internal static NodeProto MatMulNBitsNode(string name, string a, string b, string scales, string? zeroPoints, string output, int k, int n, Int4Options options)
    {
        var q = new NodeProto { OpType = QuantizedOpType, Domain = OnnxNames.MicrosoftDomain, Name = name };
        q.Input.Add(a);
        q.Input.Add(b);
        q.Input.Add(scales);
        q.Input.Add(zeroPoints ?? "");
        q.Output.Add(output);
        q.Attribute.Add(PassGraph.IntAttribute("K", k));
        q.Attribute.Add(PassGraph.IntAttribute("N", n));
        q.Attribute.Add(PassGraph.IntAttribute("bits", 4));
        q.Attribute.Add(PassGraph.IntAttribute("block_size", options.BlockSize));
        if (options.AccuracyLevel != 0)
        {
            q.Attribute.Add(PassGraph.IntAttribute("accuracy_level", options.AccuracyLevel));
        }
        return q;
    }

    /// <summary>
    /// Quantizes one channel-major [n, k] matrix block-wise. Returns codes packed [n, blocks, block/2], scales
    /// [n * blocks], packed zero points [n * ceil(blocks/2)] (null when symmetric) and the largest |w - dequantized|.
    /// </summary>
    internal static (byte[] Packed, float[] Scales, byte[]? ZeroPoints, float MaxError) QuantizeBlocks(
        ReadOnlySpan<float> channelMajor, int n, int k, int blockSize, bool symmetric)
    {
        int blocks = (k + blockSize - 1) / blockSize;
        int zpBytesPerRow = (blocks + 1) / 2;
        var packed = new byte[(long)n * blocks * blockSize / 2];
        var scales = new float[n * blocks];
        byte[]? zeroPoints = symmetric ? null : new byte[n * zpBytesPerRow];
        var codes = new byte[blocks * blockSize];
        var blockZeros = new byte[blocks];
        var padded = new float[blockSize];
        var roundTrip = new float[blockSize];
        float maxError = 0f;
        for (int row = 0; row < n; row++)
        {
            ReadOnlySpan<float> w = channelMajor.Slice(row * k, k);
            for (int b = 0; b < blocks; b++)
            {
                int start = b * blockSize;
                int len = Math.Min(blockSize, k - start);
                padded.AsSpan().Clear();
                w.Slice(start, len).CopyTo(padded);
                (float scale, byte zero) = BlockParameters(padded, symmetric);
                Span<byte> blockCodes = codes.AsSpan(start, blockSize);
                if (scale < 0f)
                {
                    // The kernels take positive scales: x / s = (-x) / |s|, and half-to-even rounding is odd-symmetric.
                    TensorPrimitives.Negate(padded, padded);
                    QuantizationKernels.Quantize(padded, -scale, zero, blockCodes, 0, 15);
                    QuantizationKernels.Dequantize(blockCodes, -scale, zero, roundTrip);
                    TensorPrimitives.Negate(padded, padded);
                    TensorPrimitives.Negate(roundTrip, roundTrip);
                }
                else
                {
                    QuantizationKernels.Quantize(padded, scale, zero, blockCodes, 0, 15);
                    QuantizationKernels.Dequantize(blockCodes, scale, zero, roundTrip);
                }
                maxError = MathF.Max(maxError, ErrorMetrics.MaxAbsDifference(padded.AsSpan(0, len), roundTrip.AsSpan(0, len)));
                scales[row * blocks + b] = scale;
                blockZeros[b] = zero;
            }
            Int4Kernels.Pack(codes, packed.AsSpan(row * blocks * blockSize / 2, blocks * blockSize / 2));
            if (zeroPoints != null)
            {
                Int4Kernels.Pack(blockZeros, zeroPoints.AsSpan(row * zpBytesPerRow, zpBytesPerRow));
            }
        }
        return (packed, scales, zeroPoints, maxError);
    }

    /// <summary>
    /// A block's scale and zero point. Symmetric: the value of largest magnitude lands exactly on code 0 (level -8),
    /// so the scale carries that value's sign; the other side reaches at most +8, clamped to 7; zero point 8.
    /// Asymmetric: min..max (widened to include 0) over 15 steps, zero point rounded half to even. An all-zero
    /// block gets scale 1 (every code is the zero point).
    /// </summary>
    internal static (float Scale, byte Zero) BlockParameters(ReadOnlySpan<float> block, bool symmetric)
    {
        float scale;
        byte zero;
        if (symmetric)
        {
            int at = TensorPrimitives.IndexOfMaxMagnitude(block);
            scale = block[at] / -8f;
            zero = 8;
        }
        else
        {
            float min = MathF.Min(0f, TensorPrimitives.Min(block));
            float max = MathF.Max(0f, TensorPrimitives.Max(block));
            scale = (max - min) / 15f;
            zero = scale > 0f && float.IsFinite(scale) ? (byte)Math.Clamp(MathF.Round(-min / scale, MidpointRounding.ToEven), 0f, 15f) : (byte)0;
        }
        if (!(MathF.Abs(scale) >= 1e-30f) || !float.IsFinite(scale))
        {
            scale = 1f;
        }
        return (scale, zero);
    }

    private sealed class Rewriter(PassGraph g, Int4Options options, string displayName)
    {
        private readonly Dictionary<string, (string B, string Scales, string? ZeroPoints, int K, int N, float Error)> _done = new(StringComparer.Ordinal);
        private readonly ReplacedConstants _replaced = new();

        public List<QuantizedNode> Quantized { get; } = [];

        public List<SkippedNode> Skipped { get; } = [];

        public List<string> RoundedToNearest { get; } = [];

        private IReadOnlyDictionary<string, Activation>? _activations;

        public long FloatWeightBytes { get; private set; }

        public long QuantizedWeightBytes { get; private set; }

        public void Run()
        {
            List<WeightSite> candidates = WeightSites.Find(g, displayName, OpTypes, options.ExcludedNodes, options.MinimumWeightElements, Skipped);
            foreach (WeightSite c in candidates)
            {
                if (!TensorStats.AllFinite(PassGraph.Floats(c.Weight.Tensor, displayName)))
                {
                    throw new CompressException(DiagnosticCodes.NonFiniteWeights, displayName, c.WeightName) { File = displayName };
                }
            }
            if (options.Method == Int4Method.Gptq && candidates.Count > 0)
            {
                // One pass over the calibration data for every layer input GPTQ needs.
                List<string> inputs = candidates.Where(c => !c.TransA).Select(c => c.Node.Input[0]).Distinct(StringComparer.Ordinal).ToList();
                _activations = inputs.Count == 0 ? new Dictionary<string, Activation>() : options.Activations!(g.Model, inputs);
            }
            foreach (WeightSite c in candidates)
            {
                Rewrite(c);
            }
            g.Commit();
            if (Quantized.Count == 0)
            {
                return;
            }
            _replaced.RemoveUnused(g);
            g.EnsureOpset(OnnxNames.MicrosoftDomain, 1);
        }

        private static readonly IReadOnlySet<string> OpTypes = new HashSet<string>(StringComparer.Ordinal) { "MatMul", "Gemm" };

        private void Rewrite(WeightSite c)
        {
            NodeProto node = c.Node;
            string label = OnnxNames.Label(node);
            int rows = (int)c.Weight.Dims[0], cols = (int)c.Weight.Dims[1];
            int k = c.TransB ? cols : rows;
            int n = c.TransB ? rows : cols;
            string key = c.WeightName + (c.TransB ? "|T" : "") + "|a" + c.Alpha.ToString("R", CultureInfo.InvariantCulture);
            if (!_done.TryGetValue(key, out var stored))
            {
                float[] data = PassGraph.Floats(c.Weight.Tensor, displayName);
                float[] channelMajor = c.TransB ? data : PassGraph.Transpose(data, rows, cols);
                if (c.Alpha != 1f)
                {
                    TensorPrimitives.Multiply(channelMajor, c.Alpha, channelMajor);
                }
                var gptq = options.Method == Int4Method.Gptq && !c.TransA ? Gptq(c.Node.Input[0], channelMajor, n, k) : null;
                if (options.Method == Int4Method.Gptq && gptq == null)
                {
                    RoundedToNearest.Add(OnnxNames.Label(node)); // transposed input, or H would not factorize
                }
                (byte[] packed, float[] scales, byte[]? zeros, float error) = gptq ?? QuantizeBlocks(channelMajor, n, k, options.BlockSize, options.Symmetric);
                int blocks = (k + options.BlockSize - 1) / options.BlockSize;
                string baseName = QuantizedBaseName(c.WeightName);
                stored = (g.Unique(baseName), g.Unique(baseName + "_scales"), zeros == null ? null : g.Unique(baseName + "_zero_points"), k, n, error);
                g.AddInitializer(TensorUtil.FromUInt8(stored.B, packed, PackedDims(k, n, options.BlockSize)));
                g.AddInitializer(TensorUtil.FromFloats(stored.Scales, scales, (long)n * blocks));
                if (zeros != null)
                {
                    g.AddInitializer(TensorUtil.FromUInt8(stored.ZeroPoints!, zeros, zeros.Length));
                }
                FloatWeightBytes += (long)data.Length * 4;
                QuantizedWeightBytes += packed.Length + (long)scales.Length * 4 + (zeros?.Length ?? 0);
                _done[key] = stored;
            }

            var inserted = new List<NodeProto>();
            string a = node.Input[0];
            if (c.TransA)
            {
                string transposed = g.Unique(a + "_transposed");
                NodeProto t = g.Node("Transpose", label + "_transpose_a", [a], [transposed]);
                t.Attribute.Add(new AttributeProto { Name = "perm", Type = AttributeProto.Types.AttributeType.Ints, Ints = { 1, 0 } });
                inserted.Add(t);
                a = transposed;
            }
            NodeProto q = MatMulNBitsNode(node.Name.Length > 0 ? node.Name : g.Unique(NodeBaseName(label)), a, stored.B, stored.Scales, stored.ZeroPoints,
                node.Output[0], k, n, options);
            inserted.Add(q);

            if (node.OpType == "Gemm" && node.Input.Count > 2 && node.Input[2].Length > 0 && c.Beta != 0f)
            {
                string cName = node.Input[2];
                if (TryBias(cName, c.Beta, n) is { } bias)
                {
                    q.Input.Add(""); // g_idx
                    q.Input.Add(bias);
                }
                else
                {
                    string product = g.Unique(label + "_matmul");
                    q.Output[0] = product;
                    string addend = cName;
                    if (c.Beta != 1f)
                    {
                        string betaName = g.Unique(label + "_beta");
                        g.AddInitializer(TensorUtil.FromFloats(betaName, [c.Beta]));
                        addend = g.Unique(cName + "_scaled");
                        inserted.Add(g.Node("Mul", label + "_scale_c", [cName, betaName], [addend]));
                    }
                    inserted.Add(g.Node("Add", label + "_add_c", [product, addend], [node.Output[0]]));
                }
            }
            if (stored.ZeroPoints == null && q.Input.Count == 4)
            {
                q.Input.RemoveAt(3);
            }

            g.Replace(node, inserted);
            _replaced.Add(c.WeightName, c.Weight);
            Quantized.Add(new QuantizedNode(label, node.OpType, c.WeightName, k, n, stored.Error));
        }

        /// <summary>GPTQ codes for one weight from its input's calibration activations; null when H would not factorize.</summary>
        private (byte[] Packed, float[] Scales, byte[]? ZeroPoints, float MaxError)? Gptq(string input, float[] channelMajor, int n, int k)
        {
            if (!_activations!.TryGetValue(input, out Activation? a) || a.Shape.Length < 1 || a.Shape[^1] != k || a.Data.Length == 0 || a.Data.Length % k != 0)
            {
                throw new CompressException(DiagnosticCodes.DataShape, "calibration activations", input,
                    $"GPTQ needs this layer input as [..., {k}] values; got [{string.Join(",", a?.Shape ?? [])}]") { File = displayName };
            }
            if (!TensorStats.AllFinite(a.Data))
            {
                throw new CompressException(DiagnosticCodes.NonFiniteOutputs, displayName, input, "one of the calibration samples (GPTQ)") { File = displayName };
            }
            double[] h = Int4Gptq.Hessian(a.Data, a.Data.Length / k, k);
            return Int4Gptq.Quantize(channelMajor, n, k, h, options.BlockSize, options.Symmetric, options.GptqDampening);
        }

        /// <summary>beta * C as a float [N] initializer when C is a constant with N elements (or one); else null.</summary>
        private string? TryBias(string cName, float beta, int n)
        {
            if (!g.IsConstantInitializer(cName) || g.Initializers[cName].DataType != (int)DataType.Float)
            {
                return null;
            }
            TensorProto cv = g.Initializers[cName];
            long count = TensorUtil.ElementCount(cv);
            bool vector = count == n && (cv.Dims.Count == 1 || (cv.Dims.Count == 2 && cv.Dims[0] == 1));
            if (!vector && count != 1)
            {
                return null;
            }
            float[] values = PassGraph.BiasValues(PassGraph.Floats(cv, displayName), vector, n, beta);
            string bias = g.Unique(cName + "_bias");
            g.AddInitializer(TensorUtil.FromFloats(bias, values, n));
            QuantizedWeightBytes += (long)n * 4;
            _replaced.Add(cName);
            return bias;
        }
    }
}
