using CompressOnBuild.Core.IO;

namespace CompressOnBuild.Core.Onnx;

/// <summary>Writes files so that readers see either the old complete file or the new complete file, never a torn one.</summary>
public static class AtomicFile
{
    /// <summary>
    /// Writes <paramref name="path"/> through a hidden temporary file in the same folder, flushed to disk, then
    /// renamed over it. A failure to write (read-only or immutable folder, a file where a folder should be, a path
    /// under /proc, a full disk, the file size limit) is CMPR0106; so is a destination that exists but is not a
    /// regular file (a device such as /dev/full, a FIFO, a folder), which is never replaced.
    /// </summary>
    public static void Write(string path, Action<Stream> write)
    {
        ArgumentNullException.ThrowIfNull(write);
        string full = Path.GetFullPath(path);
        try
        {
            WriteCore(full, write);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException || IsFileTooLarge(e))
        {
            throw CompressException.ForFile(path, e, DiagnosticCodes.OutputWriteFailed, path, e.Message);
        }
    }

    /// <summary>
    /// .NET reports EFBIG (a write past the file size limit, ulimit -f) as an ArgumentOutOfRangeException thrown by
    /// its own file I/O code; an ArgumentOutOfRangeException from anywhere else stays a bug.
    /// </summary>
    private static bool IsFileTooLarge(Exception e) =>
        e is ArgumentOutOfRangeException
        && new System.Diagnostics.StackTrace(e).GetFrame(0)?.GetMethod()?.DeclaringType is { } t
        && ((t.FullName ?? "").StartsWith("Interop", StringComparison.Ordinal)
            || (t.Namespace ?? "").StartsWith("System.IO", StringComparison.Ordinal)
            || t.Namespace == "Microsoft.Win32.SafeHandles");

    /// <summary>CMPR0106 unless <paramref name="path"/> is absent or a regular file (a device or FIFO is never replaced).</summary>
    public static void CheckReplaceable(string path)
    {
        FileKind kind = InputFiles.Kind(path);
        if (kind is FileKind.Special or FileKind.Directory or FileKind.Unresolvable)
        {
            throw CompressException.ForFile(path, DiagnosticCodes.OutputWriteFailed, path,
                kind == FileKind.Directory ? "it is a folder" : kind == FileKind.Special
                    ? "it is a device, FIFO or socket; only regular files are replaced" : "its links cannot be followed");
        }
    }

    private static void WriteCore(string full, Action<Stream> write)
    {
        CheckReplaceable(full);
        string dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        string temp = Path.Combine(dir, "." + Path.GetFileName(full) + "." + Guid.NewGuid().ToString("N")[..12] + ".tmp");
        try
        {
            using (var fs = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                write(fs);
                fs.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            try
            {
                File.Delete(temp);
            }
            catch (IOException)
            {
                // Best effort: the temporary name is unique and hidden, so a leftover never shadows a real output.
            }
            throw;
        }
    }

    public static void WriteAllBytes(string path, byte[] bytes)
    {
        ArgumentNullException.ThrowIfNull(bytes);
        Write(path, s => s.Write(bytes));
    }

    public static void Copy(string source, string destination) =>
        Write(destination, s =>
        {
            using var input = new FileStream(source, FileMode.Open, FileAccess.Read, FileShare.Read);
            input.CopyTo(s);
        });
}
