using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Quantization;
using CompressOnBuild.Core.Tests.Passes;
using CompressOnBuild.Onnx;
using static CompressOnBuild.Tests.TinyModels;
using DataType = CompressOnBuild.Onnx.TensorProto.Types.DataType;

namespace CompressOnBuild.Core.Tests.Quantization;

/// <summary>
/// Int8Dynamic stores the per-channel weight scales, the smoothing factors and the folded biases as float16 behind a
/// Cast (ORT folds it at load): the scales are rounded up to float16 before the codes are computed, so the model
/// computes what was measured; the file shrinks by about 2 bytes per value; vectors out of float16's normal range or
/// too short to pay for the Cast stay float32.
/// </summary>
[TestClass]
public sealed class HalfScalesTests
{
    private const int K = 64, N = 256, Rows = 64;

    public TestContext TestContext { get; set; } = null!;

    /// <summary>x [M, K] -> MatMul(w [K, N]) -> Add(b [N]) -> y.</summary>
    private static ModelProto Linear(float[] w, float[] b, int n = N)
    {
        var g = new GraphProto { Name = "linear" };
        g.Input.Add(FloatValue("x", "M", K));
        g.Output.Add(FloatValue("y", "M", n));
        g.Initializer.Add(TensorUtil.FromFloats("w", w, K, n));
        g.Initializer.Add(TensorUtil.FromFloats("b", b, n));
        g.Node.Add(Node("MatMul", ["x", "w"], ["h"], "mm"));
        g.Node.Add(Node("Add", ["h", "b"], ["y"], "add"));
        return Model(g);
    }

    /// <summary>Unit-scale rows with two outlier channels (so the smoothing is kept).</summary>
    private static float[] Inputs(int seed)
    {
        float[] x = RandomFloats(Rows * K, seed, 1f);
        for (int r = 0; r < Rows; r++)
        {
            x[r * K + 3] *= 50f;
            x[r * K + 40] *= 50f;
        }
        return x;
    }

    private static ActivationSource Source(float[] x) => (_, names) =>
        names.ToDictionary(n => n, _ => new Activation(x, [Rows, K]), StringComparer.Ordinal);

    private static TensorProto Init(ModelProto m, string name) => m.Graph.Initializer.Single(t => t.Name == name);

    /// <summary>The initializer a quantized node's input reads, through the Cast of a float16 one.</summary>
    private static TensorProto Source(ModelProto m, string input)
    {
        NodeProto? cast = m.Graph.Node.FirstOrDefault(n => n.Output.Contains(input));
        return Init(m, cast == null ? input : cast.Input[0]);
    }

    private static double RelativeError(float[] expected, float[] actual)
    {
        double num = 0, den = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            num += (expected[i] - actual[i]) * (double)(expected[i] - actual[i]);
            den += expected[i] * (double)expected[i];
        }
        return Math.Sqrt(num / den);
    }

    [TestMethod]
    public void Scales_smoothing_and_bias_are_float16_and_ORT_folds_their_casts()
    {
        ModelProto original = Linear(RandomFloats(K * N, 3, 0.2f), RandomFloats(N, 4, 0.5f));
        float[] calibration = Inputs(11), test = Inputs(12);
        ModelProto half = original.Clone(), full = original.Clone();
        QuantizationSummary s = Int8DynamicQuantizer.Apply(half, new QuantizationOptions { Activations = Source(calibration) }, "linear.onnx");
        Int8DynamicQuantizer.Apply(full, new QuantizationOptions { Activations = Source(calibration), Float16Scales = false }, "linear.onnx");
        ModelChecker.Validate(half, "linear.onnx");
        Assert.HasCount(1, s.Quantized);

        NodeProto q = half.Graph.Node.Single(n => n.OpType == "DynamicQuantizeMatMul");
        NodeProto mul = half.Graph.Node.Single(n => n.OpType == "Mul");
        Assert.AreEqual(3, half.Graph.Node.Count(n => n.OpType == "Cast"), "one Cast each for the scale, the bias and the smoothing factors");
        TensorProto scale16 = Source(half, q.Input[2]), bias16 = Source(half, q.Input[4]), inverse16 = Source(half, mul.Input[1]);
        foreach (TensorProto t in new[] { scale16, bias16, inverse16 })
        {
            Assert.AreEqual((int)DataType.Float16, t.DataType, t.Name);
        }
        NodeProto fq = full.Graph.Node.Single(n => n.OpType == "DynamicQuantizeMatMul");
        Assert.IsFalse(full.Graph.Node.Any(n => n.OpType == "Cast"), "Float16Scales = false stores float32");
        float[] s16 = TensorUtil.ToFloatArray(scale16), s32 = TensorUtil.ToFloatArray(Init(full, fq.Input[2]));
        float[] i16 = TensorUtil.ToFloatArray(inverse16), i32 = TensorUtil.ToFloatArray(Init(full, full.Graph.Node.Single(n => n.OpType == "Mul").Input[1]));
        for (int j = 0; j < N; j++)
        {
            // The same smoothing decision, so the float32 scales are the reference: rounded up by less than 2^-10.
            Assert.IsGreaterThanOrEqualTo(s32[j] * 0.999f, s16[j], $"scale {j}");
            Assert.IsLessThanOrEqualTo(s32[j] * (1f + 1f / 1024f) * 1.001f, s16[j], $"scale {j}");
        }
        for (int k = 0; k < K; k++)
        {
            Assert.AreEqual(i32[k], i16[k], Math.Abs(i32[k]) / 1024f, $"smoothing factor {k}");
        }
        float[] b16 = TensorUtil.ToFloatArray(bias16), b = TensorUtil.ToFloatArray(Init(original, "b"));
        for (int j = 0; j < N; j++)
        {
            Assert.AreEqual(b[j], b16[j], Math.Abs(b[j]) / 2048f + 1e-7f, $"bias {j}");
        }

        // About 2 bytes per value saved (3 vectors: N + N + K values), less the three Casts.
        long saved = full.CalculateSize() - half.CalculateSize();
        Assert.IsGreaterThan(2L * (N + N + K) - 3 * 60, saved, $"{saved} bytes saved");

        // ORT folds the Casts; the output is as close to float as with float32 scales.
        string optimized = Path.Combine(TestContext.TestRunResultsDirectory ?? Path.GetTempPath(), $"half-{Guid.NewGuid():N}.onnx");
        float[] expected, actualHalf, actualFull;
        using (var o = new Ort(original))
        {
            expected = o.Run(test, [Rows, K]);
        }
        using (var h = new Ort(half, optimizedPath: optimized))
        {
            actualHalf = h.Run(test, [Rows, K]);
        }
        using (var f = new Ort(full))
        {
            actualFull = f.Run(test, [Rows, K]);
        }
        ModelProto seen = ModelProto.Parser.ParseFrom(File.ReadAllBytes(optimized));
        File.Delete(optimized);
        Assert.IsFalse(seen.Graph.Node.Any(n => n.OpType == "Cast"), "ORT folded the Casts at load: " + string.Join(", ", seen.Graph.Node.Select(n => n.OpType)));
        double eHalf = RelativeError(expected, actualHalf), eFull = RelativeError(expected, actualFull);
        Assert.IsLessThan(eFull * 1.05 + 1e-4, eHalf, $"relative error {eHalf:G4} with float16 scales, {eFull:G4} with float32");
    }

    [TestMethod]
    public void Scales_outside_float16_range_and_short_vectors_stay_float32()
    {
        // max |w| about 1e-4: scales near 1e-6, below float16's normal range (2^-14).
        ModelProto tiny = Linear(RandomFloats(K * N, 5, 1e-4f), RandomFloats(N, 6, 0.5f));
        Int8DynamicQuantizer.Apply(tiny, QuantizationOptions.Default, "tiny.onnx");
        NodeProto q = tiny.Graph.Node.Single(n => n.OpType == "DynamicQuantizeMatMul");
        Assert.AreEqual((int)DataType.Float, Source(tiny, q.Input[2]).DataType, "out-of-range scales stay float32");
        Assert.AreEqual((int)DataType.Float16, Source(tiny, q.Input[4]).DataType, "the bias fits float16");

        // 8 output channels: 16 bytes saved would not pay for a Cast node.
        ModelProto narrow = Linear(RandomFloats(K * 8, 7, 0.2f), RandomFloats(8, 8, 0.5f), n: 8);
        Int8DynamicQuantizer.Apply(narrow, QuantizationOptions.Default, "narrow.onnx");
        Assert.IsFalse(narrow.Graph.Node.Any(n => n.OpType == "Cast"));
        Assert.IsTrue(narrow.Graph.Initializer.Where(t => t.DataType is (int)DataType.Float or (int)DataType.Float16).All(t => t.DataType == (int)DataType.Float));
    }

    [TestMethod]
    public void RoundUp_gives_the_smallest_float16_not_below_the_value()
    {
        foreach (float v in new[] { 1f, 0.1f, 3.3e-3f, 7.9e-5f, 1234.5f, 65504f, HalfScales.SmallestNormal })
        {
            float up = HalfScales.RoundUp(v);
            Assert.IsGreaterThanOrEqualTo(v, up);
            Assert.AreEqual(up, (float)(Half)up, "float16-exact");
            ushort bits = BitConverter.HalfToUInt16Bits((Half)up);
            float below = (float)BitConverter.UInt16BitsToHalf((ushort)(bits - 1));
            Assert.IsLessThan(v, below, $"{v}: {below} is a float16 value not below it");
        }
        float[] outOfRange = [1e-3f, 1e-6f];
        Assert.IsFalse(HalfScales.TryRoundUp(outOfRange));
        Assert.AreEqual(1e-3f, outOfRange[0], "left as it is");
        float[] bias = [1e-6f, -0.3f, 0f];
        Assert.IsTrue(HalfScales.TryRoundBias(bias), "biases may be subnormal float16");
        Assert.AreEqual(1e-6f, bias[0], 3e-8f);
    }
}
