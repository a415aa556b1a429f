using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization;

/// <summary>
/// The float constants a pass has replaced (initializers, Constant nodes and the Reshape chains that computed them),
/// removed at the end once nothing reads them any more.
/// </summary>
internal sealed class ReplacedConstants
{
    private readonly List<NodeProto> _nodes = [];
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);

    /// <summary>The constant read as <paramref name="name"/>, its source and what computed it.</summary>
    public void Add(string name, ResolvedConstant value)
    {
        _nodes.AddRange(value.Chain);
        _names.Add(value.SourceName);
        _names.UnionWith(value.ChainInputs);
        _names.Add(name);
    }

    /// <summary>An initializer read by a replaced node.</summary>
    public void Add(string initializer) => _names.Add(initializer);

    /// <summary>Drops the replaced nodes, initializers and value_info that nothing uses any more (one pass over the graph per level of the chains).</summary>
    public void RemoveUnused(PassGraph g)
    {
        g.Commit();
        var pending = new HashSet<NodeProto>(_nodes, ReferenceEqualityComparer.Instance);
        bool changed = true;
        while (changed)
        {
            changed = false;
            HashSet<string> used = g.OuterUses();
            used.UnionWith(g.NodeInputs());
            foreach (NodeProto n in pending.Where(n => !n.Output.Any(used.Contains)).ToList())
            {
                pending.Remove(n);
                if (n.Output.Count > 0 && g.Producers.TryGetValue(n.Output[0], out NodeProto? p) && ReferenceEquals(p, n))
                {
                    g.RemoveNode(n);
                    changed = true;
                    foreach (string o in n.Output)
                    {
                        g.DropValueInfo(o);
                    }
                }
            }
            g.Commit();
            var unused = _names.Where(name => g.IsConstantInitializer(name) && !used.Contains(name)).ToHashSet(StringComparer.Ordinal);
            g.RemoveInitializers(unused);
            changed |= unused.Count > 0;
        }
    }
}
