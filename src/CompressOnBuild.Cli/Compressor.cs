using System.Diagnostics;
using System.Security.Cryptography;
using CompressOnBuild.Core;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Validation;

namespace CompressOnBuild.Cli;

/// <summary>Compresses and validates one item: load, check, pass, save beside the output, validate, check budgets, publish atomically.</summary>
internal static class Compressor
{
    public static void Run(ItemResult result, GlobalOptions global, Func<OrtInfo> ensureOrt, CompressionCacheAdapter? cache)
    {
        ItemSettings s = result.Settings;
        string modelFull = Path.GetFullPath(s.Model);
        string outputFull = Path.GetFullPath(s.Output);
        if (SamePath(modelFull, outputFull))
        {
            throw new CompressException(DiagnosticCodes.OutputIsSource, s.Output) { File = s.Model };
        }

        var watch = Stopwatch.StartNew();
        ModelProto original = ModelIO.Load(s.Model);
        ModelChecker.Validate(original, s.Model);
        byte[] originalBytes = SerializeForHash(original);
        result.OriginalBytes = originalBytes.LongLength;
        result.OriginalSha256 = Convert.ToHexStringLower(SHA256.HashData(originalBytes));

        OrtInfo ort = ensureOrt();
        string? key = cache == null ? null : CompressionCacheAdapter.Key(result, ort);
        result.CacheKey = key;
        if (key != null && cache!.TryRestore(key, result, outputFull))
        {
            result.FromCache = true;
            result.Shipped = File.Exists(outputFull);
            return;
        }


        ModelProto candidate = original.Clone();
        if (s.Quantization == QuantizationScheme.Int8Dynamic)
        {
            var options = new QuantizationOptions { ExcludedNodes = s.NodesToExclude };
            QuantizationSummary summary = Int8DynamicQuantizer.Apply(candidate, options, s.Model);
            result.Quantization = summary;
            if (summary.AlreadyQuantized)
            {
                result.Diagnostics.Add(new Diagnostic("warning", DiagnosticCodes.AlreadyQuantized, s.Model,
                    DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.AlreadyQuantized, s.Model, summary.AlreadyQuantizedReason)));
            }
            else if (summary.NothingToQuantize)
            {
                result.Diagnostics.Add(new Diagnostic("warning", DiagnosticCodes.NothingToQuantize, s.Model,
                    DiagnosticCodes.FormatWithoutCode(DiagnosticCodes.NothingToQuantize, s.Model, s.QuantizationText)));
            }
        }
        AddProvenance(candidate, s);

        // Write the candidate into a private work folder beside the output (same file name, so external data
        // references stay valid), validate it there, and only then move it into place.
        string outDir = Path.GetDirectoryName(outputFull)!;
        string work = Path.Combine(outDir, ".cob-" + Guid.NewGuid().ToString("N")[..12]);
        string candidatePath = Path.Combine(work, Path.GetFileName(outputFull));
        try
        {
            ModelIO.Save(candidate, candidatePath);
            result.CompressSeconds = watch.Elapsed.TotalSeconds;
            result.CompressedBytes = FileBytesWithExternalData(candidatePath);
            result.CompressedSha256 = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(candidatePath)));

            watch.Restart();
            Validate(result, modelFull, candidatePath);
            result.ValidateSeconds = watch.Elapsed.TotalSeconds;
            Budgets.Evaluate(result);

            if (result.BudgetsPassed || global.BudgetFailureIsWarning)
            {
                Publish(candidatePath, outputFull);
                result.Shipped = true;
            }
            else
            {
                // A model that broke its budget must not ship, not even a stale earlier output.
                DeleteIfExists(outputFull);
                DeleteIfExists(outputFull + ".data");
            }
        }
        finally
        {
            try
            {
                if (Directory.Exists(work))
                {
                    Directory.Delete(work, recursive: true);
                }
            }
            catch (IOException)
            {
                // The work folder has a unique hidden name; a leftover never shadows an output.
            }
        }
    }

    private static void Validate(ItemResult result, string originalPath, string candidatePath)
    {
        ItemSettings s = result.Settings;
        var runnerOptions = new ModelRunnerOptions { IntraOpThreads = 1 };
        using var original = new ModelRunner(originalPath, runnerOptions);
        using var compressed = new ModelRunner(candidatePath, runnerOptions);
        Dataset data;
        if (s.ValidationData != null)
        {
            Preprocessing pre = Preprocessing.Parse(s.Preprocessing);
            data = DatasetLoader.Load(s.ValidationData, s.Labels, original.Inputs, pre, s.ValidationSamples);
            result.ValidationSource = s.ValidationData;
        }
        else
        {
            data = RandomInputs.Create(original.Inputs, samples: 16, seed: 20261123);
            result.ValidationSource = "random inputs (no ValidationData given)";
        }
        bool measureLatency = s.Budgets.Any(b => b.Name == "MaxLatencyRatio");
        result.Validation = Validator.Compare(original, compressed, data, new ValidatorOptions { LatencyRuns = measureLatency ? 31 : 0 });
    }

    private static void Publish(string candidatePath, string outputFull)
    {
        string data = candidatePath + ".data";
        if (File.Exists(data))
        {
            File.Move(data, outputFull + ".data", overwrite: true);
        }
        else
        {
            DeleteIfExists(outputFull + ".data");
        }
        File.Move(candidatePath, outputFull, overwrite: true);
    }

    private static void AddProvenance(ModelProto model, ItemSettings s)
    {
        void Set(string key, string value)
        {
            StringStringEntryProto? existing = model.MetadataProps.FirstOrDefault(p => p.Key == key);
            if (existing != null)
            {
                existing.Value = value;
            }
            else
            {
                model.MetadataProps.Add(new StringStringEntryProto { Key = key, Value = value });
            }
        }
        Set("compressonbuild.version", ToolInfo.Version);
        Set("compressonbuild.options", string.Join(";", s.EffectiveOptions.Where(kv => kv.Key is "Quantization" or "Pruning" or "NodesToExclude").Select(kv => kv.Key + "=" + kv.Value)));
    }

    internal static byte[] SerializeForHash(ModelProto model)
    {
        using var ms = new MemoryStream();
        using (var output = new Google.Protobuf.CodedOutputStream(ms, leaveOpen: true))
        {
            model.WriteTo(output);
        }
        return ms.ToArray();
    }

    public static long FileBytesWithExternalData(string path)
    {
        long size = new FileInfo(path).Length;
        string data = path + ".data";
        return File.Exists(data) ? size + new FileInfo(data).Length : size;
    }

    private static void DeleteIfExists(string path)
    {
        if (File.Exists(path))
        {
            File.Delete(path);
        }
    }

    private static bool SamePath(string a, string b)
    {
        StringComparison cmp = OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
        return string.Equals(SafePath.RealPath(a), SafePath.RealPath(b), cmp);
    }
}
