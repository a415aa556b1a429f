using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Graph;

/// <summary>
/// Einsum nodes that are dense layers - one operand a constant float32 weight, the equation contracting the trailing
/// axes of the activation with the leading axes of the weight ("abc,cde-&gt;abde", "abcd,cde-&gt;abe", Keras EinsumDense
/// as older tf2onnx versions export it) or the weight's trailing axes ("abc,dc-&gt;abd") - rewritten as
/// Reshape -&gt; MatMul -&gt; Reshape with the weight viewed as a [K, N] matrix (Reshape, plus a Transpose when the weight
/// holds its contracted axes last), so the weight-site finder sees an ordinary MatMul. Same values: only the
/// operator changes. Other equations (batch axes shared with the weight, repeated letters, ellipses, outputs in
/// another order) are left as they are.
/// </summary>
internal static class DenseEinsum
{
    /// <summary>Rewrites the dense Einsum nodes of <paramref name="g"/>; returns how many.</summary>
    public static int Rewrite(PassGraph g, string displayName)
    {
        int rewritten = 0;
        foreach (NodeProto n in g.Graph.Node.ToList())
        {
            if (!OnnxNames.Is(n, "Einsum") || n.Input.Count != 2 || n.Output.Count != 1
                || n.Attribute.FirstOrDefault(a => a.Name == "equation") is not { } eq)
            {
                continue;
            }
            string equation = eq.S.ToStringUtf8().Replace(" ", "", StringComparison.Ordinal);
            for (int w = 1; w >= 0; w--)
            {
                if (g.TryResolveConstant(n.Input[w], displayName, out ResolvedConstant? weight, out _)
                    && weight!.Tensor.DataType == (int)TensorProto.Types.DataType.Float
                    && !g.TryResolveConstant(n.Input[1 - w], displayName, out _, out _)
                    && Plan(equation, w, weight.Dims) is { } plan)
                {
                    Lower(g, n, w, plan);
                    rewritten++;
                    break;
                }
            }
        }
        if (rewritten > 0)
        {
            g.Commit();
        }
        return rewritten;
    }

    /// <summary>How a dense equation maps to MatMul: batch axes kept, K = contracted size, the weight's free dims, and whether the weight holds [free..., contracted...].</summary>
    private sealed record DensePlan(int Batch, int Contracted, long K, long[] FreeDims, bool WeightFreeFirst);

    private static DensePlan? Plan(string equation, int weightIndex, long[] weightDims)
    {
        string[] sides = equation.Split("->");
        if (sides.Length > 2)
        {
            return null;
        }
        string[] terms = sides[0].Split(',');
        if (terms.Length != 2 || terms.Any(t => t.Length == 0 || !t.All(char.IsAsciiLetter) || t.Distinct().Count() != t.Length))
        {
            return null;
        }
        string x = terms[1 - weightIndex], w = terms[weightIndex];
        string output = sides.Length == 2
            ? sides[1]
            : new string([.. (x + w).GroupBy(c => c).Where(c => c.Count() == 1).Select(c => c.Key).Order()]);
        if (!output.All(char.IsAsciiLetter) || output.Distinct().Count() != output.Length || w.Length != weightDims.Length)
        {
            return null;
        }
        string contracted = new([.. x.Where(c => w.Contains(c) && !output.Contains(c))]);
        string batch = new([.. x.Where(c => !w.Contains(c))]);
        string free = new([.. w.Where(c => !x.Contains(c))]);
        // Dense: x = batch + contracted, output = batch + free, weight = contracted + free or free + contracted,
        // every letter accounted for (none summed away alone, none shared by x, weight and output).
        bool weightContractedFirst = w == contracted + free, weightFreeFirst = w == free + contracted;
        if (contracted.Length == 0 || batch.Length == 0 || free.Length == 0 || x != batch + contracted || output != batch + free
            || !(weightContractedFirst || weightFreeFirst))
        {
            return null;
        }
        long[] freeDims = [.. free.Select(c => weightDims[w.IndexOf(c, StringComparison.Ordinal)])];
        long k = contracted.Select(c => weightDims[w.IndexOf(c, StringComparison.Ordinal)]).Aggregate(1L, (a, b) => a * b);
        if (k <= 0 || freeDims.Any(d => d <= 0))
        {
            return null;
        }
        return new DensePlan(batch.Length, contracted.Length, k, freeDims, !weightContractedFirst);
    }

    private static void Lower(PassGraph g, NodeProto einsum, int weightIndex, DensePlan plan)
    {
        string label = OnnxNames.Label(einsum);
        var nodes = new List<NodeProto>();
        string Shape(string suffix, long[] values)
        {
            string name = g.Unique(label + suffix);
            g.AddInitializer(TensorUtil.FromInt64(name, values, values.Length));
            return name;
        }
        long n = plan.FreeDims.Aggregate(1L, (a, b) => a * b);
        string x = einsum.Input[1 - weightIndex];
        if (plan.Contracted > 1)
        {
            string flat = g.Unique(label + "_x2d");
            nodes.Add(g.Node("Reshape", null, [x, Shape("_x_shape", [.. Enumerable.Repeat(0L, plan.Batch), -1])], [flat]));
            x = flat;
        }
        string weight = g.Unique(label + "_w2d");
        long[] weightShape = plan.WeightFreeFirst ? [n, plan.K] : [plan.K, n];
        nodes.Add(g.Node("Reshape", null, [einsum.Input[weightIndex], Shape("_w_shape", weightShape)], [weight]));
        if (plan.WeightFreeFirst)
        {
            string transposed = g.Unique(label + "_wt");
            NodeProto t = g.Node("Transpose", null, [weight], [transposed]);
            t.Attribute.Add(new AttributeProto { Name = "perm", Type = AttributeProto.Types.AttributeType.Ints, Ints = { 1, 0 } });
            nodes.Add(t);
            weight = transposed;
        }
        bool reshapeOut = plan.FreeDims.Length > 1;
        string product = reshapeOut ? g.Unique(label + "_mm") : einsum.Output[0];
        // The MatMul takes the Einsum's label as its name, so options and reports that name the layer still find it.
        var matmul = new NodeProto { OpType = "MatMul", Name = label };
        matmul.Input.Add(x);
        matmul.Input.Add(weight);
        matmul.Output.Add(product);
        nodes.Add(matmul);
        if (reshapeOut)
        {
            nodes.Add(g.Node("Reshape", null, [product, Shape("_y_shape", [.. Enumerable.Repeat(0L, plan.Batch), .. plan.FreeDims])], [einsum.Output[0]]));
        }
        g.Replace(einsum, nodes);
    }
}
