using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Onnx;

/// <summary>
/// Structural checks run before any pass: IR and opset present, known data types, tensors whose data agrees with
/// their dims, every node input produced by something (graph input, initializer, an earlier node, or an enclosing
/// graph), every graph output produced, no value produced twice, and the shapes of the weights the passes touch.
/// Nodes listed out of topological order are first sorted in place (<see cref="TopologicalSort"/>, stable), as ONNX
/// Runtime accepts such models; only dangling names and cycles are refused.
/// Throws CMPR0103 naming the model and the first problem found.
/// </summary>
public static class ModelChecker
{
    public const long MinIrVersion = 3;
    public const long MaxIrVersion = 12;

    public static void Validate(ModelProto model, string displayName)
    {
        CompressException Fail(string why) => new(DiagnosticCodes.ModelInvalid, displayName, why) { File = displayName };

        if (model.IrVersion < MinIrVersion || model.IrVersion > MaxIrVersion)
        {
            throw Fail($"IR version {model.IrVersion} is outside the supported range {MinIrVersion}..{MaxIrVersion}");
        }
        if (model.OpsetImport.Count == 0)
        {
            throw Fail("it imports no operator set (opset_import is empty)");
        }
        var seenDomains = new HashSet<string>(StringComparer.Ordinal);
        foreach (OperatorSetIdProto o in model.OpsetImport)
        {
            string domain = NormalizeDomain(o.Domain);
            if (!seenDomains.Add(domain))
            {
                throw Fail($"operator set '{(domain.Length == 0 ? "ai.onnx" : domain)}' is imported twice");
            }
            if (o.Version <= 0)
            {
                throw Fail($"operator set '{(domain.Length == 0 ? "ai.onnx" : domain)}' has version {o.Version}");
            }
        }
        foreach (TensorProto t in ModelWalker.Tensors(model))
        {
            string? problem = TensorUtil.CheckDataConsistency(t);
            if (problem != null)
            {
                throw Fail($"tensor '{t.Name}' {problem}");
            }
        }
        if (model.Graph == null)
        {
            throw Fail("it has no graph");
        }
        TopologicalSort.Sort(model, displayName);
        CheckGraph(model.Graph, null, Fail, isMain: true);
    }

    public static string NormalizeDomain(string domain) => domain == "ai.onnx" ? "" : domain;

    /// <param name="outer">What the enclosing graphs define up to the node holding this graph (null for the main graph).</param>
    private static void CheckGraph(GraphProto graph, NameScope? outer, Func<string, CompressException> fail, bool isMain)
    {
        var known = new NameScope(outer);
        var producedHere = new HashSet<string>(StringComparer.Ordinal);
        // by: the node defining name, null for a graph input (which may repeat an initializer's name).
        void Define(string name, NodeProto? by)
        {
            if (name.Length == 0)
            {
                return;
            }
            if (!producedHere.Add(name) && by != null)
            {
                throw fail($"value '{name}' is defined more than once (again by node {NodeLabel(by)})");
            }
            known.Local.Add(name);
        }
        foreach (ValueInfoProto v in graph.Input)
        {
            CheckValueType(v, fail);
            Define(v.Name, null);
        }
        var initializerNames = new HashSet<string>(StringComparer.Ordinal);
        foreach (TensorProto t in graph.Initializer)
        {
            if (string.IsNullOrEmpty(t.Name))
            {
                throw fail("an initializer has no name");
            }
            if (!initializerNames.Add(t.Name))
            {
                throw fail($"initializer '{t.Name}' is defined more than once");
            }
            known.Local.Add(t.Name);
            producedHere.Add(t.Name);
        }
        foreach (SparseTensorProto s in graph.SparseInitializer)
        {
            string name = s.Values?.Name ?? "";
            if (name.Length == 0 || !initializerNames.Add(name))
            {
                throw fail($"sparse initializer '{name}' has no name or repeats another initializer's name");
            }
            known.Local.Add(name);
            producedHere.Add(name);
        }
        var initializers = graph.Initializer.ToDictionary(t => t.Name, StringComparer.Ordinal);
        foreach (NodeProto node in graph.Node)
        {
            foreach (string input in node.Input)
            {
                if (input.Length > 0 && !known.Contains(input))
                {
                    throw fail($"node {NodeLabel(node)} uses '{input}', which no graph input, initializer or earlier node produces");
                }
            }
            foreach (GraphProto g in ModelWalker.Subgraphs(node))
            {
                CheckGraph(g, known, fail, isMain: false);
            }
            CheckWeightShapes(node, initializers, fail);
            foreach (string output in node.Output)
            {
                Define(output, node);
            }
        }
        foreach (ValueInfoProto o in graph.Output)
        {
            if (!known.Contains(o.Name))
            {
                throw fail($"graph output '{o.Name}' is produced by no node, input or initializer");
            }
            if (isMain)
            {
                CheckValueType(o, fail);
            }
        }
    }

    private static void CheckValueType(ValueInfoProto v, Func<string, CompressException> fail)
    {
        if (v.Type?.TensorType is { } tt && tt.HasElemType && !TensorUtil.IsKnownDataType(tt.ElemType))
        {
            throw fail($"value '{v.Name}' has the unknown element type {tt.ElemType}");
        }
    }

    private static void CheckWeightShapes(NodeProto node, Dictionary<string, TensorProto> initializers, Func<string, CompressException> fail)
    {
        if (node.Domain.Length != 0 && node.Domain != "ai.onnx")
        {
            return;
        }
        TensorProto? Weight(int index) => node.Input.Count > index && initializers.TryGetValue(node.Input[index], out TensorProto? t) ? t : null;
        switch (node.OpType)
        {
            case "Gemm":
                if (Weight(1) is { } b && b.Dims.Count != 2)
                {
                    throw fail($"node {NodeLabel(node)}: Gemm weight '{b.Name}' has rank {b.Dims.Count}, Gemm needs rank 2");
                }
                break;
            case "MatMul":
                if (Weight(1) is { } w && w.Dims.Count < 1)
                {
                    throw fail($"node {NodeLabel(node)}: MatMul weight '{w.Name}' is a scalar");
                }
                break;
            case "Conv":
                if (Weight(1) is { } k && k.Dims.Count < 3)
                {
                    throw fail($"node {NodeLabel(node)}: Conv weight '{k.Name}' has rank {k.Dims.Count}, Conv needs rank 3 or more");
                }
                if (Weight(1) is { } k2 && Weight(2) is { } bias && (bias.Dims.Count != 1 || bias.Dims[0] != k2.Dims[0]))
                {
                    throw fail($"node {NodeLabel(node)}: Conv bias '{bias.Name}' has shape [{string.Join(",", bias.Dims)}] but the weight has {k2.Dims[0]} output channels");
                }
                break;
        }
    }

    public static string NodeLabel(NodeProto node) =>
        string.IsNullOrEmpty(node.Name) ? $"{node.OpType}(->{node.Output.FirstOrDefault()})" : $"'{node.Name}' ({node.OpType})";
}
