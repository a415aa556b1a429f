namespace CompressOnBuild.Core.Onnx;

/// <summary>Confines paths taken from a model file (external data locations) to the model's folder.</summary>
public static class SafePath
{
    /// <summary>
    /// Resolves <paramref name="location"/> against <paramref name="baseDirectory"/> and returns the full path,
    /// or throws CMPR0104 if it is absolute, has a drive or UNC form, climbs out with "..", or goes through a link
    /// (file or folder) whose target lies outside the folder.
    /// </summary>
    public static string ResolveInside(string baseDirectory, string location, string modelDisplayName, string tensorName)
    {
        CompressException Reject() => new(DiagnosticCodes.ExternalDataPath, modelDisplayName, tensorName, location) { File = modelDisplayName };

        if (string.IsNullOrWhiteSpace(location) || location.Contains('\0', StringComparison.Ordinal))
        {
            throw Reject();
        }
        // Rooted POSIX paths, Windows drive paths (C:\, C:rel), UNC (\\server\share) and device paths (\\?\) are all refused on every OS.
        if (location.StartsWith('/') || location.StartsWith('\\') || (location.Length >= 2 && location[1] == ':') || Path.IsPathRooted(location))
        {
            throw Reject();
        }
        string[] segments = location.Split('/', '\\');
        foreach (string s in segments)
        {
            if (s == "..")
            {
                throw Reject();
            }
        }
        try
        {
            string root = Path.GetFullPath(baseDirectory);
            string realRoot = RealPath(root);
            string candidate = Path.GetFullPath(Path.Combine(root, Path.Combine(segments.Where(s => s.Length > 0 && s != ".").ToArray())));
            if (!IsUnder(candidate, root))
            {
                throw Reject();
            }
            string real = RealPath(candidate);
            if (!IsUnder(real, realRoot))
            {
                throw Reject();
            }
            return real;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            // A link loop, an over-long name or a component we may not read: the path cannot be shown to stay inside.
            throw CompressException.ForFile(modelDisplayName, e, DiagnosticCodes.ExternalDataPath, modelDisplayName, tensorName, location);
        }
    }

    /// <summary>True if <paramref name="path"/> equals or is inside <paramref name="directory"/> (both full paths).</summary>
    public static bool IsUnder(string path, string directory)
    {
        StringComparison cmp = OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
        string dir = directory.TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);
        return path.Equals(dir, cmp) || path.StartsWith(dir + Path.DirectorySeparatorChar, cmp);
    }

    /// <summary>The path with every symbolic link along it resolved (components that do not exist are kept as they are).</summary>
    public static string RealPath(string fullPath)
    {
        string? root = Path.GetPathRoot(fullPath);
        if (string.IsNullOrEmpty(root))
        {
            return fullPath;
        }
        string current = root;
        string[] parts = fullPath[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries);
        int hops = 0;
        for (int i = 0; i < parts.Length; i++)
        {
            string next = Path.Combine(current, parts[i]);
            FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
            if (info.Exists && info.LinkTarget != null)
            {
                if (++hops > 40)
                {
                    throw new IOException("too many levels of symbolic links: " + fullPath);
                }
                FileSystemInfo? target = info.ResolveLinkTarget(returnFinalTarget: true);
                string resolved = target?.FullName ?? Path.GetFullPath(Path.Combine(current, info.LinkTarget));
                // Resolve the target itself again (it may pass through further links), then continue below it.
                next = RealPath(resolved);
            }
            current = next;
        }
        return current;
    }
}
