using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Quantization.Schemes;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization.Ops;

/// <summary>
/// Int8Dynamic Conv -> DynamicQuantizeLinear(X) -> ConvInteger(uint8 x uint8, weight zero point 128) -> Cast(float)
/// -> Mul(x_scale * w_scale[M, 1, ...]) [-> Add(bias[M, 1, ...])]. Needs default opset 11 (raised when every
/// operator of the model means the same there); turned off by <see cref="QuantizationOptions.QuantizeConv"/>.
/// </summary>
internal sealed class Int8ConvLowering : OperatorLowering<Int8DynamicContext>
{
    public override string OpType => "Conv";

    protected override WeightSite? FindSite(Int8DynamicContext context, NodeProto node, Action<string> skip)
    {
        if (node.Input.Count < 2)
        {
            return null;
        }
        if (!context.Options.QuantizeConv)
        {
            skip("Conv quantization is turned off in the options");
            return null;
        }
        if (WeightSites.ConvSite(context, node, skip) is not { } site)
        {
            return null;
        }
        if (context.ConvBlocked != null)
        {
            skip(context.ConvBlocked);
            return null;
        }
        return site;
    }

    protected override void Lower(Int8DynamicContext context, WeightSite c)
    {
        PassGraph g = context.Graph;
        NodeProto node = c.Node;
        string label = OnnxNames.Label(node);
        Int8ConvWeight stored = context.EncodeConv(c);
        long[] channelShape = [stored.M, .. Enumerable.Repeat(1L, c.Weight.Dims.Length - 2)];

        // The helper nodes stay unnamed (names are optional; on small models they were 3-4% of the file).
        var inserted = new List<NodeProto>();
        string x = node.Input[0];
        if (!context.QuantizedActivations.TryGetValue(x, out var xq))
        {
            xq = (g.Unique(x + "_quantized"), g.Unique(x + "_scale"), g.Unique(x + "_zero_point"));
            inserted.Add(g.Node("DynamicQuantizeLinear", null, [x], [xq.Q, xq.Scale, xq.ZeroPoint]));
            context.QuantizedActivations[x] = xq;
        }
        string integerOut = g.Unique(label + "_int32");
        var conv = new NodeProto { OpType = "ConvInteger", Name = node.Name.Length > 0 ? node.Name : g.Unique(label + "_quant") };
        conv.Input.AddRange([xq.Q, stored.Quantized, xq.ZeroPoint, stored.ZeroPoint]);
        conv.Output.Add(integerOut);
        conv.Attribute.AddRange(node.Attribute.Select(a => a.Clone()));
        inserted.Add(conv);

        string floatOut = g.Unique(label + "_float");
        inserted.Add(g.Cast(integerOut, floatOut, TensorProto.Types.DataType.Float));

        string combined = g.Unique(label + "_output_scale");
        inserted.Add(g.Node("Mul", null, [xq.Scale, stored.Scale], [combined]));

        bool hasBias = c.Bias != null;
        string scaledOut = hasBias ? g.Unique(label + "_scaled") : node.Output[0];
        inserted.Add(g.Node("Mul", null, [floatOut, combined], [scaledOut]));

        if (hasBias)
        {
            ResolvedConstant bias = c.Bias!;
            string biasName = g.Unique(node.Input[2] + "_channels");
            g.AddInitializer(TensorUtil.FromFloats(biasName, context.Floats(bias.Tensor), channelShape));
            context.QuantizedWeightBytes += (long)stored.M * 4;
            inserted.Add(g.Node("Add", null, [scaledOut, biasName], [node.Output[0]]));
            context.Replaced.Add(node.Input[2], bias);
        }

        context.RequireOpset("", 11);
        context.ReplaceSite(c, inserted, stored.PerChannel, stored.M, stored.MaxError);
    }
}
