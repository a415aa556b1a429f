using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Quantization;
using CompressOnBuild.Core.Tests.Passes;
using CompressOnBuild.Onnx;
using static CompressOnBuild.Tests.TinyModels;

namespace CompressOnBuild.Core.Tests.Quantization;

/// <summary>
/// Int8Dynamic with calibration activations: a layer input with outlier channels (the transformer case that dominates
/// the per-tensor dynamic range) is smoothed (one Mul shared by the layers reading it, weight rows scaled), and ONNX
/// Runtime's output of the smoothed model is closer to float than without smoothing; an input without outliers is left
/// alone when smoothing does not measurably help.
/// </summary>
[TestClass]
public sealed class SmoothQuantTests
{
    private const int K = 64, N = 48, Rows = 256;

    /// <summary>x [rows, K] -> MatMul(w0) -> y0 and MatMul(w1) -> y1 (two layers reading one input).</summary>
    private static ModelProto TwoConsumers(float[] w0, float[] w1)
    {
        var g = new GraphProto { Name = "smooth" };
        g.Input.Add(FloatValue("x", "M", K));
        g.Output.Add(FloatValue("y0", "M", N));
        g.Output.Add(FloatValue("y1", "M", N));
        g.Initializer.Add(TensorUtil.FromFloats("w0", w0, K, N));
        g.Initializer.Add(TensorUtil.FromFloats("w1", w1, K, N));
        g.Node.Add(Node("MatMul", ["x", "w0"], ["y0"], "mm0"));
        g.Node.Add(Node("MatMul", ["x", "w1"], ["y1"], "mm1"));
        return Model(g);
    }

    /// <summary>Calibration-like rows: unit-scale values, with channels 3 and 40 <paramref name="outlier"/> times larger.</summary>
    private static float[] Inputs(int seed, float outlier)
    {
        float[] x = RandomFloats(Rows * K, seed, 1f);
        for (int r = 0; r < Rows; r++)
        {
            x[r * K + 3] *= outlier;
            x[r * K + 40] *= outlier;
        }
        return x;
    }

    private static double RelativeError(ModelProto original, ModelProto quantized, float[] x)
    {
        double num = 0, den = 0;
        using var a = new Ort(original);
        using var b = new Ort(quantized);
        float[] expected = a.Run(x, [Rows, K]);
        float[] actual = b.Run(x, [Rows, K]);
        for (int i = 0; i < expected.Length; i++)
        {
            num += (expected[i] - actual[i]) * (double)(expected[i] - actual[i]);
            den += expected[i] * (double)expected[i];
        }
        return Math.Sqrt(num / den);
    }

    private static ActivationSource Source(float[] x) => (_, names) =>
        names.ToDictionary(n => n, _ => new Activation(x, [Rows, K]), StringComparer.Ordinal);

    [TestMethod]
    public void Outlier_channels_are_smoothed_and_the_int8_output_gets_closer_to_float()
    {
        ModelProto original = TwoConsumers(RandomFloats(K * N, 3, 0.2f), RandomFloats(K * N, 4, 0.2f));
        float[] calibration = Inputs(11, 60f);
        float[] test = Inputs(12, 60f); // other rows of the same distribution

        ModelProto plain = original.Clone();
        Int8DynamicQuantizer.Apply(plain, QuantizationOptions.Default, "smooth.onnx");
        ModelProto smoothed = original.Clone();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(smoothed, new QuantizationOptions { Activations = Source(calibration) }, "smooth.onnx");
        ModelChecker.Validate(smoothed, "smooth.onnx");

        Assert.HasCount(2, summary.Quantized);
        NodeProto mul = smoothed.Graph.Node.Single(n => n.OpType == "Mul");
        Assert.AreEqual("x", mul.Input[0]);
        Assert.IsTrue(smoothed.Graph.Node.Where(n => n.OpType == "DynamicQuantizeMatMul").All(n => n.Input[0] == mul.Output[0]), "both layers read the one smoothed input");
        Assert.IsFalse(plain.Graph.Node.Any(n => n.OpType == "Mul"));

        double before = RelativeError(original, plain, test);
        double after = RelativeError(original, smoothed, test);
        Assert.IsLessThan(before * 0.7, after, $"relative error {before:G4} without smoothing, {after:G4} with");
    }

    [TestMethod]
    public void An_input_whose_smoothing_factors_are_all_equal_is_left_alone()
    {
        // |x| = 1 in every channel and every weight row has the same max |w|: s_j is one constant, which scales the
        // activation and weight steps by inverse amounts and changes no product, so the measured gain is about 0.
        float[] calibration = RandomFloats(Rows * K, 21, 1f).Select(v => v >= 0 ? 1f : -1f).ToArray();
        float[] w = RandomFloats(K * N, 5, 0.15f);
        for (int k = 0; k < K; k++)
        {
            w[k * N + k % N] = 0.2f;
        }
        ModelProto original = TwoConsumers(w, w);
        ModelProto quantized = original.Clone();
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(quantized, new QuantizationOptions { Activations = Source(calibration) }, "flat.onnx");
        Assert.HasCount(2, summary.Quantized);
        Assert.IsFalse(quantized.Graph.Node.Any(n => n.OpType == "Mul"), "no smoothing Mul when smoothing cannot help");
        SmoothQuant.Decision d = SmoothQuant.Decide(calibration, Rows, K, [new(Transposed(w), N)], EncodingLevels.Of(WeightEncoding.Int8PairBounded, "flat.onnx"));
        Assert.IsNull(d.Factors);
        Assert.IsGreaterThan(0.0, d.ErrorWithout);
    }

    private static float[] Transposed(float[] w) => PassGraph.Transpose(w, K, N);
}
