using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Quantization;
using CompressOnBuild.Onnx;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Core.Tests.Quantization;

[TestClass]
public sealed class OpRegistryTests
{
    [TestMethod]
    [DataRow(QuantizationScheme.Int8Dynamic, "Conv,MatMul,Gemm,Gather,LSTM,Attention")]
    [DataRow(QuantizationScheme.Int4Weights, "MatMul,Gemm,Gather")]
    [DataRow(QuantizationScheme.Int8Static, "Conv,MatMul,Gemm,LSTM")]
    [DataRow(QuantizationScheme.Float16, "")]
    [DataRow(QuantizationScheme.None, "")]
    public void Each_scheme_lists_the_operators_it_quantizes(QuantizationScheme scheme, string expected)
    {
        Assert.AreEqual(expected, string.Join(",", OpRegistry.OpTypes(scheme)));
    }

    [TestMethod]
    public void Every_registered_lowering_is_unique_per_scheme_operator_and_domain()
    {
        foreach (QuantizationScheme scheme in Enum.GetValues<QuantizationScheme>())
        {
            IReadOnlyList<IOperatorLowering> lowerings = OpRegistry.For(scheme);
            Assert.AreEqual(lowerings.Count, lowerings.Select(l => (l.Domain, l.OpType)).Distinct().Count(), $"{scheme} registers an operator twice");
        }
    }

    [TestMethod]
    public void OpTypesToQuantize_must_name_an_operator_of_the_scheme()
    {
        var convOnly = new HashSet<string>(StringComparer.Ordinal) { "Conv" };
        Assert.IsNull(OpRegistry.OpTypesProblem(QuantizationScheme.Int8Dynamic, convOnly));
        Assert.AreEqual("Int4Weights quantizes only MatMul, Gemm, Gather; none of them is listed", OpRegistry.OpTypesProblem(QuantizationScheme.Int4Weights, convOnly));
        StringAssert.Contains(OpRegistry.OpTypesProblem(QuantizationScheme.None, convOnly), "Quantization is None");
        Assert.IsNull(OpRegistry.OpTypesProblem(QuantizationScheme.Float16, convOnly), "Float16 is not per operator: nothing to check against");
    }

    /// <summary>
    /// x [N, 8] -> MatMul(w) -> y, and an index Gather over an int64 constant (not a layer): with both excluded, the
    /// MatMul is reported as excluded and the index Gather is not reported at all.
    /// </summary>
    [TestMethod]
    [DataRow(8)]
    [DataRow(4)]
    public void Excluded_layers_are_reported_and_excluded_non_layers_are_not(int bits)
    {
        var g = new GraphProto { Name = "g" };
        g.Input.Add(FloatValue("x", "N", 8));
        g.Output.Add(FloatValue("y", "N", 8));
        var idx = new ValueInfoProto { Name = "picked", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Int64 } } };
        g.Output.Add(idx);
        g.Initializer.Add(TensorUtil.FromFloats("w", RandomFloats(64, 3), 8, 8));
        g.Initializer.Add(TensorUtil.FromInt64("dims", [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], 18));
        g.Initializer.Add(TensorUtil.FromInt64("at", [1]));
        g.Node.Add(Node("MatMul", ["x", "w"], ["y"], "mm"));
        g.Node.Add(Node("Gather", ["dims", "at"], ["picked"], "index"));
        ModelProto model = Model(g);
        string[] excluded = ["mm", "index"];
        IReadOnlyList<SkippedNode> skipped = bits == 8
            ? Int8DynamicQuantizer.Apply(model, new QuantizationOptions { ExcludedNodes = excluded }, "m").Skipped
            : Int4WeightQuantizer.Apply(model, new Int4Options { ExcludedNodes = excluded, BlockSize = 16 }, "m").Skipped;
        Assert.AreEqual("mm:excluded by the options", string.Join(";", skipped.Select(s => s.Node + ":" + s.Reason)));
    }
}
