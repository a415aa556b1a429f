using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Quantization.Schemes;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization.Ops;

/// <summary>
/// Int8Dynamic MatMul -> com.microsoft DynamicQuantizeMatMul (activation quantized per call, 8-bit weight per
/// output channel). A following Add of a constant [N] bias (the usual exported Linear layer) becomes its bias input.
/// </summary>
internal sealed class Int8MatMulLowering : OperatorLowering<Int8DynamicContext>
{
    public override string OpType => "MatMul";

    protected override WeightSite? FindSite(Int8DynamicContext context, NodeProto node, Action<string> skip) => WeightSites.MatrixSite(context, node, skip);

    protected override void Lower(Int8DynamicContext context, WeightSite c)
    {
        Int8Matrix stored = context.EncodeMatrix(c, halfScale: true);
        var inserted = new List<NodeProto>();
        NodeProto q = context.DynamicQuantizeMatMul(c.Node, context.ActivationInput(c, inserted), stored, inserted);
        FoldBiasAdd(context, c.Node, q, stored.N, inserted); // before q: a float16 bias's Cast goes ahead of it
        inserted.Add(q);
        Int8DynamicContext.TrimOptionalInputs(q);
        context.ReplaceSite(c, inserted, stored.K, stored.N, stored.MaxError);
    }

    /// <summary>
    /// MatMul followed by its only consumer Add(y, constant bias of N elements): the bias becomes
    /// DynamicQuantizeMatMul's bias input (float16 behind a Cast where the scheme stores float16, see
    /// <see cref="HalfScales"/>) and the Add goes. A [1, .., 1, N] bias is folded only when the activation's
    /// rank is known to be at least the bias rank (so broadcasting cannot have raised the output rank).
    /// </summary>
    private static void FoldBiasAdd(Int8DynamicContext context, NodeProto matmul, NodeProto quantized, int n, List<NodeProto> inserted)
    {
        PassGraph g = context.Graph;
        string y = matmul.Output[0];
        if (g.Outer.Contains(y))
        {
            return;
        }
        IReadOnlyList<NodeProto> users = g.Consumers(y);
        if (users.Count != 1)
        {
            return;
        }
        NodeProto add = users[0];
        if (add.OpType != "Add" || ModelChecker.NormalizeDomain(add.Domain).Length != 0 || add.Input.Count != 2 || add.Input[0] == add.Input[1])
        {
            return;
        }
        string other = add.Input[0] == y ? add.Input[1] : add.Input[0];
        if (!context.TryResolveConstant(other, out ResolvedConstant? cv, out _) || cv!.Tensor.DataType != (int)TensorProto.Types.DataType.Float)
        {
            return;
        }
        long[] dims = cv.Dims;
        bool fits = (dims.Length == 1 && dims[0] == n)
            || (dims.Length >= 2 && dims[^1] == n && dims[..^1].All(d => d == 1) && KnownRank(context, matmul.Input[0]) >= dims.Length);
        if (!fits)
        {
            return;
        }
        string bias = g.Unique(other + "_bias");
        float[] values = (float[])context.Floats(cv.Tensor).Clone();
        if (context.Levels.HalfScales && HalfScales.Worth(n, bias) && HalfScales.TryRoundBias(values))
        {
            g.AddInitializer(HalfScales.Tensor(bias, values, n));
            context.QuantizedWeightBytes += (long)n * 2;
            bias = context.AsFloat32(bias, inserted);
        }
        else
        {
            g.AddInitializer(TensorUtil.FromFloats(bias, values, n));
            context.QuantizedWeightBytes += (long)n * 4;
        }
        quantized.Input.Add(bias);
        quantized.Output[0] = add.Output[0];
        g.RemoveNode(add);
        g.DropValueInfo(y);
        context.Replaced.Add(other, cv);
    }

    /// <summary>The rank of a value when the graph states it (input/value_info shape, Reshape to a constant shape, Flatten); else -1.</summary>
    private static int KnownRank(Int8DynamicContext context, string name)
    {
        PassGraph g = context.Graph;
        ValueInfoProto? info = g.ValueInfoOf(name);
        if (info?.Type?.TensorType?.Shape is { } shape)
        {
            return shape.Dim.Count;
        }
        if (g.Producers.TryGetValue(name, out NodeProto? producer) && OnnxNames.IsDefaultDomain(producer))
        {
            if (producer.OpType == "Flatten")
            {
                return 2;
            }
            if (producer.OpType == "Reshape" && producer.Input.Count == 2 && context.TryResolveConstant(producer.Input[1], out ResolvedConstant? s, out _))
            {
                return (int)s!.Dims.Aggregate(1L, (a, b) => a * b);
            }
        }
        return -1;
    }
}

/// <summary>
/// Int8Dynamic Gemm -> DynamicQuantizeMatMul: alpha folded into the weight before quantizing, transB applied to the
/// stored weight, transA a Transpose node, beta*C the bias input when C is a constant vector (else Mul/Add nodes).
/// </summary>
internal sealed class Int8GemmLowering : OperatorLowering<Int8DynamicContext>
{
    public override string OpType => "Gemm";

    protected override WeightSite? FindSite(Int8DynamicContext context, NodeProto node, Action<string> skip) => WeightSites.MatrixSite(context, node, skip);

    protected override void Lower(Int8DynamicContext context, WeightSite c)
    {
        Int8Matrix stored = context.EncodeMatrix(c, halfScale: true);
        var inserted = new List<NodeProto>();
        string a = c.TransA ? MatrixParts.InputA(context, c, inserted) : context.ActivationInput(c, inserted);
        NodeProto q = context.DynamicQuantizeMatMul(c.Node, a, stored, inserted);
        inserted.Add(q);
        MatrixParts.AddGemmC(context, c, stored.N, q, inserted, q.Input.Add);
        Int8DynamicContext.TrimOptionalInputs(q);
        context.ReplaceSite(c, inserted, stored.K, stored.N, stored.MaxError);
    }
}
