using CompressOnBuild.Core;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Core.Tests.Onnx;

[TestClass]
public sealed class ModelCheckerTests
{
    private static string Check(ModelProto m)
    {
        var e = Assert.ThrowsExactly<CompressException>(() => ModelChecker.Validate(m, "m.onnx"));
        Assert.AreEqual(DiagnosticCodes.ModelInvalid, e.Code);
        return e.Message;
    }

    [TestMethod]
    public void AValidModelPasses()
    {
        ModelProto m = TinyModels.Mlp();
        ModelChecker.Validate(m, "m.onnx");
        Assert.AreEqual(3, m.Graph.Node.Count);
    }

    [TestMethod]
    public void DanglingInputIsNamed()
    {
        ModelProto m = TinyModels.Mlp();
        m.Graph.Node[1].Input[0] = "ghost";
        StringAssert.Contains(Check(m), "'ghost'");
    }

    [TestMethod]
    public void NodesOutOfTopologicalOrderAreRejected()
    {
        ModelProto m = TinyModels.Mlp();
        NodeProto first = m.Graph.Node[0];
        m.Graph.Node.RemoveAt(0);
        m.Graph.Node.Add(first);
        StringAssert.Contains(Check(m), "'h'");
    }

    [TestMethod]
    public void UnknownDataTypeIsRejected()
    {
        ModelProto m = TinyModels.Mlp();
        m.Graph.Initializer[0].DataType = 77;
        StringAssert.Contains(Check(m), "unknown data type 77");
    }

    [TestMethod]
    public void RawDataThatDisagreesWithDimsIsRejected()
    {
        ModelProto m = TinyModels.Mlp();
        m.Graph.Initializer[0].Dims[0] = 1000;
        StringAssert.Contains(Check(m), "'w1'");
    }

    [TestMethod]
    public void ValueDefinedTwiceIsRejected()
    {
        ModelProto m = TinyModels.Mlp();
        m.Graph.Node[1].Output[0] = "h";
        StringAssert.Contains(Check(m), "more than once");
    }

    [TestMethod]
    public void MissingOpsetAndBadIrAreRejected()
    {
        ModelProto m = TinyModels.Mlp();
        m.OpsetImport.Clear();
        StringAssert.Contains(Check(m), "opset");
        ModelProto m2 = TinyModels.Mlp();
        m2.IrVersion = 99;
        StringAssert.Contains(Check(m2), "IR version 99");
    }

    [TestMethod]
    public void SubgraphsMayUseOuterValuesButNotUndefinedOnes()
    {
        ModelProto m = TinyModels.Mlp();
        var body = new GraphProto { Name = "then" };
        body.Node.Add(TinyModels.Node("Identity", ["hr"], ["t_out"]));
        body.Output.Add(TinyModels.FloatValue("t_out", "N", 8));
        var ifNode = TinyModels.Node("If", ["cond"], ["if_out"]);
        ifNode.Attribute.Add(new AttributeProto { Name = "then_branch", Type = AttributeProto.Types.AttributeType.Graph, G = body });
        ifNode.Attribute.Add(new AttributeProto { Name = "else_branch", Type = AttributeProto.Types.AttributeType.Graph, G = body.Clone() });
        m.Graph.Input.Add(new ValueInfoProto { Name = "cond", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Bool } } });
        m.Graph.Node.Insert(2, ifNode);
        ModelChecker.Validate(m, "m.onnx");

        body.Node[0].Input[0] = "nowhere";
        StringAssert.Contains(Check(m), "'nowhere'");
    }

    [TestMethod]
    public void GraphOutputNotProducedIsRejected()
    {
        ModelProto m = TinyModels.Mlp();
        m.Graph.Output.Add(TinyModels.FloatValue("extra", 1));
        StringAssert.Contains(Check(m), "'extra'");
    }

    [TestMethod]
    public void GemmWeightOfWrongRankIsRejected()
    {
        ModelProto m = TinyModels.Mlp();
        TensorProto w = m.Graph.Initializer[0];
        w.Dims.Clear();
        w.Dims.AddRange([8, 4, 4]);
        StringAssert.Contains(Check(m), "rank 3");
    }
}
