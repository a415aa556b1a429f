using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization;

/// <summary>
/// What the lowerings of one pass run share: the graph index, the options every scheme has (excluded nodes,
/// minimum weight size), the results (quantized and skipped layers, weight bytes), the float constants to remove at
/// the end, the opsets the rewrites need, and a per-weight memo so a weight read by several nodes is encoded once.
/// Each scheme derives its own context with its options and weight encoding.
/// </summary>
internal abstract class LoweringContext
{
    private readonly Dictionary<string, object> _encoded = new(StringComparer.Ordinal);
    private readonly List<(string Domain, long Version)> _opsets = [];
    private readonly Dictionary<string, string> _asFloat = new(StringComparer.Ordinal);

    protected LoweringContext(PassGraph graph, string displayName, IReadOnlyCollection<string> excludedNodes, long minimumWeightElements)
    {
        Graph = graph;
        DisplayName = displayName;
        Excluded = new HashSet<string>(excludedNodes, StringComparer.Ordinal);
        MinimumWeightElements = minimumWeightElements;
    }

    /// <summary>The graph being quantized: the main graph, or an If/Loop/Scan body while the driver lowers its sites.</summary>
    public PassGraph Graph { get; private set; }

    /// <summary>The model's name in messages and CMPR codes.</summary>
    public string DisplayName { get; }

    /// <summary>Labels (name, else first output) of nodes that stay float (NodesToExclude, OpTypesToQuantize, the tuner).</summary>
    public IReadOnlySet<string> Excluded { get; }

    /// <summary>Weights with fewer elements stay float.</summary>
    public long MinimumWeightElements { get; }

    /// <summary>The largest weight the in-memory lowerings encode (one int-indexed float array, with room for a copy).</summary>
    public const long InMemoryMaximumWeightElements = int.MaxValue / 2;

    /// <summary>
    /// Weights with more elements stay float (<see cref="WeightSites.MatrixSite(LoweringContext, NodeProto, Action{string})"/>):
    /// <see cref="InMemoryMaximumWeightElements"/> unless the weights are never held whole (the streaming int8 path reads them in chunks).
    /// </summary>
    public long MaximumWeightElements { get; init; } = InMemoryMaximumWeightElements;

    public List<QuantizedNode> Quantized { get; } = [];

    public List<SkippedNode> Skipped { get; } = [];

    /// <summary>Bytes of the float weights replaced.</summary>
    public long FloatWeightBytes { get; set; }

    /// <summary>Bytes of the codes, scales, zero points and biases that replaced them.</summary>
    public long QuantizedWeightBytes { get; set; }

    /// <summary>Float constants no longer read by the lowered nodes; removed at the end when nothing else reads them.</summary>
    public ReplacedConstants Replaced { get; private set; } = new();

    /// <summary>
    /// Makes <paramref name="scope"/> (the main graph or a body, see <see cref="PassGraph.WithSubgraphs"/>) the graph
    /// the lowerings work on. Encodings and replaced constants are per graph: what one graph stores is not visible in a
    /// sibling body.
    /// </summary>
    public virtual void UseScope(PassGraph scope)
    {
        Graph = scope;
        Replaced = new ReplacedConstants();
        _encoded.Clear();
        _asFloat.Clear();
    }

    /// <summary>
    /// The encoding stored under <paramref name="key"/>, made by <paramref name="encode"/> the first time (a weight
    /// shared by nodes whose lowerings agree on the key is stored once). Keys are per scheme; prefix them with the
    /// operator family ("matrix|", "conv|", "table|") when layouts differ.
    /// </summary>
    public T Encoded<T>(string key, Func<T> encode) where T : notnull
    {
        if (_encoded.TryGetValue(key, out object? done))
        {
            return (T)done;
        }
        T value = encode();
        _encoded[key] = value;
        return value;
    }

    /// <summary>
    /// The usual end of <see cref="IOperatorLowering.Lower"/>: <paramref name="site"/>'s node replaced by
    /// <paramref name="nodes"/>, its weight marked for removal once unused, and the layer reported as quantized.
    /// </summary>
    public void ReplaceSite(WeightSite site, IReadOnlyList<NodeProto> nodes, int rows, int columns, float maxError)
    {
        Graph.Replace(site.Node, nodes);
        Replaced.Add(site.WeightName, site.Weight);
        Quantized.Add(new QuantizedNode(OnnxNames.Label(site.Node), site.Node.OpType, site.WeightName, rows, columns, maxError));
    }

    /// <summary>
    /// The float32 value of the float16 initializer <paramref name="half"/> (<see cref="HalfScales"/>): the output of one
    /// Cast per graph, added to <paramref name="inserted"/> by the first lowering that reads it (sites are lowered in
    /// graph order, so it comes before every reader).
    /// </summary>
    public string AsFloat32(string half, List<NodeProto> inserted)
    {
        if (!_asFloat.TryGetValue(half, out string? name))
        {
            name = Graph.Unique(half + "_f32");
            inserted.Add(Graph.Cast(half, name, TensorProto.Types.DataType.Float));
            _asFloat[half] = name;
        }
        return name;
    }

    /// <summary>Asks for <paramref name="domain"/> at <paramref name="version"/> or later, applied when the pass has quantized something.</summary>
    public void RequireOpset(string domain, long version) => _opsets.Add((domain, version));

    /// <summary>Float data of a tensor, or CMPR0103 when it cannot be read.</summary>
    public float[] Floats(TensorProto t) => Graph.FloatsOf(t, DisplayName);

    /// <summary>
    /// True when no element of the float tensor <paramref name="t"/> is NaN or infinity; raw float32 data is checked in
    /// place (a pass checks every weight before lowering any: copies of them all would be garbage of the model's size).
    /// </summary>
    public bool AllFinite(TensorProto t) =>
        TensorUtil.TryGetRawFloats(t, out ReadOnlySpan<float> values) ? TensorStats.AllFinite(values) : TensorStats.AllFinite(Floats(t));

    /// <summary>See <see cref="PassGraph.TryResolveConstant"/>.</summary>
    public bool TryResolveConstant(string name, out ResolvedConstant? value, out string? why) => Graph.TryResolveConstant(name, DisplayName, out value, out why);

    /// <summary>Called once with every site after all are found and checked, before the first <see cref="IOperatorLowering.Lower"/>.</summary>
    public virtual void Prepare(IReadOnlyList<WeightSite> sites)
    {
    }

    /// <summary>
    /// Writes the requested opsets (in the order first asked). A raise of the default domain rewrites the nodes whose
    /// meaning changed on the way (<see cref="OpsetRaise"/>; a lowering asks only after checking <see cref="OpsetRaise.BlockingReason"/>).
    /// </summary>
    internal void ApplyOpsets()
    {
        foreach ((string domain, long version) in _opsets)
        {
            if (domain.Length == 0)
            {
                OpsetRaise.Raise(Graph.Model, version);
            }
            else
            {
                Graph.EnsureOpset(domain, version);
            }
        }
    }
}
