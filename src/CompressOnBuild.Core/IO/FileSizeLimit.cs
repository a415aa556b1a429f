using System.Runtime.InteropServices;

namespace CompressOnBuild.Core.IO;

/// <summary>
/// A write past the file size limit (<c>ulimit -f</c>) raises SIGXFSZ, whose default action kills the process
/// (exit 153, no diagnostic, a half-written temporary file). With the signal ignored the write fails with EFBIG
/// instead, which <see cref="Onnx.AtomicFile"/> reports as CMPR0106. Called once by the worker at start.
/// </summary>
public static partial class FileSizeLimit
{
    private const int SigXfsz = 25; // Linux (x64, arm64) and macOS
    private static readonly IntPtr SigIgn = 1;

    public static void ReportInsteadOfDying()
    {
        if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS())
        {
            _ = Signal(SigXfsz, SigIgn);
        }
    }

    [LibraryImport("libc", EntryPoint = "signal")]
    private static partial IntPtr Signal(int signum, IntPtr handler);
}
