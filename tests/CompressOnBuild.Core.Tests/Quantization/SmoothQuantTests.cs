using Google.Protobuf;
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

    [TestMethod]
    public void Row_statistics_streamed_run_by_run_give_the_decision_of_all_rows()
    {
        // 1,000 rows (more than the 512 measured) arriving in runs of 1 to 37 rows, as ONNX Runtime hands them over per
        // sample: the sampler keeps the channel maxima of all rows and, on the second pass, exactly the evenly spaced
        // rows the stored-rows path measures on; so the factors, alpha and errors are the same to the bit.
        const int total = 1000;
        float[] x = RandomFloats(total * K, 31, 1f);
        for (int r = 0; r < total; r++)
        {
            x[r * K + 3] *= 60f;
            x[r * K + 40] *= r % 7 == 0 ? 200f : 60f;
        }
        var sampler = new ActivationRowSampler(SmoothQuant.MeasuredRows);
        var runs = new List<(int Start, int Rows)>();
        for (int start = 0, i = 0; start < total; i++)
        {
            int rows = Math.Min(1 + i * 7 % 37, total - start);
            runs.Add((start, rows));
            start += rows;
        }
        foreach ((int start, int rows) in runs)
        {
            sampler.Count(x.AsSpan(start * K, rows * K), [1, rows, K]);
        }
        Assert.IsTrue(sampler.NeedsSecondPass);
        foreach ((int start, int rows) in runs)
        {
            sampler.Take(x.AsSpan(start * K, rows * K), [1, rows, K]);
        }
        ActivationRows streamed = sampler.Result()!;
        ActivationRows all = ActivationRows.From(new Activation(x, [total, K]), SmoothQuant.MeasuredRows)!;
        Assert.AreEqual(total, streamed.TotalRows);
        Assert.AreEqual(SmoothQuant.MeasuredRows, streamed.Count);
        CollectionAssert.AreEqual(all.ColumnMaxAbs, streamed.ColumnMaxAbs);
        CollectionAssert.AreEqual(all.Rows, streamed.Rows);
        for (int i = 0; i < SmoothQuant.MeasuredRows; i++)
        {
            int row = (int)((long)i * total / SmoothQuant.MeasuredRows);
            CollectionAssert.AreEqual(x.AsSpan(row * K, K).ToArray(), streamed.Rows.AsSpan(i * K, K).ToArray(), $"kept row {i} is row {row}");
        }

        float[] w0 = RandomFloats(K * N, 3, 0.2f), w1 = RandomFloats(K * N, 4, 0.2f);
        SmoothQuant.Consumer[] consumers = [new(Transposed(w0), N), new(Transposed(w1), N)];
        EncodingLevels levels = EncodingLevels.Of(WeightEncoding.Int8PairBounded, "smooth.onnx");
        SmoothQuant.Decision fromAll = SmoothQuant.Decide(x, total, K, consumers, levels);
        SmoothQuant.Decision fromStreamed = SmoothQuant.Decide(streamed, consumers, levels);
        Assert.IsNotNull(fromAll.Factors, "outlier channels: smoothed");
        CollectionAssert.AreEqual(fromAll.Factors, fromStreamed.Factors);
        Assert.AreEqual(fromAll.Alpha, fromStreamed.Alpha);
        Assert.AreEqual(fromAll.ErrorWithout, fromStreamed.ErrorWithout);
        Assert.AreEqual(fromAll.ErrorWith, fromStreamed.ErrorWith);

        // The pass given the statistics writes the model it writes from all the activations.
        ModelProto fromActivations = TwoConsumers(w0, w1);
        Int8DynamicQuantizer.Apply(fromActivations, new QuantizationOptions { Activations = (_, names) => names.ToDictionary(n => n, _ => new Activation(x, [total, K])) }, "smooth.onnx");
        ModelProto fromRows = TwoConsumers(w0, w1);
        QuantizationSummary summary = Int8DynamicQuantizer.Apply(fromRows, new QuantizationOptions { SmoothingRows = (_, names) => names.ToDictionary(n => n, _ => (ActivationRows?)streamed) }, "smooth.onnx");
        Assert.IsTrue(summary.Smoothing.Single().Alpha > 0f, "smoothed");
        CollectionAssert.AreEqual(fromActivations.ToByteArray(), fromRows.ToByteArray());
    }

    [TestMethod]
    public void Fewer_rows_than_measured_need_one_pass_and_runs_of_another_width_give_no_statistics()
    {
        float[] x = Inputs(41, 30f); // 256 rows
        var sampler = new ActivationRowSampler(SmoothQuant.MeasuredRows);
        sampler.Count(x.AsSpan(0, 100 * K), [100, K]);
        sampler.Count([], [0, K]); // an empty run adds nothing
        sampler.Count(x.AsSpan(100 * K), [156, K]);
        Assert.IsFalse(sampler.NeedsSecondPass);
        ActivationRows r = sampler.Result()!;
        Assert.AreEqual(Rows, r.TotalRows);
        CollectionAssert.AreEqual(x, r.Rows);

        var mixed = new ActivationRowSampler(SmoothQuant.MeasuredRows);
        mixed.Count(x.AsSpan(0, 4 * K), [4, K]);
        mixed.Count(x.AsSpan(0, 4 * K), [8, K / 2]);
        Assert.IsNull(mixed.Result());
        Assert.IsNull(ActivationRows.From(new Activation([1f, 2f, 3f], [3, 2]), SmoothQuant.MeasuredRows), "3 values are not rows of 2");
    }

    [TestMethod]
    public void Raw_float_data_is_read_in_place_and_other_storage_is_not()
    {
        float[] values = RandomFloats(12, 7, 1f);
        TensorProto raw = TensorUtil.FromFloats("w", values, 3, 4);
        Assert.IsTrue(TensorUtil.TryGetRawFloats(raw, out ReadOnlySpan<float> span));
        CollectionAssert.AreEqual(values, span.ToArray());
        var typed = new TensorProto { Name = "t", DataType = (int)TensorProto.Types.DataType.Float, Dims = { 3, 4 } };
        typed.FloatData.Add(values);
        Assert.IsFalse(TensorUtil.TryGetRawFloats(typed, out _), "float_data");
        TensorProto shorter = raw.Clone();
        shorter.Dims[0] = 4;
        Assert.IsFalse(TensorUtil.TryGetRawFloats(shorter, out _), "raw_data shorter than the dims say");
    }

    private static float[] Transposed(float[] w) => PassGraph.Transpose(w, K, N);
}
