using System.Globalization;
using CompressOnBuild.Onnx;
using Google.Protobuf;

namespace CompressOnBuild.Core.Onnx;

/// <summary>Options for <see cref="ModelIO.Save"/>.</summary>
public sealed class ModelSaveOptions
{
    /// <summary>
    /// When the serialized model would exceed this many bytes, tensors of at least
    /// <see cref="ExternalTensorMinBytes"/> are written to an external data file next to the model.
    /// Protobuf cannot hold messages of 2 GiB or more; the default leaves head-room below that.
    /// </summary>
    public long ExternalDataThresholdBytes { get; init; } = 1_800_000_000;

    public int ExternalTensorMinBytes { get; init; } = 1024;

    /// <summary>Write external data even for small models (used in tests and for users who ask for it).</summary>
    public bool ForceExternalData { get; init; }
}

/// <summary>Loading and saving ONNX models faithfully, with external data confined to the model's folder.</summary>
public static class ModelIO
{
    /// <summary>Protobuf nesting limit: deep enough for real If/Loop nesting, shallow enough to stop recursion bombs.</summary>
    public const int RecursionLimit = 100;

    /// <summary>Reads a model and loads all its external data into memory. Throws <see cref="CompressException"/> (CMPR0101/0102/0104/0105).</summary>
    public static ModelProto Load(string path)
    {
        string full = Path.GetFullPath(path);
        if (!File.Exists(full))
        {
            throw new CompressException(DiagnosticCodes.ModelNotFound, path) { File = path };
        }
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(full);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CompressException(e, DiagnosticCodes.ModelNotOnnx, path, e.Message) { File = path };
        }
        ModelProto model = Parse(bytes, path);
        LoadExternalData(model, Path.GetDirectoryName(full)!, path);
        return model;
    }

    /// <summary>Parses model bytes (no external data resolution). Throws CMPR0102 on anything that is not an ONNX model.</summary>
    public static ModelProto Parse(ReadOnlySpan<byte> bytes, string displayName)
    {
        ModelProto model;
        try
        {
            model = ParseLimited(bytes.ToArray());
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new CompressException(e, DiagnosticCodes.ModelNotOnnx, displayName, Describe(e)) { File = displayName };
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or OverflowException or InvalidDataException)
        {
            throw new CompressException(e, DiagnosticCodes.ModelNotOnnx, displayName, e.Message) { File = displayName };
        }
        if (model.IrVersion <= 0 || model.Graph == null)
        {
            string why = bytes.Length == 0 ? "the file is empty" : model.IrVersion <= 0 ? "it has no ir_version" : "it has no graph";
            throw new CompressException(DiagnosticCodes.ModelNotOnnx, displayName, why) { File = displayName };
        }
        return model;
    }

    private static ModelProto ParseLimited(byte[] bytes)
    {
        using var stream = new MemoryStream(bytes, writable: false);
        var input = CodedInputStream.CreateWithLimits(stream, bytes.Length + 1, RecursionLimit);
        var model = new ModelProto();
        model.MergeFrom(input);
        if (!input.IsAtEnd)
        {
            throw new InvalidDataException("data after the end of the model message");
        }
        return model;
    }

    private static string Describe(InvalidProtocolBufferException e)
    {
        string m = e.Message;
        if (m.Contains("truncated", StringComparison.OrdinalIgnoreCase))
        {
            return "the file is truncated or is not an ONNX protobuf (" + m + ")";
        }
        if (m.Contains("recursion", StringComparison.OrdinalIgnoreCase))
        {
            return "subgraphs are nested deeper than " + RecursionLimit.ToString(CultureInfo.InvariantCulture) + " levels";
        }
        return "not an ONNX protobuf (" + m + ")";
    }

    /// <summary>Replaces external tensor references with in-memory raw_data, after checking each path stays inside <paramref name="modelDirectory"/>.</summary>
    public static void LoadExternalData(ModelProto model, string modelDirectory, string displayName)
    {
        var open = new Dictionary<string, FileStream>(StringComparer.Ordinal);
        try
        {
            foreach (TensorProto t in ModelWalker.Tensors(model))
            {
                if (!TensorUtil.IsExternal(t))
                {
                    continue;
                }
                string? location = null;
                long offset = 0;
                long length = -1;
                foreach (StringStringEntryProto kv in t.ExternalData)
                {
                    switch (kv.Key)
                    {
                        case "location": location = kv.Value; break;
                        case "offset": offset = ParseLong(kv.Value, t, "offset", displayName); break;
                        case "length": length = ParseLong(kv.Value, t, "length", displayName); break;
                    }
                }
                if (string.IsNullOrEmpty(location))
                {
                    throw new CompressException(DiagnosticCodes.ExternalDataUnreadable, displayName, t.Name, "", "no 'location' key") { File = displayName };
                }
                string file = SafePath.ResolveInside(modelDirectory, location, displayName, t.Name);
                if (!open.TryGetValue(file, out FileStream? fs))
                {
                    try
                    {
                        fs = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read);
                    }
                    catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                    {
                        throw new CompressException(e, DiagnosticCodes.ExternalDataUnreadable, displayName, t.Name, location, e.Message) { File = displayName };
                    }
                    open[file] = fs;
                }
                long expected;
                try
                {
                    expected = TensorUtil.ExpectedRawByteLength(t);
                }
                catch (Exception e) when (e is OverflowException or InvalidDataException)
                {
                    throw new CompressException(DiagnosticCodes.ModelInvalid, displayName, $"tensor '{t.Name}': {e.Message}") { File = displayName };
                }
                if (length < 0)
                {
                    length = expected >= 0 ? expected : fs.Length - offset;
                }
                if (expected >= 0 && length != expected)
                {
                    throw new CompressException(DiagnosticCodes.ExternalDataUnreadable, displayName, t.Name, location,
                        $"length {length} does not match the {expected} bytes its dims and type need") { File = displayName };
                }
                if (offset < 0 || length < 0 || offset > fs.Length || length > fs.Length - offset)
                {
                    throw new CompressException(DiagnosticCodes.ExternalDataUnreadable, displayName, t.Name, location,
                        $"offset {offset} + length {length} lies past the end of the {fs.Length}-byte file") { File = displayName };
                }
                if (length > Array.MaxLength)
                {
                    throw new CompressException(DiagnosticCodes.ExternalDataUnreadable, displayName, t.Name, location,
                        $"a single tensor of {length} bytes is larger than this version can hold in memory") { File = displayName };
                }
                var buffer = new byte[length];
                fs.Position = offset;
                fs.ReadExactly(buffer);
                t.RawData = UnsafeByteOperations.UnsafeWrap(buffer);
                t.ExternalData.Clear();
                t.ClearDataLocation();
            }
        }
        finally
        {
            foreach (FileStream fs in open.Values)
            {
                fs.Dispose();
            }
        }
    }

    private static long ParseLong(string value, TensorProto t, string key, string displayName)
    {
        if (!long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out long v))
        {
            throw new CompressException(DiagnosticCodes.ExternalDataUnreadable, displayName, t.Name, key, $"'{value}' is not a valid {key}") { File = displayName };
        }
        return v;
    }

    /// <summary>
    /// Writes the model atomically (temporary file in the target folder, then rename). Large models get their
    /// big tensors in an external data file "&lt;name&gt;.data" next to it, written the same way.
    /// The model object is not modified.
    /// </summary>
    public static void Save(ModelProto model, string path, ModelSaveOptions? options = null)
    {
        options ??= new ModelSaveOptions();
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        try
        {
            Directory.CreateDirectory(dir);
            long size = model.CalculateSize();
            bool external = options.ForceExternalData || size >= options.ExternalDataThresholdBytes || size < 0;
            if (!external)
            {
                AtomicFile.Write(full, stream =>
                {
                    using var output = new CodedOutputStream(stream, leaveOpen: true);
                    model.WriteTo(output);
                    output.Flush();
                });
                DeleteStale(full + ".data");
                return;
            }
            SaveWithExternalData(model, full, options);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CompressException(e, DiagnosticCodes.OutputWriteFailed, path, e.Message) { File = path };
        }
    }

    private static void SaveWithExternalData(ModelProto model, string full, ModelSaveOptions options)
    {
        ModelProto copy = model.Clone();
        string dataName = Path.GetFileName(full) + ".data";
        string dataPath = full + ".data";
        AtomicFile.Write(dataPath, stream =>
        {
            long position = 0;
            foreach (TensorProto t in ModelWalker.Tensors(copy))
            {
                if (TensorUtil.IsExternal(t) || (TensorUtil.DataTypeName(t.DataType) == "STRING"))
                {
                    continue;
                }
                if (!t.HasRawData)
                {
                    if (TensorUtil.ExpectedRawByteLength(t) < options.ExternalTensorMinBytes)
                    {
                        continue;
                    }
                    t.RawData = ByteString.CopyFrom(TensorUtil.ToRawBytes(t));
                    t.FloatData.Clear(); t.Int32Data.Clear(); t.Int64Data.Clear(); t.DoubleData.Clear(); t.Uint64Data.Clear();
                }
                if (t.RawData.Length < options.ExternalTensorMinBytes)
                {
                    continue;
                }
                // Align each tensor to 4 KiB so runtimes can memory-map it.
                long aligned = (position + 4095) / 4096 * 4096;
                if (aligned > position)
                {
                    stream.Write(new byte[aligned - position]);
                    position = aligned;
                }
                stream.Write(t.RawData.Span);
                t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = dataName });
                t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = position.ToString(CultureInfo.InvariantCulture) });
                t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = t.RawData.Length.ToString(CultureInfo.InvariantCulture) });
                t.DataLocation = TensorProto.Types.DataLocation.External;
                position += t.RawData.Length;
                t.ClearRawData();
            }
        });
        AtomicFile.Write(full, stream =>
        {
            using var output = new CodedOutputStream(stream, leaveOpen: true);
            copy.WriteTo(output);
            output.Flush();
        });
    }

    private static void DeleteStale(string path)
    {
        try
        {
            if (File.Exists(path))
            {
                File.Delete(path);
            }
        }
        catch (IOException)
        {
            // A stale external-data file from an earlier save is harmless; the model no longer points at it.
        }
    }
}
