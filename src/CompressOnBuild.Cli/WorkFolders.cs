using System.Text.RegularExpressions;
using CompressOnBuild.Core;

namespace CompressOnBuild.Cli;

/// <summary>
/// The private folders candidates are written to before they are validated and moved into place. Each holds a lock
/// file kept open (exclusively) while its process works, so a later run can tell a folder left by a killed process
/// (lock free: deleted) from one a concurrent build is still using (lock held: left alone).
/// </summary>
internal static class WorkFolders
{
    private const string LockName = ".lock";

    /// <summary>The work folder of one run beside <paramref name="outputFull"/>: ".cob-" and 12 hex digits.</summary>
    public static string NewPath(string outputFull) =>
        Path.Combine(Path.GetDirectoryName(outputFull)!, ".cob-" + Guid.NewGuid().ToString("N")[..12]);

    /// <summary>
    /// <paramref name="text"/> with every path inside a work folder of this item (beside its output) replaced by the
    /// user's file it stands for: a candidate (<c>.cob-*/N/&lt;output name&gt;</c>, and its .data) by
    /// <paramref name="output"/>, anything else there (probe models derived from the source) by <paramref name="model"/>.
    /// Diagnostics must name the user's files, never a temporary folder that is gone when the message is read.
    /// </summary>
    public static string UserPaths(string text, string model, string output)
    {
        ArgumentNullException.ThrowIfNull(text);
        string outputFull = Path.GetFullPath(output);
        string prefix = Path.Combine(Path.GetDirectoryName(outputFull)!, ".cob-");
        if (!text.Contains(prefix, StringComparison.Ordinal))
        {
            return text;
        }
        const string Sep = @"[/\\]";
        string work = Regex.Escape(prefix) + "[0-9a-f]{12}";
        string candidate = work + "(?:" + Sep + @"\d+)?" + Sep + Regex.Escape(Path.GetFileName(outputFull)) + @"(?<data>\.data)?(?![^'""\s,;:)])";
        TimeSpan timeout = TimeSpan.FromSeconds(2);
        text = Regex.Replace(text, candidate, m => output + m.Groups["data"].Value, RegexOptions.CultureInvariant, timeout);
        return Regex.Replace(text, work + @"(?:" + Sep + @"[^'""\s,;:)]*)?", _ => model, RegexOptions.CultureInvariant, timeout);
    }

    /// <summary><paramref name="e"/> with its arguments and file put through <see cref="UserPaths"/> (itself when nothing changes).</summary>
    public static CompressException UserPaths(CompressException e, string model, string output)
    {
        ArgumentNullException.ThrowIfNull(e);
        object?[] args = [.. e.Arguments.Select(a => a is string text ? UserPaths(text, model, output) : a)];
        string? file = e.File == null ? null : UserPaths(e.File, model, output);
        if (file == e.File && args.SequenceEqual(e.Arguments))
        {
            return e;
        }
        return CompressException.ForFile(file, e, e.Code, args);
    }

    public static FileStream Create(string work)
    {
        Directory.CreateDirectory(work);
        return new FileStream(Path.Combine(work, LockName), FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose);
    }

    public static void CleanStale(string directory)
    {
        if (!Directory.Exists(directory))
        {
            return;
        }
        foreach (string dir in Directory.EnumerateDirectories(directory, ".cob-*"))
        {
            try
            {
                string lockPath = Path.Combine(dir, LockName);
                if (File.Exists(lockPath))
                {
                    // Throws while the owner still holds it.
                    new FileStream(lockPath, FileMode.Open, FileAccess.ReadWrite, FileShare.None).Dispose();
                }
                else if (Directory.GetLastWriteTimeUtc(dir) > DateTime.UtcNow.AddMinutes(-1))
                {
                    // Just created by another run that has not taken its lock yet.
                    continue;
                }
                Directory.Delete(dir, recursive: true);
            }
            catch (IOException)
            {
                // In use by a concurrent build, or already gone.
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
    }
}
