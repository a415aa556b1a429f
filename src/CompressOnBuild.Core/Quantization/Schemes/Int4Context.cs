using System.Globalization;
using System.Numerics.Tensors;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Quantization.Ops;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Core.Quantization.Schemes;

/// <summary>A MatMulNBits weight: packed codes, block scales, packed zero points (null when symmetric).</summary>
internal sealed record Int4Matrix(string B, string Scales, string? ZeroPoints, int K, int N, float MaxError);

/// <summary>
/// The Int4Weights scheme's context: its options, blockwise 4-bit encoding of MatMul/Gemm weights (round to nearest,
/// or GPTQ from calibration activations collected once in <see cref="Prepare"/>), stored once per weight.
/// </summary>
internal sealed class Int4Context(PassGraph graph, Int4Options options, string displayName)
    : LoweringContext(graph, displayName, options.ExcludedNodes, options.MinimumWeightElements), ITableEncoding
{
    private IReadOnlyDictionary<string, Activation>? _activations;

    public Int4Options Options { get; } = options;

    /// <summary>Layers GPTQ left to round-to-nearest (transposed input, inside an If/Loop/Scan body, or H would not factorize).</summary>
    public List<string> RoundedToNearest { get; } = [];

    public GatherLowering.Scheme TableScheme => GatherLowering.Scheme.Int4(Options.BlockSize, Options.Symmetric, Options.MseScales);

    /// <summary>GPTQ: one pass over the calibration data for every MatMul/Gemm input it needs.</summary>
    public override void Prepare(IReadOnlyList<WeightSite> sites)
    {
        List<WeightSite> matrices = sites.Where(s => s.Lowering is Int4MatMulLowering or Int4GemmLowering).ToList();
        if (Options.Method == Int4Method.Gptq && matrices.Count > 0)
        {
            List<string> inputs = matrices.Where(c => !c.TransA).Select(c => c.Node.Input[0]).Distinct(StringComparer.Ordinal).ToList();
            _activations = inputs.Count == 0 ? new Dictionary<string, Activation>() : Options.Activations!(Graph.Model, inputs);
        }
    }

    /// <summary>The weight of a MatMul/Gemm site (alpha folded in, transB deciding the layout) in MatMulNBits' blocks; once per weight, transB and alpha.</summary>
    public Int4Matrix EncodeMatrix(WeightSite c)
    {
        int rows = (int)c.Weight.Dims[0], cols = (int)c.Weight.Dims[1];
        (int k, int n) = MatrixParts.Shape(c);
        string key = "matrix|" + c.WeightName + (c.TransB ? "|T" : "") + "|a" + c.Alpha.ToString("R", CultureInfo.InvariantCulture);
        return Encoded(key, () =>
        {
            float[] data = Floats(c.Weight.Tensor);
            float[] channelMajor = c.TransB ? data : PassGraph.Transpose(data, rows, cols);
            if (c.Alpha != 1f)
            {
                TensorPrimitives.Multiply(channelMajor, c.Alpha, channelMajor);
            }
            // Calibration sees main-graph values only: a layer inside an If/Loop/Scan body is rounded to nearest.
            var gptq = Options.Method == Int4Method.Gptq && !c.TransA && Graph.IsMain ? Gptq(c.Node.Input[0], channelMajor, n, k) : null;
            if (Options.Method == Int4Method.Gptq && gptq == null)
            {
                RoundedToNearest.Add(OnnxNames.Label(c.Node)); // transposed input, inside a body, or H would not factorize
            }
            (byte[] packed, float[] scales, byte[]? zeros, float error) = gptq ?? Int4WeightQuantizer.QuantizeBlocks(channelMajor, n, k, Options.BlockSize, Options.Symmetric, Options.MseScales);
            int blocks = (k + Options.BlockSize - 1) / Options.BlockSize;
            string baseName = Int4WeightQuantizer.QuantizedBaseName(c.WeightName);
            var stored = new Int4Matrix(Graph.Unique(baseName), Graph.Unique(baseName + "_scales"), zeros == null ? null : Graph.Unique(baseName + "_zero_points"), k, n, error);
            Graph.AddInitializer(TensorUtil.FromUInt8(stored.B, packed, Int4WeightQuantizer.PackedDims(k, n, Options.BlockSize)));
            Graph.AddInitializer(TensorUtil.FromFloats(stored.Scales, scales, (long)n * blocks));
            if (zeros != null)
            {
                Graph.AddInitializer(TensorUtil.FromUInt8(stored.ZeroPoints!, zeros, zeros.Length));
            }
            FloatWeightBytes += (long)data.Length * 4;
            QuantizedWeightBytes += packed.Length + (long)scales.Length * 4 + (zeros?.Length ?? 0);
            return stored;
        });
    }

    /// <summary>The MatMulNBits node for <paramref name="replaced"/> reading <paramref name="a"/> (zero points input kept as "" for now; see <see cref="Finish"/>).</summary>
    public NodeProto MatMulNBits(NodeProto replaced, string a, Int4Matrix stored)
    {
        string name = replaced.Name.Length > 0 ? replaced.Name : Graph.Unique(Int4WeightQuantizer.NodeBaseName(OnnxNames.Label(replaced)));
        RequireOpset(OnnxNames.MicrosoftDomain, 1);
        return Int4WeightQuantizer.MatMulNBitsNode(name, a, stored.B, stored.Scales, stored.ZeroPoints, replaced.Output[0], stored.K, stored.N, Options);
    }

    /// <summary>Drops a trailing empty zero-point input (symmetric weights without bias).</summary>
    public static void Finish(NodeProto q, Int4Matrix stored)
    {
        if (stored.ZeroPoints == null && q.Input.Count == 4)
        {
            q.Input.RemoveAt(3);
        }
    }

    /// <summary>GPTQ codes for one weight from its input's calibration activations; null when H would not factorize.</summary>
    private (byte[] Packed, float[] Scales, byte[]? ZeroPoints, float MaxError)? Gptq(string input, float[] channelMajor, int n, int k)
    {
        if (!_activations!.TryGetValue(input, out Activation? a) || a.Shape.Length < 1 || a.Shape[^1] != k || a.Data.Length == 0 || a.Data.Length % k != 0)
        {
            throw new CompressException(DiagnosticCodes.DataShape, "calibration activations", input,
                $"GPTQ needs this layer input as [..., {k}] values; got [{string.Join(",", a?.Shape ?? [])}]") { File = DisplayName };
        }
        if (!TensorStats.AllFinite(a.Data))
        {
            throw new CompressException(DiagnosticCodes.NonFiniteOutputs, DisplayName, input, "one of the calibration samples (GPTQ)") { File = DisplayName };
        }
        double[] h = Int4Gptq.Hessian(a.Data, a.Data.Length / k, k, a.RowMask is { } mask && mask.Length == a.Data.Length / k ? mask : null);
        return Int4Gptq.Quantize(channelMajor, n, k, h, Options.BlockSize, Options.Symmetric, Options.GptqDampening, Options.MseScales, Options.GptqActOrder);
    }
}
