namespace CompressOnBuild.Cli;

/// <summary>
/// The private folders candidates are written to before they are validated and moved into place. Each holds a lock
/// file kept open (exclusively) while its process works, so a later run can tell a folder left by a killed process
/// (lock free: deleted) from one a concurrent build is still using (lock held: left alone).
/// </summary>
internal static class WorkFolders
{
    private const string LockName = ".lock";

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
