using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Quantization.Schemes;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization.Ops;

/// <summary>
/// Int8Dynamic com.microsoft Attention (ONNX Runtime's transformer optimizer output: packed QKV weight [D, 3H],
/// bias [3H], num_heads, optional mask_index and past) -> DynamicQuantizeLinear(input) -> com.microsoft QAttention
/// (uint8 input x the context's 8-bit weight encoding, one scale and zero point per weight column, which ORT's
/// CPU kernel takes). Attention features QAttention lacks (attention_bias, past_sequence_length, rotary, custom
/// scale or mask value, unequal Q/K/V sizes) leave the node float with the reason.
/// </summary>
internal sealed class Int8AttentionLowering : OperatorLowering<Int8DynamicContext>
{
    /// <summary>The quantized operator (com.microsoft).</summary>
    public const string QuantizedOpType = "QAttention";

    public override string OpType => "Attention";

    public override string Domain => OnnxNames.MicrosoftDomain;

    protected override WeightSite? FindSite(Int8DynamicContext context, NodeProto node, Action<string> skip)
    {
        if (node.Input.Count < 2 || node.Input[1].Length == 0)
        {
            return null;
        }
        for (int i = 5; i < node.Input.Count; i++)
        {
            if (node.Input[i].Length > 0)
            {
                skip($"input {i} ('{node.Input[i]}') has no QAttention counterpart (QAttention takes input, weights, bias, mask_index and past only)");
                return null;
            }
        }
        long heads = PassGraph.IntAttr(node, "num_heads", 0);
        foreach (AttributeProto a in node.Attribute)
        {
            string? why = a.Name switch
            {
                "num_heads" or "unidirectional" or "qkv_hidden_sizes" => null,
                "do_rotary" or "past_present_share_buffer" when a.I == 0 => null,
                _ => $"attribute '{a.Name}' has no QAttention counterpart",
            };
            if (why != null)
            {
                skip(why);
                return null;
            }
        }
        if (node.Output.Count > 1 && node.Output[1].Length > 0 && (node.Input.Count < 5 || node.Input[4].Length == 0))
        {
            skip("the 'present' output without a 'past' input is not kept by QAttention");
            return null;
        }
        if (WeightSites.MatrixSite(context, node, skip) is not { } matrix)
        {
            return null;
        }
        long columns = matrix.Weight.Dims[1];
        if (heads <= 0 || columns % 3 != 0 || columns / 3 % heads != 0)
        {
            skip($"weight '{node.Input[1]}' [{matrix.Weight.Dims[0]}, {columns}] is not packed Q, K, V of equal size split into {heads} heads");
            return null;
        }
        AttributeProto? sizes = node.Attribute.FirstOrDefault(a => a.Name == "qkv_hidden_sizes");
        if (sizes != null && (sizes.Ints.Count != 3 || sizes.Ints.Any(s => s != columns / 3)))
        {
            skip("qkv_hidden_sizes are not equal; QAttention needs Q, K and V of one size");
            return null;
        }
        return new WeightSite { Node = node, Weight = matrix.Weight, Axis = 1 };
    }

    protected override void Lower(Int8DynamicContext context, WeightSite c)
    {
        PassGraph g = context.Graph;
        NodeProto node = c.Node;
        string label = OnnxNames.Label(node);
        Int8Matrix stored = context.EncodeMatrix(c, halfScale: false); // QAttention reads its weight scale as a float32 initializer
        var inserted = new List<NodeProto>();
        string x = context.ActivationInput(c, inserted);
        if (!context.QuantizedActivations.TryGetValue(x, out var xq))
        {
            xq = (g.Unique(x + "_quantized"), g.Unique(x + "_scale"), g.Unique(x + "_zero_point"));
            inserted.Add(g.Node("DynamicQuantizeLinear", null, [x], [xq.Q, xq.Scale, xq.ZeroPoint]));
            context.QuantizedActivations[x] = xq;
        }
        string bias = node.Input.Count > 2 ? node.Input[2] : "";
        if (bias.Length == 0)
        {
            // QAttention's bias is required: a zero bias of 3H.
            bias = g.Unique(label + "_zero_bias");
            g.AddInitializer(TensorUtil.FromFloats(bias, new float[stored.N], stored.N));
            context.QuantizedWeightBytes += (long)stored.N * 4;
        }
        string Optional(int i) => node.Input.Count > i ? node.Input[i] : "";
        var q = new NodeProto
        {
            OpType = QuantizedOpType,
            Domain = OnnxNames.MicrosoftDomain,
            Name = node.Name.Length > 0 ? node.Name : g.Unique(label + "_quant"),
        };
        q.Input.AddRange([xq.Q, stored.Quantized, bias, xq.Scale, stored.Scale, Optional(3), xq.ZeroPoint, stored.ZeroPoint, Optional(4)]);
        q.Output.AddRange(node.Output);
        q.Attribute.AddRange(node.Attribute.Where(a => a.Name is "num_heads" or "unidirectional").Select(a => a.Clone()));
        Int8DynamicContext.TrimOptionalInputs(q);
        inserted.Add(q);
        context.RequireOpset("", 11);
        context.RequireOpset(OnnxNames.MicrosoftDomain, 1);
        context.ReplaceSite(c, inserted, stored.K, stored.N, stored.MaxError);
    }
}
