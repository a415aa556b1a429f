using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Quantization.Schemes;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization.Ops;

/// <summary>Int4Weights MatMul -> com.microsoft MatMulNBits (bits 4, blockwise weight, float activations).</summary>
internal sealed class Int4MatMulLowering : OperatorLowering<Int4Context>
{
    public override string OpType => "MatMul";

    protected override WeightSite? FindSite(Int4Context context, NodeProto node, Action<string> skip) => WeightSites.MatrixSite(context, node, skip);

    protected override void Lower(Int4Context context, WeightSite c)
    {
        Int4Matrix stored = context.EncodeMatrix(c);
        NodeProto q = context.MatMulNBits(c.Node, c.Node.Input[0], stored);
        Int4Context.Finish(q, stored);
        context.ReplaceSite(c, [q], stored.K, stored.N, stored.MaxError);
    }
}

/// <summary>
/// Int4Weights Gemm -> MatMulNBits: alpha folded into the weight, transB deciding the stored layout, transA a
/// Transpose node, beta*C the bias input (after an empty g_idx) when C is a constant vector, else Mul/Add nodes.
/// </summary>
internal sealed class Int4GemmLowering : OperatorLowering<Int4Context>
{
    public override string OpType => "Gemm";

    protected override WeightSite? FindSite(Int4Context context, NodeProto node, Action<string> skip) => WeightSites.MatrixSite(context, node, skip);

    protected override void Lower(Int4Context context, WeightSite c)
    {
        Int4Matrix stored = context.EncodeMatrix(c);
        var inserted = new List<NodeProto>();
        string a = MatrixParts.InputA(context, c, inserted);
        NodeProto q = context.MatMulNBits(c.Node, a, stored);
        inserted.Add(q);
        MatrixParts.AddGemmC(context, c, stored.N, q, inserted, bias =>
        {
            q.Input.Add(""); // g_idx
            q.Input.Add(bias);
        });
        Int4Context.Finish(q, stored);
        context.ReplaceSite(c, inserted, stored.K, stored.N, stored.MaxError);
    }
}
