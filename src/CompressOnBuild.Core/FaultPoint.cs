namespace CompressOnBuild.Core;

/// <summary>
/// Deterministic fault injection for the kill tests: when the environment variable COMPRESSONBUILD_FAULT names a
/// point, the process kills itself there with SIGKILL (what kill -9 or a power cut does to a build), so a test can
/// check that no moment of publishing or caching leaves a torn output. Unset (always, outside tests), it does nothing.
/// </summary>
public static class FaultPoint
{
    private static readonly string? Armed = Environment.GetEnvironmentVariable("COMPRESSONBUILD_FAULT");

    public static void Hit(string name)
    {
        if (Armed != null && string.Equals(Armed, name, StringComparison.Ordinal))
        {
            using var self = System.Diagnostics.Process.GetCurrentProcess();
            self.Kill();
            Thread.Sleep(Timeout.Infinite);
        }
    }
}
