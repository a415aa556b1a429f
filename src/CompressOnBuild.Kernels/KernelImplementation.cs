using System.Runtime.Intrinsics;

namespace CompressOnBuild.Kernels;

/// <summary>Which code path the kernels run: the scalar reference or a fixed vector width.</summary>
public enum KernelImplementation
{
    /// <summary>Plain scalar loops; also the reference every vector path is tested against.</summary>
    Scalar = 0,

    /// <summary>128-bit vectors (SSE / NEON) with a scalar tail.</summary>
    Vector128 = 1,

    /// <summary>256-bit vectors (AVX2) with a scalar tail.</summary>
    Vector256 = 2,

    /// <summary>512-bit vectors (AVX-512) with a scalar tail.</summary>
    Vector512 = 3,
}

/// <summary>
/// Chooses the kernel implementation once per process: the widest vector width the hardware accelerates,
/// unless the environment variable <see cref="EnvironmentVariable"/> names one
/// (<c>scalar</c>, <c>vector128</c>, <c>vector256</c>, <c>vector512</c>). A forced width the CPU does not
/// accelerate still runs (the runtime emulates it), only slower: that is what tests want.
/// </summary>
public static class KernelSelector
{
    /// <summary>The override variable read at start-up.</summary>
    public const string EnvironmentVariable = "COMPRESSONBUILD_KERNELS";

    private static readonly (KernelImplementation Implementation, string Description) Selection =
        Select(Environment.GetEnvironmentVariable(EnvironmentVariable));

    /// <summary>The implementation the public kernel entry points use.</summary>
    public static KernelImplementation Current => Selection.Implementation;

    /// <summary>How <see cref="Current"/> was chosen (for logs), e.g. "vector256 (detected)".</summary>
    public static string Description => Selection.Description;

    /// <summary>The widest implementation this CPU accelerates.</summary>
    public static KernelImplementation Detect() =>
        System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated ? KernelImplementation.Vector512
        : System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated ? KernelImplementation.Vector256
        : System.Runtime.Intrinsics.Vector128.IsHardwareAccelerated ? KernelImplementation.Vector128
        : KernelImplementation.Scalar;

    /// <summary>Parses an override value (case-insensitive); null when it names no implementation.</summary>
    public static KernelImplementation? Parse(string? value) =>
        value?.Trim().ToUpperInvariant() switch
        {
            "SCALAR" => KernelImplementation.Scalar,
            "VECTOR128" => KernelImplementation.Vector128,
            "VECTOR256" => KernelImplementation.Vector256,
            "VECTOR512" => KernelImplementation.Vector512,
            _ => null,
        };

    internal static (KernelImplementation, string) Select(string? overrideValue)
    {
        KernelImplementation detected = Detect();
        if (string.IsNullOrWhiteSpace(overrideValue))
        {
            return (detected, Name(detected) + " (detected)");
        }
        KernelImplementation? forced = Parse(overrideValue);
        return forced is { } f
            ? (f, Name(f) + " (forced by " + EnvironmentVariable + ")")
            : (detected, Name(detected) + " (detected; ignored unknown " + EnvironmentVariable + "='" + overrideValue + "')");
    }

    internal static string Name(KernelImplementation implementation) => implementation switch
    {
        KernelImplementation.Scalar => "scalar",
        KernelImplementation.Vector128 => "vector128",
        KernelImplementation.Vector256 => "vector256",
        KernelImplementation.Vector512 => "vector512",
        _ => throw new ArgumentOutOfRangeException(nameof(implementation)),
    };

    /// <summary>The vector width in floats (1 for scalar).</summary>
    internal static int FloatsPerVector(KernelImplementation implementation) => implementation switch
    {
        KernelImplementation.Vector128 => Vector128<float>.Count,
        KernelImplementation.Vector256 => Vector256<float>.Count,
        KernelImplementation.Vector512 => Vector512<float>.Count,
        _ => 1,
    };
}
