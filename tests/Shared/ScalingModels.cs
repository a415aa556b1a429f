using System.Globalization;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Tests;

/// <summary>
/// Large graphs of small weights for the scaling benchmark (CompressOnBuild.Benchmarks --graph-scaling) and the
/// large-graph tests: the node count, not the weight bytes, is what grows. Every shape holds about <c>nodes</c> nodes,
/// counting the nodes inside If branches. "mixed" holds the patterns the passes rewrite before quantizing
/// (Conv+BatchNormalization, Relu+MaxPool, a weight behind Transpose(Constant), Conv + constant Add).
/// </summary>
internal static class ScalingModels
{
    /// <summary>The shapes: "chain" (MatMul+Add, as exporters write Linear layers), "conv" (two parallel Convs, Add, Relu per block: fan-out and joins), "if" (If with a MatMul in each branch, then a bias Add; the weights are main-graph initializers each read by one branch).</summary>
    public static readonly string[] Shapes = ["chain", "conv", "if", "mixed"];

    /// <summary>Width of the chain and If models (weights [16, 16]).</summary>
    public const int Width = 16;

    /// <summary>Channels of the conv model (on a 4x4 image).</summary>
    public const int Channels = 8;

    public static ModelProto Make(string shape, int nodes) => shape switch
    {
        "chain" => Chain(Math.Max(1, nodes / 2)),
        "conv" => ConvBlocks(Math.Max(1, nodes / 4)),
        "if" => IfBlocks(Math.Max(1, nodes / 4)),
        "mixed" => MixedBlocks(Math.Max(1, nodes / 9)),
        _ => throw new ArgumentException($"unknown shape '{shape}' (one of {string.Join(", ", Shapes)})"),
    };

    /// <summary>
    /// Values in [-scale, scale], different for every layer: ONNX Runtime's session setup compares equal initializers
    /// byte by byte (constant sharing), so a model of 50,000 identical weights measures that instead of the graph.
    /// </summary>
    private static float[] Values(Random rng, int count, float scale)
    {
        var v = new float[count];
        for (int i = 0; i < count; i++)
        {
            v[i] = (rng.NextSingle() * 2 - 1) * scale;
        }
        return v;
    }

    /// <summary>Node count, nested graphs included.</summary>
    public static int CountNodes(ModelProto model) => ModelWalker.Graphs(model).Sum(g => g.Graph.Node.Count);

    /// <summary>
    /// x[N,16] -> MatMul(w_i [16, 16]) -> Add(b_i) -> ... -> y with value_info for every intermediate value (as
    /// <c>TinyModels.MatMulChain</c>), weights small enough (gain about 0.5 per layer) that 50,000 layers neither overflow
    /// nor vanish: each layer pulls toward the same fixed point, so ONNX Runtime's outputs stay finite.
    /// </summary>
    private static ModelProto Chain(int layers)
    {
        var g = new GraphProto { Name = "chain" };
        g.Input.Add(FloatValue("x", "N", Width));
        var rng = new Random(1);
        string previous = "x";
        for (int i = 0; i < layers; i++)
        {
            string mm = "mm" + i.ToString(CultureInfo.InvariantCulture);
            string y = i == layers - 1 ? "y" : "h" + i.ToString(CultureInfo.InvariantCulture);
            g.Initializer.Add(TensorUtil.FromFloats("w" + mm, Values(rng, Width * Width, 0.2f), Width, Width));
            g.Initializer.Add(TensorUtil.FromFloats("b" + mm, Values(rng, Width, 0.5f), Width));
            g.Node.Add(Node("MatMul", [previous, "w" + mm], [mm + "_out"], mm));
            g.Node.Add(Node("Add", [mm + "_out", "b" + mm], [y], mm + "_add"));
            g.ValueInfo.Add(FloatValue(mm + "_out", "N", Width));
            if (y != "y")
            {
                g.ValueInfo.Add(FloatValue(y, "N", Width));
            }
            previous = y;
        }
        g.Output.Add(FloatValue("y", "N", Width));
        return Model(g);
    }

    /// <summary>x[N,8,4,4] -> blocks of h = Relu(Conv1x1(h) + Conv3x3(h)) -> y.</summary>
    private static ModelProto ConvBlocks(int blocks)
    {
        var g = new GraphProto { Name = "conv" };
        g.Input.Add(FloatValue("x", "N", Channels, 4, 4));
        var rng = new Random(11);
        string h = "x";
        for (int i = 0; i < blocks; i++)
        {
            string s = i.ToString(CultureInfo.InvariantCulture);
            string y = i == blocks - 1 ? "y" : "h" + s;
            g.Initializer.Add(TensorUtil.FromFloats("wa" + s, Values(rng, Channels * Channels, 0.3f), Channels, Channels, 1, 1));
            g.Initializer.Add(TensorUtil.FromFloats("ba" + s, Values(rng, Channels, 0.1f), Channels));
            g.Initializer.Add(TensorUtil.FromFloats("wb" + s, Values(rng, Channels * Channels * 9, 0.1f), Channels, Channels, 3, 3));
            g.Node.Add(Node("Conv", [h, "wa" + s, "ba" + s], ["ca" + s], "conva" + s));
            g.Node.Add(Node("Conv", [h, "wb" + s], ["cb" + s], "convb" + s, IntsAttr("pads", 1, 1, 1, 1)));
            g.Node.Add(Node("Add", ["ca" + s, "cb" + s], ["s" + s], "add" + s));
            g.Node.Add(Node("Relu", ["s" + s], [y], "relu" + s));
            h = y;
        }
        g.Output.Add(FloatValue("y", "N", Channels, 4, 4));
        return Model(g);
    }

    /// <summary>
    /// x[N,8,4,4] -> blocks of Conv(wa) -> BatchNormalization -> Relu -> MaxPool(1x1) -> Conv(Transpose(Constant)) ->
    /// Add(per-channel constant) -> Relu -> y (9 nodes per block).
    /// </summary>
    private static ModelProto MixedBlocks(int blocks)
    {
        var g = new GraphProto { Name = "mixed" };
        g.Input.Add(FloatValue("x", "N", Channels, 4, 4));
        var rng = new Random(31);
        string h = "x";
        for (int i = 0; i < blocks; i++)
        {
            string s = i.ToString(CultureInfo.InvariantCulture);
            string y = i == blocks - 1 ? "y" : "h" + s;
            float[] w = Values(rng, Channels * Channels, 0.3f);
            float[] scale = [.. Values(rng, Channels, 0.2f).Select(v => 1 + v)];
            float[] shift = Values(rng, Channels, 0.1f);
            float[] mean = Values(rng, Channels, 0.1f);
            float[] variance = [.. Values(rng, Channels, 0.2f).Select(v => 1 + v)];
            float[] bias = Values(rng, Channels, 0.2f);
            g.Initializer.Add(TensorUtil.FromFloats("wa" + s, w, Channels, Channels, 1, 1));
            g.Initializer.Add(TensorUtil.FromFloats("bn_scale" + s, scale, Channels));
            g.Initializer.Add(TensorUtil.FromFloats("bn_shift" + s, shift, Channels));
            g.Initializer.Add(TensorUtil.FromFloats("bn_mean" + s, mean, Channels));
            g.Initializer.Add(TensorUtil.FromFloats("bn_var" + s, variance, Channels));
            g.Initializer.Add(TensorUtil.FromFloats("bias" + s, bias, 1, Channels, 1, 1));
            g.Node.Add(Node("Conv", [h, "wa" + s], ["ca" + s], "conva" + s));
            g.Node.Add(Node("BatchNormalization", ["ca" + s, "bn_scale" + s, "bn_shift" + s, "bn_mean" + s, "bn_var" + s], ["bn" + s], "bn" + s));
            g.Node.Add(Node("Relu", ["bn" + s], ["r" + s], "relu_a" + s));
            g.Node.Add(Node("MaxPool", ["r" + s], ["p" + s], "pool" + s, IntsAttr("kernel_shape", 1, 1)));
            NodeProto constant = Node("Constant", [], ["wc" + s], "const" + s);
            constant.Attribute.Add(new AttributeProto { Name = "value", Type = AttributeProto.Types.AttributeType.Tensor, T = TensorUtil.FromFloats("wc" + s, Values(rng, Channels * Channels, 0.3f), Channels, Channels, 1, 1) });
            g.Node.Add(constant);
            g.Node.Add(Node("Transpose", ["wc" + s], ["wt" + s], "transpose" + s, IntsAttr("perm", 1, 0, 2, 3)));
            g.Node.Add(Node("Conv", ["p" + s, "wt" + s], ["cb" + s], "convb" + s));
            g.Node.Add(Node("Add", ["cb" + s, "bias" + s], ["s" + s], "add" + s));
            g.Node.Add(Node("Relu", ["s" + s], [y], "relu_b" + s));
            h = y;
        }
        g.Output.Add(FloatValue("y", "N", Channels, 4, 4));
        return Model(g);
    }

    /// <summary>x[N,16], c (bool) -> blocks of h = If(c, then: h x Wt, else: h x We) + b -> y; the weights are initializers of the main graph.</summary>
    private static ModelProto IfBlocks(int blocks)
    {
        var g = new GraphProto { Name = "branches" };
        g.Input.Add(FloatValue("x", "N", Width));
        g.Input.Add(new ValueInfoProto
        {
            Name = "c",
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Bool, Shape = new TensorShapeProto() } },
        });
        var rng = new Random(21);
        string h = "x";
        for (int i = 0; i < blocks; i++)
        {
            string s = i.ToString(CultureInfo.InvariantCulture);
            string y = i == blocks - 1 ? "y" : "h" + s;
            g.Initializer.Add(TensorUtil.FromFloats("wt" + s, Values(rng, Width * Width, 0.2f), Width, Width));
            g.Initializer.Add(TensorUtil.FromFloats("we" + s, Values(rng, Width * Width, 0.2f), Width, Width));
            g.Initializer.Add(TensorUtil.FromFloats("b" + s, Values(rng, Width, 0.5f), Width));
            NodeProto node = Node("If", ["c"], ["o" + s], "if" + s);
            node.Attribute.Add(new AttributeProto { Name = "then_branch", Type = AttributeProto.Types.AttributeType.Graph, G = Branch("then" + s, h, "wt" + s) });
            node.Attribute.Add(new AttributeProto { Name = "else_branch", Type = AttributeProto.Types.AttributeType.Graph, G = Branch("else" + s, h, "we" + s) });
            g.Node.Add(node);
            g.Node.Add(Node("Add", ["o" + s, "b" + s], [y], "add" + s));
            h = y;
        }
        g.Output.Add(FloatValue("y", "N", Width));
        return Model(g);

        static GraphProto Branch(string name, string input, string weight)
        {
            var b = new GraphProto { Name = name };
            b.Node.Add(Node("MatMul", [input, weight], [name + "_y"], name + "_mm"));
            b.Output.Add(FloatValue(name + "_y", "N", Width));
            return b;
        }
    }
}
