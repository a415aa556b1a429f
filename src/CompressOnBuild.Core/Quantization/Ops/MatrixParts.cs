using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization.Ops;

/// <summary>
/// The pieces every MatMul/Gemm lowering shares, whatever the scheme: the [K, N] shape of a site, Gemm's transA
/// as a Transpose node, and Gemm's beta*C as a bias input when C is a constant vector (else a Mul/Add after the
/// quantized product).
/// </summary>
internal static class MatrixParts
{
    /// <summary>K (reduction) and N (output channels) of a MatMul/Gemm site's weight.</summary>
    public static (int K, int N) Shape(WeightSite c) => c.TransB
        ? ((int)c.Weight.Dims[1], (int)c.Weight.Dims[0])
        : ((int)c.Weight.Dims[0], (int)c.Weight.Dims[1]);

    /// <summary>Input A of the site, through an inserted Transpose when Gemm has transA.</summary>
    public static string InputA(LoweringContext context, WeightSite c, List<NodeProto> inserted)
    {
        string a = c.Node.Input[0];
        if (!c.TransA)
        {
            return a;
        }
        string transposed = context.Graph.Unique(a + "_transposed");
        NodeProto t = context.Graph.Node("Transpose", null, [a], [transposed]);
        t.Attribute.Add(new AttributeProto { Name = "perm", Type = AttributeProto.Types.AttributeType.Ints, Ints = { 1, 0 } });
        inserted.Add(t);
        return transposed;
    }

    /// <summary>
    /// Gemm's beta*C for the quantized product <paramref name="q"/> (whose output is the Gemm's): nothing without C or
    /// with beta 0; <paramref name="attachBias"/> with a new [N] initializer when C is a constant of N elements (or one);
    /// otherwise q writes a new value and Add(q, C) (after Mul(C, beta) when beta != 1) writes the Gemm's output.
    /// </summary>
    public static void AddGemmC(LoweringContext context, WeightSite c, int n, NodeProto q, List<NodeProto> inserted, Action<string> attachBias)
    {
        NodeProto node = c.Node;
        if (node.Input.Count <= 2 || node.Input[2].Length == 0 || c.Beta == 0f)
        {
            return;
        }
        string cName = node.Input[2];
        if (BiasVector(context, cName, c.Beta, n) is { } bias)
        {
            attachBias(bias);
            return;
        }
        PassGraph g = context.Graph;
        string label = OnnxNames.Label(node);
        string product = g.Unique(label + "_matmul");
        q.Output[0] = product;
        string addend = cName;
        if (c.Beta != 1f)
        {
            string betaName = g.Unique(label + "_beta");
            g.AddInitializer(TensorUtil.FromFloats(betaName, [c.Beta]));
            addend = g.Unique(cName + "_scaled");
            inserted.Add(g.Node("Mul", null, [cName, betaName], [addend]));
        }
        inserted.Add(g.Node("Add", null, [product, addend], [node.Output[0]]));
    }

    /// <summary>beta * C as a new float [N] initializer when C is a constant with N elements (or one); else null.</summary>
    public static string? BiasVector(LoweringContext context, string cName, float beta, int n)
    {
        if (!context.TryResolveConstant(cName, out ResolvedConstant? cv, out _) || cv!.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
        {
            return null;
        }
        long count = cv.Dims.Aggregate(1L, (a, b) => a * b);
        bool vector = count == n && (cv.Dims.Length == 1 || (cv.Dims.Length == 2 && cv.Dims[0] == 1));
        if (!vector && count != 1)
        {
            return null;
        }
        float[] values = PassGraph.BiasValues(context.Floats(cv.Tensor), vector, n, beta);
        string bias = context.Graph.Unique(cName + "_bias");
        context.Graph.AddInitializer(TensorUtil.FromFloats(bias, values, n));
        context.QuantizedWeightBytes += (long)n * 4;
        context.Replaced.Add(cName, cv);
        return bias;
    }
}
