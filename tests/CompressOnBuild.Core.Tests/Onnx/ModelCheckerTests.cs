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

    private static string[] Names(GraphProto g) => [.. g.Node.Select(n => n.Name)];

    [TestMethod]
    public void NodesOutOfTopologicalOrderAreSortedNotRejected()
    {
        ModelProto m = TinyModels.Mlp();
        NodeProto first = m.Graph.Node[0];
        m.Graph.Node.RemoveAt(0);
        m.Graph.Node.Add(first);
        CollectionAssert.AreEqual(new[] { "relu1", "fc2", "fc1" }, Names(m.Graph));

        ModelChecker.Validate(m, "m.onnx");

        CollectionAssert.AreEqual(new[] { "fc1", "relu1", "fc2" }, Names(m.Graph));
    }

    [TestMethod]
    public void ASortedGraphKeepsItsOrderEvenWhereAnotherOrderWouldDo()
    {
        // Two independent branches listed b-first: a valid order that is not the one a plain Kahn sort by name would pick.
        var g = new GraphProto { Name = "g" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 4));
        g.Output.Add(TinyModels.FloatValue("y", 1, 4));
        g.Node.Add(TinyModels.Node("Relu", ["x"], ["b1"], "b1"));
        g.Node.Add(TinyModels.Node("Sigmoid", ["x"], ["a1"], "a1"));
        g.Node.Add(TinyModels.Node("Neg", ["b1"], ["b2"], "b2"));
        g.Node.Add(TinyModels.Node("Abs", ["a1"], ["a2"], "a2"));
        g.Node.Add(TinyModels.Node("Add", ["a2", "b2"], ["y"], "add"));
        ModelProto m = TinyModels.Model(g);
        string[] before = Names(m.Graph);

        Assert.IsFalse(TopologicalSort.Sort(m, "m.onnx"));
        ModelChecker.Validate(m, "m.onnx");
        CollectionAssert.AreEqual(before, Names(m.Graph));

        // Moving only the consumer up: it goes back right after its last producer, the rest keeps its order.
        NodeProto add = m.Graph.Node[4];
        m.Graph.Node.RemoveAt(4);
        m.Graph.Node.Insert(0, add);
        Assert.IsTrue(TopologicalSort.Sort(m, "m.onnx"));
        CollectionAssert.AreEqual(before, Names(m.Graph));
    }

    /// <summary>MLP with an If after fc1 whose branches read the outer 'hr' (relu1's output); the branch nodes listed in
    /// reverse when <paramref name="unsortedBranches"/> (ONNX Runtime sorts the main graph itself but not subgraphs).</summary>
    private static ModelProto MlpWithIf(bool unsortedBranches = true)
    {
        ModelProto m = TinyModels.Mlp();
        GraphProto Branch(string name, string op)
        {
            var body = new GraphProto { Name = name };
            body.Node.Add(TinyModels.Node("Identity", [name + "_mid"], [name + "_out"], name + "_last"));
            body.Node.Insert(unsortedBranches ? 1 : 0, TinyModels.Node(op, ["hr"], [name + "_mid"], name + "_first"));
            body.Output.Add(TinyModels.FloatValue(name + "_out", "N", 8));
            return body;
        }
        var ifNode = TinyModels.Node("If", ["cond"], ["if_out"], "if");
        ifNode.Attribute.Add(new AttributeProto { Name = "then_branch", Type = AttributeProto.Types.AttributeType.Graph, G = Branch("then", "Neg") });
        ifNode.Attribute.Add(new AttributeProto { Name = "else_branch", Type = AttributeProto.Types.AttributeType.Graph, G = Branch("else", "Abs") });
        m.Graph.Input.Add(new ValueInfoProto { Name = "cond", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Bool, Shape = new TensorShapeProto() } } });
        m.Graph.Output.Add(TinyModels.FloatValue("if_out", "N", 8));
        m.Graph.Node.Insert(1, ifNode); // before relu1, which produces the 'hr' its branches read
        return m;
    }

    [TestMethod]
    public void ANodeWithSubgraphsWaitsForTheOuterValuesItsBranchesReadAndTheBranchesAreSortedToo()
    {
        ModelProto m = MlpWithIf();
        CollectionAssert.AreEqual(new[] { "fc1", "if", "relu1", "fc2" }, Names(m.Graph));

        ModelChecker.Validate(m, "m.onnx");

        CollectionAssert.AreEqual(new[] { "fc1", "relu1", "if", "fc2" }, Names(m.Graph));
        GraphProto then = m.Graph.Node[2].Attribute[0].G;
        CollectionAssert.AreEqual(new[] { "then_first", "then_last" }, Names(then));
    }

    [TestMethod]
    public void OnnxRuntimeRunsTheUnsortedModelAndTheSortedOneGivesTheSameOutputs()
    {
        ModelProto m = MlpWithIf(unsortedBranches: false);
        byte[] unsorted = Google.Protobuf.MessageExtensions.ToByteArray(m);
        ModelChecker.Validate(m, "m.onnx");
        byte[] sorted = Google.Protobuf.MessageExtensions.ToByteArray(m);

        Dictionary<string, float[]> a = OrtHelper.RunRandom(unsorted);
        Dictionary<string, float[]> b = OrtHelper.RunRandom(sorted);
        Assert.AreEqual(2, a.Count);
        foreach ((string name, float[] values) in a)
        {
            CollectionAssert.AreEqual(values, b[name], name);
        }
    }

    [TestMethod]
    public void ACycleIsRejected()
    {
        ModelProto m = TinyModels.Mlp();
        m.Graph.Node[0].Input[0] = "hr"; // fc1 now reads relu1's output, which reads fc1's
        string message = Check(m);
        StringAssert.Contains(message, "cycle");
        StringAssert.Contains(message, "'fc1'");
    }

    [TestMethod]
    public void ADanglingNameInsideABranchIsRejectedEvenWhenTheBranchIsUnsorted()
    {
        ModelProto m = MlpWithIf();
        m.Graph.Node[1].Attribute[1].G.Node[1].Input[0] = "nowhere";
        StringAssert.Contains(Check(m), "'nowhere'");
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
