using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Onnx;

/// <summary>Visits every graph of a model (main graph, If/Loop/Scan bodies, function bodies, training graphs) and every tensor stored in them.</summary>
public static class ModelWalker
{
    /// <summary>All graphs, outermost first, each with its nesting depth (main graph = 0).</summary>
    public static IEnumerable<(GraphProto Graph, int Depth)> Graphs(ModelProto model)
    {
        var result = new List<(GraphProto, int)>();
        if (model.Graph != null)
        {
            AddGraph(model.Graph, 0, result);
        }
        foreach (FunctionProto f in model.Functions)
        {
            foreach (NodeProto n in f.Node)
            {
                AddNodeSubgraphs(n, 1, result);
            }
        }
        foreach (TrainingInfoProto ti in model.TrainingInfo)
        {
            if (ti.Initialization != null)
            {
                AddGraph(ti.Initialization, 0, result);
            }
            if (ti.Algorithm != null)
            {
                AddGraph(ti.Algorithm, 0, result);
            }
        }
        return result;
    }

    /// <summary>Every dense tensor stored in the model: initializers, sparse values/indices, and tensors in node attributes.</summary>
    public static IEnumerable<TensorProto> Tensors(ModelProto model)
    {
        var result = new List<TensorProto>();
        foreach ((GraphProto g, _) in Graphs(model))
        {
            result.AddRange(g.Initializer);
            foreach (SparseTensorProto s in g.SparseInitializer)
            {
                AddSparse(s, result);
            }
            foreach (NodeProto n in g.Node)
            {
                AddAttributeTensors(n.Attribute, result);
            }
        }
        foreach (FunctionProto f in model.Functions)
        {
            foreach (NodeProto n in f.Node)
            {
                AddAttributeTensors(n.Attribute, result);
            }
        }
        return result;
    }

    private static void AddAttributeTensors(IEnumerable<AttributeProto> attributes, List<TensorProto> result)
    {
        foreach (AttributeProto a in attributes)
        {
            if (a.T != null)
            {
                result.Add(a.T);
            }
            result.AddRange(a.Tensors);
            if (a.SparseTensor != null)
            {
                AddSparse(a.SparseTensor, result);
            }
            foreach (SparseTensorProto s in a.SparseTensors)
            {
                AddSparse(s, result);
            }
        }
    }

    private static void AddSparse(SparseTensorProto s, List<TensorProto> result)
    {
        if (s.Values != null)
        {
            result.Add(s.Values);
        }
        if (s.Indices != null)
        {
            result.Add(s.Indices);
        }
    }

    private static void AddGraph(GraphProto g, int depth, List<(GraphProto, int)> result)
    {
        result.Add((g, depth));
        foreach (NodeProto n in g.Node)
        {
            AddNodeSubgraphs(n, depth + 1, result);
        }
    }

    private static void AddNodeSubgraphs(NodeProto n, int depth, List<(GraphProto, int)> result)
    {
        foreach (GraphProto sub in Subgraphs(n))
        {
            AddGraph(sub, depth, result);
        }
    }

    /// <summary>The graphs held directly in the attributes of <paramref name="node"/> (If branches, Loop/Scan bodies).</summary>
    public static IEnumerable<GraphProto> Subgraphs(NodeProto node)
    {
        foreach (AttributeProto a in node.Attribute)
        {
            if (a.G != null)
            {
                yield return a.G;
            }
            foreach (GraphProto g in a.Graphs)
            {
                yield return g;
            }
        }
    }
}
