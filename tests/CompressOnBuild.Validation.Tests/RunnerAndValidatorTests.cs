using CompressOnBuild.Core;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Validation.Tests;

[TestClass]
public sealed class RunnerAndValidatorTests
{
    private static ValueInfoProto Value(string name, TensorProto.Types.DataType type, params object[] dims)
    {
        ValueInfoProto v = TinyModels.FloatValue(name, dims);
        v.Type.TensorType.ElemType = (int)type;
        return v;
    }

    /// <summary>y = x (or y = x + c when <paramref name="add"/> is given), x and y [batch, 4].</summary>
    private static string SaveModel(TempDir dir, string file, object batch, float[]? add = null, string op = "Identity")
    {
        GraphProto g = new() { Name = "g" };
        g.Input.Add(TinyModels.FloatValue("x", batch, 4));
        g.Output.Add(TinyModels.FloatValue("y", batch, 4));
        if (add != null)
        {
            g.Initializer.Add(TensorUtil.FromFloats("c", add, 4));
            g.Node.Add(TinyModels.Node("Add", ["x", "c"], ["y"]));
        }
        else
        {
            g.Node.Add(TinyModels.Node(op, ["x"], ["y"]));
        }
        string path = dir.File(file);
        TestFiles.Save(TinyModels.Model(g), path);
        return path;
    }

    private static Dataset Npy(TempDir dir, int count, float[] values, params int[] labels)
    {
        string f = dir.File($"data{count}-{values.Length}.npy");
        File.WriteAllBytes(f, TestFiles.NpyFloat([count, values.Length / count], values));
        string? l = null;
        if (labels.Length > 0)
        {
            l = dir.File("labels.txt");
            File.WriteAllText(l, string.Join("\n", labels));
        }
        return DatasetLoader.Load(f, l, TestFiles.Inputs("x", -1, values.Length / count));
    }

    [TestMethod]
    public void Validator_MetricsMatchHandComputedValues()
    {
        using TempDir dir = new();
        using ModelRunner original = new(SaveModel(dir, "a.onnx", "N"));
        using ModelRunner compressed = new(SaveModel(dir, "b.onnx", "N", add: [0, 0, 0, 1]));
        Dataset data = Npy(dir, 3, [1, 0, 0, 0, 0, 3, 0, 0, 0, 0, 2, 1.5f], 0, 1, 3);

        ValidationResult r = Validator.Compare(original, compressed, data, new ValidatorOptions { LatencyRuns = 5, WarmupRuns = 1 });
        Assert.AreEqual(3, r.SampleCount);
        Assert.AreEqual("y", r.OutputName);
        Assert.IsTrue(r.HasLabels);
        // Top-1: original 0, 1, 2; compressed 0 (tie -> first), 1, 3.
        Assert.AreEqual(200.0 / 3, r.OriginalAccuracy!.Value, 1e-9);
        Assert.AreEqual(100.0, r.CompressedAccuracy!.Value, 1e-9);
        Assert.AreEqual(-100.0 / 3, r.AccuracyDrop!.Value, 1e-9);
        Assert.AreEqual(2.0 / 3, r.Top1Agreement, 1e-12);
        // Cosines: 1/sqrt(2), 3/sqrt(10), 7.75/(2.5*sqrt(10.25)).
        double cos = (1 / Math.Sqrt(2) + 3 / Math.Sqrt(10) + 7.75 / (2.5 * Math.Sqrt(10.25))) / 3;
        Assert.AreEqual(cos, r.MeanCosineSimilarity, 1e-6);
        Assert.AreEqual(1f, r.MaxAbsError);
        Assert.HasCount(1, r.Outputs);
        Assert.AreEqual((1 + 1.0 / 3 + 0.4) / 3, r.Outputs[0].MeanRelativeL2Error, 1e-6);
        Assert.AreEqual(5, r.LatencyRuns);
        Assert.IsGreaterThan(0.0, r.OriginalLatencyMs);
        Assert.IsGreaterThan(0.0, r.CompressedLatencyMs);
        Assert.AreEqual(r.CompressedLatencyMs / r.OriginalLatencyMs, r.LatencyRatio, 1e-12);
        Assert.IsGreaterThan(0.0, r.OriginalImagesPerSecond);
        Assert.IsNull(r.OriginalReferenceMaxAbsError);
    }

    /// <summary>y = x - max over all of x (ReduceMax without axes spans the batch axis), plus <paramref name="shift"/>.</summary>
    private static string SaveReduceMaxModel(TempDir dir, string file, float[] shift)
    {
        GraphProto g = new() { Name = "reducemax" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 4));
        g.Output.Add(TinyModels.FloatValue("y", "N", 4));
        g.Initializer.Add(TensorUtil.FromFloats("c", shift, 4));
        g.Node.Add(TinyModels.Node("ReduceMax", ["x"], ["m"], "max_all", TinyModels.IntAttr("keepdims", 1)));
        g.Node.Add(TinyModels.Node("Sub", ["x", "m"], ["d"]));
        g.Node.Add(TinyModels.Node("Add", ["d", "c"], ["y"]));
        string path = dir.File(file);
        TestFiles.Save(TinyModels.Model(g), path);
        return path;
    }

    /// <summary>Flatten(axis 0) puts the whole batch in one row; a Softmax over it, reshaped back to [N, 4], times <paramref name="scale"/>.</summary>
    private static string SaveFlattenAxis0Model(TempDir dir, string file, float[] scale)
    {
        GraphProto g = new() { Name = "flatten0" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 4));
        g.Output.Add(TinyModels.FloatValue("y", "N", 4));
        g.Initializer.Add(TensorUtil.FromFloats("s", scale, 4));
        g.Initializer.Add(TensorUtil.FromInt64("shape", [-1, 4], 2));
        g.Node.Add(TinyModels.Node("Flatten", ["x"], ["f"], "flatten0", TinyModels.IntAttr("axis", 0)));
        g.Node.Add(TinyModels.Node("Softmax", ["f"], ["p"], "softmax", TinyModels.IntAttr("axis", 1)));
        g.Node.Add(TinyModels.Node("Reshape", ["p", "shape"], ["r"]));
        g.Node.Add(TinyModels.Node("Mul", ["r", "s"], ["y"]));
        string path = dir.File(file);
        TestFiles.Save(TinyModels.Model(g), path);
        return path;
    }

    /// <summary>The metrics the validator must report: each model run on one sample at a time, independently.</summary>
    private static (double Agreement, double Cosine, float MaxAbs, double Accuracy) BatchOneReference(string a, string b, Dataset data)
    {
        using ModelRunner ra = new(a);
        using ModelRunner rb = new(b);
        int agree = 0, correct = 0;
        double cos = 0;
        float maxAbs = 0;
        for (int i = 0; i < data.Count; i++)
        {
            float[] ya = ra.Run(data.GetSample(i))[0].Data;
            float[] yb = rb.Run(data.GetSample(i))[0].Data;
            Assert.HasCount(4, ya, "one sample in, one row out");
            int ta = Validator.ArgMax(ya), tb = Validator.ArgMax(yb);
            agree += ta == tb ? 1 : 0;
            correct += tb == data.Labels![i] ? 1 : 0;
            cos += Kernels.ErrorMetrics.CosineSimilarity(ya, yb);
            maxAbs = Math.Max(maxAbs, Kernels.ErrorMetrics.MaxAbsDifference(ya, yb));
        }
        return ((double)agree / data.Count, cos / data.Count, maxAbs, 100.0 * correct / data.Count);
    }

    private static void AssertEqualsBatchOne(string a, string b, Dataset data)
    {
        (double agreement, double cosine, float maxAbs, double accuracy) = BatchOneReference(a, b, data);
        using ModelRunner original = new(a);
        using ModelRunner compressed = new(b);
        ValidationResult r = Validator.Compare(original, compressed, data, new ValidatorOptions { LatencyRuns = 0 });
        Assert.AreEqual(cosine, r.MeanCosineSimilarity, 1e-9, "cosine");
        Assert.AreEqual(maxAbs, r.MaxAbsError, 1e-6f, "max abs error");
        Assert.AreEqual(agreement, r.Top1Agreement, 1e-12, "agreement");
        Assert.AreEqual(accuracy, r.CompressedAccuracy!.Value, 1e-9, "accuracy");
        Assert.AreEqual(1, r.BatchSize);
    }

    [TestMethod]
    public void Validator_ReduceMaxOverAllAxes_ReportsWhatBatchOneGives()
    {
        using TempDir dir = new();
        string a = SaveReduceMaxModel(dir, "a.onnx", [0, 0, 0, 0]);
        string b = SaveReduceMaxModel(dir, "b.onnx", [0, 0.5f, 0, 0]);
        // Ten samples whose own maxima differ: in one batch every sample is shifted by the batch's maximum instead.
        float[] values = TinyModels.RandomFloats(40, 17, 2f);
        Dataset data = Npy(dir, 10, values, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
        AssertEqualsBatchOne(a, b, data);
    }

    [TestMethod]
    public void Validator_FlattenAxis0_ReportsWhatBatchOneGives()
    {
        using TempDir dir = new();
        string a = SaveFlattenAxis0Model(dir, "a.onnx", [1, 1, 1, 1]);
        string b = SaveFlattenAxis0Model(dir, "b.onnx", [1, 1.2f, 0.9f, 1]);
        float[] values = TinyModels.RandomFloats(40, 23, 2f);
        Dataset data = Npy(dir, 10, values, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
        AssertEqualsBatchOne(a, b, data);
    }

    [TestMethod]
    public void Validator_DynamicInt8_ReportsWhatBatchOneGives()
    {
        // DynamicQuantizeLinear takes one scale per run: in a batch, every sample is quantized with the batch's range.
        using TempDir dir = new();
        ModelProto model = TinyModels.Mlp(inF: 16, hidden: 32, classes: 4, seed: 11);
        string a = dir.File("float.onnx");
        TestFiles.Save(model, a);
        Core.Passes.Int8DynamicQuantizer.Apply(model, Core.Passes.QuantizationOptions.Default, "mlp");
        string b = dir.File("int8.onnx");
        TestFiles.Save(model, b);
        // Samples of very different magnitudes, so a batch's range is far from most samples' own.
        float[] values = TinyModels.RandomFloats(12 * 16, 29, 1f);
        for (int i = 0; i < values.Length; i++)
        {
            values[i] *= 1 + 20 * (i / 16 % 3);
        }
        Dataset data = Npy(dir, 12, values, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
        AssertEqualsBatchOne(a, b, data);
    }

    [TestMethod]
    public void Validator_SelfComparison_IsExact()
    {
        using TempDir dir = new();
        string path = dir.File("mlp.onnx");
        TestFiles.Save(TinyModels.Mlp(inF: 4, hidden: 8, classes: 4), path);
        using ModelRunner a = new(path);
        using ModelRunner b = new(path);
        Dataset data = Npy(dir, 8, TinyModels.RandomFloats(32, 5));
        ValidationResult r = Validator.Compare(a, b, data, new ValidatorOptions { LatencyRuns = 0 });
        Assert.AreEqual(1.0, r.Top1Agreement);
        Assert.AreEqual(0f, r.MaxAbsError);
        Assert.AreEqual(1.0, r.MeanCosineSimilarity, 1e-12);
        Assert.IsNull(r.AccuracyDrop);
        Assert.IsFalse(r.HasLabels);
        Assert.AreEqual(0.0, r.LatencyRatio);
    }

    [TestMethod]
    public void Runner_BatchedEqualsOneByOne_AndFixedBatchRunsSingly()
    {
        using TempDir dir = new();
        string path = dir.File("mlp.onnx");
        TestFiles.Save(TinyModels.Mlp(inF: 4, hidden: 8, classes: 4, seed: 3), path);
        Dataset data = Npy(dir, 10, TinyModels.RandomFloats(40, 9));
        using ModelRunner runner = new(path, new ModelRunnerOptions { BatchSize = 4 });
        Assert.IsTrue(runner.HasDynamicBatch);
        DatasetRun batched = runner.RunDataset(data);
        Assert.AreEqual(4, batched.BatchSize);
        Assert.HasCount(10, batched.Outputs);
        for (int i = 0; i < data.Count; i++)
        {
            TensorData single = runner.Run(data.GetSample(i))[0];
            CollectionAssert.AreEqual(new long[] { 1, 4 }, batched.Outputs[i][0].Shape);
            TestFiles.AssertClose(single.Data, batched.Outputs[i][0].Data, 1e-6f, $"sample {i}");
        }

        using ModelRunner fixedRunner = new(SaveModel(dir, "fixed.onnx", 1));
        Assert.IsFalse(fixedRunner.HasDynamicBatch);
        Dataset four = Npy(dir, 2, [1, 2, 3, 4, 5, 6, 7, 8]);
        DatasetRun run = fixedRunner.RunDataset(four);
        Assert.AreEqual(1, run.BatchSize);
        CollectionAssert.AreEqual(new[] { 5f, 6f, 7f, 8f }, run.Outputs[1][0].Data);
    }

    [TestMethod]
    public void Runner_Float16InputsAndOutputsAreConverted()
    {
        using TempDir dir = new();
        GraphProto g = new() { Name = "fp16" };
        g.Input.Add(Value("h", TensorProto.Types.DataType.Float16, "N", 3));
        g.Input.Add(TinyModels.FloatValue("f", "N", 3));
        g.Output.Add(TinyModels.FloatValue("h_as_float", "N", 3));
        g.Output.Add(Value("f_as_half", TensorProto.Types.DataType.Float16, "N", 3));
        g.Node.Add(TinyModels.Node("Cast", ["h"], ["h_as_float"], null, TinyModels.IntAttr("to", (long)TensorProto.Types.DataType.Float)));
        g.Node.Add(TinyModels.Node("Cast", ["f"], ["f_as_half"], null, TinyModels.IntAttr("to", (long)TensorProto.Types.DataType.Float16)));
        string path = dir.File("fp16.onnx");
        TestFiles.Save(TinyModels.Model(g), path);

        using ModelRunner runner = new(path);
        Assert.AreEqual(TensorElementType.Float16, runner.Inputs[0].ElementType);
        Assert.AreEqual(TensorElementType.Float16, runner.Outputs[1].ElementType);
        float[] v = [0.1f, 1000.3f, -2.7182817f];
        float[] halfRounded = [.. v.Select(x => (float)(Half)x)];
        TensorData[] outputs = runner.Run([new TensorData(v, [1, 3]), new TensorData(v, [1, 3])]);
        CollectionAssert.AreEqual(halfRounded, outputs[0].Data);
        CollectionAssert.AreEqual(halfRounded, outputs[1].Data);
        Assert.AreNotEqual(v[0], outputs[0].Data[0]);
    }

    [TestMethod]
    public void Validator_NaNOutputs_NameTheSample()
    {
        using TempDir dir = new();
        using ModelRunner ok = new(SaveModel(dir, "id.onnx", "N"));
        using ModelRunner log = new(SaveModel(dir, "log.onnx", "N", op: "Log"));
        Dataset data = Npy(dir, 3, [1, 1, 1, 1, 2, 2, 2, 2, 1, -1, 1, 1]);
        CompressException e = Assert.ThrowsExactly<CompressException>(() => Validator.Compare(ok, log, data, new ValidatorOptions { LatencyRuns = 0 }));
        Assert.AreEqual(DiagnosticCodes.NonFiniteOutputs, e.Code);
        Assert.AreEqual(2, e.Arguments[2]);
        StringAssert.Contains(e.Message, "log.onnx");
    }

    [TestMethod]
    public void Runner_Errors()
    {
        using TempDir dir = new();
        CompressException missing = Assert.ThrowsExactly<CompressException>(() => new ModelRunner(dir.File("none.onnx")));
        Assert.AreEqual(DiagnosticCodes.ModelNotFound, missing.Code);

        string garbage = dir.File("garbage.onnx");
        File.WriteAllBytes(garbage, [1, 2, 3, 4, 5, 6, 7, 8]);
        CompressException bad = Assert.ThrowsExactly<CompressException>(() => new ModelRunner(garbage));
        Assert.AreEqual(DiagnosticCodes.OrtRunFailed, bad.Code);
        StringAssert.Contains(bad.Message, garbage);

        using ModelRunner runner = new(SaveModel(dir, "id.onnx", "N"));
        CompressException run = Assert.ThrowsExactly<CompressException>(() => runner.Run([new TensorData([1, 2, 3, 4, 5], [1, 5])]));
        Assert.AreEqual(DiagnosticCodes.OrtRunFailed, run.Code);

        Dataset data = Npy(dir, 1, [1, 2, 3, 4]);
        CompressException output = Assert.ThrowsExactly<CompressException>(() => Validator.Evaluate(runner, data, "nope"));
        Assert.AreEqual(DiagnosticCodes.OutputMismatch, output.Code);
    }

    [TestMethod]
    public void Evaluate_ReferenceOutputsFromTestDataSet()
    {
        using TempDir dir = new();
        using ModelRunner runner = new(SaveModel(dir, "m/add.onnx", 1, add: [1, 1, 1, 1]));
        TestFiles.WriteTensor(dir.File("m/test_data_set_0/input_0.pb"), "x", [1, 2, 3, 4], 1, 4);
        TestFiles.WriteTensor(dir.File("m/test_data_set_0/output_0.pb"), "y", [2, 3, 4, 5.5f], 1, 4);
        Dataset data = DatasetLoader.Load(dir.File("m"), null, runner.Inputs);
        ModelEvaluation e = Validator.Evaluate(runner, data);
        Assert.AreEqual(0.5f, e.ReferenceMaxAbsError);
        CollectionAssert.AreEqual(new[] { 3 }, e.Top1.ToArray());
        Assert.IsNull(e.Accuracy);
    }

    [TestMethod]
    public void Median_OddAndEven()
    {
        Assert.AreEqual(2.0, Validator.Median([3, 1, 2]));
        Assert.AreEqual(2.5, Validator.Median([4, 1, 3, 2]));
        Assert.AreEqual(1, Validator.ArgMax([1f, 5f, 5f, float.NaN]));
    }

    [TestMethod]
    public void RunDataset_MapsInputsByName_WhenTheDataSetOrdersThemDifferently()
    {
        using TempDir dir = new();
        GraphProto g = new() { Name = "sub" };
        g.Input.Add(TinyModels.FloatValue("a", "N", 2));
        g.Input.Add(TinyModels.FloatValue("b", "N", 2));
        g.Output.Add(TinyModels.FloatValue("d", "N", 2));
        g.Node.Add(TinyModels.Node("Sub", ["a", "b"], ["d"]));
        string path = dir.File("sub.onnx");
        TestFiles.Save(TinyModels.Model(g), path);
        string z = dir.File("d.npz");
        TestFiles.Zip(z, ("b.npy", TestFiles.NpyFloat([1, 2], 1, 1)), ("a.npy", TestFiles.NpyFloat([1, 2], 10, 20)));
        using ModelRunner runner = new(path);
        // The data set is built for inputs listed as (b, a); the runner must still feed a=10,20 and b=1,1.
        ModelInputs swapped = new([runner.Inputs[1], runner.Inputs[0]]);
        Dataset data = DatasetLoader.Load(z, null, swapped);
        CollectionAssert.AreEqual(new[] { 9f, 19f }, runner.RunDataset(data).Outputs[0][0].Data);

        CompressException e = Assert.ThrowsExactly<CompressException>(() => runner.RunDataset(Npy(dir, 1, [1, 2])));
        Assert.AreEqual(DiagnosticCodes.DataShape, e.Code);
    }

    [TestMethod]
    public void RandomInputs_AreDeterministicAndFitTheModel()
    {
        using TempDir dir = new();
        string path = dir.File("mlp.onnx");
        TestFiles.Save(TinyModels.Mlp(inF: 6), path);
        using ModelRunner runner = new(path);
        Dataset a = RandomInputs.Create(runner.Inputs, samples: 4, seed: 7);
        Dataset b = RandomInputs.Create(runner.Inputs, samples: 4, seed: 7);
        Assert.AreEqual(4, a.Count);
        Assert.IsNull(a.Labels);
        CollectionAssert.AreEqual(new long[] { 1, 6 }, a.GetSample(3)[0].Shape);
        CollectionAssert.AreEqual(a.GetSample(3)[0].Data, b.GetSample(3)[0].Data);
        Assert.IsTrue(a.GetSample(0)[0].Data.All(v => v >= 0f && v < 1f));
        Assert.AreEqual(4, runner.RunDataset(a).Outputs.Count);
    }

    [TestMethod]
    public void ModelInputs_FromModel_SkipsInitializersAndReadsDims()
    {
        ModelProto model = TinyModels.Mlp(inF: 5, classes: 3);
        model.Graph.Input.Add(TinyModels.FloatValue("w1", 8, 5)); // IR < 4 style: an initializer listed as input
        ModelInputs inputs = ModelInputs.FromModel(model);
        Assert.HasCount(1, inputs);
        Assert.AreEqual("x", inputs[0].Name);
        CollectionAssert.AreEqual(new long[] { -1, 5 }, inputs[0].Shape.ToArray());
        Assert.IsTrue(inputs[0].HasDynamicBatch);
        Assert.AreEqual(TensorElementType.Float, inputs[0].ElementType);
        Assert.AreEqual("[-1,3] float", ModelInputs.OutputsFromModel(model)[0].Describe());
    }

    /// <summary>
    /// The worker reads the original's inputs from its graph instead of opening an ONNX Runtime session for them (issue
    /// 17): what <see cref="ModelInputs.FromModel"/> lists must be what the session lists, name for name, in order, with
    /// the same element types and dims, on the cases where the two could part: an initializer listed as input at IR 3
    /// (a constant) and at IR 7 (overridable), symbolic, unnamed and fixed dims, an unknown rank, string, bool, int64
    /// and float16 inputs, an input no node reads, and an optional input.
    /// </summary>
    [TestMethod]
    public void ModelInputs_FromModel_ListsWhatOnnxRuntimeLists()
    {
        using TempDir dir = new();
        var models = new List<(string Name, ModelProto Model)>();

        ModelProto ir3 = TinyModels.Mlp(inF: 5, classes: 3);
        ir3.IrVersion = 3;
        ir3.OpsetImport[0].Version = 8;
        foreach (TensorProto t in ir3.Graph.Initializer)
        {
            ir3.Graph.Input.Add(TinyModels.FloatValue(t.Name, [.. t.Dims.Cast<object>()]));
        }
        models.Add(("ir3", ir3));

        ModelProto overridable = TinyModels.Mlp(inF: 5, classes: 3);
        overridable.Graph.Input.Insert(0, TinyModels.FloatValue("b1", 8));
        models.Add(("overridable", overridable));

        var g = new GraphProto { Name = "kinds" };
        ValueInfoProto unnamed = Value("u", TensorProto.Types.DataType.Float, "N", 3);
        unnamed.Type.TensorType.Shape.Dim[0].ClearDimParam(); // a dimension with neither a value nor a name
        g.Input.Add(unnamed);
        g.Input.Add(new ValueInfoProto { Name = "r", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float } } });
        g.Input.Add(Value("s", TensorProto.Types.DataType.String, "N"));
        g.Input.Add(Value("flag", TensorProto.Types.DataType.Bool));
        g.Input.Add(Value("ids", TensorProto.Types.DataType.Int64, "batch", "seq"));
        g.Input.Add(Value("h", TensorProto.Types.DataType.Float16, 2, "T", 4));
        g.Input.Add(Value("unused", TensorProto.Types.DataType.Float, 7));
        g.Input.Add(new ValueInfoProto
        {
            Name = "opt",
            Type = new TypeProto { OptionalType = new TypeProto.Types.Optional { ElemType = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float, Shape = new TensorShapeProto() } } } },
        });
        g.Node.Add(TinyModels.Node("Relu", ["u"], ["u_out"]));
        g.Node.Add(TinyModels.Node("Relu", ["r"], ["r_out"]));
        g.Node.Add(TinyModels.Node("Identity", ["s"], ["s_out"]));
        g.Node.Add(TinyModels.Node("Not", ["flag"], ["flag_out"]));
        g.Node.Add(TinyModels.Node("Identity", ["ids"], ["ids_out"]));
        g.Node.Add(TinyModels.Node("Identity", ["h"], ["h_out"]));
        g.Node.Add(TinyModels.Node("OptionalHasElement", ["opt"], ["has"]));
        g.Output.Add(TinyModels.FloatValue("u_out", -1, 3));
        g.Output.Add(new ValueInfoProto { Name = "r_out", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float } } });
        g.Output.Add(Value("s_out", TensorProto.Types.DataType.String, "N"));
        g.Output.Add(Value("flag_out", TensorProto.Types.DataType.Bool));
        g.Output.Add(Value("ids_out", TensorProto.Types.DataType.Int64, "batch", "seq"));
        g.Output.Add(Value("h_out", TensorProto.Types.DataType.Float16, 2, "T", 4));
        g.Output.Add(Value("has", TensorProto.Types.DataType.Bool));
        models.Add(("kinds", TinyModels.Model(g, opset: 18, irVersion: 8)));

        foreach ((string name, ModelProto model) in models)
        {
            string path = dir.File(name + ".onnx");
            TestFiles.Save(model, path);
            using ModelRunner runner = new(path);
            string Text(IEnumerable<TensorInfo> inputs) => string.Join("; ", inputs.Select(i => i.Name + " " + i.Describe()));
            Assert.AreEqual(Text(runner.Inputs), Text(ModelInputs.FromModel(model)), name);
        }
    }

    [TestMethod]
    public void Uint8InputModel_GetsRawPixelsByDefault()
    {
        using TempDir dir = new();
        GraphProto g = new() { Name = "u8" };
        g.Input.Add(Value("img", TensorProto.Types.DataType.Uint8, "N", 1, 2, 2));
        g.Output.Add(TinyModels.FloatValue("f", "N", 1, 2, 2));
        g.Node.Add(TinyModels.Node("Cast", ["img"], ["f"], null, TinyModels.IntAttr("to", (long)TensorProto.Types.DataType.Float)));
        string path = dir.File("u8.onnx");
        TestFiles.Save(TinyModels.Model(g), path);
        string images = dir.File("i");
        File.WriteAllBytes(images, TestFiles.IdxImages(1, 2, 2, [0, 7, 200, 255]));
        using ModelRunner runner = new(path);
        Assert.AreEqual(TensorElementType.UInt8, runner.Inputs[0].ElementType);
        Dataset data = DatasetLoader.Load(images, null, runner.Inputs);
        CollectionAssert.AreEqual(new[] { 0f, 7f, 200f, 255f }, runner.RunDataset(data).Outputs[0][0].Data);
    }

    [TestMethod]
    public void RunDataset_OrtFailure_NamesTheSample()
    {
        using TempDir dir = new();
        using ModelRunner runner = new(SaveModel(dir, "id.onnx", "N"));
        string f = dir.File("five.npy");
        File.WriteAllBytes(f, TestFiles.NpyFloat([2, 5], 1, 2, 3, 4, 5, 6, 7, 8, 9, 10));
        // Loaded for a model that takes 5 values; this one takes 4.
        Dataset data = DatasetLoader.Load(f, null, TestFiles.Inputs("x", -1, 5));
        CompressException e = Assert.ThrowsExactly<CompressException>(() => runner.RunDataset(data));
        Assert.AreEqual(DiagnosticCodes.OrtRunFailed, e.Code);
        StringAssert.Contains(e.Message, "five.npy (sample 0)");
        StringAssert.Contains(e.Message, "id.onnx");
    }

    [TestMethod]
    public void Validator_AllZeroOriginalOutput_KeepsRelativeErrorFinite()
    {
        using TempDir dir = new();
        using ModelRunner original = new(SaveModel(dir, "a.onnx", "N"));
        using ModelRunner compressed = new(SaveModel(dir, "b.onnx", "N", add: [0, 0, 0, 1]));
        Dataset data = Npy(dir, 2, [0, 0, 0, 0, 0, 3, 0, 0]);
        ValidationResult r = Validator.Compare(original, compressed, data, new ValidatorOptions { LatencyRuns = 0 });
        // Sample 0 (all zero original) is left out of the relative error; sample 1 gives 1/3.
        Assert.AreEqual(1.0 / 3, r.Outputs[0].MeanRelativeL2Error, 1e-9);
        Assert.AreEqual(1f, r.MaxAbsError);
        // Cosine of a zero vector against a non-zero one is 0 (sample 0), 3/sqrt(10) for sample 1.
        Assert.AreEqual((0 + 3 / Math.Sqrt(10)) / 2, r.MeanCosineSimilarity, 1e-6);
    }
}
