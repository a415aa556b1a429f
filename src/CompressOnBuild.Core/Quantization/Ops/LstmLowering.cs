using System.Globalization;
using System.Runtime.InteropServices;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization.Ops;

/// <summary>The 8-bit weight levels of a scheme whose context lowers LSTMs (<see cref="LstmLowering"/>).</summary>
internal interface IWeightLevels
{
    EncodingLevels Levels { get; }
}

/// <summary>
/// Recurrent layers. A main-graph LSTM whose W [D, 4H, I] and R [D, 4H, H] are constant float32 tensors becomes one
/// com.microsoft DynamicQuantizeLSTM: W and R stored 8-bit and transposed to [D, I, 4H] / [D, H, 4H], one symmetric
/// scale per gate row and direction ([D, 4H] scales and zero points), B, P, sequence_lens and the initial states
/// passed through unchanged, attributes copied. ONNX Runtime quantizes the input and hidden state per step and runs
/// integer GEMMs. The weight encoding is the scheme's (<see cref="IWeightLevels"/>; Int8Dynamic's default is pair-bounded
/// int8, <see cref="AdjacentPairBound"/>, applied along each gate row's K; uint8 uses the one zero point 128, as ORT's
/// kernel wants a single zero point for unsigned weights; zero points are always stored: the op requires them).
/// <para>
/// The site's weight is W (input 1, checked by the driver like any weight); R (input 2) is checked here: constant,
/// float32, finite, read by nothing else. LSTM with layout=1 (batch-major, opset 14) stays float, because
/// DynamicQuantizeLSTM has no layout attribute. GRU and RNN have no quantized kernel in ONNX Runtime (1.31: only
/// DynamicQuantizeLSTM); the passes list them as float with <see cref="ReportFloat"/>.
/// </para>
/// </summary>
internal sealed class LstmLowering : IOperatorLowering
{
    public const string QuantizedOpType = "DynamicQuantizeLSTM";

    /// <summary>The ONNX recurrent operators whose weights W (input 1) and R (input 2) are [D, gates*H, K].</summary>
    public static readonly IReadOnlySet<string> RecurrentOps = new HashSet<string>(StringComparer.Ordinal) { "LSTM", "GRU", "RNN" };

    public string OpType => "LSTM";

    public string Domain => "";

    public bool AlwaysALayer => true;

    public WeightSite? FindSite(LoweringContext context, NodeProto node, Action<string> skip)
    {
        if (node.Input.Count < 3)
        {
            skip("it has no recurrence weight R");
            return null;
        }
        if (!TryWeight(context, node.Input[1], out ResolvedConstant? w, out string? why) || !TryWeight(context, node.Input[2], out ResolvedConstant? r, out why))
        {
            skip(why!);
            return null;
        }
        if (PassGraph.IntAttr(node, "layout", 0) != 0)
        {
            skip("layout=1 (batch-major): ONNX Runtime's DynamicQuantizeLSTM takes only the sequence-major layout");
            return null;
        }
        if (ShapeProblem(node, w!.Dims, r!.Dims) is { } problem)
        {
            skip(problem);
            return null;
        }
        long elements = TensorUtil.ElementCount(w.Dims) + TensorUtil.ElementCount(r.Dims);
        if (elements < context.MinimumWeightElements)
        {
            skip(string.Create(CultureInfo.InvariantCulture, $"weights W and R have {elements} elements, fewer than the minimum {context.MinimumWeightElements}"));
            return null;
        }
        if (SharedRecurrence(context.Graph, node, r) is { } conflict)
        {
            skip(conflict);
            return null;
        }
        if (!TensorStats.AllFinite(context.Floats(r.Tensor)))
        {
            throw new CompressException(DiagnosticCodes.NonFiniteWeights, context.DisplayName, r.SourceName) { File = context.DisplayName };
        }
        return new WeightSite { Node = node, Weight = w };
    }

    public void Lower(LoweringContext context, WeightSite site)
    {
        NodeProto node = site.Node;
        EncodingLevels levels = ((IWeightLevels)context).Levels;
        string rName = node.Input[2];
        if (!context.TryResolveConstant(rName, out ResolvedConstant? r, out _))
        {
            throw new InvalidOperationException($"LSTM '{OnnxNames.Label(node)}': R '{rName}' no longer resolves"); // FindSite resolved it and nothing else reads it
        }
        Stored w = Encode(context, node.Input[1], site.Weight, levels);
        Stored rq = Encode(context, rName, r!, levels);
        var q = new NodeProto { OpType = QuantizedOpType, Domain = OnnxNames.MicrosoftDomain, Name = node.Name }; // same name: labels stay
        q.Input.Add(node.Input[0]);
        q.Input.Add(w.Codes);
        q.Input.Add(rq.Codes);
        for (int i = 3; i < 8; i++)
        {
            q.Input.Add(i < node.Input.Count ? node.Input[i] : "");
        }
        q.Input.AddRange([w.Scales, w.ZeroPoints, rq.Scales, rq.ZeroPoints]);
        q.Output.AddRange(node.Output);
        q.Attribute.AddRange(node.Attribute.Where(a => a.Name != "layout").Select(a => a.Clone()));
        context.Graph.Replace(node, [q]);
        context.Replaced.Add(node.Input[1], site.Weight);
        context.Replaced.Add(rName, r!);
        context.RequireOpset(OnnxNames.MicrosoftDomain, 1);
        long k = site.Weight.Dims[2] + r!.Dims[2];
        context.Quantized.Add(new QuantizedNode(OnnxNames.Label(node), node.OpType, node.Input[1], (int)k, (int)(site.Weight.Dims[0] * site.Weight.Dims[1]), MathF.Max(w.MaxError, rq.MaxError)));
        context.FloatWeightBytes += (TensorUtil.ElementCount(site.Weight.Dims) + TensorUtil.ElementCount(r.Dims)) * sizeof(float);
        context.QuantizedWeightBytes += w.Bytes + rq.Bytes;
    }

    /// <summary>
    /// Adds a skip entry for every main-graph node of <paramref name="ops"/> (LSTM, GRU, RNN) with a constant float32
    /// W: for recurrent operators a scheme has no kernel for (<paramref name="reason"/> says why, per op type), so the
    /// report lists the layers left float.
    /// </summary>
    public static void ReportFloat(PassGraph graph, IReadOnlySet<string> ops, Func<string, string> reason, List<SkippedNode> skipped, string displayName)
    {
        graph.Commit();
        foreach (NodeProto node in graph.Graph.Node)
        {
            if (OnnxNames.IsDefaultDomain(node) && ops.Contains(node.OpType) && node.Input.Count >= 3
                && graph.TryResolveConstant(node.Input[1], displayName, out ResolvedConstant? w, out _) && w!.Tensor.DataType == (int)TensorProto.Types.DataType.Float)
            {
                skipped.Add(new SkippedNode(OnnxNames.Label(node), node.OpType, reason(node.OpType)));
            }
        }
    }

    private sealed record Stored(string Codes, string Scales, string ZeroPoints, float MaxError, long Bytes);

    private static bool TryWeight(LoweringContext context, string name, out ResolvedConstant? weight, out string? why)
    {
        if (!context.TryResolveConstant(name, out weight, out why))
        {
            return false;
        }
        if (weight!.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
        {
            why = $"weight '{name}' is {TensorUtil.DataTypeName(weight.Tensor.DataType)}, not float32";
            return false;
        }
        return true;
    }

    private static string? ShapeProblem(NodeProto node, long[] w, long[] r)
    {
        long hidden = PassGraph.IntAttr(node, "hidden_size", 0);
        if (w.Length != 3 || r.Length != 3)
        {
            return "W or R is not a 3-D [directions, 4*hidden, size] tensor";
        }
        long d = w[0];
        if (hidden <= 0 || d is < 1 or > 2 || w[1] != 4 * hidden || r[0] != d || r[1] != 4 * hidden || r[2] != hidden || w[2] <= 0)
        {
            return string.Create(CultureInfo.InvariantCulture,
                $"W [{string.Join(", ", w)}] and R [{string.Join(", ", r)}] do not match hidden_size {hidden}");
        }
        if (TensorUtil.ElementCount(w) > int.MaxValue / 2)
        {
            return "W has too many elements for one tensor here";
        }
        return null;
    }

    /// <summary>Why R (or a value its chain reads) is read by anything but this LSTM's input 2 (which would store it twice), or null.</summary>
    private static string? SharedRecurrence(PassGraph graph, NodeProto lstm, ResolvedConstant r)
    {
        string name = lstm.Input[2];
        var chain = new HashSet<NodeProto>(r.Chain, ReferenceEqualityComparer.Instance);
        foreach (string v in r.ChainInputs.Prepend(name).Append(r.SourceName).Distinct(StringComparer.Ordinal))
        {
            if (graph.Outer.Contains(v))
            {
                return $"weight '{v}' is also a graph output or used inside a subgraph";
            }
            foreach (NodeProto user in graph.Consumers(v))
            {
                for (int i = 0; i < user.Input.Count; i++)
                {
                    bool ok = user.Input[i] != v || (v == name ? ReferenceEquals(user, lstm) && i == 2 : chain.Contains(user));
                    if (!ok)
                    {
                        return $"weight '{v}' is shared with {user.OpType} '{OnnxNames.Label(user)}', which stays float";
                    }
                }
            }
        }
        return null;
    }

    /// <summary>[D, 4H, K] float -> per-(direction, gate row) symmetric codes, stored [D, K, 4H]; scales and zero points [D, 4H].</summary>
    private static Stored Encode(LoweringContext context, string name, ResolvedConstant weight, EncodingLevels levels)
    {
        float[] data = context.Floats(weight.Tensor);
        PassGraph graph = context.Graph;
        int d = (int)weight.Dims[0], rows = (int)weight.Dims[1], k = (int)weight.Dims[2];
        int channels = d * rows;
        (byte zero, byte min, byte max, bool unsigned, _) = levels;
        var scales = new float[channels];
        AdjacentPairBound.RowScales(data, channels, k, levels, scales);
        var zeros = new byte[channels];
        Array.Fill(zeros, zero);
        var codes = new byte[data.LongLength];
        if (unsigned)
        {
            QuantizationKernels.QuantizePerRow(data, channels, k, scales, zeros, codes, min, max);
        }
        else
        {
            QuantizationKernels.QuantizePerRow(data, channels, k, scales, MemoryMarshal.Cast<byte, sbyte>(zeros.AsSpan()),
                MemoryMarshal.Cast<byte, sbyte>(codes.AsSpan()), (sbyte)min, (sbyte)max);
            if (levels.PairBounded)
            {
                // Adjacent K pairs of a gate row feed one vpmaddubsw on AVX2 CPUs without VNNI: keep them unsaturating.
                for (int c = 0; c < channels; c++)
                {
                    AdjacentPairBound.Enforce(data, scales[c], MemoryMarshal.Cast<byte, sbyte>(codes.AsSpan()), c * k, k, 1);
                }
            }
        }
        var back = new float[k];
        float maxError = 0f;
        for (int c = 0; c < channels; c++)
        {
            ReadOnlySpan<byte> row = codes.AsSpan(c * k, k);
            if (unsigned)
            {
                QuantizationKernels.Dequantize(row, scales[c], zero, back);
            }
            else
            {
                QuantizationKernels.Dequantize(MemoryMarshal.Cast<byte, sbyte>(row), scales[c], (sbyte)zero, back);
            }
            maxError = MathF.Max(maxError, ErrorMetrics.MaxAbsDifference(data.AsSpan(c * k, k), back));
        }
        // Per direction: [4H, K] -> [K, 4H].
        var stored = new byte[codes.Length];
        for (int dir = 0; dir < d; dir++)
        {
            PassGraph.Transpose(codes.AsSpan(dir * rows * k, rows * k).ToArray(), rows, k).CopyTo(stored, (long)dir * rows * k);
        }
        string codesName = graph.Unique(name + "_quantized");
        string scalesName = graph.Unique(name + "_scale");
        string zerosName = graph.Unique(name + "_zero_point");
        if (unsigned)
        {
            graph.AddInitializer(TensorUtil.FromUInt8(codesName, stored, d, k, rows));
            graph.AddInitializer(TensorUtil.FromUInt8(zerosName, zeros, d, rows));
        }
        else
        {
            graph.AddInitializer(TensorUtil.FromInt8(codesName, MemoryMarshal.Cast<byte, sbyte>(stored.AsSpan()), d, k, rows));
            graph.AddInitializer(TensorUtil.FromInt8(zerosName, MemoryMarshal.Cast<byte, sbyte>(zeros.AsSpan()), d, rows));
        }
        graph.AddInitializer(TensorUtil.FromFloats(scalesName, scales, d, rows));
        return new Stored(codesName, scalesName, zerosName, maxError, stored.LongLength + zeros.Length + (long)scales.Length * sizeof(float));
    }
}

/// <summary>
/// The context for a pass that lowers only LSTMs through the registry after its own rewrites (Int8Static: ORT has no
/// QDQ LSTM kernel, so its LSTMs go to DynamicQuantizeLSTM with the pass's weight levels).
/// </summary>
internal sealed class RecurrentContext(PassGraph graph, EncodingLevels levels, string displayName, IReadOnlyCollection<string> excludedNodes, long minimumWeightElements)
    : LoweringContext(graph, displayName, excludedNodes, minimumWeightElements), IWeightLevels
{
    public EncodingLevels Levels => levels;
}
