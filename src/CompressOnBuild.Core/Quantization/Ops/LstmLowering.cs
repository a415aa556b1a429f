using System.Globalization;
using System.Runtime.InteropServices;
using CompressOnBuild.Core.Graph;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization.Ops;

/// <summary>
/// Recurrent layers. A main-graph LSTM whose W [D, 4H, I] and R [D, 4H, H] are constant float32 tensors becomes one
/// com.microsoft DynamicQuantizeLSTM: W and R stored 8-bit and transposed to [D, I, 4H] / [D, H, 4H], one symmetric
/// scale per gate row and direction ([D, 4H] scales and zero points), B, P, sequence_lens and the initial states
/// passed through unchanged, attributes copied. ONNX Runtime quantizes the input and hidden state per step and runs
/// integer GEMMs. The weight encoding follows the pass (uint8 with zero point 128 by default: ORT's kernel wants one
/// zero point for unsigned weights; int8 with zero point 0 otherwise).
/// <para>
/// GRU and RNN have no quantized kernel in ONNX Runtime (1.31: only DynamicQuantizeLSTM), so they stay float with that
/// reason (<see cref="ReportFloat"/>); LSTM with layout=1 (batch-major, opset 14) stays float too, because
/// DynamicQuantizeLSTM has no layout attribute.
/// </para>
/// Used by Int8DynamicQuantizer and Int8StaticQuantizer (ORT has no QDQ LSTM kernel) after their own rewrites (op type
/// "LSTM" for NodesToExclude / OpTypesToQuantize); Int4WeightQuantizer lists recurrent layers as float.
/// </summary>
internal static class LstmLowering
{
    public const string QuantizedOpType = "DynamicQuantizeLSTM";

    /// <summary>The ONNX recurrent operators whose weights W (input 1) and R (input 2) are [D, gates*H, K].</summary>
    public static readonly IReadOnlySet<string> RecurrentOps = new HashSet<string>(StringComparer.Ordinal) { "LSTM", "GRU", "RNN" };

    /// <summary>Float bytes of the weights replaced and bytes of what replaced them.</summary>
    internal readonly record struct Bytes(long Float, long Quantized);

    private sealed record Weight(string Name, float[] Data, long[] Dims, List<NodeProto> Chain, List<string> Sources);

    private sealed record Site(NodeProto Node, Weight W, Weight R);

    /// <summary>
    /// Lowers every qualifying LSTM of the main graph in place, appending to <paramref name="quantized"/> and
    /// <paramref name="skipped"/> (recurrent nodes with constant float weights that stay float, with the reason).
    /// </summary>
    /// <exception cref="CompressException">CMPR0202 when a weight to quantize holds NaN or infinity (nothing is changed then).</exception>
    public static Bytes Apply(PassGraph graph, EncodingLevels levels, IReadOnlyCollection<string> excluded, long minimumElements,
        List<QuantizedNode> quantized, List<SkippedNode> skipped, string displayName)
    {
        graph.Commit();
        var excludedSet = new HashSet<string>(excluded, StringComparer.Ordinal);
        var sites = new List<Site>();
        foreach (NodeProto node in graph.Graph.Node)
        {
            if (!OnnxNames.IsDefaultDomain(node) || !RecurrentOps.Contains(node.OpType) || node.Input.Count < 3)
            {
                continue;
            }
            string label = OnnxNames.Label(node);
            void Skip(string reason) => skipped.Add(new SkippedNode(label, node.OpType, reason));
            if (!TryWeight(graph, node.Input[1], displayName, out Weight? w, out string? why)
                || !TryWeight(graph, node.Input[2], displayName, out Weight? r, out why))
            {
                Skip(why!);
                continue;
            }
            if (node.OpType != "LSTM")
            {
                Skip($"ONNX Runtime has no quantized {node.OpType} kernel (only DynamicQuantizeLSTM); its weights stay float32");
                continue;
            }
            if (excludedSet.Contains(label))
            {
                Skip("excluded by the options");
                continue;
            }
            if (PassGraph.IntAttr(node, "layout", 0) != 0)
            {
                Skip("layout=1 (batch-major): ONNX Runtime's DynamicQuantizeLSTM takes only the sequence-major layout");
                continue;
            }
            if (ShapeProblem(node, w!, r!) is { } problem)
            {
                Skip(problem);
                continue;
            }
            long elements = w!.Data.LongLength + r!.Data.LongLength;
            if (elements < minimumElements)
            {
                Skip(string.Create(CultureInfo.InvariantCulture, $"weights W and R have {elements} elements, fewer than the minimum {minimumElements}"));
                continue;
            }
            sites.Add(new Site(node, w, r));
        }

        RejectShared(graph, sites, skipped);
        foreach (Site s in sites)
        {
            foreach (Weight w in new[] { s.W, s.R })
            {
                if (!TensorStats.AllFinite(w.Data))
                {
                    throw new CompressException(DiagnosticCodes.NonFiniteWeights, displayName, w.Name) { File = displayName };
                }
            }
        }

        long floatBytes = 0, quantizedBytes = 0;
        foreach (Site s in sites)
        {
            (string wq, string ws, string wz, float wError, long wBytes) = Encode(graph, s.W, levels);
            (string rq, string rs, string rz, float rError, long rBytes) = Encode(graph, s.R, levels);
            NodeProto node = s.Node;
            var q = new NodeProto { OpType = QuantizedOpType, Domain = OnnxNames.MicrosoftDomain, Name = node.Name }; // same name: labels stay
            q.Input.Add(node.Input[0]);
            q.Input.Add(wq);
            q.Input.Add(rq);
            for (int i = 3; i < 8; i++)
            {
                q.Input.Add(i < node.Input.Count ? node.Input[i] : "");
            }
            q.Input.AddRange([ws, wz, rs, rz]);
            q.Output.AddRange(node.Output);
            q.Attribute.AddRange(node.Attribute.Where(a => a.Name != "layout").Select(a => a.Clone()));
            graph.Replace(node, [q]);
            foreach (NodeProto c in s.W.Chain.Concat(s.R.Chain))
            {
                graph.RemoveNode(c);
            }
            long k = s.W.Dims[2] + s.R.Dims[2];
            quantized.Add(new QuantizedNode(OnnxNames.Label(node), node.OpType, s.W.Name, (int)k, (int)(s.W.Dims[0] * s.W.Dims[1]), MathF.Max(wError, rError)));
            floatBytes += (s.W.Data.LongLength + s.R.Data.LongLength) * sizeof(float);
            quantizedBytes += wBytes + rBytes;
        }
        if (sites.Count > 0)
        {
            graph.Commit();
            graph.RemoveUnusedInitializers(sites.SelectMany(s => s.W.Sources.Concat(s.R.Sources)));
            graph.EnsureOpset(OnnxNames.MicrosoftDomain, 1);
        }
        return new Bytes(floatBytes, quantizedBytes);
    }

    /// <summary>
    /// Adds a skip entry for every main-graph LSTM/GRU/RNN with constant float32 weights: for passes that have no
    /// recurrent lowering (<paramref name="reason"/> says why), so the report lists the layers left float.
    /// </summary>
    public static void ReportFloat(PassGraph graph, Func<string, string> reason, List<SkippedNode> skipped, string displayName)
    {
        graph.Commit();
        foreach (NodeProto node in graph.Graph.Node)
        {
            if (OnnxNames.IsDefaultDomain(node) && RecurrentOps.Contains(node.OpType) && node.Input.Count >= 3
                && TryWeight(graph, node.Input[1], displayName, out _, out _))
            {
                skipped.Add(new SkippedNode(OnnxNames.Label(node), node.OpType, reason(node.OpType)));
            }
        }
    }

    private static bool TryWeight(PassGraph graph, string name, string displayName, out Weight? weight, out string? why)
    {
        weight = null;
        if (graph.TryConstantFloat(name, displayName, out float[] data, out long[] dims, out List<NodeProto> chain, out List<string> sources))
        {
            weight = new Weight(name, data, dims, chain, sources);
            why = null;
            return true;
        }
        why = !graph.TryResolveConstant(name, displayName, out ResolvedConstant? c, out string? notConstant) ? notConstant
            : c!.Tensor.DataType == (int)TensorProto.Types.DataType.Float ? $"weight '{name}' is empty"
            : $"weight '{name}' is {TensorUtil.DataTypeName(c.Tensor.DataType)}, not float32";
        return false;
    }

    private static string? ShapeProblem(NodeProto node, Weight w, Weight r)
    {
        long hidden = PassGraph.IntAttr(node, "hidden_size", 0);
        if (w.Dims.Length != 3 || r.Dims.Length != 3)
        {
            return "W or R is not a 3-D [directions, 4*hidden, size] tensor";
        }
        long d = w.Dims[0];
        if (hidden <= 0 || d is < 1 or > 2 || w.Dims[1] != 4 * hidden || r.Dims[0] != d || r.Dims[1] != 4 * hidden || r.Dims[2] != hidden || w.Dims[2] <= 0)
        {
            return string.Create(CultureInfo.InvariantCulture,
                $"W [{string.Join(", ", w.Dims)}] and R [{string.Join(", ", r.Dims)}] do not match hidden_size {hidden}");
        }
        if (w.Data.LongLength > int.MaxValue / 2)
        {
            return "W has too many elements for one tensor here";
        }
        return null;
    }

    /// <summary>A W or R read by anything but its LSTM at that input (another node, a graph output, a subgraph) would be stored twice: that LSTM stays float.</summary>
    private static void RejectShared(PassGraph graph, List<Site> sites, List<SkippedNode> skipped)
    {
        HashSet<string> outer = graph.OuterUses();
        var rejected = new HashSet<Site>();
        foreach (Site s in sites)
        {
            var allowed = new HashSet<NodeProto>(s.W.Chain.Concat(s.R.Chain), ReferenceEqualityComparer.Instance);
            string? conflict = null;
            foreach ((Weight w, int position) in new[] { (s.W, 1), (s.R, 2) })
            {
                IEnumerable<string> names = w.Sources.Prepend(w.Name).Concat(w.Chain.SelectMany(c => c.Output)).Distinct(StringComparer.Ordinal);
                foreach (string name in names)
                {
                    if (outer.Contains(name))
                    {
                        conflict = $"weight '{name}' is also a graph output or used inside a subgraph";
                        break;
                    }
                    foreach (NodeProto user in graph.Consumers(name))
                    {
                        bool ok = ReferenceEquals(user, s.Node)
                            ? Enumerable.Range(0, user.Input.Count).All(i => user.Input[i] != name || (i == position && name == w.Name))
                            : allowed.Contains(user);
                        if (!ok)
                        {
                            conflict = $"weight '{name}' is shared with {user.OpType} '{OnnxNames.Label(user)}', which stays float";
                            break;
                        }
                    }
                    if (conflict != null)
                    {
                        break;
                    }
                }
                if (conflict != null)
                {
                    break;
                }
            }
            if (conflict != null)
            {
                rejected.Add(s);
                skipped.Add(new SkippedNode(OnnxNames.Label(s.Node), s.Node.OpType, conflict));
            }
        }
        sites.RemoveAll(rejected.Contains);
    }

    /// <summary>
    /// [D, 4H, K] float -> per-(direction, gate row) symmetric codes, stored [D, K, 4H]; scales and zero points [D, 4H].
    /// Returns the initializer names, the largest |w - dequantized(w)| and the bytes stored.
    /// </summary>
    private static (string Codes, string Scales, string ZeroPoints, float MaxError, long Bytes) Encode(PassGraph graph, Weight w, EncodingLevels levels)
    {
        int d = (int)w.Dims[0], rows = (int)w.Dims[1], k = (int)w.Dims[2];
        int channels = d * rows;
        (byte zero, byte min, byte max, bool unsigned, _) = levels;
        var scales = new float[channels];
        AdjacentPairBound.RowScales(w.Data, channels, k, levels, scales);
        var zeros = new byte[channels];
        Array.Fill(zeros, zero);
        var codes = new byte[w.Data.LongLength];
        if (unsigned)
        {
            QuantizationKernels.QuantizePerRow(w.Data, channels, k, scales, zeros, codes, min, max);
        }
        else
        {
            QuantizationKernels.QuantizePerRow(w.Data, channels, k, scales, MemoryMarshal.Cast<byte, sbyte>(zeros.AsSpan()),
                MemoryMarshal.Cast<byte, sbyte>(codes.AsSpan()), (sbyte)min, (sbyte)max);
            if (levels.PairBounded)
            {
                for (int c = 0; c < channels; c++)
                {
                    AdjacentPairBound.Enforce(w.Data, scales[c], MemoryMarshal.Cast<byte, sbyte>(codes.AsSpan()), c * k, k, 1);
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
            maxError = MathF.Max(maxError, ErrorMetrics.MaxAbsDifference(w.Data.AsSpan(c * k, k), back));
        }
        // Per direction: [4H, K] -> [K, 4H].
        var stored = new byte[codes.Length];
        for (int dir = 0; dir < d; dir++)
        {
            PassGraph.Transpose(codes.AsSpan(dir * rows * k, rows * k).ToArray(), rows, k).CopyTo(stored, (long)dir * rows * k);
        }
        string codesName = graph.Unique(w.Name + "_quantized");
        string scalesName = graph.Unique(w.Name + "_scale");
        string zerosName = graph.Unique(w.Name + "_zero_point");
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
        return (codesName, scalesName, zerosName, maxError, stored.LongLength + zeros.Length + (long)scales.Length * sizeof(float));
    }
}
