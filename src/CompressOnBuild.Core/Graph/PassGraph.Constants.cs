using System.Numerics.Tensors;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Graph;

/// <summary>A constant tensor feeding a node, and the nodes and values that computed it from initializers.</summary>
internal sealed class ResolvedConstant
{
    public required TensorProto Tensor { get; init; }

    public required long[] Dims { get; init; }

    /// <summary>Initializer or Constant node output the data came from.</summary>
    public required string SourceName { get; init; }

    public List<NodeProto> Chain { get; } = [];

    public List<string> ChainInputs { get; } = [];
}

/// <summary>Constant resolution (initializers and Constant nodes alike) and folding of shape-only operators on constants.</summary>
internal sealed partial class PassGraph
{
    /// <summary>
    /// The constant behind <paramref name="name"/>: a non-overridable initializer, a Constant node's tensor, or a
    /// Reshape of those by a constant int64 shape (any element type); else false and why not, for skip reasons.
    /// </summary>
    public bool TryResolveConstant(string name, string displayName, out ResolvedConstant? value, out string? why)
    {
        value = null;
        why = null;
        if (Initializers.TryGetValue(name, out TensorProto? init))
        {
            // Before IR 4 every initializer had to be listed as a graph input too, so there that listing does
            // not make it a run-time input; from IR 4 on it does (the initializer is only a default).
            if (GraphInputs.Contains(name) && Model.IrVersion >= 4)
            {
                why = $"weight '{name}' is also a graph input, so callers can replace it at run time";
                return false;
            }
            value = new ResolvedConstant { Tensor = init, Dims = [.. init.Dims], SourceName = name };
            return true;
        }
        if (!Producers.TryGetValue(name, out NodeProto? producer))
        {
            why = $"weight '{name}' is not a constant";
            return false;
        }
        bool onnx = OnnxNames.IsDefaultDomain(producer);
        if (onnx && producer.OpType == "Constant")
        {
            AttributeProto? attr = producer.Attribute.FirstOrDefault(a => a.Name == "value" && a.T != null);
            if (attr == null)
            {
                why = $"weight '{name}' comes from a Constant without a tensor value";
                return false;
            }
            value = new ResolvedConstant { Tensor = attr.T, Dims = [.. attr.T.Dims], SourceName = name };
            value.Chain.Add(producer);
            return true;
        }
        if (onnx && producer.OpType == "Reshape" && producer.Input.Count == 2
            && TryResolveConstant(producer.Input[0], displayName, out ResolvedConstant? data, out why)
            && TryResolveConstant(producer.Input[1], displayName, out ResolvedConstant? shape, out why))
        {
            if (shape!.Tensor.DataType != (int)TensorProto.Types.DataType.Int64)
            {
                why = $"weight '{name}' is reshaped with a non-int64 shape";
                return false;
            }
            long[]? dims = ReshapeDims(data!.Dims, Int64s(shape.Tensor, displayName), IntAttr(producer, "allowzero", 0) != 0);
            if (dims == null)
            {
                why = $"weight '{name}' comes from a Reshape whose shape does not fit its data";
                return false;
            }
            value = new ResolvedConstant { Tensor = data.Tensor, Dims = dims, SourceName = data.SourceName };
            value.Chain.AddRange(data.Chain);
            value.Chain.AddRange(shape.Chain);
            value.Chain.Add(producer);
            value.ChainInputs.AddRange(data.ChainInputs);
            value.ChainInputs.AddRange(shape.ChainInputs);
            value.ChainInputs.AddRange(producer.Input);
            return true;
        }
        why ??= $"weight '{name}' is computed at run time by {producer.OpType} '{OnnxNames.Label(producer)}'";
        return false;
    }

    /// <summary>
    /// A constant float32 tensor behind <paramref name="name"/>: a non-overridable initializer, a Constant node, or a
    /// Reshape of those by a constant int64 shape. <paramref name="chain"/> lists the nodes that computed it and
    /// <paramref name="sources"/> the initializers/values they read (for cleanup once nothing else uses them).
    /// </summary>
    public bool TryConstantFloat(string name, string displayName, out float[] data, out long[] dims, out List<NodeProto> chain, out List<string> sources)
    {
        data = [];
        dims = [];
        chain = [];
        sources = [name];
        if (IsConstantInitializer(name))
        {
            TensorProto t = Initializers[name];
            if (t.DataType != (int)TensorProto.Types.DataType.Float)
            {
                return false;
            }
            data = Floats(t, displayName);
            dims = [.. t.Dims];
            return true;
        }
        if (!Producers.TryGetValue(name, out NodeProto? producer) || !OnnxNames.IsDefaultDomain(producer))
        {
            return false;
        }
        if (producer.OpType == "Constant")
        {
            if (producer.Attribute.FirstOrDefault(a => a.Name == "value")?.T is not { DataType: (int)TensorProto.Types.DataType.Float } t)
            {
                return false;
            }
            data = Floats(t, displayName);
            dims = [.. t.Dims];
            chain.Add(producer);
            return true;
        }
        if (producer.OpType == "Reshape" && producer.Input.Count == 2 && IntAttr(producer, "allowzero", 0) == 0
            && TryConstantFloat(producer.Input[0], displayName, out float[] inner, out long[] innerDims, out List<NodeProto> innerChain, out List<string> innerSources)
            && IsConstantInitializer(producer.Input[1]) && Initializers[producer.Input[1]].DataType == (int)TensorProto.Types.DataType.Int64)
        {
            long[] shape = TensorUtil.ToInt64Array(Initializers[producer.Input[1]]);
            // Only the inferred (-1) dim may come out 0 here: a 0 copied or given elsewhere is not taken.
            if (ReshapeDims(innerDims, shape, allowZero: false) is not { } result || result.Where((_, i) => shape[i] != -1).Any(d => d <= 0))
            {
                return false;
            }
            data = inner;
            dims = result;
            chain.AddRange(innerChain);
            chain.Add(producer);
            sources.AddRange(innerSources);
            sources.Add(producer.Input[1]);
            return true;
        }
        return false;
    }

    /// <summary>
    /// Constant folding of shape-only operators on constants: a default-domain Reshape, Flatten, Squeeze, Unsqueeze,
    /// Identity or (float32) Transpose of the main graph whose inputs are all constant initializers becomes one
    /// initializer named like its output, repeated until nothing changes (ORT does the same when it loads the model).
    /// Weights computed that way (mnist-8's MatMul weight is a Reshape of a [16,4,4,10] initializer) then get
    /// converted or quantized like any other, and the node and its int64 shape constant go. Returns the folded nodes.
    /// </summary>
    public int FoldConstantShapeOps(string displayName)
    {
        Commit();
        int folded = 0;
        bool changed = true;
        while (changed)
        {
            changed = false;
            HashSet<string> outer = Outer;
            var unused = new HashSet<string>(StringComparer.Ordinal);
            foreach (NodeProto n in Graph.Node)
            {
                // A constant read elsewhere too is not folded: that would store its data twice.
                if (!OnnxNames.IsDefaultDomain(n) || n.Output.Count != 1 || outer.Contains(n.Output[0])
                    || n.Input.Count == 0 || !n.Input.Where(i => i.Length > 0).All(IsConstantInitializer)
                    || TensorUtil.IsExternal(Initializers[n.Input[0]]) || NodeUses(n.Input[0]) + (outer.Contains(n.Input[0]) ? 1 : 0) != 1
                    || TryFold(n, displayName) is not { } result)
                {
                    continue;
                }
                RemoveNode(n);
                DropValueInfo(n.Output[0]);
                AddInitializer(result);
                foreach (string source in n.Input.Where(i => i.Length > 0 && !IsUsed(i) && IsConstantInitializer(i)))
                {
                    unused.Add(source);
                }
                folded++;
                changed = true;
            }
            Commit();
            RemoveInitializers(unused);
        }
        return folded;
    }

    /// <summary>The constant result of <paramref name="n"/> (inputs known constant), or null when this fold does not handle it.</summary>
    private TensorProto? TryFold(NodeProto n, string displayName)
    {
        TensorProto x = Initializers[n.Input[0]];
        long[] dims = [.. x.Dims];
        long count = dims.Aggregate(1L, (a, b) => a * b);
        long[]? Ints(int input) => n.Input.Count > input && n.Input[input].Length > 0 && Initializers[n.Input[input]].DataType == (int)TensorProto.Types.DataType.Int64
            ? TensorUtil.ToInt64Array(Initializers[n.Input[input]]) : null;
        long[]? AttrInts(string name) => n.Attribute.FirstOrDefault(a => a.Name == name) is { } a ? [.. a.Ints] : null;
        long[]? shape;
        switch (n.OpType)
        {
            case "Identity":
                shape = dims;
                break;
            case "Reshape":
                if (Ints(1) is not { } target)
                {
                    return null;
                }
                shape = ReshapeDims(dims, target, IntAttr(n, "allowzero", 0) != 0);
                if (shape == null)
                {
                    return null;
                }
                break;
            case "Flatten":
                long axis = IntAttr(n, "axis", 1);
                axis = axis < 0 ? axis + dims.Length : axis;
                if (axis < 0 || axis > dims.Length)
                {
                    return null;
                }
                shape = [dims.Take((int)axis).Aggregate(1L, (a, b) => a * b), dims.Skip((int)axis).Aggregate(1L, (a, b) => a * b)];
                break;
            case "Squeeze":
            case "Unsqueeze":
                long[]? axes = n.Input.Count > 1 ? Ints(1) : AttrInts("axes");
                if (n.Input.Count > 1 && axes == null)
                {
                    return null;
                }
                if (n.OpType == "Squeeze")
                {
                    var drop = (axes ?? [.. Enumerable.Range(0, dims.Length).Where(i => dims[i] == 1).Select(i => (long)i)])
                        .Select(a => a < 0 ? a + dims.Length : a).ToHashSet();
                    if (drop.Any(a => a < 0 || a >= dims.Length || dims[a] != 1))
                    {
                        return null;
                    }
                    shape = [.. dims.Where((_, i) => !drop.Contains(i))];
                }
                else
                {
                    if (axes == null)
                    {
                        return null;
                    }
                    int rank = dims.Length + axes.Length;
                    var add = axes.Select(a => a < 0 ? a + rank : a).ToHashSet();
                    if (add.Count != axes.Length || add.Any(a => a < 0 || a >= rank))
                    {
                        return null;
                    }
                    var result = new List<long>();
                    int k = 0;
                    for (int i = 0; i < rank; i++)
                    {
                        result.Add(add.Contains(i) ? 1 : dims[k++]);
                    }
                    shape = [.. result];
                }
                break;
            case "Transpose":
                if (x.DataType != (int)TensorProto.Types.DataType.Float || n.Input.Count != 1)
                {
                    return null;
                }
                long[] perm = AttrInts("perm") ?? [.. Enumerable.Range(0, dims.Length).Reverse().Select(i => (long)i)];
                if (perm.Length != dims.Length || perm.Order().Where((p, i) => p != i).Any())
                {
                    return null;
                }
                return TensorUtil.FromFloats(n.Output[0], TransposeAxes(Floats(x, displayName), dims, perm), [.. perm.Select(p => dims[p])]);
            default:
                return null;
        }
        if (shape.Aggregate(1L, (a, b) => a * b) != count)
        {
            return null;
        }
        // Shape-only: the same data under new dims.
        TensorProto copy = x.Clone();
        copy.Name = n.Output[0];
        copy.Dims.Clear();
        copy.Dims.AddRange(shape);
        copy.DocString = "";
        return copy;
    }

    /// <summary>
    /// The output dims of ONNX Reshape for data of shape <paramref name="input"/> and target <paramref name="target"/>:
    /// 0 copies the input dim (unless <paramref name="allowZero"/>), one -1 is inferred. Null when the target is
    /// invalid or does not hold the same number of elements.
    /// </summary>
    public static long[]? ReshapeDims(long[] input, long[] target, bool allowZero)
    {
        long total = input.Aggregate(1L, (a, b) => a * b);
        var dims = new long[target.Length];
        int inferred = -1;
        long known = 1;
        for (int i = 0; i < target.Length; i++)
        {
            long d = target[i];
            if (d == 0 && !allowZero)
            {
                if (i >= input.Length)
                {
                    return null;
                }
                d = input[i];
            }
            if (d == -1)
            {
                if (inferred >= 0)
                {
                    return null;
                }
                inferred = i;
                continue;
            }
            if (d < 0)
            {
                return null;
            }
            dims[i] = d;
            known *= d;
        }
        if (inferred >= 0)
        {
            if (known == 0 || total % known != 0)
            {
                return null;
            }
            dims[inferred] = total / known;
            known *= dims[inferred];
        }
        return known == total ? dims : null;
    }

    /// <summary>Row-major <paramref name="data"/> of shape <paramref name="dims"/> with its axes permuted (output axis i = input axis perm[i]).</summary>
    public static float[] TransposeAxes(float[] data, long[] dims, long[] perm)
    {
        int rank = dims.Length;
        var result = new float[data.Length];
        var inStrides = new long[rank];
        for (int i = rank - 1, s = 1; i >= 0; i--)
        {
            inStrides[i] = s;
            s *= (int)dims[i];
        }
        long[] outDims = [.. perm.Select(p => dims[p])];
        var index = new long[rank];
        for (int o = 0; o < result.Length; o++)
        {
            long src = 0;
            for (int i = 0; i < rank; i++)
            {
                src += index[i] * inStrides[perm[i]];
            }
            result[o] = data[src];
            for (int i = rank - 1; i >= 0; i--)
            {
                if (++index[i] < outDims[i])
                {
                    break;
                }
                index[i] = 0;
            }
        }
        return result;
    }

    /// <summary>A row-major [rows, cols] matrix as row-major [cols, rows] (cache-blocked).</summary>
    public static T[] Transpose<T>(T[] source, int rows, int cols)
    {
        var result = new T[source.Length];
        const int Block = 32;
        for (int r0 = 0; r0 < rows; r0 += Block)
        {
            int r1 = Math.Min(rows, r0 + Block);
            for (int c0 = 0; c0 < cols; c0 += Block)
            {
                int c1 = Math.Min(cols, c0 + Block);
                for (int r = r0; r < r1; r++)
                {
                    for (int col = c0; col < c1; col++)
                    {
                        result[col * rows + r] = source[r * cols + col];
                    }
                }
            }
        }
        return result;
    }
}
