using System.Security.Cryptography;
using CompressOnBuild.Core;
using CompressOnBuild.Core.Cache;
using CompressOnBuild.Core.IO;

namespace CompressOnBuild.Cli;

/// <summary>
/// The cache key's hash of a data file or folder: relative names and contents of every regular file, in ordinal
/// order. Folder links are followed (a class folder may be a link) but a link back to a folder already on the way
/// down (a link loop) is hashed by its name and target instead of being walked again. FIFOs, sockets and devices
/// are hashed by name, never opened (a FIFO would block; the loader refuses them with its own code).
/// </summary>
internal static class DataFingerprint
{
    public static string Of(string path)
    {
        switch (InputFiles.Kind(path))
        {
            case FileKind.Regular:
                return HashFile(path);
            case FileKind.Directory:
                var parts = new List<string>();
                Walk(path, "", new HashSet<string>(StringComparer.Ordinal), parts);
                return CompressionCache.HashKey(parts);
            case FileKind.Special:
                return "special:" + Path.GetFullPath(path);
            default:
                // Missing data is reported by the loader with its own code; the key just has to differ.
                return "missing:" + Path.GetFullPath(path);
        }
    }

    private static void Walk(string dir, string relative, HashSet<string> onTheWay, List<string> parts)
    {
        string real;
        try
        {
            real = Core.Onnx.SafePath.RealPath(Path.GetFullPath(dir));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw CompressException.ForFile(dir, e, DiagnosticCodes.DataUnreadable, dir, e.Message);
        }
        if (!onTheWay.Add(real))
        {
            parts.Add(relative + "/:loop->" + real);
            return;
        }
        IEnumerable<string> entries;
        try
        {
            entries = Directory.EnumerateFileSystemEntries(dir).Order(StringComparer.Ordinal).ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw CompressException.ForFile(dir, e, DiagnosticCodes.DataUnreadable, dir, e.Message);
        }
        foreach (string entry in entries)
        {
            string name = (relative.Length == 0 ? "" : relative + "/") + Path.GetFileName(entry);
            switch (InputFiles.Kind(entry))
            {
                case FileKind.Regular:
                    parts.Add(name + ":" + HashFile(entry));
                    break;
                case FileKind.Directory:
                    Walk(entry, name, onTheWay, parts);
                    break;
                case FileKind.Special:
                    parts.Add(name + ":special");
                    break;
                default:
                    parts.Add(name + ":unresolvable");
                    break;
            }
        }
        onTheWay.Remove(real);
    }

    private static string HashFile(string file)
    {
        try
        {
            using var fs = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            return Convert.ToHexStringLower(SHA256.HashData(fs));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw CompressException.ForFile(file, e, DiagnosticCodes.DataUnreadable, file, e.Message);
        }
    }
}
