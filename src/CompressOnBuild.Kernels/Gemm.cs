using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CompressOnBuild.Kernels;

/// <summary>
/// Single-threaded fp32 matrix multiply, row-major: C[m, n] = A[m, k] × B[k, n] (+ C when accumulating).
/// Ours rather than a BLAS: the worker must not bring a native dependency, and TensorPrimitives has only
/// vector-level primitives. Structure as in BLIS/GotoBLAS: B is packed into KC×NR panels and A into MR×KC panels
/// (zero-padded at the edges), and a register-blocked MR×NR micro-kernel (6 rows × 2 vectors, FMA) runs over them.
/// Vector paths sum in a different order (and fuse multiply-adds), so results agree with the naive reference
/// to rounding, not bit for bit. NaN and infinities propagate as in any sum of products.
/// </summary>
public static class Gemm
{
    internal const int MR = 6;
    internal const int KC = 256;
    internal const int MC = 96;
    internal const int NC = 1024;

    /// <summary>C = A × B, or C += A × B when <paramref name="accumulate"/>.</summary>
    /// <exception cref="ArgumentException">A span is shorter than its shape needs.</exception>
    public static void Multiply(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c, int m, int n, int k, bool accumulate = false) =>
        Multiply(a, b, c, m, n, k, accumulate, KernelSelector.Current);

    internal static void Multiply(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c, int m, int n, int k, bool accumulate,
        KernelImplementation implementation)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(m);
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        ArgumentOutOfRangeException.ThrowIfNegative(k);
        if (a.Length < (long)m * k || b.Length < (long)k * n || c.Length < (long)m * n)
        {
            throw new ArgumentException($"[{m}x{k}] x [{k}x{n}] needs {(long)m * k}, {(long)k * n} and {(long)m * n} elements; got {a.Length}, {b.Length} and {c.Length}.");
        }
        if (m == 0 || n == 0)
        {
            return;
        }
        if (k == 0)
        {
            if (!accumulate)
            {
                c[..(m * n)].Clear();
            }
            return;
        }
        switch (implementation)
        {
            case KernelImplementation.Vector512:
                Blocked<W512, Vector512<float>>(a, b, c, m, n, k, accumulate);
                break;
            case KernelImplementation.Vector256:
                Blocked<W256, Vector256<float>>(a, b, c, m, n, k, accumulate);
                break;
            case KernelImplementation.Vector128:
                Blocked<W128, Vector128<float>>(a, b, c, m, n, k, accumulate);
                break;
            default:
                ScalarReference.Gemm(a, b, c, m, n, k, accumulate);
                break;
        }
    }

    private static void Blocked<TW, TF>(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c, int m, int n, int k, bool accumulate)
        where TW : struct, IVectorWidth<TF>
        where TF : struct
    {
        int nr = 2 * TW.Count;
        int ncMax = Math.Min(NC, RoundUp(n, nr));
        int kcMax = Math.Min(KC, k);
        int mcMax = Math.Min(MC, RoundUp(m, MR));
        float[] bPackArray = ArrayPool<float>.Shared.Rent(kcMax * ncMax);
        float[] aPackArray = ArrayPool<float>.Shared.Rent(kcMax * mcMax);
        Span<float> edge = stackalloc float[MR * 2 * Vector512<float>.Count];
        try
        {
            ref float aRef = ref MemoryMarshal.GetReference(a);
            ref float bRef = ref MemoryMarshal.GetReference(b);
            ref float cRef = ref MemoryMarshal.GetReference(c);
            ref float bPack = ref MemoryMarshal.GetArrayDataReference(bPackArray);
            ref float aPack = ref MemoryMarshal.GetArrayDataReference(aPackArray);
            ref float edgeRef = ref MemoryMarshal.GetReference(edge);
            for (int jc = 0; jc < n; jc += NC)
            {
                int nc = Math.Min(NC, n - jc);
                for (int pc = 0; pc < k; pc += KC)
                {
                    int kc = Math.Min(KC, k - pc);
                    PackB(ref Unsafe.Add(ref bRef, (nint)pc * n + jc), n, kc, nc, nr, ref bPack);
                    bool add = accumulate || pc > 0;
                    for (int ic = 0; ic < m; ic += MC)
                    {
                        int mc = Math.Min(MC, m - ic);
                        PackA(ref Unsafe.Add(ref aRef, (nint)ic * k + pc), k, mc, kc, ref aPack);
                        for (int jr = 0; jr < nc; jr += nr)
                        {
                            int cols = Math.Min(nr, nc - jr);
                            ref float bPanel = ref Unsafe.Add(ref bPack, (nint)jr * kc);
                            for (int ir = 0; ir < mc; ir += MR)
                            {
                                int rows = Math.Min(MR, mc - ir);
                                ref float aPanel = ref Unsafe.Add(ref aPack, (nint)ir * kc);
                                ref float cTile = ref Unsafe.Add(ref cRef, (nint)(ic + ir) * n + jc + jr);
                                if (rows == MR && cols == nr)
                                {
                                    Kernel<TW, TF>(kc, ref aPanel, ref bPanel, ref cTile, n, add);
                                }
                                else
                                {
                                    // edge tile: compute the full MR x NR tile into a scratch buffer, then add/copy the valid part
                                    Kernel<TW, TF>(kc, ref aPanel, ref bPanel, ref edgeRef, nr, false);
                                    for (int r = 0; r < rows; r++)
                                    {
                                        for (int j = 0; j < cols; j++)
                                        {
                                            ref float dst = ref Unsafe.Add(ref cTile, (nint)r * n + j);
                                            float v = Unsafe.Add(ref edgeRef, r * nr + j);
                                            dst = add ? dst + v : v;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(bPackArray);
            ArrayPool<float>.Shared.Return(aPackArray);
        }
    }

    /// <summary>
    /// The 6 x (2 vectors) micro-kernel: C[6, 2*Count] (leading dimension ldc) = or += Σ_p aPanel[p*6 + r] * bPanel[p*2*Count + j].
    /// One body for the three widths: the JIT compiles it per width struct to the same machine code the three
    /// hand-written copies had (checked with DOTNET_JitDisasm; the 12 accumulators stay in registers).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel<TW, TF>(int kc, ref float a, ref float b, ref float c, int ldc, bool add)
        where TW : struct, IVectorWidth<TF>
        where TF : struct
    {
        nuint w = (nuint)TW.Count;
        TF c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        TF c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int p = 0; p < kc; p++)
        {
            TF b0 = TW.Load(ref b, 0);
            TF b1 = TW.Load(ref b, w);
            TF x = TW.Create(a);
            c00 = TW.FusedMultiplyAdd(x, b0, c00);
            c01 = TW.FusedMultiplyAdd(x, b1, c01);
            x = TW.Create(Unsafe.Add(ref a, 1));
            c10 = TW.FusedMultiplyAdd(x, b0, c10);
            c11 = TW.FusedMultiplyAdd(x, b1, c11);
            x = TW.Create(Unsafe.Add(ref a, 2));
            c20 = TW.FusedMultiplyAdd(x, b0, c20);
            c21 = TW.FusedMultiplyAdd(x, b1, c21);
            x = TW.Create(Unsafe.Add(ref a, 3));
            c30 = TW.FusedMultiplyAdd(x, b0, c30);
            c31 = TW.FusedMultiplyAdd(x, b1, c31);
            x = TW.Create(Unsafe.Add(ref a, 4));
            c40 = TW.FusedMultiplyAdd(x, b0, c40);
            c41 = TW.FusedMultiplyAdd(x, b1, c41);
            x = TW.Create(Unsafe.Add(ref a, 5));
            c50 = TW.FusedMultiplyAdd(x, b0, c50);
            c51 = TW.FusedMultiplyAdd(x, b1, c51);
            a = ref Unsafe.Add(ref a, 6);
            b = ref Unsafe.Add(ref b, 2 * w);
        }
        Store<TW, TF>(ref c, c00, c01, add);
        Store<TW, TF>(ref Unsafe.Add(ref c, ldc), c10, c11, add);
        Store<TW, TF>(ref Unsafe.Add(ref c, 2 * ldc), c20, c21, add);
        Store<TW, TF>(ref Unsafe.Add(ref c, 3 * ldc), c30, c31, add);
        Store<TW, TF>(ref Unsafe.Add(ref c, 4 * ldc), c40, c41, add);
        Store<TW, TF>(ref Unsafe.Add(ref c, 5 * ldc), c50, c51, add);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store<TW, TF>(ref float c, TF v0, TF v1, bool add)
        where TW : struct, IVectorWidth<TF>
        where TF : struct
    {
        nuint w = (nuint)TW.Count;
        if (add)
        {
            v0 = TW.Add(v0, TW.Load(ref c, 0));
            v1 = TW.Add(v1, TW.Load(ref c, w));
        }
        TW.Store(v0, ref c, 0);
        TW.Store(v1, ref c, w);
    }

    private static int RoundUp(int x, int multiple) => (x + multiple - 1) / multiple * multiple;

    /// <summary>B[kc, nc] (leading dimension ldb) into panels of nr columns: panel p holds kc rows of nr floats; zero-padded.</summary>
    private static void PackB(ref float b, int ldb, int kc, int nc, int nr, ref float dst)
    {
        for (int jr = 0; jr < nc; jr += nr)
        {
            int cols = Math.Min(nr, nc - jr);
            ref float panel = ref Unsafe.Add(ref dst, (nint)jr * kc);
            for (int p = 0; p < kc; p++)
            {
                ref float src = ref Unsafe.Add(ref b, (nint)p * ldb + jr);
                ref float row = ref Unsafe.Add(ref panel, (nint)p * nr);
                if (cols == nr)
                {
                    MemoryMarshal.CreateReadOnlySpan(ref src, nr).CopyTo(MemoryMarshal.CreateSpan(ref row, nr));
                }
                else
                {
                    MemoryMarshal.CreateReadOnlySpan(ref src, cols).CopyTo(MemoryMarshal.CreateSpan(ref row, cols));
                    MemoryMarshal.CreateSpan(ref Unsafe.Add(ref row, cols), nr - cols).Clear();
                }
            }
        }
    }

    /// <summary>A[mc, kc] (leading dimension lda) into panels of MR rows stored column by column (MR floats per k); zero-padded.</summary>
    private static void PackA(ref float a, int lda, int mc, int kc, ref float dst)
    {
        for (int ir = 0; ir < mc; ir += MR)
        {
            int rows = Math.Min(MR, mc - ir);
            ref float panel = ref Unsafe.Add(ref dst, (nint)ir * kc);
            for (int r = 0; r < MR; r++)
            {
                if (r < rows)
                {
                    ref float src = ref Unsafe.Add(ref a, (nint)(ir + r) * lda);
                    for (int p = 0; p < kc; p++)
                    {
                        Unsafe.Add(ref panel, p * MR + r) = Unsafe.Add(ref src, p);
                    }
                }
                else
                {
                    for (int p = 0; p < kc; p++)
                    {
                        Unsafe.Add(ref panel, p * MR + r) = 0f;
                    }
                }
            }
        }
    }
}

internal static partial class ScalarReference
{
    /// <summary>The naive triple loop (i, p, j order so B and C are walked along rows).</summary>
    public static void Gemm(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c, int m, int n, int k, bool accumulate)
    {
        for (int i = 0; i < m; i++)
        {
            Span<float> row = c.Slice(i * n, n);
            if (!accumulate)
            {
                row.Clear();
            }
            for (int p = 0; p < k; p++)
            {
                float x = a[i * k + p];
                ReadOnlySpan<float> bRow = b.Slice(p * n, n);
                for (int j = 0; j < n; j++)
                {
                    row[j] += x * bRow[j];
                }
            }
        }
    }
}
