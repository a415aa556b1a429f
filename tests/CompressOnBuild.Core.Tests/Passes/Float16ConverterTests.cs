using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using static CompressOnBuild.Tests.TinyModels;
using DataType = CompressOnBuild.Onnx.TensorProto.Types.DataType;

namespace CompressOnBuild.Core.Tests.Passes;

[TestClass]
public sealed class Float16ConverterTests
{
    public TestContext TestContext { get; set; } = null!;

    private static int ElemType(ValueInfoProto v) => v.Type.TensorType.ElemType;

    private static float[] RunModel(ModelProto model, float[] input, long[] shape)
    {
        using var ort = new Ort(model);
        return ort.Run(input, shape);
    }

    [TestMethod]
    public void Mlp_weights_and_compute_become_float16_with_float32_edges()
    {
        ModelProto original = Mlp(inF: 64, hidden: 32, classes: 8);
        ModelProto half = original.Clone();
        Float16Summary s = Float16Converter.Apply(half, Float16Options.Default, "mlp");
        ModelChecker.Validate(half, "mlp");

        Assert.AreEqual(2, s.ConvertedNodes, "the Gemms; Relu has no float16 kernel in ORT CPU and stays float32");
        Assert.AreEqual("relu1", s.KeptFloat32.Single().Node);
        Assert.AreEqual(4, s.ConvertedTensors);
        Assert.AreEqual(0, s.ClampedValues);
        Assert.IsTrue(half.Graph.Initializer.All(t => t.DataType == (int)DataType.Float16));
        Assert.AreEqual((int)DataType.Float, ElemType(half.Graph.Input[0]));
        Assert.AreEqual((int)DataType.Float, ElemType(half.Graph.Output[0]));
        Assert.AreEqual(4, s.CastsInserted, "one Cast in, one Cast out, two around Relu");
        Assert.AreEqual("Cast", half.Graph.Node[0].OpType);
        Assert.AreEqual("x", half.Graph.Node[0].Input[0]);
        Assert.AreEqual("Cast", half.Graph.Node[^1].OpType);
        Assert.AreEqual("y", half.Graph.Node[^1].Output[0]);
        Assert.IsLessThan(0.6, s.SizeRatio);

        float[] x = RandomFloats(5 * 64, 9);
        float[] expected = RunModel(original, x, [5, 64]);
        float[] got = RunModel(half, x, [5, 64]);
        Kernels.ErrorMetricsResult m = Kernels.ErrorMetrics.Compare(expected, got);
        TestContext.WriteLine($"relative L2 {m.RelativeL2:G3}, max {m.MaxAbsDifference:G3}");
        Assert.IsLessThan(5e-3, m.RelativeL2);
        Assert.IsGreaterThan(0.0, m.MaxAbsDifference, "float16 rounding must show somewhere");
    }

    [TestMethod]
    public void Values_beyond_the_float16_range_are_clamped_and_counted()
    {
        ModelProto model = Mlp();
        float[] w = TensorUtil.ToFloatArray(model.Graph.Initializer[0]);
        w[0] = 1e6f;
        w[1] = -70000f;
        w[2] = float.PositiveInfinity;
        model.Graph.Initializer[0] = TensorUtil.FromFloats("w1", w, 8, 16);
        Float16Summary s = Float16Converter.Apply(model, Float16Options.Default, "m");
        Assert.AreEqual(2, s.ClampedValues);
        float[] back = TensorUtil.ToFloatArray(model.Graph.Initializer.Single(t => t.Name == "w1"));
        Assert.AreEqual(65504f, back[0]);
        Assert.AreEqual(-65504f, back[1]);
        Assert.IsTrue(float.IsPositiveInfinity(back[2]), "infinity keeps its meaning");
    }

    [TestMethod]
    public void Blocked_ops_stay_float32_with_casts_around_them()
    {
        // x -> MatMul(w) -> Exp -> Add(b) -> y ; Exp is blocked by default.
        var g = new GraphProto { Name = "g" };
        g.Input.Add(FloatValue("x", 2, 4));
        g.Output.Add(FloatValue("y", 2, 3));
        g.Initializer.Add(TensorUtil.FromFloats("w", RandomFloats(12, 1, 0.3f), 4, 3));
        g.Initializer.Add(TensorUtil.FromFloats("b", [1f, 2f, 3f], 3));
        g.Node.Add(Node("MatMul", ["x", "w"], ["h"], "mm"));
        g.Node.Add(Node("Exp", ["h"], ["e"], "exp"));
        g.Node.Add(Node("Add", ["e", "b"], ["y"], "add"));
        ModelProto model = Model(g);
        ModelProto half = model.Clone();
        Float16Summary s = Float16Converter.Apply(half, Float16Options.Default, "m");
        ModelChecker.Validate(half, "m");
        Assert.AreEqual(2, s.ConvertedNodes);
        Assert.AreEqual("exp", s.KeptFloat32.Single().Node);
        NodeProto exp = half.Graph.Node.Single(n => n.OpType == "Exp");
        NodeProto before = half.Graph.Node.Single(n => n.Output.Contains(exp.Input[0]));
        Assert.AreEqual("Cast", before.OpType);
        Assert.AreEqual((long)DataType.Float, before.Attribute.Single().I);
        NodeProto add = half.Graph.Node.Single(n => n.OpType == "Add");
        NodeProto addInput = half.Graph.Node.Single(n => n.Output.Contains(add.Input[0]));
        Assert.AreEqual("Cast", addInput.OpType, "Exp's float32 result is cast to float16 for Add");
        Assert.AreEqual(4, s.CastsInserted);

        float[] x = RandomFloats(8, 3);
        float[] expected = RunModel(model, x, [2, 4]);
        float[] got = RunModel(half, x, [2, 4]);
        Assert.IsLessThan(5e-3, Kernels.ErrorMetrics.Compare(expected, got).RelativeL2);

        // With an empty block list Exp converts too.
        ModelProto all = model.Clone();
        Assert.AreEqual(3, Float16Converter.Apply(all, new Float16Options { BlockedOps = new HashSet<string>() }, "m").ConvertedNodes);
    }

    [TestMethod]
    public void Integer_shape_arithmetic_and_constants_are_handled()
    {
        // x[2,6] -> Shape -> Gather(0) -> Mul(int 1) -> Concat(-1) -> Reshape(x) ; Constant float scale -> Mul
        var g = new GraphProto { Name = "g" };
        g.Input.Add(FloatValue("x", 2, 6));
        g.Output.Add(FloatValue("y", 2, 6));
        g.Initializer.Add(TensorUtil.FromInt64("zero", [0]));
        g.Initializer.Add(TensorUtil.FromInt64("one", [1], 1));
        g.Initializer.Add(TensorUtil.FromInt64("minus1", [-1], 1));
        g.Node.Add(Node("Shape", ["x"], ["s"], "shape"));
        g.Node.Add(Node("Gather", ["s", "zero"], ["d0"], "gather"));
        g.Node.Add(Node("Unsqueeze", ["d0", "zero"], ["d0u"], "unsq"));
        g.Node.Add(Node("Mul", ["d0u", "one"], ["d0m"], "intmul"));
        g.Node.Add(Node("Concat", ["d0m", "minus1"], ["newshape"], "concat", IntAttr("axis", 0)));
        g.Node.Add(Node("Reshape", ["x", "newshape"], ["r"], "reshape"));
        var constant = Node("Constant", [], ["k"], "const");
        constant.Attribute.Add(new AttributeProto { Name = "value", Type = AttributeProto.Types.AttributeType.Tensor, T = TensorUtil.FromFloats("", [0.5f, 2f, 3f, 4f, 5f, 6f], 6) });
        g.Node.Add(constant);
        g.Node.Add(Node("Mul", ["r", "k"], ["y"], "floatmul"));
        g.ValueInfo.Add(FloatValue("r", 2, 6));
        ModelProto model = Model(g);
        ModelProto half = model.Clone();
        Float16Summary s = Float16Converter.Apply(half, Float16Options.Default, "m");
        ModelChecker.Validate(half, "m");
        Assert.AreEqual(2, s.ConvertedNodes, "Reshape and the float Mul; the int64 Mul/Concat/Gather stay");
        Assert.AreEqual(1, s.ConvertedTensors, "the Constant");
        Assert.AreEqual((int)DataType.Float16, half.Graph.Node.Single(n => n.OpType == "Constant").Attribute.Single().T.DataType);
        Assert.AreEqual((int)DataType.Float16, ElemType(half.Graph.ValueInfo.Single(v => v.Name == "r")), "value_info retyped");
        Assert.IsTrue(half.Graph.Initializer.All(t => t.DataType == (int)DataType.Int64));

        float[] x = RandomFloats(12, 4);
        float[] expected = RunModel(model, x, [2, 6]);
        float[] got = RunModel(half, x, [2, 6]);
        Assert.IsLessThan(2e-3, Kernels.ErrorMetrics.Compare(expected, got).RelativeL2);
    }

    [TestMethod]
    public void An_intermediate_that_is_also_a_graph_output_keeps_float32_under_its_name()
    {
        ModelProto model = Mlp();
        model.Graph.Output.Add(FloatValue("h", "N", 8));
        Float16Summary s = Float16Converter.Apply(model, new Float16Options { BlockedOps = new HashSet<string>() }, "m");
        ModelChecker.Validate(model, "m");
        NodeProto producer = model.Graph.Node.Single(n => n.Output.Contains("h"));
        Assert.AreEqual("Cast", producer.OpType);
        Assert.AreEqual((long)DataType.Float, producer.Attribute.Single().I);
        Assert.IsTrue(model.Graph.Node.Single(n => n.OpType == "Relu").Input[0] != "h", "Relu reads the float16 copy");
        using var session = new InferenceSession(model.ToByteArray());
        Assert.AreEqual(typeof(float), session.OutputMetadata["h"].ElementType);
        Assert.AreEqual(3, s.ConvertedNodes);
    }

    [TestMethod]
    public void Excluded_nodes_stay_float32()
    {
        ModelProto model = Mlp();
        Float16Summary s = Float16Converter.Apply(model, new Float16Options { ExcludedNodes = ["fc2"] }, "m");
        ModelChecker.Validate(model, "m");
        Assert.AreEqual(1, s.ConvertedNodes);
        Assert.AreEqual("excluded by the options", s.KeptFloat32.Single(k => k.Node == "fc2").Reason);
        Assert.AreEqual((int)DataType.Float, model.Graph.Initializer.Single(t => t.Name == "w2").DataType);
        using var ort = new Ort(model);
        Assert.HasCount(4 * 2, ort.Run(RandomFloats(32, 1), [2, 16]));
    }

    [TestMethod]
    public void A_model_without_a_graph_is_rejected()
    {
        var e = Assert.ThrowsExactly<CompressException>(() => Float16Converter.Apply(new ModelProto { IrVersion = 7 }, Float16Options.Default, "m"));
        Assert.AreEqual(DiagnosticCodes.ModelInvalid, e.Code);
    }

    [TestMethod]
    public void Already_float16_and_already_quantized_models_are_left_unchanged()
    {
        foreach (string id in new[] { "squeezenet-fp16", "mobilenetv2-int8" })
        {
            ModelProto model = ModelIO.Load(Corpus.Model(id));
            byte[] before = model.ToByteArray();
            Float16Summary s = Float16Converter.Apply(model, Float16Options.Default, id);
            TestContext.WriteLine($"{id}: fp16={s.AlreadyFloat16} quantized={s.AlreadyQuantized} ({s.UnchangedReason})");
            Assert.AreEqual(id == "squeezenet-fp16", s.AlreadyFloat16);
            Assert.AreEqual(id == "mobilenetv2-int8", s.AlreadyQuantized);
            Assert.IsFalse(s.NothingConverted);
            CollectionAssert.AreEqual(before, model.ToByteArray());
            Assert.AreEqual(s.ModelBytesBefore, s.ModelBytesAfter);
        }
    }

    [TestMethod]
    [DataRow("mnist-8")]
    [DataRow("mnist-lenet5")]
    [DataRow("mnist-mlp-gemm")]
    [DataRow("fashion-mlp")]
    public void Corpus_model_halves_and_agrees_with_the_original(string id)
    {
        ModelProto original = ModelIO.Load(Corpus.Model(id));
        ModelProto half = original.Clone();
        Float16Summary s = Float16Converter.Apply(half, Float16Options.Default, id);
        ModelChecker.Validate(half, id);
        int[] reference = CorpusEval.Predict(original, id);
        int[] got = CorpusEval.Predict(half, id);
        double agreement = CorpusEval.Agreement(reference, got);
        long file = new FileInfo(Corpus.Model(id)).Length;
        long after = half.CalculateSize();
        double ratio = (double)file / after;
        TestContext.WriteLine($"{id}: size {file} -> {after} bytes ({ratio:F3}x smaller); top-1 {CorpusEval.Accuracy(reference, id):F2}% -> {CorpusEval.Accuracy(got, id):F2}%, agreement {agreement:F2}%; " +
            $"{s.ConvertedNodes} nodes fp16, {s.CastsInserted} casts, {s.ClampedValues} clamped, kept fp32: {string.Join("; ", s.KeptFloat32.Select(k => k.Node + " " + k.OpType + ": " + k.Reason))}");
        Assert.AreEqual(CorpusEval.Spec(id).Baseline, CorpusEval.Accuracy(reference, id), 0.006, "baseline differs from MANIFEST.md");
        // mnist-8 holds 5,994 weights (23,976 bytes) in a 26,454-byte file: names, attributes and shapes are the rest,
        // so even with free Casts halving the weights alone gives 26454 / (26454 - 11988) = 1.829x. Folding the
        // weight's Reshape and dropping IR 3's initializer inputs (see PassGraph) brought it from 1.77x to 1.83x.
        // The 1.95x target applies to the others, whose weights dominate.
        double target = id == "mnist-8" ? 1.82 : 1.95;
        Assert.IsGreaterThanOrEqualTo(target, ratio, $"{id}: only {ratio:F3}x smaller");
        Assert.IsGreaterThanOrEqualTo(99.8, agreement, $"{id}: top-1 agreement {agreement:F2}%");
    }

    /// <summary>
    /// mnist-8 (IR 3, CNTK) computes its MatMul weight as Reshape(Parameter193 [16,4,4,10], int64 [256,10]) and
    /// declares all 8 initializers as graph inputs. Every pass folds the Reshape into a [256,10] initializer that it
    /// then converts/quantizes, and leaves an IR 4 model whose only input is the image.
    /// </summary>
    [TestMethod]
    public void Mnist8_weight_reshape_is_folded_and_ir3_initializer_inputs_dropped()
    {
        ModelProto original = ModelIO.Load(Corpus.Model("mnist-8"));
        Assert.AreEqual(3L, original.IrVersion);
        Assert.AreEqual(9, original.Graph.Input.Count);
        foreach (string scheme in new[] { "Float16", "Int8Dynamic" })
        {
            ModelProto m = original.Clone();
            if (scheme == "Float16")
            {
                Float16Converter.Apply(m, Float16Options.Default, "mnist-8");
            }
            else
            {
                Int8DynamicQuantizer.Apply(m, QuantizationOptions.Default, "mnist-8");
            }
            ModelChecker.Validate(m, "mnist-8");
            TestContext.WriteLine($"{scheme}: {original.CalculateSize()} -> {m.CalculateSize()} bytes; {string.Join(" ", m.Graph.Node.Select(n => n.OpType))}; " +
                string.Join(", ", m.Graph.Initializer.Select(t => $"{t.Name} {TensorUtil.DataTypeName(t.DataType)} [{string.Join(",", t.Dims)}]")));
            Assert.AreEqual(4L, m.IrVersion, scheme);
            CollectionAssert.AreEqual(new[] { "Input3" }, m.Graph.Input.Select(i => i.Name).ToArray(), scheme);
            var initializers = m.Graph.Initializer.ToDictionary(t => t.Name);
            Assert.IsFalse(m.Graph.Node.Any(n => n.OpType == "Reshape" && initializers.ContainsKey(n.Input[0])), $"{scheme}: a Reshape of a constant is left");
            Assert.IsFalse(initializers.ContainsKey("Parameter193") || initializers.ContainsKey("Parameter193_reshape1_shape"), $"{scheme}: the unfolded weight or its shape constant is left");
            // The [256, 10] weight is stored converted: float16, or 8-bit.
            Assert.IsTrue(m.Graph.Initializer.Any(t => t.Dims.SequenceEqual(new long[] { 256, 10 })
                && t.DataType is (int)TensorProto.Types.DataType.Float16 or (int)TensorProto.Types.DataType.Uint8 or (int)TensorProto.Types.DataType.Int8), scheme);
            Assert.IsFalse(m.Graph.Initializer.Any(t => t.DataType == (int)TensorProto.Types.DataType.Float && t.Dims.Aggregate(1L, (a, b) => a * b) > 100), $"{scheme}: a float32 weight is left");
            int[] reference = CorpusEval.Predict(original, "mnist-8");
            int[] got = CorpusEval.Predict(m, "mnist-8");
            double agreement = CorpusEval.Agreement(reference, got);
            TestContext.WriteLine($"{scheme}: agreement {agreement:F2}% on the full test set, top-1 {CorpusEval.Accuracy(got, "mnist-8"):F2}%");
            Assert.IsGreaterThanOrEqualTo(99.5, agreement, scheme);
            Assert.IsGreaterThanOrEqualTo(scheme == "Float16" ? 1.82 : 2.7, (double)new FileInfo(Corpus.Model("mnist-8")).Length / m.CalculateSize(), scheme);
        }
    }

    /// <summary>Constant folding of shape ops: chains fold, a constant read elsewhere too is left (no second copy), Transpose permutes.</summary>
    [TestMethod]
    public void Shape_ops_on_constants_fold_into_initializers()
    {
        var g = new GraphProto { Name = "fold" };
        g.Input.Add(FloatValue("x", 2, 6));
        g.Output.Add(FloatValue("y", 2, 4));
        g.Output.Add(FloatValue("z", 2, 3));
        g.Output.Add(FloatValue("v", 2, 6));
        float[] w = Enumerable.Range(0, 24).Select(i => (float)i).ToArray();
        g.Initializer.Add(TensorUtil.FromFloats("w", w, 4, 6));
        g.Initializer.Add(TensorUtil.FromInt64("axes", [0], 1));
        g.Initializer.Add(TensorUtil.FromFloats("shared", [.. Enumerable.Range(0, 18).Select(i => i * 0.5f)], 6, 3));
        g.Initializer.Add(TensorUtil.FromInt64("shape", [3, 6], 2));
        g.Node.Add(Node("Transpose", ["w"], ["wt"], "t"));               // [6, 4]
        g.Node.Add(Node("Unsqueeze", ["wt", "axes"], ["wu"], "u"));      // [1, 6, 4]
        g.Node.Add(Node("Squeeze", ["wu", "axes"], ["ws"], "s"));        // [6, 4]
        g.Node.Add(Node("MatMul", ["x", "ws"], ["y"], "mm"));
        g.Node.Add(Node("Reshape", ["shared", "shape"], ["shared_r"], "r")); // "shared" is also read directly: not folded
        g.Node.Add(Node("MatMul", ["x", "shared"], ["z"], "mm2"));
        g.Node.Add(Node("MatMul", ["z", "shared_r"], ["v"], "mm3"));
        ModelProto model = Model(g, 13);
        ModelProto folded = model.Clone();
        var pg = new PassGraph(folded);
        Assert.AreEqual(3, pg.FoldConstantShapeOps("fold"));
        ModelChecker.Validate(folded, "fold");
        CollectionAssert.AreEqual(new[] { "MatMul", "Reshape", "MatMul", "MatMul" }, folded.Graph.Node.Select(n => n.OpType).ToArray());
        TensorProto ws = folded.Graph.Initializer.Single(t => t.Name == "ws");
        CollectionAssert.AreEqual(new long[] { 6, 4 }, ws.Dims.ToArray());
        float[] got = TensorUtil.ToFloatArray(ws);
        for (int r = 0; r < 6; r++)
        {
            for (int c = 0; c < 4; c++)
            {
                Assert.AreEqual(w[c * 6 + r], got[r * 4 + c], "transposed");
            }
        }
        Assert.IsFalse(folded.Graph.Initializer.Any(t => t.Name is "w" or "wt" or "wu" or "axes"), "folded inputs that nothing reads any more are gone");
        Assert.AreEqual(1, folded.Graph.Initializer.Count(t => t.Name == "shared"), "a constant read twice is kept once");
        float[] x = RandomFloats(12, 5);
        using var a = new InferenceSession(model.ToByteArray());
        using var b = new InferenceSession(folded.ToByteArray());
        using OrtValue v = OrtValue.CreateTensorValueFromMemory(x, [2, 6]);
        using var ra = a.Run(new RunOptions(), ["x"], [v], ["y", "v"]);
        using var rb = b.Run(new RunOptions(), ["x"], [v], ["y", "v"]);
        for (int k = 0; k < 2; k++)
        {
            CollectionAssert.AreEqual(ra[k].GetTensorDataAsSpan<float>().ToArray(), rb[k].GetTensorDataAsSpan<float>().ToArray(), "folding changes no value");
        }
    }

    /// <summary>Ops the probe builds: every float16 op the converter knows that needs no special inputs.</summary>
    private static readonly string[] ProbedOps =
    [
        "Conv", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu", "Relu", "LeakyRelu", "Elu",
        "Selu", "HardSigmoid", "HardSwish", "Softsign", "Softplus", "Sigmoid", "Tanh", "Abs", "Neg", "Sqrt", "Reciprocal",
        "Floor", "Ceil", "Round", "Erf", "Exp", "Log", "Sin", "Cos", "Identity", "Softmax", "LogSoftmax", "MaxPool", "AveragePool",
        "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Flatten", "Concat", "Transpose", "BatchNormalization",
        "InstanceNormalization", "Clip", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum",
    ];

    /// <summary>
    /// Which operators ORT's CPU provider runs in float16. Where it has no float16 kernel it inserts a Cast to
    /// float32 before the node (and removes it against the converter's own Cast from the graph input), or expands
    /// the op into a function body; either way the op did not run as "Cast op Cast". Every op found so must be in
    /// <see cref="Float16Options.DefaultBlockedOps"/> (kept float32 by the converter, so ORT need not cast per node),
    /// and every native op must be convertible unless it is blocked for range reasons.
    /// </summary>
    [TestMethod]
    public void Default_block_list_covers_the_ops_ort_cpu_has_no_float16_kernel_for()
    {
        var native = new List<string>();
        var notNative = new List<string>();
        foreach (string op in ProbedOps)
        {
            var g = new GraphProto { Name = "probe" };
            g.Input.Add(FloatValue("x", 1, 4, 6, 6));
            g.Output.Add(new ValueInfoProto { Name = "y", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)DataType.Float } } });
            var inputs = new List<string> { "x" };
            var attrs = new List<AttributeProto>();
            switch (op)
            {
                case "Conv":
                    g.Initializer.Add(TensorUtil.FromFloats("w", RandomFloats(4 * 4 * 9, 1), 4, 4, 3, 3));
                    inputs.Add("w");
                    break;
                case "MatMul" or "Add" or "Sub" or "Mul" or "Div" or "Max" or "Min" or "Sum" or "Mean" or "PRelu":
                    g.Initializer.Add(TensorUtil.FromFloats("w", RandomFloats(36, 1).Select(v => v + 2f).ToArray(), 6, 6));
                    inputs.Add("w");
                    break;
                case "Gemm":
                    g.Input[0] = FloatValue("x", 4, 6);
                    g.Initializer.Add(TensorUtil.FromFloats("w", RandomFloats(36, 1), 6, 6));
                    inputs.Add("w");
                    break;
                case "MaxPool" or "AveragePool":
                    attrs.Add(IntsAttr("kernel_shape", 2, 2));
                    break;
                case "Reshape":
                    g.Initializer.Add(TensorUtil.FromInt64("shape", [1, -1], 2));
                    inputs.Add("shape");
                    break;
                case "Concat":
                    inputs.Add("x");
                    attrs.Add(IntAttr("axis", 1));
                    break;
                case "BatchNormalization":
                    foreach (string p in new[] { "scale", "bias", "mean", "var" })
                    {
                        g.Initializer.Add(TensorUtil.FromFloats(p, [1f, 0.5f, 0.25f, 2f], 4));
                        inputs.Add(p);
                    }
                    break;
                case "InstanceNormalization":
                    foreach (string p in new[] { "scale", "bias" })
                    {
                        g.Initializer.Add(TensorUtil.FromFloats(p, [1f, 0.5f, 0.25f, 2f], 4));
                        inputs.Add(p);
                    }
                    break;
                default:
                    break;
            }
            g.Node.Add(Node(op, [.. inputs], ["y"], "probe", [.. attrs]));
            ModelProto model = Model(g, opset: 17);
            Float16Summary s = Float16Converter.Apply(model, new Float16Options { BlockedOps = new HashSet<string>() }, op);
            Assert.AreEqual(1, s.ConvertedNodes, op);
            string path = Path.Combine(Path.GetTempPath(), $"cob-fp16-probe-{op}-{Environment.ProcessId}.onnx");
            try
            {
                List<string> ops = Ort.OptimizedOps(model, path, GraphOptimizationLevel.ORT_DISABLE_ALL);
                (ops.SequenceEqual(["Cast", op, "Cast"]) ? native : notNative).Add(op);
                if (!ops.SequenceEqual(["Cast", op, "Cast"]))
                {
                    TestContext.WriteLine($"{op}: ORT runs {string.Join(" ", ops)}");
                }
                using var ort = new Ort(model);
                long[] shape = [.. g.Input[0].Type.TensorType.Shape.Dim.Select(d => d.DimValue)];
                float[] y = ort.Run(RandomFloats((int)shape.Aggregate(1L, (a, d) => a * d), 2).Select(v => v + 1.5f).ToArray(), shape);
                Assert.IsTrue(y.All(float.IsFinite), op);
            }
            finally
            {
                File.Delete(path);
            }
        }
        TestContext.WriteLine("ORT CPU float16 kernels: " + string.Join(" ", native));
        TestContext.WriteLine("No float16 kernel (Casts inserted or expanded): " + string.Join(" ", notNative));
        CollectionAssert.IsSubsetOf(notNative, Float16Options.DefaultBlockedOps.ToList(), "ops ORT CPU cannot run in float16 must be blocked by default");
        string[] rangeBlocked = ["Exp", "Pow", "Softplus", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceProd", "CumSum", "Resize", "Upsample", "TopK", "Range"];
        Assert.IsFalse(native.Any(op => Float16Options.DefaultBlockedOps.Contains(op) && !rangeBlocked.Contains(op)), "a native float16 op is blocked");
    }

    /// <summary>An If whose branches read an outer value that a converted node produces: the branches keep float32.</summary>
    [TestMethod]
    public void Values_read_inside_subgraphs_stay_float32_under_their_name()
    {
        var g = new GraphProto { Name = "g" };
        g.Input.Add(FloatValue("x", 2, 4));
        g.Input.Add(new ValueInfoProto { Name = "flag", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)DataType.Bool, Shape = new TensorShapeProto() } } });
        g.Output.Add(FloatValue("y", 2, 3));
        g.Initializer.Add(TensorUtil.FromFloats("w", RandomFloats(12, 1, 0.5f), 4, 3));
        g.Node.Add(Node("MatMul", ["x", "w"], ["h"], "mm"));
        GraphProto Branch(string name, float factor)
        {
            var b = new GraphProto { Name = name };
            b.Output.Add(FloatValue(name + "_out", 2, 3));
            b.Initializer.Add(TensorUtil.FromFloats(name + "_k", [factor]));
            b.Node.Add(Node("Mul", ["h", name + "_k"], [name + "_out"], name + "_mul"));
            return b;
        }
        var ifNode = Node("If", ["flag"], ["y"], "if");
        ifNode.Attribute.Add(new AttributeProto { Name = "then_branch", Type = AttributeProto.Types.AttributeType.Graph, G = Branch("then", 2f) });
        ifNode.Attribute.Add(new AttributeProto { Name = "else_branch", Type = AttributeProto.Types.AttributeType.Graph, G = Branch("else", -1f) });
        g.Node.Add(ifNode);
        ModelProto model = Model(g);
        ModelProto half = model.Clone();
        Float16Summary s = Float16Converter.Apply(half, Float16Options.Default, "m");
        ModelChecker.Validate(half, "m");
        Assert.AreEqual(3, s.ConvertedNodes, "the MatMul and each branch's Mul (bodies are converted on their own)");
        Assert.AreEqual("if", s.KeptFloat32.Single().Node);
        Assert.AreEqual("Cast", half.Graph.Node.Single(n => n.Output.Contains("h")).OpType, "h is float32 again for the branches");

        float[] x = RandomFloats(8, 2);
        foreach (bool flag in new[] { true, false })
        {
            float[] expected, got;
            using (var a = new InferenceSession(model.ToByteArray()))
            using (var b = new InferenceSession(half.ToByteArray()))
            using (OrtValue xv = OrtValue.CreateTensorValueFromMemory(x, [2, 4]))
            using (OrtValue fv = OrtValue.CreateTensorValueFromMemory(new[] { flag }, Array.Empty<long>()))
            {
                using var ra = a.Run(new RunOptions(), ["x", "flag"], [xv, fv], ["y"]);
                using var rb = b.Run(new RunOptions(), ["x", "flag"], [xv, fv], ["y"]);
                expected = ra[0].GetTensorDataAsSpan<float>().ToArray();
                got = rb[0].GetTensorDataAsSpan<float>().ToArray();
            }
            Assert.IsLessThan(5e-3, Kernels.ErrorMetrics.Compare(expected, got).RelativeL2, $"flag={flag}");
        }
    }
}
