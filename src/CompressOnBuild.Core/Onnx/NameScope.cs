namespace CompressOnBuild.Core.Onnx;

/// <summary>
/// The names visible in one graph: its own (<see cref="Local"/>), then those of the graphs around it. A nested graph
/// (If/Loop/Scan body) gets a scope whose parent is its enclosing graph's, instead of a copy of every name the
/// enclosing graphs define: copying made checking and sorting a model with 10^4 bodies quadratic in its size.
/// </summary>
internal sealed class NameScope(NameScope? parent)
{
    public HashSet<string> Local { get; } = new(StringComparer.Ordinal);

    public NameScope? Parent { get; } = parent;

    /// <summary>True when this graph or one around it defines <paramref name="name"/>.</summary>
    public bool Contains(string name)
    {
        for (NameScope? s = this; s != null; s = s.Parent)
        {
            if (s.Local.Contains(name))
            {
                return true;
            }
        }
        return false;
    }
}
