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
                Blocked<V512>(a, b, c, m, n, k, accumulate);
                break;
            case KernelImplementation.Vector256:
                Blocked<V256>(a, b, c, m, n, k, accumulate);
                break;
            case KernelImplementation.Vector128:
                Blocked<V128>(a, b, c, m, n, k, accumulate);
                break;
            default:
                ScalarReference.Gemm(a, b, c, m, n, k, accumulate);
                break;
        }
    }

    private static void Blocked<TV>(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> c, int m, int n, int k, bool accumulate)
        where TV : struct, IGemmVector
    {
        int nr = 2 * TV.Count;
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
                                    TV.Kernel(kc, ref aPanel, ref bPanel, ref cTile, n, add);
                                }
                                else
                                {
                                    // edge tile: compute the full MR x NR tile into a scratch buffer, then add/copy the valid part
                                    TV.Kernel(kc, ref aPanel, ref bPanel, ref edgeRef, nr, false);
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

/// <summary>One vector width's 6 x (2 vectors) micro-kernel.</summary>
internal interface IGemmVector
{
    static abstract int Count { get; }

    /// <summary>
    /// C[6, 2*Count] (leading dimension ldc) = or += Σ_p aPanel[p*6 + r] * bPanel[p*2*Count + j].
    /// </summary>
    static abstract void Kernel(int kc, ref float aPanel, ref float bPanel, ref float c, int ldc, bool add);
}

internal readonly struct V256 : IGemmVector
{
    public static int Count => Vector256<float>.Count;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Kernel(int kc, ref float a, ref float b, ref float c, int ldc, bool add)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector256<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int p = 0; p < kc; p++)
        {
            Vector256<float> b0 = Vector256.LoadUnsafe(ref b);
            Vector256<float> b1 = Vector256.LoadUnsafe(ref b, 8);
            Vector256<float> x = Vector256.Create(a);
            c00 = Vector256.FusedMultiplyAdd(x, b0, c00);
            c01 = Vector256.FusedMultiplyAdd(x, b1, c01);
            x = Vector256.Create(Unsafe.Add(ref a, 1));
            c10 = Vector256.FusedMultiplyAdd(x, b0, c10);
            c11 = Vector256.FusedMultiplyAdd(x, b1, c11);
            x = Vector256.Create(Unsafe.Add(ref a, 2));
            c20 = Vector256.FusedMultiplyAdd(x, b0, c20);
            c21 = Vector256.FusedMultiplyAdd(x, b1, c21);
            x = Vector256.Create(Unsafe.Add(ref a, 3));
            c30 = Vector256.FusedMultiplyAdd(x, b0, c30);
            c31 = Vector256.FusedMultiplyAdd(x, b1, c31);
            x = Vector256.Create(Unsafe.Add(ref a, 4));
            c40 = Vector256.FusedMultiplyAdd(x, b0, c40);
            c41 = Vector256.FusedMultiplyAdd(x, b1, c41);
            x = Vector256.Create(Unsafe.Add(ref a, 5));
            c50 = Vector256.FusedMultiplyAdd(x, b0, c50);
            c51 = Vector256.FusedMultiplyAdd(x, b1, c51);
            a = ref Unsafe.Add(ref a, 6);
            b = ref Unsafe.Add(ref b, 16);
        }
        Store(ref c, c00, c01, add);
        Store(ref Unsafe.Add(ref c, ldc), c10, c11, add);
        Store(ref Unsafe.Add(ref c, 2 * ldc), c20, c21, add);
        Store(ref Unsafe.Add(ref c, 3 * ldc), c30, c31, add);
        Store(ref Unsafe.Add(ref c, 4 * ldc), c40, c41, add);
        Store(ref Unsafe.Add(ref c, 5 * ldc), c50, c51, add);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(ref float c, Vector256<float> v0, Vector256<float> v1, bool add)
    {
        if (add)
        {
            v0 += Vector256.LoadUnsafe(ref c);
            v1 += Vector256.LoadUnsafe(ref c, 8);
        }
        v0.StoreUnsafe(ref c);
        v1.StoreUnsafe(ref c, 8);
    }
}

internal readonly struct V512 : IGemmVector
{
    public static int Count => Vector512<float>.Count;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Kernel(int kc, ref float a, ref float b, ref float c, int ldc, bool add)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector512<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> b0 = Vector512.LoadUnsafe(ref b);
            Vector512<float> b1 = Vector512.LoadUnsafe(ref b, 16);
            Vector512<float> x = Vector512.Create(a);
            c00 = Vector512.FusedMultiplyAdd(x, b0, c00);
            c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(Unsafe.Add(ref a, 1));
            c10 = Vector512.FusedMultiplyAdd(x, b0, c10);
            c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(Unsafe.Add(ref a, 2));
            c20 = Vector512.FusedMultiplyAdd(x, b0, c20);
            c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(Unsafe.Add(ref a, 3));
            c30 = Vector512.FusedMultiplyAdd(x, b0, c30);
            c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
            x = Vector512.Create(Unsafe.Add(ref a, 4));
            c40 = Vector512.FusedMultiplyAdd(x, b0, c40);
            c41 = Vector512.FusedMultiplyAdd(x, b1, c41);
            x = Vector512.Create(Unsafe.Add(ref a, 5));
            c50 = Vector512.FusedMultiplyAdd(x, b0, c50);
            c51 = Vector512.FusedMultiplyAdd(x, b1, c51);
            a = ref Unsafe.Add(ref a, 6);
            b = ref Unsafe.Add(ref b, 32);
        }
        Store(ref c, c00, c01, add);
        Store(ref Unsafe.Add(ref c, ldc), c10, c11, add);
        Store(ref Unsafe.Add(ref c, 2 * ldc), c20, c21, add);
        Store(ref Unsafe.Add(ref c, 3 * ldc), c30, c31, add);
        Store(ref Unsafe.Add(ref c, 4 * ldc), c40, c41, add);
        Store(ref Unsafe.Add(ref c, 5 * ldc), c50, c51, add);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(ref float c, Vector512<float> v0, Vector512<float> v1, bool add)
    {
        if (add)
        {
            v0 += Vector512.LoadUnsafe(ref c);
            v1 += Vector512.LoadUnsafe(ref c, 16);
        }
        v0.StoreUnsafe(ref c);
        v1.StoreUnsafe(ref c, 16);
    }
}

internal readonly struct V128 : IGemmVector
{
    public static int Count => Vector128<float>.Count;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Kernel(int kc, ref float a, ref float b, ref float c, int ldc, bool add)
    {
        Vector128<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector128<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int p = 0; p < kc; p++)
        {
            Vector128<float> b0 = Vector128.LoadUnsafe(ref b);
            Vector128<float> b1 = Vector128.LoadUnsafe(ref b, 4);
            Vector128<float> x = Vector128.Create(a);
            c00 = Vector128.FusedMultiplyAdd(x, b0, c00);
            c01 = Vector128.FusedMultiplyAdd(x, b1, c01);
            x = Vector128.Create(Unsafe.Add(ref a, 1));
            c10 = Vector128.FusedMultiplyAdd(x, b0, c10);
            c11 = Vector128.FusedMultiplyAdd(x, b1, c11);
            x = Vector128.Create(Unsafe.Add(ref a, 2));
            c20 = Vector128.FusedMultiplyAdd(x, b0, c20);
            c21 = Vector128.FusedMultiplyAdd(x, b1, c21);
            x = Vector128.Create(Unsafe.Add(ref a, 3));
            c30 = Vector128.FusedMultiplyAdd(x, b0, c30);
            c31 = Vector128.FusedMultiplyAdd(x, b1, c31);
            x = Vector128.Create(Unsafe.Add(ref a, 4));
            c40 = Vector128.FusedMultiplyAdd(x, b0, c40);
            c41 = Vector128.FusedMultiplyAdd(x, b1, c41);
            x = Vector128.Create(Unsafe.Add(ref a, 5));
            c50 = Vector128.FusedMultiplyAdd(x, b0, c50);
            c51 = Vector128.FusedMultiplyAdd(x, b1, c51);
            a = ref Unsafe.Add(ref a, 6);
            b = ref Unsafe.Add(ref b, 8);
        }
        Store(ref c, c00, c01, add);
        Store(ref Unsafe.Add(ref c, ldc), c10, c11, add);
        Store(ref Unsafe.Add(ref c, 2 * ldc), c20, c21, add);
        Store(ref Unsafe.Add(ref c, 3 * ldc), c30, c31, add);
        Store(ref Unsafe.Add(ref c, 4 * ldc), c40, c41, add);
        Store(ref Unsafe.Add(ref c, 5 * ldc), c50, c51, add);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(ref float c, Vector128<float> v0, Vector128<float> v1, bool add)
    {
        if (add)
        {
            v0 += Vector128.LoadUnsafe(ref c);
            v1 += Vector128.LoadUnsafe(ref c, 4);
        }
        v0.StoreUnsafe(ref c);
        v1.StoreUnsafe(ref c, 4);
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
