using System.Runtime.InteropServices;

namespace CompressOnBuild.Core.IO;

/// <summary>What a path names once links are followed.</summary>
public enum FileKind
{
    Missing,
    Regular,
    Directory,

    /// <summary>A FIFO, socket or device (<c>/dev/zero</c>, a named pipe): never read as data, never replaced as output.</summary>
    Special,

    /// <summary>The links cannot be followed (a loop, a dangling link, no permission on a folder on the way).</summary>
    Unresolvable,
}

/// <summary>
/// Reads user-supplied files (data sets, labels, images) only when they are regular files, and never more than a
/// bound: <c>/dev/zero</c> would read forever, a FIFO blocks in <c>open</c> until a writer appears, and a file larger
/// than the caller can use must not be pulled into memory. Special files are told apart by <c>statx</c> on Linux
/// (the file type; .NET reports length 0 and no type for them) and by <see cref="FileAttributes"/> elsewhere.
/// </summary>
public static partial class InputFiles
{
    /// <summary>The kind of <paramref name="path"/>, following links.</summary>
    public static FileKind Kind(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (OperatingSystem.IsLinux())
        {
            int mode = StatMode(path, out int errno);
            if (mode < 0)
            {
                // ENOENT, ENOTDIR: nothing there. ELOOP, EACCES, ENAMETOOLONG and the rest: cannot be followed.
                return errno is 2 or 20 ? (IsDanglingLink(path) ? FileKind.Unresolvable : FileKind.Missing) : FileKind.Unresolvable;
            }
            return (mode & 0xF000) switch
            {
                0x8000 => FileKind.Regular,
                0x4000 => FileKind.Directory,
                _ => FileKind.Special,
            };
        }
        try
        {
            if (Directory.Exists(path))
            {
                return FileKind.Directory;
            }
            var info = new FileInfo(path);
            if (!info.Exists)
            {
                return info.LinkTarget != null ? FileKind.Unresolvable : FileKind.Missing;
            }
            if (info.LinkTarget != null)
            {
                FileSystemInfo? target = info.ResolveLinkTarget(returnFinalTarget: true);
                if (target == null || !target.Exists)
                {
                    return FileKind.Unresolvable;
                }
                info = new FileInfo(target.FullName);
            }
            return (info.Attributes & FileAttributes.Device) != 0 ? FileKind.Special : FileKind.Regular;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return FileKind.Unresolvable;
        }
    }

    /// <summary>
    /// Why <paramref name="path"/> cannot be read as a data file, or null when it is a regular file. The text is for
    /// a diagnostic ("is a FIFO, socket or device; only regular files are read").
    /// </summary>
    public static string? NotReadableReason(string path) => Kind(path) switch
    {
        FileKind.Regular => null,
        FileKind.Missing => "the file does not exist",
        FileKind.Directory => "it is a folder, not a file",
        FileKind.Special => "it is a FIFO, socket or device, not a regular file; only regular files are read",
        _ => "its links cannot be followed (a link loop or a dangling link)",
    };

    /// <summary>
    /// Opens a regular file for reading. <paramref name="fail"/> builds the coded exception from a reason (special
    /// file, missing, I/O error); the file is never opened when it is not regular, so a FIFO cannot block.
    /// </summary>
    public static FileStream OpenRead(string path, Func<string, Exception?, CompressException> fail)
    {
        ArgumentNullException.ThrowIfNull(fail);
        string? why = NotReadableReason(path);
        if (why != null)
        {
            throw fail(why, null);
        }
        try
        {
            return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw fail(e.Message, e);
        }
    }

    /// <summary>
    /// Reads a whole regular file of at most <paramref name="maxBytes"/> bytes (and at most what an array holds);
    /// a larger file is refused before anything is read.
    /// </summary>
    public static byte[] ReadAll(string path, long maxBytes, Func<string, Exception?, CompressException> fail)
    {
        using FileStream fs = OpenRead(path, fail);
        try
        {
            long length = fs.Length;
            long cap = Math.Min(maxBytes, Array.MaxLength);
            if (length > cap)
            {
                throw fail(FormattableString.Invariant($"it holds {length} bytes, more than the {cap} this file can use"), null);
            }
            byte[] bytes = new byte[length];
            fs.ReadExactly(bytes);
            return bytes;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw fail(e.Message, e);
        }
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes from <paramref name="stream"/>, or fails (truncated).</summary>
    public static byte[] ReadExactly(Stream stream, long count, Func<string, Exception?, CompressException> fail)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(fail);
        if (count < 0 || count > Array.MaxLength)
        {
            throw fail(FormattableString.Invariant($"{count} bytes cannot be held in memory"), null);
        }
        byte[] bytes = new byte[count];
        try
        {
            stream.ReadExactly(bytes);
        }
        catch (EndOfStreamException e)
        {
            throw fail("the data ends early (truncated)", e);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            throw fail(e.Message, e);
        }
        return bytes;
    }

    /// <summary>
    /// Bytes the file really occupies on disk (Linux: statx blocks x 512), or null when unknown. A sparse file (a
    /// 1 TiB "weights" file made of holes) declares far more bytes than it stores.
    /// </summary>
    public static long? StoredBytes(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }
        byte[] buffer = new byte[256];
        if (Statx(AtFdCwd, path, 0, StatxType | StatxBlocks, buffer) != 0 || (BitConverter.ToUInt32(buffer, 0) & StatxBlocks) == 0)
        {
            return null;
        }
        ulong blocks = BitConverter.ToUInt64(buffer, 48);
        return blocks > long.MaxValue / 512 ? long.MaxValue : (long)blocks * 512;
    }

    private static bool IsDanglingLink(string path)
    {
        try
        {
            return new FileInfo(path).LinkTarget != null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return false;
        }
    }

    // struct statx is the same on every Linux architecture: stx_mask is the u32 at byte 0, stx_mode the u16 at byte
    // 28, stx_blocks the u64 at byte 48 of a 256-byte record.
    private const int AtFdCwd = -100;
    private const uint StatxType = 0x1;
    private const uint StatxBlocks = 0x400;

    private static int StatMode(string path, out int errno)
    {
        byte[] buffer = new byte[256];
        int rc = Statx(AtFdCwd, path, 0, StatxType, buffer);
        if (rc != 0)
        {
            errno = Marshal.GetLastPInvokeError();
            return -1;
        }
        errno = 0;
        return BitConverter.ToUInt16(buffer, 28);
    }

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int dirfd, string path, int flags, uint mask, [Out] byte[] buffer);
}
