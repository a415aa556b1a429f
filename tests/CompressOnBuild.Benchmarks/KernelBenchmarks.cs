using BenchmarkDotNet.Attributes;
using CompressOnBuild.Kernels;

namespace CompressOnBuild.Benchmarks;

/// <summary>
/// Each kernel beside a memcpy of the same bytes and beside its scalar reference. <see cref="Bytes"/> is the size of
/// the fp32 side of the work (N = Bytes / 4 floats; dequantize reads N int8 and writes Bytes of fp32);
/// int4 packing reads Bytes one-byte codes.
/// </summary>
public class KernelBenchmarks
{
    private float[] _src = [];
    private float[] _dst = [];
    private sbyte[] _q = [];
    private byte[] _codes = [];
    private byte[] _packed = [];
    private float[] _rowScales = [];
    private sbyte[] _rowZeros = [];
    private float[] _colScales = [];
    private sbyte[] _colZeros = [];
    private readonly long[] _counts = new long[Histogram.DefaultBins];
    private int _rows;
    private int _cols;

    [Params(4 << 10, 1 << 20, 64 << 20)]
    public int Bytes { get; set; }

    private int N => Bytes / sizeof(float);

    [GlobalSetup]
    public void Setup()
    {
        int n = N;
        var rng = new Random(1234);
        _src = new float[n];
        for (int i = 0; i < n; i++)
        {
            // weight-like: roughly normal, a few exact zeros
            double u = rng.NextDouble() + rng.NextDouble() + rng.NextDouble() - 1.5;
            _src[i] = i % 17 == 0 ? 0f : (float)u;
        }
        _dst = new float[n];
        _q = new sbyte[n];
        _codes = new byte[Bytes];
        for (int i = 0; i < n; i++)
        {
            _q[i] = (sbyte)rng.Next(-128, 128);
        }
        for (int i = 0; i < _codes.Length; i++)
        {
            _codes[i] = (byte)rng.Next(16);
        }
        _packed = new byte[Int4Kernels.PackedLength(_codes.Length)];
        _cols = Math.Min(1024, n);
        _rows = n / _cols;
        _rowScales = new float[_rows];
        Array.Fill(_rowScales, 1.5f / 127f);
        _rowZeros = new sbyte[_rows];
        _colScales = new float[_cols];
        Array.Fill(_colScales, 1.5f / 127f);
        _colZeros = new sbyte[_cols];
    }

    [Benchmark(Baseline = true)]
    public void Memcpy() => _src.AsSpan().CopyTo(_dst);

    [Benchmark]
    public MinMaxResult MinMax() => TensorStats.MinMax(_src);

    [Benchmark]
    public MinMaxResult MinMax_Scalar() => ScalarReference.MinMax(_src);

    [Benchmark]
    public void QuantizePerRow() =>
        QuantizationKernels.QuantizePerRow(_src, _rows, _cols, _rowScales, _rowZeros, _q, -127, 127);

    [Benchmark]
    public void QuantizePerRow_Scalar()
    {
        Span<byte> q = QuantizationKernels.AsBytes(_q);
        for (int r = 0; r < _rows; r++)
        {
            ScalarReference.Quantize(_src.AsSpan(r * _cols, _cols), _rowScales[r], _rowZeros[r], -127, 127, q.Slice(r * _cols, _cols));
        }
    }

    [Benchmark]
    public void QuantizePerColumn() =>
        QuantizationKernels.QuantizePerColumn(_src, _rows, _cols, _colScales, _colZeros, _q, -127, 127);

    [Benchmark]
    public void Dequantize() => QuantizationKernels.Dequantize(_q, 0.01f, 0, _dst);

    [Benchmark]
    public void Dequantize_Scalar() => ScalarReference.Dequantize(QuantizationKernels.AsBytes(_q), false, 0.01f, 0f, _dst);

    [Benchmark]
    public long Histogram2048() => Histogram.Accumulate(_src, -1.5f, 1.5f, _counts);

    [Benchmark]
    public long Histogram2048_Scalar() => ScalarReference.Histogram(_src, -1.5f, 1.5f, _counts);

    [Benchmark]
    public int CountZeros() => Sparsity.CountZeros(_src);

    [Benchmark]
    public int CountZeros_Scalar() => ScalarReference.CountZeros(_src);

    [Benchmark]
    public int MagnitudeThreshold() => Sparsity.ApplyMagnitudeThreshold(_src, 0.3f, _dst);

    [Benchmark]
    public int MagnitudeThreshold_Scalar() => ScalarReference.ApplyMagnitudeThreshold(_src, 0.3f, _dst);

    [Benchmark]
    public float KthLargestMagnitude() => Sparsity.KthLargestMagnitude(_src, N / 2);

    [Benchmark]
    public float KthLargestMagnitude_Scalar() => ScalarReference.KthLargestMagnitude(_src, N / 2);

    [Benchmark]
    public void Int4Pack() => Int4Kernels.Pack(_codes, _packed);

    [Benchmark]
    public void Int4Pack_Scalar() => ScalarReference.Pack4(_codes, _packed);
}

/// <summary>Single-threaded 512x512x512 fp32 GEMM: packed/blocked kernel vs the naive triple loop.</summary>
public class GemmBenchmarks
{
    public const int Size = 512;
    private readonly float[] _a = new float[Size * Size];
    private readonly float[] _b = new float[Size * Size];
    private readonly float[] _c = new float[Size * Size];

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(7);
        for (int i = 0; i < _a.Length; i++)
        {
            _a[i] = (float)(rng.NextDouble() - 0.5);
            _b[i] = (float)(rng.NextDouble() - 0.5);
        }
    }

    [Benchmark]
    public void Gemm512() => Gemm.Multiply(_a, _b, _c, Size, Size, Size);

    [Benchmark]
    public void Gemm512_Scalar() => ScalarReference.Gemm(_a, _b, _c, Size, Size, Size, false);
}
