using System.Numerics;
using CompressOnBuild.Core.Graph;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization.Ops;

/// <summary>
/// Embedding tables: a main-graph Gather (axis 0) whose data is a constant float32 [rows, cols] table and whose
/// indices come from the graph becomes one com.microsoft GatherBlockQuantized node, which ONNX Runtime runs by
/// dequantizing only the gathered rows (the table stays 8 or 4 bits in memory). The indices input is passed through
/// unchanged (int32 or int64 token ids, negative ids counted from the end as Gather does).
/// <para>
/// 8 bits: one block per row (block_size = the smallest power of two &gt;= cols, at least 16), symmetric, uint8
/// codes with ORT's implicit zero point 128: scale = max|row| / 127, codes 1..255. 4 bits: blocks of
/// <c>blockSize</c> along the row, the same block parameters as MatMulNBits (<see cref="Int4WeightQuantizer.QuantizeBlocks"/>),
/// two codes per byte (even element in the low nibble); symmetric blocks use ORT's implicit zero point 8, asymmetric
/// ones store packed 4-bit zero points. Scales are float32 [rows, blocks].
/// </para>
/// Used by Int8DynamicQuantizer and Int4WeightQuantizer after their own rewrites (op type "Gather" for NodesToExclude /
/// OpTypesToQuantize, which arrive as <c>excluded</c> labels).
/// </summary>
internal static class GatherLowering
{
    public const string QuantizedOpType = "GatherBlockQuantized";

    /// <summary>How tables are encoded: 8 bits per row, or 4 bits in blocks.</summary>
    internal readonly record struct Scheme(int Bits, int BlockSize, bool Symmetric)
    {
        public static Scheme Int8PerRow => new(8, 0, true);

        public static Scheme Int4(int blockSize, bool symmetric) => new(4, blockSize, symmetric);
    }

    /// <summary>Float bytes of the tables replaced and bytes of what replaced them.</summary>
    internal readonly record struct Bytes(long Float, long Quantized);

    private sealed record Table(string Name, float[] Data, int Rows, int Cols, List<NodeProto> Chain, List<string> Sources, List<NodeProto> Gathers);

    /// <summary>
    /// Lowers every qualifying Gather of <paramref name="model"/> in place, appending to <paramref name="quantized"/>
    /// and <paramref name="skipped"/> (Gathers over a constant float table that stay float, with the reason).
    /// </summary>
    /// <exception cref="CompressException">CMPR0202 when a table to quantize holds NaN or infinity (nothing is changed then).</exception>
    public static Bytes Apply(PassGraph graph, Scheme scheme, IReadOnlyCollection<string> excluded, long minimumElements,
        List<QuantizedNode> quantized, List<SkippedNode> skipped, string displayName)
    {
        graph.Commit(); // the caller's edits are in Graph.Node before it is read here
        var excludedSet = new HashSet<string>(excluded, StringComparer.Ordinal);
        HashSet<string> outerUses = graph.OuterUses();

        var tables = new Dictionary<string, Table>(StringComparer.Ordinal);
        var rejected = new HashSet<string>(StringComparer.Ordinal);
        foreach (NodeProto node in graph.Graph.Node)
        {
            if (node.OpType != "Gather" || ModelChecker.NormalizeDomain(node.Domain).Length != 0 || node.Input.Count != 2)
            {
                continue;
            }
            string dataName = node.Input[0];
            string label = OnnxNames.Label(node);
            void Skip(string reason) => skipped.Add(new SkippedNode(label, node.OpType, reason));
            if (rejected.Contains(dataName))
            {
                Skip($"table '{dataName}' is shared with another Gather that stays float");
                continue;
            }
            if (tables.TryGetValue(dataName, out Table? known))
            {
                if (excludedSet.Contains(label))
                {
                    // Another Gather of the same table is lowered; this one keeps the float table alive, so none is.
                    tables.Remove(dataName);
                    rejected.Add(dataName);
                    Skip("excluded by the options");
                    foreach (NodeProto other in known.Gathers)
                    {
                        skipped.Add(new SkippedNode(OnnxNames.Label(other), other.OpType, $"table '{dataName}' is shared with Gather '{label}', which is excluded"));
                    }
                }
                else
                {
                    known.Gathers.Add(node);
                }
                continue;
            }
            // Only Gathers over constant float tables are layers; index and shape Gathers are not reported.
            if (!graph.TryConstantFloat(dataName, displayName, out float[] data, out long[] dims, out List<NodeProto> chain, out List<string> sources))
            {
                continue;
            }
            if (data.LongLength < minimumElements || data.Length == 0)
            {
                continue;
            }
            if (excludedSet.Contains(label))
            {
                Skip("excluded by the options");
                rejected.Add(dataName);
                continue;
            }
            long axis = PassGraph.IntAttr(node, "axis", 0);
            if (dims.Length != 2 || (axis != 0 && axis != -2))
            {
                Skip(dims.Length != 2
                    ? $"table '{dataName}' has rank {dims.Length}; only 2-D tables gathered along axis 0 are quantized"
                    : $"it gathers along axis {axis}; only rows (axis 0) of a table are quantized");
                rejected.Add(dataName);
                continue;
            }
            if (scheme.Bits == 4 && dims[1] % 2 != 0)
            {
                Skip($"table '{dataName}' has rows of {dims[1]} values; 4-bit rows are packed two values per byte and need an even length");
                rejected.Add(dataName);
                continue;
            }
            tables[dataName] = new Table(dataName, data, (int)dims[0], (int)dims[1], chain, sources, [node]);
        }

        // A table read by anything but the lowered Gathers (a tied output projection, a graph output, a subgraph)
        // would be stored twice: those Gathers stay float.
        foreach (Table t in tables.Values.ToList())
        {
            var chainNodes = new HashSet<NodeProto>(t.Chain);
            string? conflict = null;
            foreach (string name in t.Sources.Prepend(t.Name).Concat(t.Chain.SelectMany(c => c.Output)).Distinct(StringComparer.Ordinal))
            {
                if (outerUses.Contains(name))
                {
                    conflict = $"table '{name}' is also a graph output or used inside a subgraph";
                    break;
                }
                foreach (NodeProto user in graph.Consumers(name))
                {
                    bool ok = name == t.Name
                        ? t.Gathers.Contains(user) && user.Input.Skip(1).All(i => i != name)
                        : chainNodes.Contains(user);
                    if (!ok)
                    {
                        conflict = $"table '{name}' is shared with {user.OpType} '{OnnxNames.Label(user)}', which stays float";
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
                tables.Remove(t.Name);
                foreach (NodeProto g in t.Gathers)
                {
                    skipped.Add(new SkippedNode(OnnxNames.Label(g), g.OpType, conflict));
                }
            }
        }

        foreach (Table t in tables.Values)
        {
            if (!TensorStats.AllFinite(t.Data))
            {
                throw new CompressException(DiagnosticCodes.NonFiniteWeights, displayName, t.Name) { File = displayName };
            }
        }

        long floatBytes = 0, quantizedBytes = 0;
        foreach (Table t in tables.Values)
        {
            (byte[] codes, long[] codeDims, float[] scales, int blocks, byte[]? zeroPoints, int blockSize, float maxError) = scheme.Bits == 8
                ? EncodeInt8(t)
                : EncodeInt4(t, scheme);
            string baseName = graph.Unique(t.Name + (scheme.Bits == 8 ? "_q8" : "_q4"));
            graph.AddInitializer(TensorUtil.FromUInt8(baseName, codes, codeDims));
            string scaleName = graph.Unique(baseName + "_scales");
            graph.AddInitializer(TensorUtil.FromFloats(scaleName, scales, t.Rows, blocks));
            string? zeroName = null;
            if (zeroPoints != null)
            {
                zeroName = graph.Unique(baseName + "_zero_points");
                graph.AddInitializer(TensorUtil.FromUInt8(zeroName, zeroPoints, t.Rows, zeroPoints.Length / t.Rows));
            }
            foreach (NodeProto g in t.Gathers)
            {
                string[] inputs = zeroName == null ? [baseName, g.Input[1], scaleName] : [baseName, g.Input[1], scaleName, zeroName];
                var q = new NodeProto { OpType = QuantizedOpType, Domain = OnnxNames.MicrosoftDomain, Name = g.Name }; // same name: labels stay
                q.Input.AddRange(inputs);
                q.Output.AddRange(g.Output);
                q.Attribute.Add(PassGraph.IntAttribute("gather_axis", 0));
                q.Attribute.Add(PassGraph.IntAttribute("quantize_axis", 1));
                q.Attribute.Add(PassGraph.IntAttribute("block_size", blockSize));
                q.Attribute.Add(PassGraph.IntAttribute("bits", scheme.Bits));
                graph.Replace(g, [q]);
                quantized.Add(new QuantizedNode(OnnxNames.Label(g), "Gather", t.Name, t.Rows, t.Cols, maxError));
            }
            foreach (NodeProto c in t.Chain)
            {
                graph.RemoveNode(c);
            }
            floatBytes += (long)t.Rows * t.Cols * sizeof(float);
            quantizedBytes += codes.LongLength + scales.LongLength * sizeof(float) + (zeroPoints?.LongLength ?? 0);
        }
        if (tables.Count > 0)
        {
            graph.Commit();
            graph.RemoveUnusedInitializers(tables.Values.SelectMany(t => t.Sources));
            graph.EnsureOpset(OnnxNames.MicrosoftDomain, 1);
        }
        return new Bytes(floatBytes, quantizedBytes);
    }

    /// <summary>Per-row symmetric uint8 (zero point 128 implied): one block spanning the row.</summary>
    private static (byte[] Codes, long[] Dims, float[] Scales, int Blocks, byte[]? ZeroPoints, int BlockSize, float MaxError) EncodeInt8(Table t)
    {
        int rows = t.Rows, cols = t.Cols;
        var scales = new float[rows];
        TensorStats.RowMaxAbs(t.Data, rows, cols, scales);
        for (int r = 0; r < rows; r++)
        {
            scales[r] = scales[r] > 0f ? scales[r] / 127f : 1f;
        }
        var zeros = new byte[rows];
        Array.Fill(zeros, (byte)128);
        var codes = new byte[(long)rows * cols];
        QuantizationKernels.QuantizePerRow(t.Data, rows, cols, scales, zeros, codes, 1, 255);
        var back = new float[cols];
        float maxError = 0f;
        for (int r = 0; r < rows; r++)
        {
            QuantizationKernels.Dequantize(codes.AsSpan(r * cols, cols), scales[r], (byte)128, back);
            maxError = MathF.Max(maxError, ErrorMetrics.MaxAbsDifference(t.Data.AsSpan(r * cols, cols), back));
        }
        int blockSize = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(16, cols));
        return (codes, [rows, cols], scales, 1, null, blockSize, maxError);
    }

    /// <summary>Blockwise 4-bit, rows packed to cols/2 bytes (the padding of a last partial block dropped).</summary>
    private static (byte[] Codes, long[] Dims, float[] Scales, int Blocks, byte[]? ZeroPoints, int BlockSize, float MaxError) EncodeInt4(Table t, Scheme scheme)
    {
        int rows = t.Rows, cols = t.Cols, block = scheme.BlockSize;
        (byte[] packed, float[] scales, byte[]? zeroPoints, float maxError) = Int4WeightQuantizer.QuantizeBlocks(t.Data, rows, cols, block, scheme.Symmetric);
        int blocks = (cols + block - 1) / block;
        int paddedRow = blocks * block / 2, row = cols / 2;
        byte[] codes = packed;
        if (paddedRow != row)
        {
            codes = new byte[(long)rows * row];
            for (int r = 0; r < rows; r++)
            {
                packed.AsSpan((int)((long)r * paddedRow), row).CopyTo(codes.AsSpan((int)((long)r * row), row));
            }
        }
        return (codes, [rows, row], scales, blocks, zeroPoints, block, maxError);
    }
}
