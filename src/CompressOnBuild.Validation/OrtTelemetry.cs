using System.Runtime.InteropServices;
using System.Text;

namespace CompressOnBuild.Validation;

/// <summary>
/// Turns ONNX Runtime's telemetry off for this process before the native library is loaded. Recent ORT builds
/// record usage events (a database and a device id under ~/.cache/Microsoft/DeveloperTools/.onnxruntime, a session
/// file in TMPDIR) on every environment creation unless ORT_DISABLE_TELEMETRY is set; a build step must leave no
/// such files behind. The variable is set in the native environment (where ORT reads it), because .NET's
/// <see cref="Environment.SetEnvironmentVariable(string, string)"/> does not change it on Unix. A value the user set
/// is kept.
/// </summary>
public static class OrtTelemetry
{
    public const string Variable = "ORT_DISABLE_TELEMETRY";

    public static void DisableForThisProcess()
    {
        if (!string.IsNullOrEmpty(Environment.GetEnvironmentVariable(Variable)))
        {
            return;
        }
        Environment.SetEnvironmentVariable(Variable, "1");
        if (!OperatingSystem.IsWindows())
        {
            _ = NativeMethods.setenv(Encoding.UTF8.GetBytes(Variable + "\0"), Encoding.UTF8.GetBytes("1\0"), 0);
        }
    }

    private static class NativeMethods
    {
        [DllImport("libc", EntryPoint = "setenv")]
        [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
#pragma warning disable SA1300, IDE1006 // the C library's name
        internal static extern int setenv(byte[] name, byte[] value, int overwrite);
#pragma warning restore SA1300, IDE1006
    }
}
