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

    /// <summary>
    /// True when a Transpose or a Cast in the chain computed <see cref="Tensor"/> (in memory, not in the graph); false
    /// when it is the stored tensor itself, possibly under new <see cref="Dims"/>.
    /// </summary>
    public bool Materialized { get; init; }
}

/// <summary>Constant resolution (initializers and Constant nodes alike) and folding of shape-only operators on constants.</summary>
internal sealed partial class PassGraph
{
    /// <summary>
    /// True when the graph's tensors may be file references (a lazily loaded model). <see cref="TryResolveConstant"/> then
    /// resolves a float32 Transpose of an external tensor to a placeholder whose values <see cref="FloatsOf"/> computes
    /// each time a lowering reads them (nothing is kept), and gives a reason instead of computing a Cast of an external
    /// tensor or a Transpose of a non-float one (that copy would stay in memory until the pass ends, one per such
    /// weight); Constant nodes and Reshape/Flatten/Squeeze/Unsqueeze/Identity chains resolve as usual (the same tensor
    /// under new dims, read only when a lowering uses it). Nested scopes (<see cref="WithSubgraphs"/>) share it.
    /// </summary>
    public bool LazyExternalData { get; init; }

    /// <summary>
    /// The constant behind <paramref name="name"/>, as the node reading it sees it: a non-overridable initializer or a
    /// Constant node's tensor, seen through any chain of default-domain Reshape, Flatten, Squeeze, Unsqueeze and
    /// Identity (same data, new dims), Transpose and Cast to float32 (new data, computed here and kept in memory) whose
    /// other inputs are constants too. Exporters write weights that way: tf2onnx a Transpose or a Cast of an
    /// initializer, PyTorch Constant nodes. Else false and why not, for skip reasons.
    /// </summary>
    public bool TryResolveConstant(string name, string displayName, out ResolvedConstant? value, out string? why)
    {
        value = null;
        why = null;
        if (Initializers.TryGetValue(name, out TensorProto? init))
        {
            // Before IR 4 every initializer had to be listed as a graph input too, so there that listing does
            // not make it a run-time input; from IR 4 on it does (the initializer is only a default).
            if (!IsConstantInitializer(name))
            {
                why = $"weight '{name}' is also a graph input, so callers can replace it at run time";
                return false;
            }
            value = new ResolvedConstant { Tensor = init, Dims = [.. init.Dims], SourceName = name };
            return true;
        }
        if (!Producers.TryGetValue(name, out NodeProto? producer))
        {
            why = IsMain || GraphInputs.Contains(name)
                ? $"weight '{name}' is not a constant"
                : $"weight '{name}' comes from the enclosing graph, where more than this body reads it";
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
        if (!onnx || producer.OpType is not ("Reshape" or "Flatten" or "Squeeze" or "Unsqueeze" or "Identity" or "Transpose" or "Cast")
            || producer.Input.Count == 0 || producer.Output.Count != 1)
        {
            why = $"weight '{name}' is computed at run time by {producer.OpType} '{OnnxNames.Label(producer)}'";
            return false;
        }
        if (!TryResolveConstant(producer.Input[0], displayName, out ResolvedConstant? data, out why))
        {
            return false;
        }
        // The second input of Reshape (shape) and of opset-13 Squeeze/Unsqueeze (axes): a constant int64 vector.
        ResolvedConstant? ints = null;
        if (producer.Input.Count > 1 && producer.Input[1].Length > 0)
        {
            if (producer.OpType is not ("Reshape" or "Squeeze" or "Unsqueeze"))
            {
                why = $"weight '{name}' comes from a {producer.OpType} with unexpected inputs";
                return false;
            }
            if (!TryResolveConstant(producer.Input[1], displayName, out ints, out why))
            {
                return false;
            }
            if (ints!.Tensor.DataType != (int)TensorProto.Types.DataType.Int64 || ints.Materialized)
            {
                why = $"weight '{name}' is reshaped with a non-int64 shape";
                return false;
            }
        }
        TensorProto tensor = data!.Tensor;
        long[] dims;
        bool materialized = data.Materialized;
        // A float32 Transpose of external data is deferred (TransposeConstant); a Cast of it, or a Transpose of other
        // types, would have to be computed here and kept until the pass ends, one per such weight.
        bool computed = (producer.OpType == "Transpose" && data.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
            || (producer.OpType == "Cast" && data.Tensor.DataType != (int)TensorProto.Types.DataType.Float);
        if (LazyExternalData && computed && TensorUtil.IsExternal(data.Tensor))
        {
            why = $"weight '{name}' is not an initializer (it comes from {producer.OpType} '{OnnxNames.Label(producer)}' of {TensorUtil.DataTypeName(data.Tensor.DataType)} external data); "
                + $"{Passes.StreamingQuantizer.StreamingLimit} computes no Cast of an external weight (nor a Transpose of one that is not float32) with Int8Dynamic and Int4Weights";
            return false;
        }
        switch (producer.OpType)
        {
            case "Transpose":
                if (TransposeConstant(producer, data, displayName) is not { } transposed)
                {
                    why = $"weight '{name}' comes from a Transpose this pass cannot apply to its {TensorUtil.DataTypeName(data.Tensor.DataType)} data";
                    return false;
                }
                tensor = transposed;
                dims = [.. transposed.Dims];
                materialized = true;
                break;
            case "Cast":
                long to = IntAttr(producer, "to", 0);
                int from = data.Tensor.DataType;
                if (to != (long)TensorProto.Types.DataType.Float
                    || from is not ((int)TensorProto.Types.DataType.Float or (int)TensorProto.Types.DataType.Float16
                        or (int)TensorProto.Types.DataType.Bfloat16 or (int)TensorProto.Types.DataType.Double))
                {
                    why = $"weight '{name}' comes from a Cast of {TensorUtil.DataTypeName(from)} to {TensorUtil.DataTypeName((int)to)}; only casts of float types to float32 are read";
                    return false;
                }
                dims = data.Dims;
                if (from != (int)TensorProto.Types.DataType.Float)
                {
                    // The same conversion ONNX Cast does: float16/bfloat16 exactly, double rounded to nearest.
                    tensor = Materialize(producer, () => TensorUtil.FromFloats(producer.Output[0], FloatsOf(data.Tensor, displayName), dims));
                    materialized = true;
                }
                break;
            default:
                long[]? shape = ShapeOpDims(producer, data.Dims, ints == null ? null : Int64s(ints.Tensor, displayName));
                if (shape == null)
                {
                    why = $"weight '{name}' comes from a {producer.OpType} whose shape does not fit its data";
                    return false;
                }
                dims = shape;
                break;
        }
        value = new ResolvedConstant { Tensor = tensor, Dims = dims, SourceName = data.SourceName, Materialized = materialized };
        value.Chain.AddRange(data.Chain);
        value.ChainInputs.AddRange(data.ChainInputs);
        if (ints != null)
        {
            value.Chain.AddRange(ints.Chain);
            value.ChainInputs.AddRange(ints.ChainInputs);
        }
        value.Chain.Add(producer);
        value.ChainInputs.AddRange(producer.Input.Where(i => i.Length > 0));
        return true;
    }

    /// <summary>Tensors computed by Transpose/Cast nodes during resolution, by node (a weight is resolved several times per pass).</summary>
    private readonly Dictionary<NodeProto, TensorProto> _materialized = new(ReferenceEqualityComparer.Instance);

    /// <summary>
    /// Under <see cref="LazyExternalData"/>: the tensors that stand for a float32 Transpose of external data (no data, marked
    /// external, the transposed dims), with how to compute their values; <see cref="FloatsOf"/> computes them each time
    /// they are read (from the source read through <see cref="ExternalFloats"/>) and keeps nothing. Nested scopes share it
    /// (the driver checks every scope's weights with the context on one of them).
    /// </summary>
    private Dictionary<TensorProto, Func<float[]>> Deferred { get; init; } = new(ReferenceEqualityComparer.Instance);

    private TensorProto Materialize(NodeProto producer, Func<TensorProto> compute)
    {
        if (!_materialized.TryGetValue(producer, out TensorProto? t))
        {
            _materialized[producer] = t = compute();
        }
        return t;
    }

    /// <summary><paramref name="data"/> permuted by the Transpose <paramref name="producer"/>; null for a bad perm or an element size not handled.</summary>
    private TensorProto? TransposeConstant(NodeProto producer, ResolvedConstant data, string displayName)
    {
        long[] dims = data.Dims;
        long[] perm = producer.Attribute.FirstOrDefault(a => a.Name == "perm") is { } p
            ? [.. p.Ints] : [.. Enumerable.Range(0, dims.Length).Reverse().Select(i => (long)i)];
        if (perm.Length != dims.Length || perm.Order().Where((v, i) => v != i).Any())
        {
            return null;
        }
        long count = dims.Aggregate(1L, (a, b) => a * b);
        if (count <= 0 || count > int.MaxValue / 2 || TensorUtil.ElementCount(data.Tensor) != count)
        {
            return null;
        }
        long[] outDims = [.. perm.Select(i => dims[i])];
        var type = (TensorProto.Types.DataType)data.Tensor.DataType;
        if (type == TensorProto.Types.DataType.Float && LazyExternalData && TensorUtil.IsExternal(data.Tensor))
        {
            if (!_materialized.TryGetValue(producer, out TensorProto? placeholder))
            {
                TensorProto source = data.Tensor;
                placeholder = new TensorProto { Name = producer.Output[0], DataType = (int)type, DataLocation = TensorProto.Types.DataLocation.External };
                placeholder.Dims.AddRange(outDims);
                _materialized[producer] = placeholder;
                Deferred[placeholder] = () => TransposeAxes(FloatsOf(source, displayName), dims, perm);
            }
            return placeholder;
        }
        if (type == TensorProto.Types.DataType.Float)
        {
            return Materialize(producer, () => TensorUtil.FromFloats(producer.Output[0], TransposeAxes(FloatsOf(data.Tensor, displayName), dims, perm), outDims));
        }
        long size = TensorUtil.ExpectedRawByteLength(data.Tensor) / count;
        if (size is not (1 or 2 or 4 or 8))
        {
            return null;
        }
        return Materialize(producer, () =>
        {
            byte[] raw = Read(TensorUtil.ToRawBytes, data.Tensor, displayName);
            byte[] result = size switch
            {
                1 => TransposeAxes(raw, dims, perm),
                2 => System.Runtime.InteropServices.MemoryMarshal.AsBytes<ushort>(TransposeAxes(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(raw).ToArray(), dims, perm)).ToArray(),
                4 => System.Runtime.InteropServices.MemoryMarshal.AsBytes<uint>(TransposeAxes(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, uint>(raw).ToArray(), dims, perm)).ToArray(),
                _ => System.Runtime.InteropServices.MemoryMarshal.AsBytes<ulong>(TransposeAxes(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(raw).ToArray(), dims, perm)).ToArray(),
            };
            return TensorUtil.FromRaw(producer.Output[0], type, result, outDims);
        });
    }

    /// <summary>
    /// A constant float32 tensor behind <paramref name="name"/> (see <see cref="TryResolveConstant"/>) with at least
    /// one element. <paramref name="chain"/> lists the nodes that computed it and <paramref name="sources"/> the name
    /// itself and the initializers/values the chain read (for cleanup once nothing else uses them).
    /// <paramref name="storedOrder"/> takes only chains that keep the stored elements in order (no Transpose or Cast),
    /// for callers that write changed data back into the stored tensor.
    /// </summary>
    public bool TryConstantFloat(string name, string displayName, out float[] data, out long[] dims, out List<NodeProto> chain, out List<string> sources,
        bool storedOrder = false)
    {
        data = [];
        dims = [];
        chain = [];
        sources = [name];
        if (!TryFloatConstant(name, displayName, storedOrder, out ResolvedConstant? value))
        {
            return false;
        }
        data = FloatsOf(value.Tensor, displayName);
        dims = value.Dims;
        chain.AddRange(value.Chain);
        sources.Add(value.SourceName);
        sources.AddRange(value.ChainInputs);
        return true;
    }

    /// <summary>The constant <see cref="TryConstantFloat"/> reads: float32, at least one element.</summary>
    private bool TryFloatConstant(string name, string displayName, bool storedOrder, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out ResolvedConstant? value) =>
        TryResolveConstant(name, displayName, out value, out _)
            && value!.Tensor.DataType == (int)TensorProto.Types.DataType.Float
            && !(storedOrder && value.Materialized)
            && value.Dims.Aggregate(1L, (a, b) => a * b) > 0;

    /// <summary>
    /// The values <see cref="TryConstantFloat"/> gives for <paramref name="name"/>, handed to <paramref name="use"/>
    /// in place where the constant's raw float32 data allows (no copy), else as a new array; false when it gives none.
    /// </summary>
    public bool TryUseConstantFloat(string name, string displayName, Action<ReadOnlySpan<float>> use)
    {
        if (!TryFloatConstant(name, displayName, storedOrder: false, out ResolvedConstant? value))
        {
            return false;
        }
        if (TensorUtil.TryGetRawFloats(value.Tensor, out ReadOnlySpan<float> raw))
        {
            use(raw);
        }
        else
        {
            use(FloatsOf(value.Tensor, displayName));
        }
        return true;
    }

    /// <summary>
    /// The output dims of a shape-only operator (Reshape, Flatten, Squeeze, Unsqueeze, Identity) on data of shape
    /// <paramref name="dims"/>; <paramref name="ints"/> is its constant second input (shape or axes) if it has one.
    /// Null when the operator's arguments do not fit the data.
    /// </summary>
    private static long[]? ShapeOpDims(NodeProto n, long[] dims, long[]? ints)
    {
        long[]? AttrInts(string name) => n.Attribute.FirstOrDefault(a => a.Name == name) is { } a ? [.. a.Ints] : null;
        long[]? shape;
        switch (n.OpType)
        {
            case "Identity":
                return dims;
            case "Reshape":
                return ints == null ? null : ReshapeDims(dims, ints, IntAttr(n, "allowzero", 0) != 0);
            case "Flatten":
                long axis = IntAttr(n, "axis", 1);
                axis = axis < 0 ? axis + dims.Length : axis;
                if (axis < 0 || axis > dims.Length)
                {
                    return null;
                }
                return [dims.Take((int)axis).Aggregate(1L, (a, b) => a * b), dims.Skip((int)axis).Aggregate(1L, (a, b) => a * b)];
            case "Squeeze":
            case "Unsqueeze":
                long[]? axes = n.Input.Count > 1 && n.Input[1].Length > 0 ? ints : AttrInts("axes");
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
                return shape;
            default:
                return null;
        }
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
        if (n.OpType == "Transpose")
        {
            if (x.DataType != (int)TensorProto.Types.DataType.Float || n.Input.Count != 1)
            {
                return null;
            }
            long[] perm = n.Attribute.FirstOrDefault(a => a.Name == "perm") is { } p ? [.. p.Ints] : [.. Enumerable.Range(0, dims.Length).Reverse().Select(i => (long)i)];
            if (perm.Length != dims.Length || perm.Order().Where((v, i) => v != i).Any())
            {
                return null;
            }
            return TensorUtil.FromFloats(n.Output[0], TransposeAxes(FloatsOf(x, displayName), dims, perm), [.. perm.Select(i => dims[i])]);
        }
        if (n.OpType is not ("Identity" or "Reshape" or "Flatten" or "Squeeze" or "Unsqueeze"))
        {
            return null;
        }
        long[]? ints = null;
        if (n.Input.Count > 1 && n.Input[1].Length > 0)
        {
            if (n.OpType == "Flatten" || Initializers[n.Input[1]].DataType != (int)TensorProto.Types.DataType.Int64)
            {
                return null;
            }
            ints = TensorUtil.ToInt64Array(Initializers[n.Input[1]]);
        }
        if (ShapeOpDims(n, dims, ints) is not { } shape || shape.Aggregate(1L, (a, b) => a * b) != count)
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
    public static T[] TransposeAxes<T>(T[] data, long[] dims, long[] perm)
    {
        int rank = dims.Length;
        var result = new T[data.Length];
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
        Transpose<T>(source, rows, cols, result);
        return result;
    }

    /// <summary><see cref="Transpose{T}(T[], int, int)"/> into <paramref name="result"/> (rows x cols elements).</summary>
    public static void Transpose<T>(ReadOnlySpan<T> source, int rows, int cols, Span<T> result)
    {
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
    }
}
