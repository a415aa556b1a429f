using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using static CompressOnBuild.Core.Tests.Pruning.PruningTestHelpers;

namespace CompressOnBuild.Core.Tests.Pruning;

/// <summary>SparseGPT: masks and surviving weights chosen from the layer input's Hessian so the layer output stays close.</summary>
[TestClass]
public sealed class SparseGptTests
{
    public TestContext TestContext { get; set; } = null!;

    /// <summary>Correlated inputs (x = z A + small noise, z in features / 4 dims): the case where reconstruction pays most.</summary>
    private static float[] Correlated(int rows, int features, int seed)
    {
        int rank = Math.Max(2, features / 4);
        float[] z = TinyModels.RandomFloats(rows * rank, seed);
        float[] a = TinyModels.RandomFloats(rank * features, 99);
        float[] noise = TinyModels.RandomFloats(rows * features, seed + 1, 0.05f);
        var x = new float[rows * features];
        for (int r = 0; r < rows; r++)
        {
            for (int f = 0; f < features; f++)
            {
                float sum = noise[r * features + f];
                for (int j = 0; j < rank; j++)
                {
                    sum += z[r * rank + j] * a[j * features + f];
                }
                x[r * features + f] = sum;
            }
        }
        return x;
    }

    /// <summary>
    /// <paramref name="samples"/> inputs of <paramref name="shape"/>: <see cref="Correlated"/> vectors over the
    /// <paramref name="features"/> (MatMul: last axis; Conv: channels at every position).
    /// </summary>
    private static float[] Samples(int samples, int features, Func<int, long[]> shape, int seed)
    {
        int perSample = (int)shape(1).Aggregate(1L, (a, b) => a * b);
        int positions = perSample / features;
        float[] v = Correlated(samples * positions, features, seed);
        if (positions == 1)
        {
            return v;
        }
        var x = new float[v.Length];
        for (int n = 0; n < samples; n++)
        {
            for (int p = 0; p < positions; p++)
            {
                for (int c = 0; c < features; c++)
                {
                    x[(n * features + c) * positions + p] = v[(n * positions + p) * features + c];
                }
            }
        }
        return x;
    }

    /// <summary>x[N,64] -> MatMul(w[64,32]) -> y.</summary>
    private static ModelProto MatMulModel()
    {
        var g = new GraphProto { Name = "mm" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 64));
        g.Output.Add(TinyModels.FloatValue("y", "N", 32));
        g.Initializer.Add(TensorUtil.FromFloats("w", TinyModels.RandomFloats(64 * 32, 5), 64, 32));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["y"], "mm"));
        return TinyModels.Model(g);
    }

    /// <summary>x[N,8,6,6] -> Conv(8->16, 3x3, pads 1) -> y.</summary>
    private static ModelProto ConvModel()
    {
        var g = new GraphProto { Name = "conv" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 8, 6, 6));
        g.Output.Add(TinyModels.FloatValue("y", "N", 16, 6, 6));
        g.Initializer.Add(TensorUtil.FromFloats("w", TinyModels.RandomFloats(16 * 8 * 9, 6), 16, 8, 3, 3));
        g.Node.Add(TinyModels.Node("Conv", ["x", "w"], ["y"], "conv", TinyModels.IntsAttr("pads", 1, 1, 1, 1)));
        return TinyModels.Model(g);
    }

    private static double RelativeError(ModelProto original, ModelProto pruned, float[] x, int rows, Func<int, long[]> shape)
    {
        float[] y0 = TestActivations.Run(original, ["y"], x, rows, rows, shape)["y"].Data;
        float[] y1 = TestActivations.Run(pruned, ["y"], x, rows, rows, shape)["y"].Data;
        double diff = 0, norm = 0;
        for (int i = 0; i < y0.Length; i++)
        {
            diff += (y1[i] - y0[i]) * (double)(y1[i] - y0[i]);
            norm += y0[i] * (double)y0[i];
        }
        return Math.Sqrt(diff / norm);
    }

    private (double Magnitude, double SparseGpt) Compare(ModelProto original, string sparseGpt, string magnitude, int features, Func<int, long[]> shape, string weight)
    {
        const int calibrationRows = 256, testRows = 200;
        float[] calibration = Samples(calibrationRows, features, shape, 1);
        float[] test = Samples(testRows, features, shape, 2);
        ActivationSource source = (m, names) => TestActivations.Run(m, names, calibration, calibrationRows, 64, shape);
        ModelProto byMagnitude = original.Clone(), byGpt = original.Clone();
        PruningSummary sm = Pruner.Apply(byMagnitude, All(magnitude), "m", source);
        PruningSummary sg = Pruner.Apply(byGpt, All(sparseGpt), "m", source);
        Assert.AreEqual(Zeros(Weight(byMagnitude, weight)), Zeros(Weight(byGpt, weight)), 0.01 * Weight(byGpt, weight).Length, "same sparsity");
        CollectionAssert.AreEqual(new[] { sg.Pruned.Single().Node }, sg.Reconstructed.ToArray());
        double em = RelativeError(original, byMagnitude, test, testRows, shape), eg = RelativeError(original, byGpt, test, testRows, shape);
        TestContext.WriteLine($"{sparseGpt}: relative L2 output error on held-out inputs {eg:F4}, {magnitude} (activation-aware) {em:F4}; achieved {sg.AchievedSparsity:P1}");
        _ = sm;
        return (em, eg);
    }

    [TestMethod]
    [DataRow("SparseGPT:0.5", "Magnitude:0.5")]
    [DataRow("SparseGPT:2:4", "NofM:2:4")]
    public void MatMul_output_error_is_far_below_magnitude_at_the_same_sparsity(string sparseGpt, string magnitude)
    {
        (double em, double eg) = Compare(MatMulModel(), sparseGpt, magnitude, 64, b => [b, 64], "w");
        Assert.IsLessThan(em / 2, eg, $"SparseGPT {eg:F4} vs magnitude {em:F4}");
    }

    [TestMethod]
    [DataRow("SparseGPT:0.5", "Magnitude:0.5")]
    [DataRow("SparseGPT:2:4", "NofM:2:4")]
    public void Conv_output_error_is_far_below_magnitude_at_the_same_sparsity(string sparseGpt, string magnitude)
    {
        (double em, double eg) = Compare(ConvModel(), sparseGpt, magnitude, 8, b => [b, 8, 6, 6], "w");
        Assert.IsLessThan(em / 2, eg, $"SparseGPT {eg:F4} vs magnitude {em:F4}");
    }

    [TestMethod]
    public void Two_of_four_keeps_at_most_two_nonzeros_in_every_group_of_input_channels()
    {
        ModelProto model = ConvModel();
        float[] calibration = Samples(64, 8, b => [b, 8, 6, 6], 3);
        Pruner.Apply(model, All("SparseGPT:2:4"), "m", (m, names) => TestActivations.Run(m, names, calibration, 64, 64, b => [b, 8, 6, 6]));
        float[] w = Weight(model, "w");
        for (int o = 0; o < 16; o++)
        {
            for (int s = 0; s < 9; s++)
            {
                for (int c0 = 0; c0 < 8; c0 += 4)
                {
                    int nonzeros = Enumerable.Range(c0, 4).Count(c => w[(o * 8 + c) * 9 + s] != 0f);
                    Assert.AreEqual(2, nonzeros, $"output {o}, kernel position {s}, channels {c0}..{c0 + 3}");
                }
            }
        }
    }

    [TestMethod]
    public void Each_layer_is_solved_on_the_inputs_of_the_model_whose_earlier_layers_are_already_pruned()
    {
        ModelProto model = TinyModels.Mlp(inF: 32, hidden: 16, classes: 8);
        float[] x = Correlated(128, 32, 4);
        var asked = new List<(string Name, int ZerosOfW1)>();
        ActivationSource source = (m, names) =>
        {
            asked.AddRange(names.Select(n => (n, Zeros(Weight(m, "w1")))));
            return TestActivations.Run(m, names, x, 128, 128, b => [b, 32]);
        };
        PruningSummary s = Pruner.Apply(model, All("SparseGPT:0.5"), "m", source);
        CollectionAssert.AreEqual(new[] { "x", "hr" }, asked.Select(a => a.Name).ToArray(), "one input at a time, in graph order");
        Assert.AreEqual(0, asked[0].ZerosOfW1);
        Assert.AreEqual(256, asked[1].ZerosOfW1, "fc2's input comes from the model with fc1 already pruned");
        CollectionAssert.AreEqual(new[] { "fc1", "fc2" }, s.Reconstructed.ToArray());
    }

    [TestMethod]
    public void Without_calibration_data_it_is_CMPR0003_and_nothing_changes()
    {
        ModelProto model = MatMulModel();
        byte[] before = Google.Protobuf.MessageExtensions.ToByteArray(model);
        var e = Assert.ThrowsExactly<CompressException>(() => Pruner.Apply(model, PruningOptions.Parse("SparseGPT:0.5", "m"), "m"));
        Assert.AreEqual(DiagnosticCodes.InvalidOption, e.Code);
        StringAssert.Contains(e.Message, "CalibrationData");
        CollectionAssert.AreEqual(before, Google.Protobuf.MessageExtensions.ToByteArray(model));
    }

    [TestMethod]
    [DataRow("SparseGPT:0.5", "SparseGPT:0.5")]
    [DataRow("sparsegpt:2:4", "SparseGPT:2:4")]
    public void Parse_round_trips(string text, string expected) =>
        Assert.AreEqual(expected, PruningOptions.Parse(text, "m").ToString());

    [TestMethod]
    [DataRow("SparseGPT:1")]
    [DataRow("SparseGPT:0")]
    [DataRow("SparseGPT:4:4")]
    [DataRow("SparseGPT:2:4:1")]
    public void Parse_rejects_bad_values(string text) =>
        Assert.AreEqual(DiagnosticCodes.InvalidOption, Assert.ThrowsExactly<CompressException>(() => PruningOptions.Parse(text, "m")).Code);
}
