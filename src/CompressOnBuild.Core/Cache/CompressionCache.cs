using System.Security.Cryptography;
using System.Text;

namespace CompressOnBuild.Core.Cache;

/// <summary>
/// A content-addressed folder of results shared by builds (like the NuGet package cache). An entry is a folder
/// named by its key holding files plus a manifest with each file's SHA-256. Entries are built in a temporary
/// folder and renamed into place, so a reader never sees a torn entry; two writers of the same key both succeed
/// (the second finds the first's entry and drops its own). An entry whose files do not match the manifest is
/// deleted and reported as missing, so it gets rebuilt instead of used.
/// </summary>
public sealed class CompressionCache
{
    private const string ManifestName = "manifest.sha256";

    public CompressionCache(string root)
    {
        Root = Path.GetFullPath(root);
    }

    public string Root { get; }

    /// <summary>Set when <see cref="TryGet"/> found and deleted a corrupt entry (for a warning).</summary>
    public string? LastCorruptEntry { get; private set; }

    public static string HashKey(IEnumerable<string> parts)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (string p in parts)
        {
            byte[] b = Encoding.UTF8.GetBytes(p);
            sha.AppendData(BitConverter.GetBytes(b.Length));
            sha.AppendData(b);
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    private string EntryDir(string key)
    {
        if (key.Length < 16 || !key.All(char.IsAsciiHexDigitLower))
        {
            throw new ArgumentException("cache keys are lower-case hex digests", nameof(key));
        }
        return Path.Combine(Root, key[..2], key);
    }

    /// <summary>
    /// The folder of a verified entry, or null (absent or corrupt: corrupt entries are removed). Verified means: the
    /// manifest exists, is not empty, names only plain file names, lists every file of the entry (and nothing is
    /// missing), and each file's SHA-256 matches. An entry folder without a manifest is corrupt too (entries are
    /// renamed into place complete, so a missing manifest is damage, not a write in progress): it is removed, so
    /// the next store can put a complete entry there.
    /// </summary>
    public string? TryGet(string key)
    {
        LastCorruptEntry = null;
        string dir = EntryDir(key);
        if (!Directory.Exists(dir))
        {
            return null;
        }
        string manifest = Path.Combine(dir, ManifestName);
        try
        {
            if (!File.Exists(manifest))
            {
                throw new InvalidDataException("the manifest is missing");
            }
            var listed = new HashSet<string>(StringComparer.Ordinal);
            foreach (string line in File.ReadAllLines(manifest))
            {
                int space = line.IndexOf(' ', StringComparison.Ordinal);
                if (space != 64)
                {
                    throw new InvalidDataException("malformed manifest line");
                }
                string name = line[(space + 1)..];
                if (name.Length == 0 || name.Contains('/', StringComparison.Ordinal) || name.Contains('\\', StringComparison.Ordinal) || name is "." or ".." or ManifestName)
                {
                    throw new InvalidDataException("manifest names a path outside the entry");
                }
                if (!listed.Add(name))
                {
                    throw new InvalidDataException($"manifest lists '{name}' twice");
                }
                string file = Path.Combine(dir, name);
                using FileStream fs = File.OpenRead(file);
                string actual = Convert.ToHexStringLower(SHA256.HashData(fs));
                if (!actual.Equals(line[..64], StringComparison.Ordinal))
                {
                    throw new InvalidDataException($"'{name}' does not match its hash");
                }
            }
            if (listed.Count == 0)
            {
                throw new InvalidDataException("the manifest lists no files");
            }
            if (Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName).Any(n => n != ManifestName && !listed.Contains(n!)))
            {
                throw new InvalidDataException("the entry holds a file its manifest does not list");
            }
            Touch(dir);
            return dir;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            Discard(dir);
            return null;
        }
    }

    /// <summary>Removes an entry found unusable after <see cref="TryGet"/> verified it (e.g. its content does not parse).</summary>
    public void Discard(string entryDirectory)
    {
        LastCorruptEntry = entryDirectory;
        TryDelete(entryDirectory);
    }

    /// <summary>Creates the entry for <paramref name="key"/>: <paramref name="fill"/> writes files into a fresh folder, which is then renamed into place.</summary>
    public void Put(string key, Action<string> fill)
    {
        string dir = EntryDir(key);
        string parent = Path.GetDirectoryName(dir)!;
        Directory.CreateDirectory(parent);
        string temp = Path.Combine(parent, "." + key[..16] + "." + Guid.NewGuid().ToString("N")[..8] + ".tmp");
        Directory.CreateDirectory(temp);
        try
        {
            fill(temp);
            var lines = new List<string>();
            foreach (string file in Directory.GetFiles(temp).Order(StringComparer.Ordinal))
            {
                // Each file reaches the disk before the entry is published: power loss after the rename below must
                // not leave an entry of zero-byte files behind a valid name.
                using var fs = new FileStream(file, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
                lines.Add(Convert.ToHexStringLower(SHA256.HashData(fs)) + " " + Path.GetFileName(file));
                fs.Flush(flushToDisk: true);
            }
            using (var manifestStream = new FileStream(Path.Combine(temp, ManifestName), FileMode.CreateNew, FileAccess.Write))
            {
                manifestStream.Write(System.Text.Encoding.UTF8.GetBytes(string.Join("\n", lines) + "\n"));
                manifestStream.Flush(flushToDisk: true);
            }
            FaultPoint.Hit("cache-put-before-publish");
            if (Directory.Exists(dir) && TryGet(key) != null)
            {
                return;
            }
            try
            {
                Directory.Move(temp, dir);
            }
            catch (IOException) when (Directory.Exists(dir))
            {
                // Another build stored the same key first; its entry is equivalent.
            }
        }
        finally
        {
            TryDelete(temp);
        }
    }

    /// <summary>Total bytes of all complete entries.</summary>
    public long SizeBytes() => Entries().Sum(e => e.Bytes);

    /// <summary>
    /// Deletes least recently used entries (by last hit or store) until the cache holds at most
    /// <paramref name="maxBytes"/>. Entries in use are skipped. Returns the number of entries deleted.
    /// </summary>
    public int Trim(long maxBytes)
    {
        List<(string Dir, long Bytes, DateTime Used)> entries = Entries().OrderBy(e => e.Used).ToList();
        long total = entries.Sum(e => e.Bytes);
        int deleted = 0;
        foreach ((string dir, long bytes, _) in entries)
        {
            if (total <= maxBytes)
            {
                break;
            }
            if (TryDelete(dir))
            {
                total -= bytes;
                deleted++;
            }
        }
        return deleted;
    }

    /// <summary>Deletes every entry (and leftovers of interrupted writes). Returns the number of entries deleted.</summary>
    public int Clear() => Trim(-1);

    private IEnumerable<(string Dir, long Bytes, DateTime Used)> Entries()
    {
        if (!Directory.Exists(Root))
        {
            yield break;
        }
        foreach (string shard in Directory.EnumerateDirectories(Root))
        {
            foreach (string dir in Directory.EnumerateDirectories(shard))
            {
                long bytes = 0;
                try
                {
                    foreach (string f in Directory.EnumerateFiles(dir))
                    {
                        bytes += new FileInfo(f).Length;
                    }
                }
                catch (IOException)
                {
                    continue;
                }
                yield return (dir, bytes, Directory.GetLastWriteTimeUtc(dir));
            }
        }
    }

    private static void Touch(string dir)
    {
        try
        {
            Directory.SetLastWriteTimeUtc(dir, DateTime.UtcNow);
        }
        catch (IOException)
        {
            // Only used to order entries for trimming.
        }
    }

    private static bool TryDelete(string dir)
    {
        try
        {
            if (Directory.Exists(dir))
            {
                Directory.Delete(dir, recursive: true);
            }
            return true;
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }
}
