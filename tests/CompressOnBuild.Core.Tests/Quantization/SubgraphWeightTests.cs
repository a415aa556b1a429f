using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using Google.Protobuf;
using static CompressOnBuild.Tests.TinyModels;
using DataType = CompressOnBuild.Onnx.TensorProto.Types.DataType;

namespace CompressOnBuild.Core.Tests.Quantization;

/// <summary>
/// Weights used inside If/Loop/Scan bodies, held by the body or by the outer graph, are quantized or converted in
/// place inside the body: the model gets smaller, no float32 copy of the weight is left, ONNX Runtime runs it and its
/// output stays close to the float model's.
/// </summary>
[TestClass]
public sealed class SubgraphWeightTests
{
    private const int K = 64, N = 32, Batch = 4, Steps = 3;

    private static AttributeProto GraphAttr(string name, GraphProto g) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Graph, G = g };

    private static ValueInfoProto Typed(string name, DataType type, params long[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (long d in dims)
        {
            shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        }
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = shape } } };
    }

    /// <summary>
    /// If(sum(x) &gt; 0): then Gemm(x, w_then^T, b_then) with the weight in the outer graph (tf2onnx keeps them there),
    /// else Gemm(x, w_else, b_else) with the weight inside the branch. x [Batch, K], y [Batch, N].
    /// </summary>
    public static ModelProto IfModel()
    {
        var thenBody = new GraphProto { Name = "then_branch" };
        thenBody.Output.Add(FloatValue("y_then", Batch, N));
        thenBody.Node.Add(Node("Gemm", ["x", "w_then", "b_then"], ["y_then"], "gemm_then", IntAttr("transB", 1)));
        var elseBody = new GraphProto { Name = "else_branch" };
        elseBody.Output.Add(FloatValue("y_else", Batch, N));
        elseBody.Initializer.Add(TensorUtil.FromFloats("w_else", RandomFloats(K * N, 22), K, N));
        elseBody.Initializer.Add(TensorUtil.FromFloats("b_else", RandomFloats(N, 23), N));
        elseBody.Node.Add(Node("Gemm", ["x", "w_else", "b_else"], ["y_else"], "gemm_else"));
        var g = new GraphProto { Name = "if_model" };
        g.Input.Add(FloatValue("x", Batch, K));
        g.Output.Add(FloatValue("y", Batch, N));
        g.Initializer.Add(TensorUtil.FromFloats("w_then", RandomFloats(N * K, 20), N, K));
        g.Initializer.Add(TensorUtil.FromFloats("b_then", RandomFloats(N, 21), N));
        g.Initializer.Add(TensorUtil.FromFloats("zero", [0f]));
        g.Node.Add(Node("ReduceSum", ["x"], ["sum"], "sum", IntAttr("keepdims", 0)));
        g.Node.Add(Node("Greater", ["sum", "zero"], ["cond"], "positive"));
        g.Node.Add(Node("If", ["cond"], ["y"], "branch", GraphAttr("then_branch", thenBody), GraphAttr("else_branch", elseBody)));
        return Model(g);
    }

    /// <summary>h = x; Steps times h = Tanh(MatMul(h, w)) in a Loop body, w [K, K] in the outer graph. x, y [Batch, K].</summary>
    public static ModelProto LoopModel()
    {
        var body = new GraphProto { Name = "loop_body" };
        body.Input.Add(Typed("i", DataType.Int64));
        body.Input.Add(Typed("c_in", DataType.Bool));
        body.Input.Add(FloatValue("h_in", Batch, K));
        body.Output.Add(Typed("c_out", DataType.Bool));
        body.Output.Add(FloatValue("h_out", Batch, K));
        body.Node.Add(Node("Identity", ["c_in"], ["c_out"], "keep_going"));
        body.Node.Add(Node("MatMul", ["h_in", "w_loop"], ["hw"], "loop_matmul"));
        body.Node.Add(Node("Tanh", ["hw"], ["h_out"], "tanh"));
        var g = new GraphProto { Name = "loop_model" };
        g.Input.Add(FloatValue("x", Batch, K));
        g.Output.Add(FloatValue("y", Batch, K));
        g.Initializer.Add(TensorUtil.FromFloats("w_loop", RandomFloats(K * K, 30, 0.2f), K, K));
        g.Initializer.Add(TensorUtil.FromInt64("trips", [Steps]));
        var yes = new TensorProto { Name = "yes", DataType = (int)DataType.Bool };
        yes.Int32Data.Add(1);
        g.Initializer.Add(yes);
        g.Node.Add(Node("Loop", ["trips", "yes", "x"], ["y"], "loop", GraphAttr("body", body)));
        return Model(g);
    }

    /// <summary>Scan over the rows of x [Batch, K]: s += MatMul(x_t, w) with w [K, N] a body initializer; y = the stacked sums [Batch, N].</summary>
    public static ModelProto ScanModel()
    {
        var body = new GraphProto { Name = "scan_body" };
        body.Input.Add(FloatValue("s_in", N));
        body.Input.Add(FloatValue("x_t", K));
        body.Output.Add(FloatValue("s_out", N));
        body.Output.Add(FloatValue("y_t", N));
        body.Initializer.Add(TensorUtil.FromFloats("w_scan", RandomFloats(K * N, 40), K, N));
        body.Node.Add(Node("MatMul", ["x_t", "w_scan"], ["xw"], "scan_matmul"));
        body.Node.Add(Node("Add", ["s_in", "xw"], ["s_out"], "accumulate"));
        body.Node.Add(Node("Identity", ["s_out"], ["y_t"], "emit"));
        var g = new GraphProto { Name = "scan_model" };
        g.Input.Add(FloatValue("x", Batch, K));
        g.Output.Add(FloatValue("y", Batch, N));
        g.Output.Add(FloatValue("s_final", N));
        g.Initializer.Add(TensorUtil.FromFloats("s0", new float[N], N));
        g.Node.Add(Node("Scan", ["s0", "x"], ["s_final", "y"], "scan", GraphAttr("body", body), IntAttr("num_scan_inputs", 1)));
        return Model(g);
    }

    /// <summary>
    /// A Loop body holding an If (nested two deep): h = Tanh(MatMul(h, w_a)) on even steps, Tanh(MatMul(h, w_b)) on
    /// odd ones; both weights live in the main graph and move down two levels.
    /// </summary>
    public static ModelProto NestedModel()
    {
        GraphProto Branch(string name, string weight)
        {
            var b = new GraphProto { Name = name };
            b.Output.Add(FloatValue(name + "_out", Batch, K));
            b.Node.Add(Node("MatMul", ["h_in", weight], [name + "_mm"], name + "_matmul"));
            b.Node.Add(Node("Tanh", [name + "_mm"], [name + "_out"], name + "_tanh"));
            return b;
        }
        var body = new GraphProto { Name = "nested_body" };
        body.Input.Add(Typed("i", DataType.Int64));
        body.Input.Add(Typed("c_in", DataType.Bool));
        body.Input.Add(FloatValue("h_in", Batch, K));
        body.Output.Add(Typed("c_out", DataType.Bool));
        body.Output.Add(FloatValue("h_out", Batch, K));
        body.Node.Add(Node("Identity", ["c_in"], ["c_out"], "keep_going"));
        body.Node.Add(Node("Mod", ["i", "two"], ["parity"], "parity"));
        body.Node.Add(Node("Equal", ["parity", "zero_i"], ["even"], "even"));
        body.Node.Add(Node("If", ["even"], ["h_out"], "choose", GraphAttr("then_branch", Branch("branch_a", "w_a")), GraphAttr("else_branch", Branch("branch_b", "w_b"))));
        var g = new GraphProto { Name = "nested_model" };
        g.Input.Add(FloatValue("x", Batch, K));
        g.Output.Add(FloatValue("y", Batch, K));
        g.Initializer.Add(TensorUtil.FromFloats("w_a", RandomFloats(K * K, 60, 0.2f), K, K));
        g.Initializer.Add(TensorUtil.FromFloats("w_b", RandomFloats(K * K, 61, 0.2f), K, K));
        g.Initializer.Add(TensorUtil.FromInt64("two", [2]));
        g.Initializer.Add(TensorUtil.FromInt64("zero_i", [0]));
        g.Initializer.Add(TensorUtil.FromInt64("trips", [Steps]));
        var yes = new TensorProto { Name = "yes", DataType = (int)DataType.Bool };
        yes.Int32Data.Add(1);
        g.Initializer.Add(yes);
        g.Node.Add(Node("Loop", ["trips", "yes", "x"], ["y"], "loop", GraphAttr("body", body)));
        return Model(g);
    }

    public static IEnumerable<object[]> Models() =>
    [
        ["if", (Func<ModelProto>)IfModel, new[] { "gemm_then", "gemm_else" }],
        ["loop", (Func<ModelProto>)LoopModel, new[] { "loop_matmul" }],
        ["scan", (Func<ModelProto>)ScanModel, new[] { "scan_matmul" }],
        ["nested", (Func<ModelProto>)NestedModel, new[] { "branch_a_matmul", "branch_b_matmul" }],
    ];

    /// <summary>Every initializer and node output name occurs once across all graphs of the model.</summary>
    private static void AssertNamesUnique(ModelProto model, string what)
    {
        List<string> names = ModelWalker.Graphs(model).SelectMany(g => g.Graph.Initializer.Select(t => t.Name).Concat(g.Graph.Node.SelectMany(n => n.Output))).ToList();
        CollectionAssert.AllItemsAreUnique(names, what);
    }

    private static long[] InputShape => [Batch, K];

    /// <summary>Runs both models on an input with a positive and one with a negative sum (both If branches).</summary>
    private static void AssertClose(ModelProto original, ModelProto changed, float tolerance, string what)
    {
        using var a = new Passes.Ort(original);
        using var b = new Passes.Ort(changed);
        float worstSeen = 0f;
        foreach (float shift in new[] { 0.5f, -0.5f })
        {
            float[] x = RandomFloats(Batch * K, 9).Select(v => v + shift).ToArray();
            float[] expected = a.Run(x, InputShape), actual = b.Run(x, InputShape);
            float scale = expected.Max(MathF.Abs);
            float worst = expected.Zip(actual).Max(p => MathF.Abs(p.First - p.Second));
            Assert.IsLessThanOrEqualTo(tolerance * scale, worst, $"{what} (shift {shift}): worst error {worst} against max |y| {scale}");
            worstSeen = MathF.Max(worstSeen, worst);
        }
        Assert.IsGreaterThan(0f, worstSeen, $"{what}: outputs are bit-identical; was anything changed?");
    }

    /// <summary>No float32 tensor as large as a weight is left anywhere in the model.</summary>
    private static void AssertNoFloatWeight(ModelProto model, string what) =>
        Assert.IsFalse(ModelWalker.Tensors(model).Any(t => t.DataType == (int)DataType.Float && TensorUtil.ElementCount(t) >= N * K / 2),
            $"{what}: a float32 weight is left: {string.Join(", ", ModelWalker.Tensors(model).Where(t => t.DataType == (int)DataType.Float).Select(t => t.Name))}");

    [TestMethod]
    [DynamicData(nameof(Models))]
    public void Float16_converts_weights_and_compute_inside_bodies(string name, Func<ModelProto> build, string[] nodes)
    {
        ModelProto original = build();
        ModelProto model = original.Clone();
        Float16Summary s = Float16Converter.Apply(model, Float16Options.Default, name);
        ModelChecker.Validate(model, name);
        AssertNamesUnique(model, name);
        Assert.IsGreaterThanOrEqualTo(nodes.Length, s.ConvertedNodes);
        foreach (string node in nodes)
        {
            Assert.IsFalse(s.KeptFloat32.Any(k => k.Node == node), $"{node} kept float32");
        }
        AssertNoFloatWeight(model, name);
        Assert.IsLessThan(original.CalculateSize() * 6 / 10, model.CalculateSize());
        AssertClose(original, model, 0.01f, name);
    }

    [TestMethod]
    public void Outer_constants_read_by_one_body_move_into_it_and_shared_ones_stay()
    {
        ModelProto model = IfModel();
        // Read by both branches: stays outside. Read by the main graph too: stays outside.
        GraphProto thenBody = model.Graph.Node.Single(n => n.OpType == "If").Attribute[0].G;
        GraphProto elseBody = model.Graph.Node.Single(n => n.OpType == "If").Attribute[1].G;
        model.Graph.Initializer.Add(TensorUtil.FromFloats("both", RandomFloats(N, 50), N));
        thenBody.Node.Add(Node("Add", ["y_then", "both"], ["y_then2"], "add_then"));
        elseBody.Node.Add(Node("Add", ["y_else", "both"], ["y_else2"], "add_else"));
        thenBody.Output[0] = FloatValue("y_then2", Batch, N);
        elseBody.Output[0] = FloatValue("y_else2", Batch, N);
        model.Graph.Node.Insert(0, Node("Constant", [], ["k"], "k_const", new AttributeProto
        {
            Name = "value", Type = AttributeProto.Types.AttributeType.Tensor, T = TensorUtil.FromFloats("", RandomFloats(N, 51), N),
        }));
        thenBody.Node.Add(Node("Mul", ["y_then2", "k"], ["y_then3"], "scale_then"));
        thenBody.Output[0] = FloatValue("y_then3", Batch, N);
        ModelProto original = model.Clone();

        int moved = new PassGraph(model).LocalizeSubgraphConstants();

        Assert.AreEqual(3, moved, "w_then, b_then and the Constant k");
        CollectionAssert.AreEquivalent(new[] { "zero", "both" }, model.Graph.Initializer.Select(t => t.Name).ToArray());
        CollectionAssert.IsSubsetOf(new[] { "w_then", "b_then" }, thenBody.Initializer.Select(t => t.Name).ToArray());
        Assert.AreEqual("Constant", thenBody.Node[0].OpType);
        Assert.IsFalse(model.Graph.Node.Any(n => n.OpType == "Constant"));
        ModelChecker.Validate(model, "if");
        using var a = new Passes.Ort(original);
        using var b = new Passes.Ort(model);
        foreach (float shift in new[] { 0.5f, -0.5f })
        {
            float[] x = RandomFloats(Batch * K, 9).Select(v => v + shift).ToArray();
            CollectionAssert.AreEqual(a.Run(x, InputShape), b.Run(x, InputShape), "moving constants changes no value");
        }
    }

    [TestMethod]
    public void Int8_static_lists_body_layers_with_the_reason()
    {
        ModelProto model = LoopModel();
        var ranges = Int8StaticQuantizer.TensorsToCalibrate(model, Int8StaticOptions.Default).ToDictionary(t => t, _ => new TensorRange(-1f, 1f));
        Int8StaticSummary s = Int8StaticQuantizer.Apply(model, new CalibrationResult { Ranges = ranges }, Int8StaticOptions.Default, "loop");
        Assert.IsEmpty(s.Quantized);
        Assert.Contains("calibration sees only main-graph values", s.Skipped.Single(k => k.Node == "loop_matmul").Reason);
    }

    [TestMethod]
    [DynamicData(nameof(Models))]
    public void Int8_dynamic_quantizes_weights_inside_bodies(string name, Func<ModelProto> build, string[] nodes)
    {
        ModelProto original = build();
        ModelProto model = original.Clone();
        QuantizationSummary s = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, name);
        ModelChecker.Validate(model, name);
        AssertNamesUnique(model, name);
        CollectionAssert.AreEquivalent(nodes, s.Quantized.Select(q => q.Node).ToArray(), string.Join("; ", s.Skipped.Select(k => k.Node + ": " + k.Reason)));
        AssertNoFloatWeight(model, name);
        Assert.IsLessThan(original.CalculateSize() * 4 / 10, model.CalculateSize());
        AssertClose(original, model, 0.03f, name);
    }

    [TestMethod]
    [DynamicData(nameof(Models))]
    public void Int4_quantizes_weights_inside_bodies(string name, Func<ModelProto> build, string[] nodes)
    {
        ModelProto original = build();
        ModelProto model = original.Clone();
        Int4Summary s = Int4WeightQuantizer.Apply(model, Int4Options.Default, name);
        ModelChecker.Validate(model, name);
        AssertNamesUnique(model, name);
        CollectionAssert.AreEquivalent(nodes, s.Quantized.Select(q => q.Node).ToArray(), string.Join("; ", s.Skipped.Select(k => k.Node + ": " + k.Reason)));
        AssertNoFloatWeight(model, name);
        Assert.IsLessThan(original.CalculateSize() * 3 / 10, model.CalculateSize());
        AssertClose(original, model, 0.2f, name);
    }

    [TestMethod]
    public void Weight_read_by_both_branches_stays_float_with_a_reason_in_the_body()
    {
        ModelProto model = IfModel();
        GraphProto elseBody = model.Graph.Node.Single(n => n.OpType == "If").Attribute[1].G;
        elseBody.Node.Clear();
        elseBody.Initializer.Clear();
        elseBody.Node.Add(Node("Gemm", ["x", "w_then", "b_then"], ["y_else"], "gemm_else", IntAttr("transB", 1), FloatAttr("alpha", 2f)));
        QuantizationSummary s = Int8DynamicQuantizer.Apply(model, QuantizationOptions.Default, "if");
        Assert.IsEmpty(s.Quantized);
        Assert.Contains("w_then", s.Skipped.Single(k => k.Node == "gemm_else").Reason);
        Assert.IsTrue(model.Graph.Initializer.Any(t => t.Name == "w_then"));
    }

    [TestMethod]
    public void ConstantValues_reads_weights_inside_bodies_without_changing_the_model()
    {
        ModelProto model = IfModel();
        byte[] bytes = model.ToByteArray();
        Dictionary<string, float[]> values = ConstantFolding.ConstantValues(model, ["w_else", "w_then", "x", "missing", "w_else"], "if");
        CollectionAssert.AreEquivalent(new[] { "w_else", "w_then" }, values.Keys.ToArray());
        CollectionAssert.AreEqual(RandomFloats(K * N, 22), values["w_else"]);
        CollectionAssert.AreEqual(RandomFloats(N * K, 20), values["w_then"]);
        CollectionAssert.AreEqual(bytes, model.ToByteArray());
    }
}
