using System.Globalization;
using System.Numerics.Tensors;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Passes;

/// <summary>Public entry to <see cref="PassGraph.FoldConstantShapeOps"/> for callers outside Core (e.g. reports that look at weights as the passes see them).</summary>
public static class ConstantFolding
{
    /// <summary>Folds Reshape/Flatten/Squeeze/Unsqueeze/Identity/Transpose of constant initializers into initializers, in place; returns the folded nodes.</summary>
    public static int FoldShapeOps(ModelProto model, string displayName) => new PassGraph(model).FoldConstantShapeOps(displayName);
}

/// <summary>
/// Bookkeeping shared by the graph-rewriting passes (Float16Converter, Int4WeightQuantizer, Int8StaticQuantizer):
/// unique names over the whole model, initializers (declared as inputs too for IR &lt; 4), opset imports, values
/// used outside the main graph's nodes, value_info edits, node factories.
/// </summary>
internal sealed class PassGraph
{
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);

    public PassGraph(ModelProto model)
    {
        Model = model;
        Graph = model.Graph;
        foreach (TensorProto t in Graph.Initializer)
        {
            Initializers[t.Name] = t;
            _names.Add(t.Name);
        }
        foreach (ValueInfoProto v in Graph.Input)
        {
            GraphInputs.Add(v.Name);
            _names.Add(v.Name);
        }
        foreach ((GraphProto g, _) in ModelWalker.Graphs(model))
        {
            foreach (NodeProto n in g.Node)
            {
                _names.UnionWith(n.Output);
                _names.Add(n.Name);
            }
            foreach (TensorProto t in g.Initializer)
            {
                _names.Add(t.Name);
            }
        }
        foreach (NodeProto n in Graph.Node)
        {
            foreach (string o in n.Output)
            {
                Producers[o] = n;
            }
        }
    }

    public ModelProto Model { get; }

    public GraphProto Graph { get; }

    public Dictionary<string, TensorProto> Initializers { get; } = new(StringComparer.Ordinal);

    public HashSet<string> GraphInputs { get; } = new(StringComparer.Ordinal);

    public Dictionary<string, NodeProto> Producers { get; } = new(StringComparer.Ordinal);

    /// <summary>Default-domain opset version (0 when not imported).</summary>
    public long OnnxOpset => Model.OpsetImport.FirstOrDefault(o => ModelChecker.NormalizeDomain(o.Domain).Length == 0)?.Version ?? 0;

    /// <summary>An initializer that callers cannot replace at run time (IR 4+ lists overridable ones as inputs).</summary>
    public bool IsConstantInitializer(string name) =>
        Initializers.ContainsKey(name) && (!GraphInputs.Contains(name) || Model.IrVersion < 4);

    public string Unique(string name) => Unique(_names, name);

    /// <summary><paramref name="name"/>, or name_1, name_2, ... : the first not yet in <paramref name="names"/>, which it joins.</summary>
    public static string Unique(HashSet<string> names, string name)
    {
        string candidate = name;
        for (int i = 1; !names.Add(candidate); i++)
        {
            candidate = name + "_" + i.ToString(CultureInfo.InvariantCulture);
        }
        return candidate;
    }

    public void AddInitializer(TensorProto t)
    {
        Graph.Initializer.Add(t);
        Initializers[t.Name] = t;
        _names.Add(t.Name);
        if (Model.IrVersion < 4)
        {
            // IR 3 wants every initializer declared as a graph input as well.
            Graph.Input.Add(ValueInfo(t.Name, t.DataType, t.Dims));
            GraphInputs.Add(t.Name);
        }
    }

    /// <summary>Removes an initializer (and its IR 3 input declaration and value_info).</summary>
    public void RemoveInitializer(string name)
    {
        for (int i = Graph.Initializer.Count - 1; i >= 0; i--)
        {
            if (Graph.Initializer[i].Name == name)
            {
                Graph.Initializer.RemoveAt(i);
            }
        }
        Initializers.Remove(name);
        if (Model.IrVersion < 4)
        {
            for (int j = Graph.Input.Count - 1; j >= 0; j--)
            {
                if (Graph.Input[j].Name == name)
                {
                    Graph.Input.RemoveAt(j);
                }
            }
            GraphInputs.Remove(name);
        }
        RemoveValueInfo(name);
    }

    public static ValueInfoProto ValueInfo(string name, int elemType, IEnumerable<long> dims)
    {
        var shape = new TensorShapeProto();
        foreach (long d in dims)
        {
            shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        }
        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = elemType, Shape = shape } },
        };
    }

    public void EnsureOpset(string domain, long version) => EnsureOpset(Model, domain, version);

    /// <summary>Imports <paramref name="domain"/> at <paramref name="version"/> or raises an older import to it.</summary>
    public static void EnsureOpset(ModelProto model, string domain, long version)
    {
        OperatorSetIdProto? existing = model.OpsetImport.FirstOrDefault(o => ModelChecker.NormalizeDomain(o.Domain) == domain);
        if (existing == null)
        {
            model.OpsetImport.Add(new OperatorSetIdProto { Domain = domain, Version = version });
        }
        else if (existing.Version < version)
        {
            existing.Version = version;
        }
    }

    /// <summary>Names read by the main graph's outputs or by any nested graph (If/Loop/Scan bodies).</summary>
    public HashSet<string> OuterUses() => OuterUses(Model);

    /// <summary>Names read by <paramref name="model"/>'s main graph outputs or by any nested graph (If/Loop/Scan bodies).</summary>
    public static HashSet<string> OuterUses(ModelProto model)
    {
        var result = new HashSet<string>(model.Graph.Output.Select(o => o.Name), StringComparer.Ordinal);
        foreach ((GraphProto g, int depth) in ModelWalker.Graphs(model))
        {
            if (depth == 0)
            {
                continue;
            }
            foreach (NodeProto n in g.Node)
            {
                result.UnionWith(n.Input);
            }
            result.UnionWith(g.Output.Select(o => o.Name));
        }
        return result;
    }

    /// <summary>Names read by the main graph's nodes.</summary>
    public HashSet<string> NodeInputs()
    {
        var used = new HashSet<string>(StringComparer.Ordinal);
        foreach (NodeProto n in Graph.Node)
        {
            used.UnionWith(n.Input);
        }
        return used;
    }

    public void RemoveValueInfo(string name) => RemoveValueInfo(Graph, name);

    /// <summary>Removes every value_info entry of <paramref name="graph"/> named <paramref name="name"/>.</summary>
    public static void RemoveValueInfo(GraphProto graph, string name)
    {
        for (int i = graph.ValueInfo.Count - 1; i >= 0; i--)
        {
            if (graph.ValueInfo[i].Name == name)
            {
                graph.ValueInfo.RemoveAt(i);
            }
        }
    }

    /// <summary>Drops initializers in <paramref name="candidates"/> that nothing reads any more.</summary>
    public void RemoveUnusedInitializers(IEnumerable<string> candidates)
    {
        HashSet<string> used = OuterUses();
        used.UnionWith(NodeInputs());
        foreach (string name in candidates.Distinct(StringComparer.Ordinal).ToList())
        {
            if (!used.Contains(name) && IsConstantInitializer(name))
            {
                RemoveInitializer(name);
            }
        }
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
        if (!Producers.TryGetValue(name, out NodeProto? producer) || ModelChecker.NormalizeDomain(producer.Domain).Length != 0)
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
    /// IR 3 requires every initializer to be declared as a graph input as well, and ORT (like these passes) treats the
    /// initializers of an IR 3 model as constants all the same. After a pass has rewritten a model it moves to IR 4,
    /// where initializers need no declaration and the undeclared ones are constants by definition: the same model
    /// without one value_info per initializer (665 of mnist-8's 11 KB after static int8). Graph inputs that are not
    /// initializers stay. No effect from IR 4 on.
    /// </summary>
    public static void DropInitializerInputs(ModelProto model)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model.IrVersion >= 4 || model.Graph == null)
        {
            return;
        }
        var initializers = new HashSet<string>(model.Graph.Initializer.Select(t => t.Name), StringComparer.Ordinal);
        for (int i = model.Graph.Input.Count - 1; i >= 0; i--)
        {
            if (initializers.Contains(model.Graph.Input[i].Name))
            {
                model.Graph.Input.RemoveAt(i);
            }
        }
        model.IrVersion = 4;
    }

    /// <summary>Node metadata the PyTorch exporter writes for debugging: the Python stack trace of the line that made the
    /// node (with the exporting machine's file paths) and the FX node text.</summary>
    private static readonly HashSet<string> DebugTraceKeys = new(StringComparer.Ordinal) { "pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node" };

    /// <summary>
    /// Removes exporter debug traces from every node (<see cref="DebugTraceKeys"/>): nothing reads them at run time,
    /// and on small models they are a visible share of the file (about 2.4 KB of fashion-mlp's 106 KB after static
    /// int8). Structural hints (namespace, name scopes, class hierarchy) and graph/model metadata stay. Returns the
    /// entries removed.
    /// </summary>
    public static int StripDebugTraces(ModelProto model)
    {
        ArgumentNullException.ThrowIfNull(model);
        int removed = 0;
        foreach ((GraphProto graph, _) in ModelWalker.Graphs(model))
        {
            foreach (NodeProto n in graph.Node)
            {
                for (int i = n.MetadataProps.Count - 1; i >= 0; i--)
                {
                    if (DebugTraceKeys.Contains(n.MetadataProps[i].Key))
                    {
                        n.MetadataProps.RemoveAt(i);
                        removed++;
                    }
                }
            }
        }
        return removed;
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
        int folded = 0;
        bool changed = true;
        while (changed)
        {
            changed = false;
            HashSet<string> outer = OuterUses();
            foreach (NodeProto n in Graph.Node.ToList())
            {
                if (ModelChecker.NormalizeDomain(n.Domain).Length != 0 || n.Output.Count != 1 || outer.Contains(n.Output[0])
                    || n.Input.Count == 0 || !n.Input.Where(i => i.Length > 0).All(IsConstantInitializer)
                    || TensorUtil.IsExternal(Initializers[n.Input[0]]) || Uses(n.Input[0], outer) != 1 || TryFold(n, displayName) is not { } result)
                {
                    continue;
                }
                var sources = n.Input.Where(i => i.Length > 0).ToList();
                Graph.Node.Remove(n);
                Producers.Remove(n.Output[0]);
                RemoveValueInfo(n.Output[0]);
                AddInitializer(result);
                RemoveUnusedInitializers(sources);
                folded++;
                changed = true;
            }
        }
        return folded;
    }

    /// <summary>How many main-graph node inputs, graph outputs and nested-graph references (<paramref name="outer"/>, the
    /// <see cref="OuterUses()"/> of this round: folding removes no graph output or nested graph) read <paramref name="name"/>
    /// (a constant read elsewhere too is not folded: that would store its data twice).</summary>
    private int Uses(string name, HashSet<string> outer) =>
        Graph.Node.Sum(n => n.Input.Count(i => i == name)) + (outer.Contains(name) ? 1 : 0);

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

    /// <summary>A new node; <paramref name="name"/> null leaves it unnamed (names are optional; saves bytes in small models).</summary>
    public NodeProto Node(string opType, string? name, IEnumerable<string> inputs, IEnumerable<string> outputs, string domain = "")
    {
        var n = new NodeProto { OpType = opType, Name = name == null ? "" : Unique(name), Domain = domain };
        n.Input.AddRange(inputs);
        n.Output.AddRange(outputs);
        return n;
    }

    public NodeProto Cast(string input, string output, TensorProto.Types.DataType to, string? name = null)
    {
        NodeProto n = Node("Cast", name, [input], [output]);
        n.Attribute.Add(IntAttribute("to", (long)to));
        return n;
    }

    public static AttributeProto IntAttribute(string name, long value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };

    public static long IntAttr(NodeProto node, string name, long fallback) =>
        node.Attribute.FirstOrDefault(a => a.Name == name) is { } a ? a.I : fallback;

    public static float FloatAttr(NodeProto node, string name, float fallback) =>
        node.Attribute.FirstOrDefault(a => a.Name == name) is { } a ? a.F : fallback;

    /// <summary>
    /// beta * C as [n] bias values: <paramref name="data"/> itself when <paramref name="vector"/> (n elements), else its
    /// single element repeated.
    /// </summary>
    public static float[] BiasValues(float[] data, bool vector, int n, float beta)
    {
        float[] values = new float[n];
        if (vector)
        {
            data.CopyTo(values, 0);
        }
        else
        {
            Array.Fill(values, data[0]);
        }
        if (beta != 1f)
        {
            TensorPrimitives.Multiply(values, beta, values);
        }
        return values;
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

    /// <summary>Tensor data as float, or CMPR0103 naming the model and tensor when it cannot be read.</summary>
    public static float[] Floats(TensorProto t, string displayName)
    {
        try
        {
            return TensorUtil.ToFloatArray(t);
        }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException or OverflowException)
        {
            throw new CompressException(e, DiagnosticCodes.ModelInvalid, displayName, e.Message) { File = displayName };
        }
    }
}
