using System.Globalization;
using System.Numerics.Tensors;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Graph;

/// <summary>Public entry to <see cref="PassGraph.FoldConstantShapeOps"/> for callers outside Core (e.g. reports that look at weights as the passes see them).</summary>
public static class ConstantFolding
{
    /// <summary>Folds Reshape/Flatten/Squeeze/Unsqueeze/Identity/Transpose of constant initializers into initializers, in place; returns the folded nodes.</summary>
    public static int FoldShapeOps(ModelProto model, string displayName) => new PassGraph(model).FoldConstantShapeOps(displayName);

    /// <summary>
    /// The values of <paramref name="names"/> resolved as <see cref="ConstantValues"/> does (names that are not constant
    /// are left out), one at a time, each handed to <paramref name="use"/> in place where its raw float32 data allows
    /// (an initializer read as it is stored: no copy of the weights), else as a new array dropped afterwards.
    /// </summary>
    public static void ForEachConstantValue(ModelProto model, IReadOnlyCollection<string> names, string displayName, Action<ReadOnlySpan<float>> use)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(names);
        ArgumentNullException.ThrowIfNull(use);
        List<PassGraph> scopes = new PassGraph(model).WithSubgraphs();
        foreach (string name in names.Distinct(StringComparer.Ordinal))
        {
            foreach (PassGraph scope in scopes)
            {
                if (scope.TryUseConstantFloat(name, displayName, use))
                {
                    break;
                }
            }
        }
    }

    /// <summary>
    /// The float32 values a node reading each of <paramref name="names"/> sees, for those that are constants the way
    /// the passes resolve them (initializers and Constant nodes, through Reshape/Transpose/Cast/... chains) in the main
    /// graph or any If/Loop/Scan body. Reads only; the model is not changed.
    /// </summary>
    public static Dictionary<string, float[]> ConstantValues(ModelProto model, IEnumerable<string> names, string displayName)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(names);
        var result = new Dictionary<string, float[]>(StringComparer.Ordinal);
        List<PassGraph> scopes = new PassGraph(model).WithSubgraphs();
        // A scope resolves only names it defines (an initializer or a node output); each name is tried in those
        // scopes, in the same order, instead of in every scope (quadratic with 10^4 If/Loop bodies).
        var definedIn = new Dictionary<string, List<PassGraph>>(StringComparer.Ordinal);
        foreach (PassGraph scope in scopes)
        {
            foreach (string defined in scope.Initializers.Keys.Concat(scope.Producers.Keys).Distinct(StringComparer.Ordinal))
            {
                (definedIn.TryGetValue(defined, out List<PassGraph>? list) ? list : definedIn[defined] = []).Add(scope);
            }
        }
        foreach (string name in names.Distinct(StringComparer.Ordinal))
        {
            foreach (PassGraph scope in definedIn.GetValueOrDefault(name) ?? [])
            {
                if (scope.TryConstantFloat(name, displayName, out float[] data, out _, out _, out _))
                {
                    result[name] = data;
                    break;
                }
            }
        }
        return result;
    }
}

/// <summary>
/// The graph index every rewriting pass works on: unique names over the whole model, initializers (declared as
/// inputs too for IR &lt; 4), producers and consumers of the main graph's values, value_info by name, values used
/// outside the main graph's nodes, opset imports, node factories.
/// <para>
/// Node edits through <see cref="Replace"/> and <see cref="RemoveNode"/> cost O(1) each (plus the node's inputs):
/// they update the producer/consumer index at once and are written into <see cref="GraphProto.Node"/> by one
/// O(nodes) <see cref="Commit"/>, instead of a RepeatedField IndexOf/Insert/RemoveAt per node (quadratic on graphs
/// of 10^4-10^5 nodes). Until <see cref="Commit"/>, <see cref="GraphProto.Node"/> still holds the old nodes; after
/// it the consumer index is rebuilt on next use, so passes that edit <see cref="GraphProto.Node"/> directly stay
/// correct as long as they do not mix that with uncommitted edits.
/// </para>
/// </summary>
internal sealed partial class PassGraph
{
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private readonly Dictionary<NodeProto, IReadOnlyList<NodeProto>> _replaced = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<string> _valueInfoToDrop = new(StringComparer.Ordinal);
    private Dictionary<string, List<NodeProto>>? _consumers;
    private Dictionary<string, ValueInfoProto>? _valueInfo;
    private HashSet<string>? _outer;

    public PassGraph(ModelProto model)
        : this(model, model.Graph, null)
    {
    }

    /// <summary>The index of <paramref name="graph"/> (the main graph or a nested one); <paramref name="names"/> is shared between the scopes of one model.</summary>
    private PassGraph(ModelProto model, GraphProto graph, HashSet<string>? names)
    {
        Model = model;
        Graph = graph;
        if (names != null)
        {
            _names = names;
        }
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
        if (names == null)
        {
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
                _names.UnionWith(g.Input.Select(v => v.Name));
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

    /// <summary>True for the model's main graph, false for an If/Loop/Scan body.</summary>
    public bool IsMain => ReferenceEquals(Graph, Model.Graph);

    public ModelProto Model { get; }

    public GraphProto Graph { get; }

    public Dictionary<string, TensorProto> Initializers { get; } = new(StringComparer.Ordinal);

    public HashSet<string> GraphInputs { get; } = new(StringComparer.Ordinal);

    public Dictionary<string, NodeProto> Producers { get; } = new(StringComparer.Ordinal);

    /// <summary>
    /// <see cref="OuterUses()"/> taken once and kept until <see cref="Commit"/>: valid while the pass changes neither
    /// graph outputs nor nested graphs (node edits through this index do neither).
    /// </summary>
    public HashSet<string> Outer => _outer ??= OuterUses();

    /// <summary>Main-graph nodes reading <paramref name="name"/> (each once; uncommitted edits included, nodes added by them last).</summary>
    public IReadOnlyList<NodeProto> Consumers(string name) => ConsumerIndex().GetValueOrDefault(name) ?? (IReadOnlyList<NodeProto>)[];

    /// <summary>How many main-graph node inputs read <paramref name="name"/> (a node reading it twice counts twice).</summary>
    public int NodeUses(string name)
    {
        int uses = 0;
        foreach (NodeProto n in Consumers(name))
        {
            foreach (string i in n.Input)
            {
                uses += i == name ? 1 : 0;
            }
        }
        return uses;
    }

    /// <summary>Whether anything reads <paramref name="name"/>: a main-graph node, a graph output or a nested graph.</summary>
    public bool IsUsed(string name) => Outer.Contains(name) || Consumers(name).Count > 0;

    /// <summary>The graph input or value_info entry named <paramref name="name"/> (the first one), or null; value_info dropped by <see cref="DropValueInfo"/> is gone at once.</summary>
    public ValueInfoProto? ValueInfoOf(string name)
    {
        if (_valueInfo == null)
        {
            _valueInfo = new Dictionary<string, ValueInfoProto>(StringComparer.Ordinal);
            foreach (ValueInfoProto v in Graph.Input)
            {
                _valueInfo.TryAdd(v.Name, v);
            }
            foreach (ValueInfoProto v in Graph.ValueInfo)
            {
                if (!_valueInfoToDrop.Contains(v.Name))
                {
                    _valueInfo.TryAdd(v.Name, v);
                }
            }
        }
        return _valueInfo.GetValueOrDefault(name);
    }

    /// <summary>Replaces <paramref name="node"/> by <paramref name="nodes"/> (in its place, in order) in the index; <see cref="Commit"/> writes it.</summary>
    public void Replace(NodeProto node, IReadOnlyList<NodeProto> nodes)
    {
        if (!_replaced.TryAdd(node, nodes))
        {
            throw new InvalidOperationException($"node '{node.Name}' ({node.OpType}) was already replaced or removed");
        }
        Dictionary<string, List<NodeProto>> consumers = ConsumerIndex();
        foreach (string i in node.Input)
        {
            if (consumers.TryGetValue(i, out List<NodeProto>? list))
            {
                list.Remove(node);
            }
        }
        foreach (string o in node.Output)
        {
            if (Producers.TryGetValue(o, out NodeProto? p) && ReferenceEquals(p, node))
            {
                Producers.Remove(o);
            }
        }
        foreach (NodeProto n in nodes)
        {
            AddToIndex(n, consumers);
            _names.Add(n.Name);
            _names.UnionWith(n.Output);
        }
    }

    /// <summary>Removes <paramref name="node"/> from the index; <see cref="Commit"/> removes it from the graph.</summary>
    public void RemoveNode(NodeProto node) => Replace(node, []);

    /// <summary>Drops every value_info entry named <paramref name="name"/> at <see cref="Commit"/>.</summary>
    public void DropValueInfo(string name)
    {
        _valueInfoToDrop.Add(name);
        if (_valueInfo != null && _valueInfo.TryGetValue(name, out ValueInfoProto? v) && !Graph.Input.Contains(v))
        {
            _valueInfo.Remove(name);
        }
    }

    /// <summary>Writes the replaced and removed nodes and dropped value_info into the graph in one pass each.</summary>
    public void Commit()
    {
        if (_replaced.Count > 0)
        {
            var nodes = new List<NodeProto>(Graph.Node.Count + _replaced.Count);
            void Emit(NodeProto n)
            {
                if (_replaced.TryGetValue(n, out IReadOnlyList<NodeProto>? with))
                {
                    foreach (NodeProto r in with)
                    {
                        Emit(r);
                    }
                }
                else
                {
                    nodes.Add(n);
                }
            }
            foreach (NodeProto n in Graph.Node)
            {
                Emit(n);
            }
            Graph.Node.Clear();
            Graph.Node.AddRange(nodes);
            _replaced.Clear();
        }
        if (_valueInfoToDrop.Count > 0)
        {
            RemoveAll(Graph.ValueInfo, v => _valueInfoToDrop.Contains(v.Name));
            _valueInfoToDrop.Clear();
        }
        _consumers = null;
        _valueInfo = null;
        _outer = null;
    }

    /// <summary>Removes the items matching <paramref name="drop"/> from <paramref name="field"/> in one pass, keeping the order of the rest.</summary>
    public static int RemoveAll<T>(Google.Protobuf.Collections.RepeatedField<T> field, Func<T, bool> drop)
    {
        ArgumentNullException.ThrowIfNull(field);
        ArgumentNullException.ThrowIfNull(drop);
        var keep = field.Where(x => !drop(x)).ToList();
        int removed = field.Count - keep.Count;
        if (removed > 0)
        {
            field.Clear();
            field.AddRange(keep);
        }
        return removed;
    }

    private Dictionary<string, List<NodeProto>> ConsumerIndex()
    {
        if (_consumers == null)
        {
            _consumers = new Dictionary<string, List<NodeProto>>(StringComparer.Ordinal);
            foreach (NodeProto n in Graph.Node)
            {
                AddToIndex(n, _consumers);
            }
        }
        return _consumers;
    }

    private void AddToIndex(NodeProto n, Dictionary<string, List<NodeProto>> consumers)
    {
        foreach (string i in n.Input)
        {
            if (i.Length == 0)
            {
                continue;
            }
            if (!consumers.TryGetValue(i, out List<NodeProto>? list))
            {
                consumers[i] = list = [];
            }
            if (list.Count == 0 || !ReferenceEquals(list[^1], n))
            {
                list.Add(n);
            }
        }
        foreach (string o in n.Output)
        {
            if (o.Length > 0)
            {
                Producers[o] = n;
            }
        }
    }

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

    /// <summary>
    /// Reads the float data of a tensor stored outside the protobuf (the streaming path's lazily loaded models, whose
    /// external tensors stay file references): <see cref="FloatsOf"/> calls it for such tensors, so a pass reads each
    /// weight when it needs it, one at a time. Null: every tensor's data is in memory. Nested scopes share it.
    /// </summary>
    public Func<TensorProto, float[]>? ExternalFloats { get; set; }

    /// <summary>Called with each initializer <see cref="AddInitializer"/> adds (the streaming path writes large quantized ones to its data file there). Nested scopes share it.</summary>
    public Action<TensorProto>? InitializerAdded { get; set; }

    /// <summary>
    /// The data of <paramref name="t"/> as float (<see cref="Floats"/>), read through <see cref="ExternalFloats"/> when it is
    /// a file reference, computed when it stands for a Transpose of one (<see cref="LazyExternalData"/>).
    /// </summary>
    public float[] FloatsOf(TensorProto t, string displayName) =>
        Deferred.TryGetValue(t, out Func<float[]>? compute) ? compute()
        : ExternalFloats != null && TensorUtil.IsExternal(t) ? ExternalFloats(t) : Floats(t, displayName);

    public void AddInitializer(TensorProto t)
    {
        Graph.Initializer.Add(t);
        Initializers[t.Name] = t;
        _names.Add(t.Name);
        if (Model.IrVersion < 4 && IsMain)
        {
            // IR 3 wants every initializer of the main graph declared as a graph input as well (a body's inputs are
            // fixed by its If/Loop/Scan node).
            ValueInfoProto declaration = ValueInfo(t.Name, t.DataType, t.Dims);
            Graph.Input.Add(declaration);
            GraphInputs.Add(t.Name);
            _valueInfo?.TryAdd(t.Name, declaration);
        }
        InitializerAdded?.Invoke(t);
    }

    /// <summary>Where each initializer sits in <see cref="GraphProto.Initializer"/>, by reference; checked on use and rebuilt when stale.</summary>
    private Dictionary<TensorProto, int>? _initializerAt;

    /// <summary>
    /// Puts <paramref name="replacement"/> in the place of the initializer <paramref name="old"/> (same position in
    /// the graph's list) and indexes it under its name. O(1): positions come from an index built once (a
    /// RepeatedField IndexOf compares tensors by value, data included, and was quadratic over a pass).
    /// </summary>
    public void ReplaceInitializer(TensorProto old, TensorProto replacement)
    {
        ArgumentNullException.ThrowIfNull(old);
        ArgumentNullException.ThrowIfNull(replacement);
        if (_initializerAt == null || !_initializerAt.TryGetValue(old, out int at) || at >= Graph.Initializer.Count || !ReferenceEquals(Graph.Initializer[at], old))
        {
            _initializerAt = new Dictionary<TensorProto, int>(ReferenceEqualityComparer.Instance);
            for (int i = 0; i < Graph.Initializer.Count; i++)
            {
                _initializerAt.TryAdd(Graph.Initializer[i], i);
            }
            if (!_initializerAt.TryGetValue(old, out at))
            {
                throw new InvalidOperationException($"initializer '{old.Name}' is not in the graph");
            }
        }
        Graph.Initializer[at] = replacement;
        _initializerAt.Remove(old);
        _initializerAt[replacement] = at;
        Initializers[replacement.Name] = replacement;
    }

    /// <summary>Removes an initializer (and its IR 3 input declaration and value_info).</summary>
    public void RemoveInitializer(string name) => RemoveInitializers(new HashSet<string>(StringComparer.Ordinal) { name });

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

    /// <summary>Names read from outside this graph's nodes: its outputs and any graph nested in it (If/Loop/Scan bodies).</summary>
    public HashSet<string> OuterUses()
    {
        if (IsMain)
        {
            return OuterUses(Model);
        }
        var result = new HashSet<string>(Graph.Output.Select(o => o.Name), StringComparer.Ordinal);
        foreach (NodeProto n in Graph.Node)
        {
            foreach (GraphProto sub in ModelWalker.Subgraphs(n))
            {
                AddReads(sub, result);
            }
        }
        return result;
    }

    /// <summary>Every name the nodes and outputs of <paramref name="graph"/> and of the graphs nested in it read.</summary>
    private static void AddReads(GraphProto graph, HashSet<string> into)
    {
        into.UnionWith(graph.Output.Select(o => o.Name));
        foreach (NodeProto n in graph.Node)
        {
            into.UnionWith(n.Input);
            foreach (GraphProto sub in ModelWalker.Subgraphs(n))
            {
                AddReads(sub, into);
            }
        }
    }

    /// <summary>
    /// This graph's index and one for every If/Loop/Scan body nested in it (outermost first), sharing one set of
    /// names so that names made in any of them stay unique in the model. Call <see cref="LocalizeSubgraphConstants"/>
    /// first so that each body holds the weights only it reads. A body's index sees its own initializers and nodes;
    /// values from enclosing graphs are run-time inputs to it.
    /// </summary>
    public List<PassGraph> WithSubgraphs()
    {
        var result = new List<PassGraph> { this };
        for (int i = 0; i < result.Count; i++)
        {
            foreach (NodeProto n in result[i].Graph.Node)
            {
                foreach (GraphProto sub in ModelWalker.Subgraphs(n))
                {
                    result.Add(new PassGraph(Model, sub, _names) { ExternalFloats = ExternalFloats, InitializerAdded = InitializerAdded, LazyExternalData = LazyExternalData, Deferred = Deferred });
                }
            }
        }
        return result;
    }

    /// <summary>
    /// Moves every constant of this graph (non-overridable initializer, or Constant node) that only one nested body
    /// reads - not this graph's nodes or outputs, not a second body - into that body (initializers into its
    /// initializers, Constant nodes to the front of its nodes), then does the same inside each body. Values keep their
    /// names and meaning (ONNX bodies may hold initializers; names are unique across the model), so a weight that
    /// exporters keep in the outer graph (tf2onnx Loop bodies, If branches) becomes a constant of the body that uses
    /// it, where a pass can quantize it. Returns the constants moved.
    /// </summary>
    public int LocalizeSubgraphConstants()
    {
        Commit();
        var bodies = new List<GraphProto>();
        foreach (NodeProto n in Graph.Node)
        {
            bodies.AddRange(ModelWalker.Subgraphs(n));
        }
        if (bodies.Count == 0)
        {
            return 0;
        }
        // Where each name is read: by this graph itself (null) or by one body; read by two places = shared (stays).
        var readers = new Dictionary<string, GraphProto?>(StringComparer.Ordinal);
        var shared = new HashSet<string>(StringComparer.Ordinal);
        void Note(string name, GraphProto? by)
        {
            if (name.Length == 0 || shared.Contains(name))
            {
                return;
            }
            if (readers.TryGetValue(name, out GraphProto? first) && !ReferenceEquals(first, by))
            {
                shared.Add(name);
                readers.Remove(name);
                return;
            }
            readers[name] = by;
        }
        foreach (NodeProto n in Graph.Node)
        {
            foreach (string i in n.Input)
            {
                Note(i, null);
            }
        }
        foreach (ValueInfoProto o in Graph.Output)
        {
            Note(o.Name, null);
        }
        foreach (GraphProto body in bodies)
        {
            var reads = new HashSet<string>(StringComparer.Ordinal);
            AddReads(body, reads);
            foreach (string name in reads)
            {
                Note(name, body);
            }
        }
        var movedInitializers = new HashSet<string>(StringComparer.Ordinal);
        foreach (TensorProto t in Graph.Initializer)
        {
            if (IsConstantInitializer(t.Name) && readers.TryGetValue(t.Name, out GraphProto? body) && body != null)
            {
                body.Initializer.Add(t);
                movedInitializers.Add(t.Name);
            }
        }
        var movedNodes = new List<NodeProto>();
        // Each body's moved Constant nodes, put in front of its nodes at once (last moved first, as one Insert(0, n)
        // per node did; one Insert per node was quadratic in the body's size).
        var movedInto = new Dictionary<GraphProto, List<NodeProto>>(ReferenceEqualityComparer.Instance);
        foreach (NodeProto n in Graph.Node)
        {
            if (n.OpType == "Constant" && OnnxNames.IsDefaultDomain(n) && n.Output.Count == 1
                && readers.TryGetValue(n.Output[0], out GraphProto? body) && body != null)
            {
                (movedInto.TryGetValue(body, out List<NodeProto>? front) ? front : movedInto[body] = []).Add(n);
                movedNodes.Add(n);
            }
        }
        foreach ((GraphProto body, List<NodeProto> front) in movedInto)
        {
            front.Reverse();
            front.AddRange(body.Node);
            body.Node.Clear();
            body.Node.AddRange(front);
        }
        if (movedInitializers.Count > 0)
        {
            RemoveAll(Graph.Initializer, t => movedInitializers.Contains(t.Name));
            if (IsMain && Model.IrVersion < 4)
            {
                RemoveAll(Graph.Input, v => movedInitializers.Contains(v.Name));
                GraphInputs.ExceptWith(movedInitializers);
            }
            foreach (string name in movedInitializers)
            {
                Initializers.Remove(name);
            }
        }
        foreach (NodeProto n in movedNodes)
        {
            RemoveNode(n);
        }
        var movedValues = movedInitializers.Concat(movedNodes.Select(n => n.Output[0])).ToHashSet(StringComparer.Ordinal);
        RemoveAll(Graph.ValueInfo, v => movedValues.Contains(v.Name));
        Commit();
        int moved = movedValues.Count;
        foreach (GraphProto body in bodies)
        {
            moved += new PassGraph(Model, body, _names) { ExternalFloats = ExternalFloats, InitializerAdded = InitializerAdded, LazyExternalData = LazyExternalData, Deferred = Deferred }.LocalizeSubgraphConstants();
        }
        return moved;
    }

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

    public void RemoveValueInfo(string name)
    {
        RemoveValueInfo(Graph, name);
        _valueInfo = null;
    }

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

    /// <summary>Drops initializers in <paramref name="candidates"/> that nothing reads any more (one pass over the graph).</summary>
    public void RemoveUnusedInitializers(IEnumerable<string> candidates)
    {
        HashSet<string> used = OuterUses();
        used.UnionWith(NodeInputs());
        var drop = candidates.Where(name => !used.Contains(name) && IsConstantInitializer(name)).ToHashSet(StringComparer.Ordinal);
        RemoveInitializers(drop);
    }

    /// <summary><see cref="RemoveInitializer"/> for a set of names, in one pass over initializers, inputs and value_info.</summary>
    public void RemoveInitializers(IReadOnlySet<string> names)
    {
        if (names.Count == 0)
        {
            return;
        }
        RemoveAll(Graph.Initializer, t => names.Contains(t.Name));
        if (Model.IrVersion < 4 && IsMain)
        {
            RemoveAll(Graph.Input, v => names.Contains(v.Name));
            GraphInputs.ExceptWith(names);
        }
        RemoveAll(Graph.ValueInfo, v => names.Contains(v.Name));
        foreach (string name in names)
        {
            Initializers.Remove(name);
        }
        _valueInfo = null;
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

    /// <summary>Tensor data as float, or CMPR0103 naming the model and tensor when it cannot be read.</summary>
    public static float[] Floats(TensorProto t, string displayName) => Read(TensorUtil.ToFloatArray, t, displayName);

    /// <summary>Tensor data as int64, or CMPR0103 naming the model and tensor when it cannot be read.</summary>
    public static long[] Int64s(TensorProto t, string displayName) => Read(TensorUtil.ToInt64Array, t, displayName);

    private static T[] Read<T>(Func<TensorProto, T[]> read, TensorProto t, string displayName)
    {
        try
        {
            return read(t);
        }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException or OverflowException)
        {
            throw CompressException.ForFile(displayName, e, DiagnosticCodes.ModelInvalid, displayName, e.Message);
        }
    }
}
