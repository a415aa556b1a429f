using System.Text.Json.Nodes;
using CompressOnBuild.Core.IO;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Cli;

/// <summary>
/// Histograms of the quantized layers' weights before (float, from the original, resolved the way the passes resolve
/// them, so a weight behind a Reshape, Transpose or Cast, in a Constant node or inside an If/Loop/Scan body counts)
/// and after (the values the shipped model computes with, dequantized
/// from its integer initializers: DynamicQuantizeMatMul's B/scale/zero point, ConvInteger's weight with the weight
/// scale of its output rescale, MatMulNBits' 4-bit blocks, and DequantizeLinear of a constant), over one shared
/// range, for the HTML report.
/// </summary>
internal static class WeightHistograms
{
    public const int Bins = 64;

    public static JsonObject? Build(ModelProto original, ModelProto compressed, IEnumerable<string> weightNames)
    {
        // The weights as the passes resolve them; then one tensor's values at a time, twice (range, then counts),
        // never all of them concatenated into one list. The original's are read in place where they are stored as raw
        // float32 (an embedding table copied as floats was as large as the rest of the model).
        string[] names = [.. weightNames];
        var garbage = new ProcessMemory.GarbageBound(CollectEveryBytes);
        void Before(Action<ReadOnlySpan<float>> use) => CompressOnBuild.Core.Graph.ConstantFolding.ForEachConstantValue(original, names, "original", v =>
        {
            use(v);
            garbage.Check();
        });
        void After(Action<ReadOnlySpan<float>> use)
        {
            foreach (float[] values in Dequantized(compressed))
            {
                use(values);
                garbage.Check();
            }
        }
        (float min, float max, long countBefore) = Range(Before);
        (float minAfter, float maxAfter, long countAfter) = Range(After);
        if (countBefore == 0 || countAfter == 0)
        {
            return null;
        }
        (min, max) = (Math.Min(min, minAfter), Math.Max(max, maxAfter));
        if (!(max > min) || !float.IsFinite(min) || !float.IsFinite(max))
        {
            return null;
        }
        return new JsonObject
        {
            ["min"] = min,
            ["max"] = max,
            ["before"] = Counts(Before, min, max),
            ["after"] = Counts(After, min, max),
        };
    }

    /// <summary>
    /// Bytes allocated between two full collections while the histograms are built (<see cref="ProcessMemory.GarbageBound"/>):
    /// each tensor's dequantized copy is dead once counted, and large arrays are only freed by a full collection, so
    /// without one the weights (read twice over) would pile up in memory as if they were all held.
    /// </summary>
    private const long CollectEveryBytes = 16L << 20;

    private static (float Min, float Max, long Count) Range(Action<Action<ReadOnlySpan<float>>> tensors)
    {
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        long count = 0;
        tensors(values =>
        {
            if (values.Length == 0)
            {
                return;
            }
            (float a, float b) = Kernels.TensorStats.MinMax(values);
            (min, max) = (Math.Min(min, a), Math.Max(max, b));
            count += values.Length;
        });
        return (min, max, count);
    }

    private static JsonArray Counts(Action<Action<ReadOnlySpan<float>>> tensors, float min, float max)
    {
        var counts = new long[Bins];
        tensors(values => Kernels.Histogram.Accumulate(values, min, max, counts));
        return new JsonArray(counts.Select(c => (JsonNode)JsonValue.Create(c)!).ToArray());
    }

    /// <summary>The dequantized weights of <paramref name="model"/>, one array per quantized tensor, computed as enumerated.</summary>
    private static IEnumerable<float[]> Dequantized(ModelProto model)
    {
        // The main graph and every If/Loop/Scan body (names are unique across the model).
        var init = new Dictionary<string, TensorProto>(StringComparer.Ordinal);
        var producers = new Dictionary<string, NodeProto>(StringComparer.Ordinal);
        var nodes = new List<NodeProto>();
        foreach ((GraphProto g, _) in ModelWalker.Graphs(model))
        {
            foreach (TensorProto t in g.Initializer)
            {
                init.TryAdd(t.Name, t);
            }
            foreach (NodeProto n in g.Node)
            {
                nodes.Add(n);
                foreach (string o in n.Output)
                {
                    producers[o] = n;
                }
            }
        }
        // The Mul nodes reading each name, in graph order (the ConvInteger rescale lookup below; a scan of every node
        // per ConvInteger was quadratic in the graph's size).
        var mulsReading = new Dictionary<string, List<NodeProto>>(StringComparer.Ordinal);
        foreach (NodeProto m in nodes)
        {
            if (m.OpType == "Mul")
            {
                foreach (string i in m.Input.Distinct(StringComparer.Ordinal))
                {
                    (mulsReading.TryGetValue(i, out List<NodeProto>? list) ? list : mulsReading[i] = []).Add(m);
                }
            }
        }
        foreach (NodeProto n in nodes)
        {
            string? q = null, scale = null, zp = null;
            long axis = 1;
            if (n.OpType == "MatMulNBits")
            {
                if (Int4(n, init) is { } int4)
                {
                    yield return int4;
                }
                continue;
            }
            if (n.OpType == "ConvInteger" && n.Input.Count >= 2 && init.ContainsKey(n.Input[1])
                && producers.TryGetValue(n.Input[0], out NodeProto? dql) && dql.OpType == "DynamicQuantizeLinear" && dql.Output.Count > 1)
            {
                // The weight scale is the initializer multiplied with the activation scale to rescale the int32 output.
                string activationScale = dql.Output[1];
                NodeProto? mul = mulsReading.GetValueOrDefault(activationScale)?.FirstOrDefault(m => m.Input.Any(i => i != activationScale && init.ContainsKey(i)));
                if (mul != null)
                {
                    (q, scale, zp) = (n.Input[1], mul.Input.First(i => i != activationScale && init.ContainsKey(i)), n.Input.Count > 3 ? n.Input[3] : null);
                    axis = 0; // [M, C/group, kH, kW]; scales per output channel M.
                }
            }
            else if (n.OpType == "DynamicQuantizeMatMul" && n.Input.Count >= 3)
            {
                (q, scale, zp) = (n.Input[1], n.Input[2], n.Input.Count > 3 ? n.Input[3] : null);
                axis = 1; // B is [K, N]; scales per column N.
            }
            else if (n.OpType == "DequantizeLinear" && n.Input.Count >= 2 && init.ContainsKey(n.Input[0]))
            {
                (q, scale, zp) = (n.Input[0], n.Input[1], n.Input.Count > 2 ? n.Input[2] : null);
                axis = n.Attribute.FirstOrDefault(a => a.Name == "axis")?.I ?? 1;
            }
            // A float16 scale reaches the operator through a Cast to float32 (ORT folds it at load).
            if (scale != null && !init.ContainsKey(scale) && producers.TryGetValue(scale, out NodeProto? cast) && cast.OpType == "Cast" && cast.Input.Count == 1)
            {
                scale = cast.Input[0];
            }
            if (q == null || !init.TryGetValue(q, out TensorProto? qt) || !init.TryGetValue(scale!, out TensorProto? st))
            {
                continue;
            }
            if (qt.DataType is not ((int)TensorProto.Types.DataType.Int8 or (int)TensorProto.Types.DataType.Uint8) || qt.Dims.Count == 0)
            {
                continue;
            }
            long[] values = TensorUtil.ToInt64Array(qt);
            float[] scales = TensorUtil.ToFloatArray(st);
            long[] zeros = zp != null && init.TryGetValue(zp, out TensorProto? zt) ? TensorUtil.ToInt64Array(zt) : [0];
            int rank = qt.Dims.Count;
            long ax = axis < 0 ? axis + rank : axis;
            long inner = 1;
            for (long d = ax + 1; d < rank; d++)
            {
                inner *= qt.Dims[(int)d];
            }
            long channels = ax >= 0 && ax < rank ? qt.Dims[(int)ax] : 1;
            var result = new float[values.Length];
            for (long i = 0; i < values.Length; i++)
            {
                long c = scales.Length == 1 ? 0 : i / inner % channels;
                float s = scales[scales.Length == 1 ? 0 : c];
                long z = zeros[zeros.Length == 1 ? 0 : c];
                result[i] = (values[i] - z) * s;
            }
            yield return result;
        }
    }

    /// <summary>MatMulNBits (bits = 4): B [N, blocks, block/2] two codes per byte, low nibble first; scales [N x blocks];
    /// zero points packed the same way per row (absent: 8); K values per row, the rest of the last block is padding.</summary>
    private static float[]? Int4(NodeProto n, Dictionary<string, TensorProto> init)
    {
        long Attr(string name) => n.Attribute.FirstOrDefault(a => a.Name == name)?.I ?? 0;
        long k = Attr("K"), rows = Attr("N"), block = Attr("block_size");
        if (Attr("bits") != 4 || k <= 0 || rows <= 0 || block <= 0 || n.Input.Count < 3
            || !init.TryGetValue(n.Input[1], out TensorProto? bt) || !init.TryGetValue(n.Input[2], out TensorProto? st))
        {
            return null;
        }
        byte[] packed = bt.RawData.ToByteArray();
        float[] scales = TensorUtil.ToFloatArray(st);
        long blocks = (k + block - 1) / block;
        byte[]? zeros = n.Input.Count > 3 && n.Input[3].Length > 0 && init.TryGetValue(n.Input[3], out TensorProto? zt) ? zt.RawData.ToByteArray() : null;
        long zpRow = (blocks + 1) / 2;
        if (packed.LongLength < rows * blocks * block / 2 || scales.LongLength < rows * blocks)
        {
            return null;
        }
        // The codes and zero points are unpacked by the same kernel the quantizer packs them with.
        var codes = new byte[rows * blocks * block];
        Kernels.Int4Kernels.Unpack(packed.AsSpan(0, (int)(rows * blocks * block / 2)), codes);
        var rowZeros = new byte[blocks];
        var result = new float[rows * k];
        for (long r = 0; r < rows; r++)
        {
            if (zeros == null)
            {
                Array.Fill(rowZeros, (byte)8);
            }
            else
            {
                Kernels.Int4Kernels.Unpack(zeros.AsSpan((int)(r * zpRow), (int)zpRow), rowZeros);
            }
            for (long i = 0; i < k; i++)
            {
                long b = i / block;
                result[r * k + i] = (codes[(r * blocks + b) * block + i % block] - rowZeros[b]) * scales[r * blocks + b];
            }
        }
        return result;
    }
}
