using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Onnx;

/// <summary>
/// Puts the nodes of every graph (main graph and If/Loop/Scan bodies) into topological order, as ONNX Runtime does when
/// it loads a model: real exports (ONNX Runtime's transformer optimizer, hand-edited graphs) often list a node before
/// the node that produces its input. The sort is stable: among the nodes that are ready, the one listed first goes
/// first, so an already sorted graph keeps its order exactly. A node that holds subgraphs also waits for every outer
/// value its subgraphs read. Only what is really broken is refused with CMPR0103: a name that no node, graph input,
/// initializer or enclosing graph produces (dangling), and a cycle.
/// </summary>
public static class TopologicalSort
{
    /// <summary>Sorts every graph of <paramref name="model"/> in place; returns true when some node moved.</summary>
    /// <exception cref="CompressException">CMPR0103 naming <paramref name="displayName"/> for a dangling name or a cycle.</exception>
    public static bool Sort(ModelProto model, string displayName)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model.Graph == null)
        {
            return false;
        }
        CompressException Fail(string why) => new(DiagnosticCodes.ModelInvalid, displayName, why) { File = displayName };
        return SortGraph(model.Graph, null, Fail);
    }

    /// <param name="outer">What the enclosing graphs define (null for the main graph).</param>
    private static bool SortGraph(GraphProto graph, NameScope? outer, Func<string, CompressException> fail)
    {
        // This graph's inputs and initializers, then (for its bodies) every value it defines; the enclosing graphs' names through the parent.
        var available = new NameScope(outer);
        foreach (ValueInfoProto v in graph.Input)
        {
            available.Local.Add(v.Name);
        }
        foreach (TensorProto t in graph.Initializer)
        {
            available.Local.Add(t.Name);
        }
        foreach (SparseTensorProto s in graph.SparseInitializer)
        {
            if (s.Values?.Name is { Length: > 0 } name)
            {
                available.Local.Add(name);
            }
        }

        var definedHere = new HashSet<string>(graph.Input.Select(v => v.Name), StringComparer.Ordinal);
        definedHere.UnionWith(graph.Initializer.Select(t => t.Name));
        int n = graph.Node.Count;
        var producer = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < n; i++)
        {
            foreach (string o in graph.Node[i].Output)
            {
                if (o.Length > 0 && (definedHere.Contains(o) || !producer.TryAdd(o, i)))
                {
                    throw fail($"value '{o}' is defined more than once (again by node {ModelChecker.NodeLabel(graph.Node[i])})");
                }
            }
        }

        // Edges producer -> consumer; waiting[i] = how many distinct producers node i still waits for.
        var consumers = new List<int>[n];
        var waiting = new int[n];
        for (int i = 0; i < n; i++)
        {
            NodeProto node = graph.Node[i];
            var needs = new HashSet<int>();
            foreach (string name in Needs(node))
            {
                if (available.Contains(name))
                {
                    continue;
                }
                if (!producer.TryGetValue(name, out int p))
                {
                    throw fail($"node {ModelChecker.NodeLabel(node)} uses '{name}', which no graph input, initializer or node produces");
                }
                if (needs.Add(p))
                {
                    (consumers[p] ??= []).Add(i);
                }
            }
            waiting[i] = needs.Count;
        }

        var ready = new PriorityQueue<int, int>();
        for (int i = 0; i < n; i++)
        {
            if (waiting[i] == 0)
            {
                ready.Enqueue(i, i);
            }
        }
        var order = new List<int>(n);
        while (ready.TryDequeue(out int i, out _))
        {
            order.Add(i);
            foreach (int c in consumers[i] ?? [])
            {
                if (--waiting[c] == 0)
                {
                    ready.Enqueue(c, c);
                }
            }
        }
        if (order.Count < n)
        {
            string[] stuck = [.. Enumerable.Range(0, n).Where(i => waiting[i] > 0).Take(5).Select(i => ModelChecker.NodeLabel(graph.Node[i]))];
            int count = waiting.Count(w => w > 0);
            throw fail($"its nodes form a cycle: {string.Join(", ", stuck)}{(count > stuck.Length ? $" and {count - stuck.Length} more" : "")} each wait, directly or not, for their own output");
        }

        bool moved = false;
        for (int k = 0; k < n; k++)
        {
            moved |= order[k] != k;
        }
        if (moved)
        {
            NodeProto[] sorted = [.. order.Select(i => graph.Node[i])];
            graph.Node.Clear();
            graph.Node.AddRange(sorted);
        }

        // Subgraphs see every value of this graph and of the graphs around it.
        available.Local.UnionWith(producer.Keys);
        foreach (NodeProto node in graph.Node)
        {
            foreach (GraphProto sub in ModelWalker.Subgraphs(node))
            {
                moved |= SortGraph(sub, available, fail);
            }
        }
        return moved;
    }

    /// <summary>The names a node reads: its inputs and the outer values its subgraphs read.</summary>
    private static IEnumerable<string> Needs(NodeProto node)
    {
        foreach (string input in node.Input)
        {
            if (input.Length > 0)
            {
                yield return input;
            }
        }
        foreach (GraphProto sub in ModelWalker.Subgraphs(node))
        {
            foreach (string name in OuterReads(sub))
            {
                yield return name;
            }
        }
    }

    /// <summary>The names a subgraph (and the subgraphs inside it) reads that it does not define itself.</summary>
    private static HashSet<string> OuterReads(GraphProto graph)
    {
        var defined = new HashSet<string>(StringComparer.Ordinal);
        defined.UnionWith(graph.Input.Select(v => v.Name));
        defined.UnionWith(graph.Initializer.Select(t => t.Name));
        defined.UnionWith(graph.SparseInitializer.Select(s => s.Values?.Name ?? ""));
        foreach (NodeProto node in graph.Node)
        {
            defined.UnionWith(node.Output);
        }
        var reads = new HashSet<string>(StringComparer.Ordinal);
        foreach (NodeProto node in graph.Node)
        {
            foreach (string name in Needs(node))
            {
                if (!defined.Contains(name))
                {
                    reads.Add(name);
                }
            }
        }
        foreach (ValueInfoProto o in graph.Output)
        {
            if (o.Name.Length > 0 && !defined.Contains(o.Name))
            {
                reads.Add(o.Name);
            }
        }
        return reads;
    }
}
