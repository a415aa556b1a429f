using System.Numerics;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization.Ops;

/// <summary>The table encoding of a scheme whose context lowers Gathers (<see cref="GatherLowering"/>).</summary>
internal interface ITableEncoding
{
    GatherLowering.Scheme TableScheme { get; }
}

/// <summary>
/// Embedding tables: a main-graph Gather (axis 0) whose data is a constant float32 [rows, cols] table and whose
/// indices come from the graph becomes one com.microsoft GatherBlockQuantized node, which ONNX Runtime runs by
/// dequantizing only the gathered rows (the table stays 8 or 4 bits in memory). The indices input is passed through
/// unchanged (int32 or int64 token ids, negative ids counted from the end as Gather does). Gathers over anything but
/// a constant float table (shape and index Gathers) are not layers and are not reported.
/// <para>
/// 8 bits: one block per row (block_size = the smallest power of two &gt;= cols, at least 16), symmetric, uint8
/// codes with ORT's implicit zero point 128: scale = max|row| / 127, codes 1..255. 4 bits: blocks of
/// <c>blockSize</c> along the row, the same block parameters as MatMulNBits (<see cref="Int4WeightQuantizer.QuantizeBlocks"/>),
/// two codes per byte (even element in the low nibble); symmetric blocks use ORT's implicit zero point 8, asymmetric
/// ones store packed 4-bit zero points. Scales are float32 [rows, blocks]; 8-bit row scales are stored as float16
/// behind a Cast when <see cref="Scheme.HalfScales"/> (<see cref="HalfScales"/>: rounded up to float16 before the codes
/// are computed, so the table means exactly what was measured; ORT folds the Cast at load).
/// </para>
/// The scheme's context says which (<see cref="ITableEncoding"/>).
/// </summary>
internal sealed class GatherLowering : IOperatorLowering
{
    public const string QuantizedOpType = "GatherBlockQuantized";

    /// <summary>How tables are encoded: 8 bits per row, or 4 bits in blocks.</summary>
    internal readonly record struct Scheme(int Bits, int BlockSize, bool Symmetric, bool MseScales = false)
    {
        /// <summary>8 bits: row scales stored as float16 where they fit (<see cref="Quantization.HalfScales"/>).</summary>
        public bool HalfScales { get; init; }

        public static Scheme Int8PerRow => new(8, 0, true);

        public static Scheme Int4(int blockSize, bool symmetric, bool mseScales = false) => new(4, blockSize, symmetric, mseScales);
    }

    private sealed record StoredTable(string Codes, string Scales, string? ZeroPoints, int BlockSize, int Rows, int Cols, float MaxError, bool HalfScales);

    public string OpType => "Gather";

    public string Domain => "";

    public bool AlwaysALayer => false;

    public WeightSite? FindSite(LoweringContext context, NodeProto node, Action<string> skip)
    {
        if (node.Input.Count != 2)
        {
            return null;
        }
        string dataName = node.Input[0];
        // Only Gathers over constant float tables are layers; index and shape Gathers are not reported.
        if (!context.TryResolveConstant(dataName, out ResolvedConstant? table, out _) || table!.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
        {
            return null;
        }
        long[] dims = table.Dims;
        long elements = dims.Aggregate(1L, (a, b) => a * b);
        if (elements < context.MinimumWeightElements || elements == 0)
        {
            return null;
        }
        long axis = PassGraph.IntAttr(node, "axis", 0);
        if (dims.Length != 2)
        {
            skip($"table '{dataName}' has rank {dims.Length}; only 2-D tables gathered along axis 0 are quantized");
            return null;
        }
        if (axis != 0 && axis != -2)
        {
            skip($"it gathers along axis {axis}; only rows (axis 0) of a table are quantized");
            return null;
        }
        if (elements > int.MaxValue / 2)
        {
            skip($"table '{dataName}' has {elements} elements, too many for one tensor here");
            return null;
        }
        if (((ITableEncoding)context).TableScheme.Bits == 4 && dims[1] % 2 != 0)
        {
            skip($"table '{dataName}' has rows of {dims[1]} values; 4-bit rows are packed two values per byte and need an even length");
            return null;
        }
        return new WeightSite { Node = node, Weight = table, WeightInput = 0 };
    }

    public void Lower(LoweringContext context, WeightSite site)
    {
        Scheme scheme = ((ITableEncoding)context).TableScheme;
        PassGraph graph = context.Graph;
        StoredTable t = context.Encoded("table|" + site.WeightName, () => Encode(context, site, scheme));
        NodeProto g = site.Node;
        var nodes = new List<NodeProto>();
        string scales = t.HalfScales ? context.AsFloat32(t.Scales, nodes) : t.Scales;
        string[] inputs = t.ZeroPoints == null ? [t.Codes, g.Input[1], scales] : [t.Codes, g.Input[1], scales, t.ZeroPoints];
        var q = new NodeProto { OpType = QuantizedOpType, Domain = OnnxNames.MicrosoftDomain, Name = g.Name }; // same name: labels stay
        q.Input.AddRange(inputs);
        q.Output.AddRange(g.Output);
        q.Attribute.Add(PassGraph.IntAttribute("gather_axis", 0));
        q.Attribute.Add(PassGraph.IntAttribute("quantize_axis", 1));
        q.Attribute.Add(PassGraph.IntAttribute("block_size", t.BlockSize));
        q.Attribute.Add(PassGraph.IntAttribute("bits", scheme.Bits));
        context.RequireOpset(OnnxNames.MicrosoftDomain, 1);
        nodes.Add(q);
        context.ReplaceSite(site, nodes, t.Rows, t.Cols, t.MaxError);
    }

    /// <summary>Encodes the table once and adds its initializers.</summary>
    private static StoredTable Encode(LoweringContext context, WeightSite site, Scheme scheme)
    {
        PassGraph graph = context.Graph;
        int rows = (int)site.Weight.Dims[0], cols = (int)site.Weight.Dims[1];
        // An int8 table is read in place where its raw float32 data allows (an embedding table is often the largest
        // weight: no float copy of it next to the parsed model).
        (byte[] codes, long[] codeDims, float[] scales, int blocks, byte[]? zeroPoints, int blockSize, float maxError, bool half) = scheme.Bits == 8
            ? TensorUtil.TryGetRawFloats(site.Weight.Tensor, out ReadOnlySpan<float> raw)
                ? EncodeInt8(raw, rows, cols, scheme.HalfScales && HalfScales.Worth(rows, site.WeightName + "_q8_scales"))
                : EncodeInt8(context.Floats(site.Weight.Tensor), rows, cols, scheme.HalfScales && HalfScales.Worth(rows, site.WeightName + "_q8_scales"))
            : EncodeInt4(context.Floats(site.Weight.Tensor), rows, cols, scheme);
        string baseName = graph.Unique(site.WeightName + (scheme.Bits == 8 ? "_q8" : "_q4"));
        graph.AddInitializer(TensorUtil.FromUInt8(baseName, codes, codeDims));
        string scaleName = graph.Unique(baseName + "_scales");
        graph.AddInitializer(half ? HalfScales.Tensor(scaleName, scales, rows, blocks) : TensorUtil.FromFloats(scaleName, scales, rows, blocks));
        string? zeroName = null;
        if (zeroPoints != null)
        {
            zeroName = graph.Unique(baseName + "_zero_points");
            graph.AddInitializer(TensorUtil.FromUInt8(zeroName, zeroPoints, rows, zeroPoints.Length / rows));
        }
        context.FloatWeightBytes += (long)rows * cols * sizeof(float);
        context.QuantizedWeightBytes += codes.LongLength + scales.LongLength * (half ? 2 : sizeof(float)) + (zeroPoints?.LongLength ?? 0);
        return new StoredTable(baseName, scaleName, zeroName, blockSize, rows, cols, maxError, half);
    }

    /// <summary>
    /// Per-row symmetric uint8 (zero point 128 implied): one block spanning the row. <paramref name="halfScales"/>: the
    /// scales rounded up to float16 first when they all fit (then Half is true).
    /// </summary>
    private static (byte[] Codes, long[] Dims, float[] Scales, int Blocks, byte[]? ZeroPoints, int BlockSize, float MaxError, bool Half) EncodeInt8(ReadOnlySpan<float> data, int rows, int cols, bool halfScales)
    {
        var scales = new float[rows];
        TensorStats.RowMaxAbs(data, rows, cols, scales);
        for (int r = 0; r < rows; r++)
        {
            scales[r] = scales[r] > 0f ? scales[r] / 127f : 1f;
        }
        bool half = halfScales && HalfScales.TryRoundUp(scales);
        var zeros = new byte[rows];
        Array.Fill(zeros, (byte)128);
        var codes = new byte[(long)rows * cols];
        QuantizationKernels.QuantizePerRow(data, rows, cols, scales, zeros, codes, 1, 255);
        var back = new float[cols];
        float maxError = 0f;
        for (int r = 0; r < rows; r++)
        {
            QuantizationKernels.Dequantize(codes.AsSpan(r * cols, cols), scales[r], (byte)128, back);
            maxError = MathF.Max(maxError, ErrorMetrics.MaxAbsDifference(data.Slice(r * cols, cols), back));
        }
        int blockSize = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(16, cols));
        return (codes, [rows, cols], scales, 1, null, blockSize, maxError, half);
    }

    /// <summary>Blockwise 4-bit, rows packed to cols/2 bytes (the padding of a last partial block dropped).</summary>
    private static (byte[] Codes, long[] Dims, float[] Scales, int Blocks, byte[]? ZeroPoints, int BlockSize, float MaxError, bool Half) EncodeInt4(float[] data, int rows, int cols, Scheme scheme)
    {
        int block = scheme.BlockSize;
        (byte[] packed, float[] scales, byte[]? zeroPoints, float maxError) = Int4WeightQuantizer.QuantizeBlocks(data, rows, cols, block, scheme.Symmetric, scheme.MseScales);
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
        return (codes, [rows, row], scales, blocks, zeroPoints, block, maxError, false);
    }
}
