using System.Runtime.InteropServices;

namespace CompressOnBuild.Core.IO;

/// <summary>
/// Sets an environment variable where native libraries read it. On Linux and macOS, .NET's
/// <see cref="Environment.SetEnvironmentVariable(string, string)"/> changes only the managed copy, which native code
/// (ONNX Runtime's getenv) never sees; libc's setenv changes the process environment itself.
/// </summary>
public static partial class NativeEnvironment
{
    /// <summary>Sets <paramref name="name"/> unless the user already set it (their choice wins).</summary>
    public static void SetIfUnset(string name, string value)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(value);
        if (Environment.GetEnvironmentVariable(name) != null)
        {
            return;
        }
        Environment.SetEnvironmentVariable(name, value);
        if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS())
        {
            _ = SetEnv(name, value, 0);
        }
    }

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);
}
