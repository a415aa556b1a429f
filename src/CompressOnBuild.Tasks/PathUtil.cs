using System;
using System.IO;

namespace CompressOnBuild.Tasks
{
    internal static class PathUtil
    {
        public static bool IsWindows { get; } = Path.DirectorySeparatorChar == '\\';

        public static StringComparison Comparison { get; } =
            IsWindows ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;

        public static StringComparer Comparer { get; } =
            IsWindows ? StringComparer.OrdinalIgnoreCase : StringComparer.Ordinal;

        public static string Full(string path, string baseDirectory) =>
            Path.GetFullPath(Path.IsPathRooted(path) ? path : Path.Combine(baseDirectory, path));

        /// <summary>The path of <paramref name="fullPath"/> below <paramref name="directory"/>, or null when
        /// it is not inside it.</summary>
        public static string? RelativeInside(string directory, string fullPath)
        {
            string dir = directory.TrimEnd('/', '\\') + Path.DirectorySeparatorChar;
            string normalized = fullPath.Replace('/', Path.DirectorySeparatorChar);
            if (IsWindows)
            {
                dir = dir.Replace('/', '\\');
            }
            return normalized.StartsWith(dir, Comparison) ? normalized.Substring(dir.Length) : null;
        }

        /// <summary>True when a relative path stays below its base (no rooted path, no '..' segment).</summary>
        public static bool IsSafeRelative(string relative)
        {
            if (relative.Length == 0 || Path.IsPathRooted(relative))
            {
                return false;
            }
            foreach (string segment in relative.Split('/', '\\'))
            {
                if (segment == "..")
                {
                    return false;
                }
            }
            return true;
        }
    }
}
