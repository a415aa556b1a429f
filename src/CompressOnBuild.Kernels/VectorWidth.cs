using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace CompressOnBuild.Kernels;

/// <summary>
/// One vector width of float (<c>TF</c> is Vector128/256/512 of float) as static members, so a kernel body is
/// written once as a generic method over a width struct and the JIT compiles one copy per struct (static abstract
/// calls on a struct type argument are direct and inlined; the vectors stay in registers). A stand-in for
/// <c>ISimdVector&lt;TSelf, T&gt;</c>, which is not public. Every member is the VectorNNN operation of the same name,
/// so a generic body computes exactly what the per-width bodies it replaces did.
/// </summary>
internal interface IVectorWidth<TF>
    where TF : struct
{
    static abstract int Count { get; }

    static abstract TF Load(ref float source, nuint index);

    static abstract void Store(TF value, ref float destination, nuint index);

    static abstract TF Create(float value);

    static abstract float GetElement(TF x, int lane);

    static abstract TF Add(TF a, TF b);

    static abstract TF Subtract(TF a, TF b);

    static abstract TF FusedMultiplyAdd(TF a, TF b, TF addend);

    static abstract TF Min(TF a, TF b);

    static abstract TF Max(TF a, TF b);

    static abstract TF Abs(TF x);

    /// <summary>All-ones lanes where a &gt; b.</summary>
    static abstract TF GreaterThan(TF a, TF b);

    /// <summary>All-ones lanes where a &lt; b.</summary>
    static abstract TF LessThan(TF a, TF b);

    static abstract TF BitwiseAnd(TF a, TF b);

    static abstract TF BitwiseOr(TF a, TF b);

    static abstract TF ConditionalSelect(TF mask, TF whenTrue, TF whenFalse);

    static abstract ulong ExtractMostSignificantBits(TF x);

    /// <summary>
    /// seed folded with every lane of x under <typeparamref name="TOp"/>: halves combined as vectors down to 128 bits,
    /// then the four lanes in order.
    /// </summary>
    static abstract float Fold<TOp>(float seed, TF x)
        where TOp : struct, IReduceOp;
}

/// <summary>The float width's double and int32 companions (same byte width: half as many doubles, as many ints).</summary>
internal interface IVectorWidth<TF, TD, TI> : IVectorWidth<TF>
    where TF : struct
    where TD : struct
    where TI : struct
{
    /// <summary>The lower and upper halves of x, each widened to double.</summary>
    static abstract (TD Lower, TD Upper) Widen(TF x);

    static abstract TD Add(TD a, TD b);

    static abstract TD Multiply(TD a, TD b);

    static abstract double Sum(TD x);

    /// <summary>(x - min) * scale clamped to [0, top] (MaxNative/MinNative), converted with ConvertToInt32Native; <paramref name="nan"/> where x is NaN.</summary>
    static abstract TI HistogramBins(TF x, TF min, TF scale, TF top, TI nan);

    static abstract TI Create(int value);
}

internal readonly struct W128 : IVectorWidth<Vector128<float>, Vector128<double>, Vector128<int>>
{
    public static int Count => Vector128<float>.Count;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Load(ref float source, nuint index) => Vector128.LoadUnsafe(ref source, index);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector128<float> value, ref float destination, nuint index) => value.StoreUnsafe(ref destination, index);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Create(float value) => Vector128.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<int> Create(int value) => Vector128.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float GetElement(Vector128<float> x, int lane) => x.GetElement(lane);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Add(Vector128<float> a, Vector128<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Subtract(Vector128<float> a, Vector128<float> b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> FusedMultiplyAdd(Vector128<float> a, Vector128<float> b, Vector128<float> addend) =>
        Vector128.FusedMultiplyAdd(a, b, addend);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Min(Vector128<float> a, Vector128<float> b) => Vector128.Min(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Max(Vector128<float> a, Vector128<float> b) => Vector128.Max(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Abs(Vector128<float> x) => Vector128.Abs(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> GreaterThan(Vector128<float> a, Vector128<float> b) => Vector128.GreaterThan(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> LessThan(Vector128<float> a, Vector128<float> b) => Vector128.LessThan(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> BitwiseAnd(Vector128<float> a, Vector128<float> b) => a & b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> BitwiseOr(Vector128<float> a, Vector128<float> b) => a | b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> ConditionalSelect(Vector128<float> mask, Vector128<float> whenTrue, Vector128<float> whenFalse) =>
        Vector128.ConditionalSelect(mask, whenTrue, whenFalse);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong ExtractMostSignificantBits(Vector128<float> x) => x.ExtractMostSignificantBits();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Fold<TOp>(float seed, Vector128<float> x)
        where TOp : struct, IReduceOp
    {
        for (int lane = 0; lane < Vector128<float>.Count; lane++)
        {
            seed = TOp.Combine(seed, x.GetElement(lane));
        }
        return seed;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (Vector128<double> Lower, Vector128<double> Upper) Widen(Vector128<float> x) => Vector128.Widen(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<double> Add(Vector128<double> a, Vector128<double> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<double> Multiply(Vector128<double> a, Vector128<double> b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Sum(Vector128<double> x) => Vector128.Sum(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<int> HistogramBins(Vector128<float> x, Vector128<float> min, Vector128<float> scale, Vector128<float> top, Vector128<int> nan)
    {
        Vector128<float> f = Vector128.MinNative(Vector128.MaxNative((x - min) * scale, Vector128<float>.Zero), top);
        return Vector128.ConditionalSelect(Vector128.Equals(x, x).AsInt32(), Vector128.ConvertToInt32Native(f), nan);
    }
}

internal readonly struct W256 : IVectorWidth<Vector256<float>, Vector256<double>, Vector256<int>>
{
    public static int Count => Vector256<float>.Count;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load(ref float source, nuint index) => Vector256.LoadUnsafe(ref source, index);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector256<float> value, ref float destination, nuint index) => value.StoreUnsafe(ref destination, index);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Create(float value) => Vector256.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> Create(int value) => Vector256.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float GetElement(Vector256<float> x, int lane) => x.GetElement(lane);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Add(Vector256<float> a, Vector256<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Subtract(Vector256<float> a, Vector256<float> b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> FusedMultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> addend) =>
        Vector256.FusedMultiplyAdd(a, b, addend);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Min(Vector256<float> a, Vector256<float> b) => Vector256.Min(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Max(Vector256<float> a, Vector256<float> b) => Vector256.Max(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Abs(Vector256<float> x) => Vector256.Abs(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> GreaterThan(Vector256<float> a, Vector256<float> b) => Vector256.GreaterThan(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> LessThan(Vector256<float> a, Vector256<float> b) => Vector256.LessThan(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> BitwiseAnd(Vector256<float> a, Vector256<float> b) => a & b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> BitwiseOr(Vector256<float> a, Vector256<float> b) => a | b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> ConditionalSelect(Vector256<float> mask, Vector256<float> whenTrue, Vector256<float> whenFalse) =>
        Vector256.ConditionalSelect(mask, whenTrue, whenFalse);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong ExtractMostSignificantBits(Vector256<float> x) => x.ExtractMostSignificantBits();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Fold<TOp>(float seed, Vector256<float> x)
        where TOp : struct, IReduceOp =>
        W128.Fold<TOp>(seed, TOp.Combine<W128, Vector128<float>>(x.GetLower(), x.GetUpper()));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (Vector256<double> Lower, Vector256<double> Upper) Widen(Vector256<float> x) => Vector256.Widen(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> Add(Vector256<double> a, Vector256<double> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<double> Multiply(Vector256<double> a, Vector256<double> b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Sum(Vector256<double> x) => Vector256.Sum(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> HistogramBins(Vector256<float> x, Vector256<float> min, Vector256<float> scale, Vector256<float> top, Vector256<int> nan)
    {
        Vector256<float> f = Vector256.MinNative(Vector256.MaxNative((x - min) * scale, Vector256<float>.Zero), top);
        return Vector256.ConditionalSelect(Vector256.Equals(x, x).AsInt32(), Vector256.ConvertToInt32Native(f), nan);
    }
}

internal readonly struct W512 : IVectorWidth<Vector512<float>, Vector512<double>, Vector512<int>>
{
    public static int Count => Vector512<float>.Count;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load(ref float source, nuint index) => Vector512.LoadUnsafe(ref source, index);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector512<float> value, ref float destination, nuint index) => value.StoreUnsafe(ref destination, index);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Create(float value) => Vector512.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<int> Create(int value) => Vector512.Create(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float GetElement(Vector512<float> x, int lane) => x.GetElement(lane);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Add(Vector512<float> a, Vector512<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Subtract(Vector512<float> a, Vector512<float> b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> FusedMultiplyAdd(Vector512<float> a, Vector512<float> b, Vector512<float> addend) =>
        Vector512.FusedMultiplyAdd(a, b, addend);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Min(Vector512<float> a, Vector512<float> b) => Vector512.Min(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Max(Vector512<float> a, Vector512<float> b) => Vector512.Max(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Abs(Vector512<float> x) => Vector512.Abs(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> GreaterThan(Vector512<float> a, Vector512<float> b) => Vector512.GreaterThan(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> LessThan(Vector512<float> a, Vector512<float> b) => Vector512.LessThan(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> BitwiseAnd(Vector512<float> a, Vector512<float> b) => a & b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> BitwiseOr(Vector512<float> a, Vector512<float> b) => a | b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> ConditionalSelect(Vector512<float> mask, Vector512<float> whenTrue, Vector512<float> whenFalse) =>
        Vector512.ConditionalSelect(mask, whenTrue, whenFalse);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong ExtractMostSignificantBits(Vector512<float> x) => x.ExtractMostSignificantBits();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Fold<TOp>(float seed, Vector512<float> x)
        where TOp : struct, IReduceOp =>
        W256.Fold<TOp>(seed, TOp.Combine<W256, Vector256<float>>(x.GetLower(), x.GetUpper()));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (Vector512<double> Lower, Vector512<double> Upper) Widen(Vector512<float> x) => Vector512.Widen(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<double> Add(Vector512<double> a, Vector512<double> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<double> Multiply(Vector512<double> a, Vector512<double> b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Sum(Vector512<double> x) => Vector512.Sum(x);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<int> HistogramBins(Vector512<float> x, Vector512<float> min, Vector512<float> scale, Vector512<float> top, Vector512<int> nan)
    {
        Vector512<float> f = Vector512.MinNative(Vector512.MaxNative((x - min) * scale, Vector512<float>.Zero), top);
        return Vector512.ConditionalSelect(Vector512.Equals(x, x).AsInt32(), Vector512.ConvertToInt32Native(f), nan);
    }
}
