using System.Globalization;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using CompressOnBuild.Core.IO;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Quantization.Ops;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization.Schemes;

/// <summary>
/// A quantized [K, N] weight as DynamicQuantizeMatMul reads it: codes, per-column scales and zero points ("" for signed
/// codes: default 0). <paramref name="HalfScale"/>: the scales are a float16 initializer (read through
/// <see cref="LoweringContext.AsFloat32"/>).
/// </summary>
internal sealed record Int8Matrix(string Quantized, string Scale, string ZeroPoint, int K, int N, float MaxError, bool HalfScale = false);

/// <summary>A quantized Conv weight as ConvInteger reads it: uint8 codes, [M, 1, ...] scales, one zero point 128.</summary>
internal sealed record Int8ConvWeight(string Quantized, string Scale, string ZeroPoint, int PerChannel, int M, float MaxError);

/// <summary>
/// The Int8Dynamic scheme's context: its options, the stored levels of <see cref="QuantizationOptions.WeightEncoding"/>,
/// and the weight encodings (symmetric per output channel), each stored once per weight.
/// </summary>
internal sealed class Int8DynamicContext : LoweringContext, ITableEncoding, IWeightLevels
{
    public Int8DynamicContext(PassGraph graph, QuantizationOptions options, string displayName)
        : base(graph, displayName, options.ExcludedNodes, options.MinimumWeightElements)
    {
        Options = options;
        // An unknown encoding fails before anything changes. Scales are stored as float16 where the model allows it.
        Levels = EncodingLevels.Of(options.WeightEncoding, displayName) with { HalfScales = options.Float16Scales && HalfScales.Allowed(graph) };
        ConvBlocked = options.QuantizeConv
            ? OpsetRaise.BlockingReason(graph.Model, 11, "Conv needs default opset 11 (DynamicQuantizeLinear)")
            : null;
    }

    public QuantizationOptions Options { get; }

    public EncodingLevels Levels { get; }

    /// <summary>Null when Conv can use opset-11 DynamicQuantizeLinear (the model is at 11 or can be raised); else why not.</summary>
    public string? ConvBlocked { get; }

    /// <summary>Activations already quantized by a DynamicQuantizeLinear (Conv inputs read by several Convs are quantized once).</summary>
    public Dictionary<string, (string Q, string Scale, string ZeroPoint)> QuantizedActivations { get; } = new(StringComparer.Ordinal);

    /// <inheritdoc/>
    public override void UseScope(PassGraph scope)
    {
        base.UseScope(scope);
        QuantizedActivations.Clear();
    }

    /// <summary>Zero-point initializers already stored, per graph scope, value and length (0: a scalar).</summary>
    private readonly Dictionary<(PassGraph Scope, byte Zero, int Length), string> _zeroPoints = [];

    /// <summary>
    /// The name of a uint8 zero-point initializer of <paramref name="length"/> elements (0: a scalar) all equal to
    /// <paramref name="zero"/> in the current scope, stored once and shared by every weight that needs the same one:
    /// ONNX Runtime's session creation grows with the square of the number of initializers (about 8e-9 s per pair,
    /// 84 s for 100,000; docs/reliability.md, "Scale"), and one per weight was a third of what this scheme wrote.
    /// <paramref name="bytes"/>: the bytes this call added (0 when shared). The streaming path's chunked MatMuls take
    /// theirs here too, in lowering order, so they share them with the lowered layers under the same names.
    /// </summary>
    public string SharedZeroPoint(byte zero, int length, string baseName, out long bytes)
    {
        if (_zeroPoints.TryGetValue((Graph, zero, length), out string? name))
        {
            bytes = 0;
            return name;
        }
        name = Graph.Unique(baseName + "_zero_point");
        byte[] zeros = new byte[Math.Max(1, length)];
        Array.Fill(zeros, zero);
        Graph.AddInitializer(length == 0 ? TensorUtil.FromUInt8(name, zeros) : TensorUtil.FromUInt8(name, zeros, length));
        _zeroPoints[(Graph, zero, length)] = name;
        bytes = zeros.Length;
        return name;
    }

    public GatherLowering.Scheme TableScheme => GatherLowering.Scheme.Int8PerRow with { HalfScales = Levels.HalfScales };

    /// <summary>
    /// The weight of a MatMul/Gemm site (alpha folded in, transB applied) quantized in channel-major order (row j of
    /// the [N, K] view is output channel j: max-abs scale, quantize, dequantize to measure the error) and stored as
    /// [K, N] for DynamicQuantizeMatMul; once per weight, transB and alpha. <paramref name="halfScale"/>: the scales may be
    /// stored as float16 (<see cref="HalfScales"/>; the reader then casts them, see <see cref="DynamicQuantizeMatMul"/>).
    /// </summary>
    public Int8Matrix EncodeMatrix(WeightSite c, bool halfScale)
    {
        string weightName = c.WeightName;
        int k = (int)(c.TransB ? c.Weight.Dims[1] : c.Weight.Dims[0]);
        int n = (int)(c.TransB ? c.Weight.Dims[0] : c.Weight.Dims[1]);
        string baseName = weightName + (c.TransB ? "_t" : "");
        EncodingLevels levels = Levels with { HalfScales = Levels.HalfScales && halfScale && HalfScales.Worth(n, baseName + "_scale") };
        string key = "matrix|" + weightName + (c.TransB ? "|T" : "") + (c.Alpha != 1f ? "|a" + c.Alpha.ToString("R", CultureInfo.InvariantCulture) : "")
            + (Smoothing(c) != null ? "|smoothed by " + c.Node.Input[0] : "") + (levels.HalfScales ? "|h" : "");
        return Encoded(key, () =>
        {
            float[] channelMajor = ChannelMajor(c);
            (byte zero, _, _, bool unsigned, _) = levels;
            if (Smoothing(c) is { } smoothing)
            {
                SmoothQuant.ScaleInputChannels(channelMajor, n, k, smoothing.Factors);
            }
            (byte[] quantized, float[] scales, float maxError, bool half) = Int8Weights.Quantize(channelMajor, n, k, levels);
            byte[] kMajor = PassGraph.Transpose(quantized, n, k);

            // Signed codes are symmetric around 0, DynamicQuantizeMatMul's default zero point: none is stored ("").
            long zeroBytes = 0;
            string zeroPoint = unsigned ? SharedZeroPoint(zero, n, baseName, out zeroBytes) : "";
            var stored = new Int8Matrix(Graph.Unique(baseName + "_quantized"), Graph.Unique(baseName + "_scale"), zeroPoint, k, n, maxError, half);
            if (unsigned)
            {
                Graph.AddInitializer(TensorUtil.FromUInt8(stored.Quantized, kMajor, k, n));
            }
            else
            {
                Graph.AddInitializer(TensorUtil.FromInt8(stored.Quantized, MemoryMarshal.Cast<byte, sbyte>(kMajor), k, n));
            }
            Graph.AddInitializer(half ? HalfScales.Tensor(stored.Scale, scales, n) : TensorUtil.FromFloats(stored.Scale, scales, n));
            FloatWeightBytes += (long)channelMajor.Length * 4;
            QuantizedWeightBytes += kMajor.Length + zeroBytes + (long)scales.Length * (half ? 2 : 4);
            return stored;
        });
    }

    /// <summary>
    /// A Conv weight [M, C/group, k...] quantized per output channel as uint8 with zero point 128 (ORT's CPU
    /// ConvInteger takes only uint8 weights with one zero point), whatever the weight encoding; once per weight.
    /// </summary>
    public Int8ConvWeight EncodeConv(WeightSite c)
    {
        string weightName = c.WeightName;
        return Encoded("conv|" + weightName, () =>
        {
            long[] dims = c.Weight.Dims;
            int m = (int)dims[0];
            int perChannel = (int)(dims.Aggregate(1L, (a, b) => a * b) / m);
            long[] channelShape = [m, .. Enumerable.Repeat(1L, dims.Length - 2)];
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
            string zeroPoint = SharedZeroPoint(128, 0, weightName, out long zeroBytes);
            var stored = new Int8ConvWeight(Graph.Unique(weightName + "_quantized"), Graph.Unique(weightName + "_scale"), zeroPoint, perChannel, m, maxError);
            Graph.AddInitializer(TensorUtil.FromUInt8(stored.Quantized, q, dims));
            Graph.AddInitializer(TensorUtil.FromFloats(stored.Scale, scales, channelShape));
            FloatWeightBytes += (long)data.Length * 4;
            QuantizedWeightBytes += q.Length + zeroBytes + (long)m * 4;
            return stored;
        });
    }

    private readonly Dictionary<string, SmoothedInput> _smoothed = new(StringComparer.Ordinal);

    /// <summary>
    /// One smoothed layer input: the decision measured, the factors s the weights are scaled by, the 1 / s the Mul
    /// applies (float16-exact when <paramref name="halfInverse"/>, s = 1 / that then), and the Mul's output once inserted.
    /// </summary>
    internal sealed class SmoothedInput(string input, SmoothQuant.Decision decision, float[] inverse, bool halfInverse)
    {
        public string Input { get; } = input;

        public SmoothQuant.Decision Decision { get; } = decision;

        public float[] Factors => Decision.Factors!;

        public float[] Inverse { get; } = inverse;

        public bool HalfInverse { get; } = halfInverse;

        public string? Scaled { get; set; }
    }

    /// <summary>Every layer input the smoothing measured, in graph order (smoothed or not), for the report.</summary>
    public List<(string Input, SmoothQuant.Decision Decision)> SmoothingDecisions { get; } = [];

    /// <summary>
    /// With calibration data (<see cref="QuantizationOptions.SmoothingRows"/>, else <see cref="QuantizationOptions.Activations"/>),
    /// measures for every input of the MatMul/Gemm sites (not transA) whether and how strongly to smooth it
    /// (<see cref="SmoothQuant.Decide(ActivationRows, IReadOnlyList{SmoothQuant.Consumer}, EncodingLevels)"/>). Each
    /// input's statistics are dropped once decided, and the whole collection before the first weight is lowered.
    /// </summary>
    public override void Prepare(IReadOnlyList<WeightSite> sites)
    {
        if (Options.SmoothingRows == null && Options.Activations == null)
        {
            return;
        }
        var byInput = sites.Where(c => c.Lowering is Int8MatMulLowering or Int8GemmLowering && !c.TransA)
            .GroupBy(c => c.Node.Input[0], StringComparer.Ordinal).ToList();
        if (byInput.Count == 0)
        {
            return;
        }
        string[] names = [.. byInput.Select(g => g.Key)];
        Dictionary<string, ActivationRows?> statistics = Options.SmoothingRows != null
            ? new(Options.SmoothingRows(Graph.Model, names), StringComparer.Ordinal)
            : Options.Activations!(Graph.Model, names).ToDictionary(a => a.Key, a => ActivationRows.From(a.Value, SmoothQuant.MeasuredRows), StringComparer.Ordinal);
        var scratch = new SmoothQuant.Scratch();
        // Each input's weights as floats, products and codes are dropped once it is decided (and its statistics with
        // them): collected every few MB, so they do not pile up on top of the parsed model.
        var garbage = new ProcessMemory.GarbageBound(GarbageBoundBytes);
        foreach (IGrouping<string, WeightSite> group in byInput)
        {
            garbage.Check();
            (int k, _) = MatrixParts.Shape(group.First());
            ActivationRows? rows = statistics[group.Key];
            statistics.Remove(group.Key);
            if (rows == null || rows.Width != k)
            {
                continue; // not a [.., K] activation: left as it is
            }
            var consumers = group.Select(c => new SmoothQuant.Consumer(ChannelMajor(c), MatrixParts.Shape(c).N)).ToList();
            SmoothQuant.Decision d = SmoothQuant.Decide(rows, consumers, Levels, scratch);
            if (d.Factors != null)
            {
                // 1 / s stored as float16 where every value fits (the nearest float16; the weights then take exactly
                // s = 1 / that, so X W is unchanged up to float rounding).
                float[] inverse = d.Factors.Select(f => 1f / f).ToArray();
                bool half = Levels.HalfScales && HalfScales.Worth(k, group.Key + "_smooth_inverse") && HalfScales.TryRoundNearest(inverse);
                if (half)
                {
                    d = d with { Factors = inverse.Select(v => 1f / v).ToArray() };
                }
                _smoothed[group.Key] = new SmoothedInput(group.Key, d, inverse, half);
            }
            SmoothingDecisions.Add((group.Key, d));
        }
    }

    /// <summary>Allocations between two collections while the smoothing is measured (<see cref="ProcessMemory.GarbageBound"/>).</summary>
    internal const long GarbageBoundBytes = 8L << 20;

    /// <summary>The smoothing of <paramref name="c"/>'s input, or null.</summary>
    public SmoothedInput? Smoothing(WeightSite c) => !c.TransA && _smoothed.TryGetValue(c.Node.Input[0], out SmoothedInput? s) ? s : null;

    /// <summary>
    /// The activation a MatMul/Gemm site's quantized node reads: its input, or for a smoothed input the output of one
    /// Mul(input, 1 / s) shared by every site that reads it (added to <paramref name="inserted"/> at the first).
    /// </summary>
    public string ActivationInput(WeightSite c, List<NodeProto> inserted)
    {
        if (Smoothing(c) is not { } s)
        {
            return c.Node.Input[0];
        }
        if (s.Scaled == null)
        {
            string inverse = Graph.Unique(s.Input + "_smooth_inverse");
            Graph.AddInitializer(s.HalfInverse ? HalfScales.Tensor(inverse, s.Inverse, s.Inverse.Length) : TensorUtil.FromFloats(inverse, s.Inverse, s.Inverse.Length));
            QuantizedWeightBytes += (long)s.Inverse.Length * (s.HalfInverse ? 2 : 4);
            if (s.HalfInverse)
            {
                inverse = AsFloat32(inverse, inserted);
            }
            s.Scaled = Graph.Unique(s.Input + "_smoothed");
            inserted.Add(Graph.Node("Mul", null, [s.Input, inverse], [s.Scaled]));
        }
        return s.Scaled;
    }

    /// <summary>
    /// The site's weight as channel-major [N, K] floats (alpha and transB applied), a new array (transposed straight from
    /// raw float32 data where it can be read in place: one copy of the weight, not two).
    /// </summary>
    private float[] ChannelMajor(WeightSite c)
    {
        (int k, int n) = MatrixParts.Shape(c);
        float[] channelMajor;
        if (!c.TransB && TensorUtil.TryGetRawFloats(c.Weight.Tensor, out ReadOnlySpan<float> raw))
        {
            channelMajor = new float[raw.Length];
            PassGraph.Transpose(raw, k, n, channelMajor.AsSpan());
        }
        else
        {
            float[] data = Floats(c.Weight.Tensor);
            channelMajor = c.TransB ? data : PassGraph.Transpose(data, k, n);
        }
        if (c.Alpha != 1f)
        {
            TensorPrimitives.Multiply(channelMajor, c.Alpha, channelMajor);
        }
        return channelMajor;
    }

    /// <summary>
    /// The com.microsoft DynamicQuantizeMatMul node reading <paramref name="a"/> and <paramref name="stored"/> (float16
    /// scales through a Cast added to <paramref name="inserted"/> the first time; the node itself is not added).
    /// </summary>
    public NodeProto DynamicQuantizeMatMul(NodeProto replaced, string a, Int8Matrix stored, List<NodeProto> inserted)
    {
        string scale = stored.HalfScale ? AsFloat32(stored.Scale, inserted) : stored.Scale;
        var q = new NodeProto
        {
            OpType = Int8DynamicQuantizer.QuantizedOpType,
            Domain = OnnxNames.MicrosoftDomain,
            Name = replaced.Name.Length > 0 ? replaced.Name : Graph.Unique(OnnxNames.Label(replaced) + "_quant"),
        };
        q.Input.Add(a);
        q.Input.Add(stored.Quantized);
        q.Input.Add(scale);
        q.Input.Add(stored.ZeroPoint);
        q.Output.Add(replaced.Output[0]);
        RequireOpset(OnnxNames.MicrosoftDomain, 1);
        return q;
    }

    /// <summary>Drops empty optional inputs at the end of <paramref name="q"/> (no zero point and no bias after it).</summary>
    public static void TrimOptionalInputs(NodeProto q)
    {
        while (q.Input.Count > 0 && q.Input[^1].Length == 0)
        {
            q.Input.RemoveAt(q.Input.Count - 1);
        }
    }
}
