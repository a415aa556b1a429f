using System.Security.Cryptography;
using System.Text.RegularExpressions;
using CompressOnBuild.Onnx;
using Google.Protobuf;

namespace CompressOnBuild.Core.Onnx;

/// <summary>
/// Publishes a model and its external data files as one atomic step. Each data file gets a content-unique name
/// ("&lt;output&gt;.&lt;16 hex of its SHA-256&gt;.data") that the .onnx refers to; the data files land first (a new name
/// never overwrites the file the old .onnx reads), the rename of the .onnx commits the pair, and only then are data
/// files no longer referenced removed. A kill at any moment leaves the old pair or the new pair, never the new .onnx
/// with old data (which loads and computes garbage) or the reverse.
/// </summary>
public static partial class ModelPair
{
    /// <summary>
    /// Moves (or copies, when <paramref name="copy"/>) <paramref name="candidate"/> and the data files it refers to
    /// into place at <paramref name="outputFull"/>. Returns true when the .onnx was rewritten to content-unique data
    /// names (its bytes then differ from the candidate's).
    /// </summary>
    public static bool Publish(string candidate, string outputFull, bool copy)
    {
        ArgumentNullException.ThrowIfNull(candidate);
        ArgumentNullException.ThrowIfNull(outputFull);
        string sourceDir = Path.GetDirectoryName(Path.GetFullPath(candidate))!;
        string outDir = Path.GetDirectoryName(outputFull)!;
        string outName = Path.GetFileName(outputFull);
        if (!Directory.EnumerateFiles(sourceDir, "*.data").Any())
        {
            // No external data beside the candidate (every model under 1.8 GB): one rename, without parsing the model.
            Directory.CreateDirectory(outDir);
            if (copy)
            {
                AtomicFile.Copy(candidate, outputFull);
            }
            else
            {
                File.Move(candidate, outputFull, overwrite: true);
            }
            RemoveStaleData(outputFull);
            return false;
        }
        ModelProto model = ModelIO.Parse(File.ReadAllBytes(candidate), candidate);
        List<TensorProto> external = [.. ModelWalker.Tensors(model).Where(TensorUtil.IsExternal)];
        var renames = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string location in external.Select(Location).Distinct(StringComparer.Ordinal))
        {
            string file = Path.Combine(sourceDir, location);
            string unique = UniqueName().IsMatch(location) ? location : outName + "." + ShortHash(file) + ".data";
            renames[location] = unique;
        }
        bool rewritten = renames.Any(kv => kv.Key != kv.Value);
        string onnxSource = candidate;
        Directory.CreateDirectory(outDir);
        if (rewritten)
        {
            foreach (TensorProto t in external)
            {
                foreach (StringStringEntryProto kv in t.ExternalData.Where(kv => kv.Key == "location"))
                {
                    kv.Value = renames[kv.Value];
                }
            }
            onnxSource = Path.Combine(outDir, "." + outName + "." + Guid.NewGuid().ToString("N")[..12] + ".pair.tmp");
            AtomicFile.WriteAllBytes(onnxSource, model.ToByteArray());
        }
        foreach ((string from, string to) in renames)
        {
            string source = Path.Combine(sourceDir, from);
            string target = Path.Combine(outDir, to);
            if (copy)
            {
                AtomicFile.Copy(source, target);
            }
            else
            {
                AtomicFile.CheckReplaceable(target);
                File.Move(source, target, overwrite: true);
            }
        }
        FaultPoint.Hit("publish-data-placed");
        if (copy && !rewritten)
        {
            AtomicFile.Copy(onnxSource, outputFull);
        }
        else
        {
            File.Move(onnxSource, outputFull, overwrite: true);
        }
        FaultPoint.Hit("publish-committed");
        RemoveStaleData(outputFull, new HashSet<string>(renames.Values, StringComparer.Ordinal));
        return rewritten;
    }

    /// <summary>The external data files (full paths) <paramref name="onnxPath"/> refers to.</summary>
    public static IReadOnlyList<string> DataFiles(string onnxPath)
    {
        ArgumentNullException.ThrowIfNull(onnxPath);
        if (!Directory.EnumerateFiles(Path.GetDirectoryName(Path.GetFullPath(onnxPath))!, "*.data").Any())
        {
            return [];
        }
        ModelProto model = ModelIO.Parse(File.ReadAllBytes(onnxPath), onnxPath);
        string dir = Path.GetDirectoryName(Path.GetFullPath(onnxPath))!;
        return [.. ModelWalker.Tensors(model).Where(TensorUtil.IsExternal).Select(Location).Distinct(StringComparer.Ordinal).Select(l => Path.Combine(dir, l))];
    }

    /// <summary>Deletes "&lt;output&gt;.data" and "&lt;output&gt;.&lt;hash&gt;.data" files beside the output except <paramref name="keep"/>.</summary>
    public static void RemoveStaleData(string outputFull, IReadOnlySet<string>? keep = null)
    {
        string outDir = Path.GetDirectoryName(outputFull)!;
        string outName = Path.GetFileName(outputFull);
        if (!Directory.Exists(outDir))
        {
            return;
        }
        foreach (string file in Directory.EnumerateFiles(outDir, outName + ".*data"))
        {
            string name = Path.GetFileName(file);
            bool ours = name == outName + ".data" || (UniqueName().IsMatch(name) && name.StartsWith(outName + ".", StringComparison.Ordinal)
                && name.Length == outName.Length + 1 + 16 + 5);
            if (ours && (keep == null || !keep.Contains(name)))
            {
                try
                {
                    File.Delete(file);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // Unreferenced: harmless, and removed by the next publish.
                }
            }
        }
    }

    private static string Location(TensorProto t) => t.ExternalData.FirstOrDefault(kv => kv.Key == "location")?.Value ?? "";

    private static string ShortHash(string file)
    {
        using var fs = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        return Convert.ToHexStringLower(SHA256.HashData(fs))[..16];
    }

    [GeneratedRegex(@"\.[0-9a-f]{16}\.data$")]
    private static partial Regex UniqueName();
}
