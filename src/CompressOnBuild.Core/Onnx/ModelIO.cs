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
    public static ModelProto Load(string path) => Load(path, out _);

    /// <summary><see cref="Load(string)"/>; <paramref name="hadExternalData"/>: some tensor's data was in another file.</summary>
    public static ModelProto Load(string path, out bool hadExternalData)
    {
        string full = Path.GetFullPath(path);
        if (!File.Exists(full))
        {
            throw CompressException.ForFile(path, DiagnosticCodes.ModelNotFound, path);
        }
        ModelProto model = ParseFile(full, path, out _);
        hadExternalData = ModelWalker.Tensors(model).Any(TensorUtil.IsExternal);
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
            throw CompressException.ForFile(displayName, e, DiagnosticCodes.ModelNotOnnx, displayName, Describe(e));
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or OverflowException or InvalidDataException)
        {
            throw CompressException.ForFile(displayName, e, DiagnosticCodes.ModelNotOnnx, displayName, e.Message);
        }
        if (model.IrVersion <= 0 || model.Graph == null)
        {
            string why = bytes.Length == 0 ? "the file is empty" : model.IrVersion <= 0 ? "it has no ir_version" : "it has no graph";
            throw CompressException.ForFile(displayName, DiagnosticCodes.ModelNotOnnx, displayName, why);
        }
        return model;
    }

    /// <summary>
    /// Parses the model file from a stream: the model's bytes are held once (in the parsed tensors), never as a
    /// whole-file buffer besides. Same errors as <see cref="Parse"/>; CMPR0102 when the file cannot be read.
    /// </summary>
    private static ModelProto ParseFile(string full, string displayName, out long length)
    {
        try
        {
            using var fs = new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan);
            length = fs.Length;
            if (length >= int.MaxValue)
            {
                throw CompressException.ForFile(displayName, DiagnosticCodes.ModelNotOnnx, displayName,
                    "the .onnx file is 2 GiB or larger, which protobuf cannot hold (large weights belong in external data)");
            }
            ModelProto model;
            try
            {
                model = ParseLimited(fs, (int)length);
            }
            catch (InvalidProtocolBufferException e)
            {
                throw CompressException.ForFile(displayName, e, DiagnosticCodes.ModelNotOnnx, displayName, Describe(e));
            }
            catch (Exception e) when (e is InvalidOperationException or ArgumentException or OverflowException or InvalidDataException)
            {
                throw CompressException.ForFile(displayName, e, DiagnosticCodes.ModelNotOnnx, displayName, e.Message);
            }
            if (model.IrVersion <= 0 || model.Graph == null)
            {
                string why = length == 0 ? "the file is empty" : model.IrVersion <= 0 ? "it has no ir_version" : "it has no graph";
                throw CompressException.ForFile(displayName, DiagnosticCodes.ModelNotOnnx, displayName, why);
            }
            return model;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw CompressException.ForFile(displayName, e, DiagnosticCodes.ModelNotOnnx, displayName, e.Message);
        }
    }

    private static ModelProto ParseLimited(byte[] bytes)
    {
        using var stream = new MemoryStream(bytes, writable: false);
        return ParseLimited(stream, bytes.Length);
    }

    private static ModelProto ParseLimited(Stream stream, int length)
    {
        var input = CodedInputStream.CreateWithLimits(stream, length + 1, RecursionLimit);
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
        using var files = new ExternalFiles(modelDirectory, displayName);
        foreach (TensorProto t in ModelWalker.Tensors(model))
        {
            if (!TensorUtil.IsExternal(t))
            {
                continue;
            }
            ExternalDataRef r = files.Resolve(t);
            if (r.Length > Array.MaxLength)
            {
                throw CompressException.ForFile(displayName, DiagnosticCodes.ExternalDataUnreadable, displayName, t.Name, r.Location,
                    $"a single tensor of {r.Length} bytes is larger than this version can hold in memory");
            }
            byte[] buffer = files.Read(r, t.Name);
            t.RawData = UnsafeByteOperations.UnsafeWrap(buffer);
            t.ExternalData.Clear();
            t.ClearDataLocation();
        }
    }

    /// <summary>
    /// Reads only the model's protobuf: external tensors stay references (their data is not read), but every
    /// reference is checked like <see cref="Load"/> does (location inside the model folder, offset and length inside
    /// the file, length matching dims and type). Use <see cref="LazyModel.Resolve"/> to find a tensor's bytes.
    /// Throws CMPR0101/0102/0104/0105/0103 like <see cref="Load"/>.
    /// </summary>
    public static LazyModel LoadLazy(string path)
    {
        string full = Path.GetFullPath(path);
        if (!File.Exists(full))
        {
            throw CompressException.ForFile(path, DiagnosticCodes.ModelNotFound, path);
        }
        ModelProto model = ParseFile(full, path, out long length);
        string dir = Path.GetDirectoryName(full)!;
        var refs = new Dictionary<TensorProto, ExternalDataRef>(ReferenceEqualityComparer.Instance);
        using (var files = new ExternalFiles(dir, path))
        {
            foreach (TensorProto t in ModelWalker.Tensors(model))
            {
                if (TensorUtil.IsExternal(t))
                {
                    refs[t] = files.Resolve(t);
                }
            }
        }
        return new LazyModel(model, full, path, length, refs);
    }

    /// <summary>
    /// A cheap size probe for choosing the streaming path: the model file's length plus the bytes its external
    /// tensors reference (each distinct range once). Parses only the protobuf when the file is below 256 MiB;
    /// a bigger file holds its weights inline and its length is returned as is. Throws like <see cref="LoadLazy"/>.
    /// </summary>
    public static long TotalBytesWithExternalData(string modelPath)
    {
        string full = Path.GetFullPath(modelPath);
        var info = new FileInfo(full);
        if (!info.Exists)
        {
            throw CompressException.ForFile(modelPath, DiagnosticCodes.ModelNotFound, modelPath);
        }
        if (info.Length >= 256L << 20)
        {
            return info.Length;
        }
        LazyModel lazy = LoadLazy(modelPath);
        return info.Length + lazy.ExternalBytes;
    }

    /// <summary>Opens external data files once each and resolves tensor references against them.</summary>
    internal sealed class ExternalFiles(string modelDirectory, string displayName) : IDisposable
    {
        private readonly Dictionary<string, FileStream> _open = new(StringComparer.Ordinal);
        private readonly Dictionary<string, long> _lengths = new(StringComparer.Ordinal);

        /// <summary>Reads a resolved reference; CMPR0105 when the file cannot be opened or changed since it was checked.</summary>
        public byte[] Read(ExternalDataRef r, string tensorName)
        {
            var buffer = new byte[r.Length];
            if (r.Length == 0)
            {
                return buffer;
            }
            try
            {
                if (!_open.TryGetValue(r.FilePath, out FileStream? fs))
                {
                    fs = new FileStream(r.FilePath, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.None);
                    _open[r.FilePath] = fs;
                }
                fs.Position = r.Offset;
                fs.ReadExactly(buffer);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw CompressException.ForFile(displayName, e, DiagnosticCodes.ExternalDataUnreadable, displayName, tensorName, r.Location, e.Message);
            }
            return buffer;
        }

        /// <summary>External files at least this large must store at least 1/8 of their declared bytes (not be sparse).</summary>
        private const long SparseCheckMinBytes = 256L << 20;

        public ExternalDataRef Resolve(TensorProto t)
        {
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
                throw CompressException.ForFile(displayName, DiagnosticCodes.ExternalDataUnreadable, displayName, t.Name, "", "no 'location' key");
            }
            string file = SafePath.ResolveInside(modelDirectory, location, displayName, t.Name);
            if (!_lengths.TryGetValue(file, out long fileLength))
            {
                // Only stat here; the file is opened when bytes are read. A FIFO, socket or device inside the folder
                // reports length 0 (and opening a FIFO blocks), so nothing is ever opened for an empty file.
                try
                {
                    var info = new FileInfo(file);
                    if (!info.Exists)
                    {
                        throw new FileNotFoundException(Directory.Exists(file) ? "it is a folder, not a file" : "the file does not exist");
                    }
                    fileLength = info.Length;
                    // A sparse file (holes instead of bytes) would be streamed as gigabytes of zeros: a 624-byte model
                    // pointing at a 1 TiB sparse file must not take hours. Real weights are stored, not holes.
                    if (fileLength >= SparseCheckMinBytes && IO.InputFiles.StoredBytes(file) is { } stored && stored < fileLength / 8)
                    {
                        throw CompressException.ForFile(displayName, DiagnosticCodes.ExternalDataUnreadable, displayName, t.Name, location,
                            $"the file declares {fileLength} bytes but only {stored} are stored on disk (a sparse file); weights are never holes");
                    }
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    throw CompressException.ForFile(displayName, e, DiagnosticCodes.ExternalDataUnreadable, displayName, t.Name, location, e.Message);
                }
                _lengths[file] = fileLength;
            }
            long expected;
            try
            {
                expected = TensorUtil.ExpectedRawByteLength(t);
            }
            catch (Exception e) when (e is OverflowException or InvalidDataException)
            {
                throw CompressException.ForFile(displayName, DiagnosticCodes.ModelInvalid, displayName, $"tensor '{t.Name}': {e.Message}");
            }
            if (length < 0)
            {
                length = expected >= 0 ? expected : Math.Max(0, fileLength - offset);
            }
            if (expected >= 0 && length != expected)
            {
                throw CompressException.ForFile(displayName, DiagnosticCodes.ExternalDataUnreadable, displayName, t.Name, location,
                    $"length {length} does not match the {expected} bytes its dims and type need");
            }
            if (offset < 0 || length < 0 || offset > fileLength || length > fileLength - offset)
            {
                throw CompressException.ForFile(displayName, DiagnosticCodes.ExternalDataUnreadable, displayName, t.Name, location,
                    $"offset {offset} + length {length} lies past the end of the {fileLength}-byte file");
            }
            return new ExternalDataRef(file, location, offset, length);
        }

        public void Dispose()
        {
            foreach (FileStream fs in _open.Values)
            {
                fs.Dispose();
            }
            _open.Clear();
        }
    }

    private static long ParseLong(string value, TensorProto t, string key, string displayName)
    {
        if (!long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out long v))
        {
            throw CompressException.ForFile(displayName, DiagnosticCodes.ExternalDataUnreadable, displayName, t.Name, key, $"'{value}' is not a valid {key}");
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
            throw CompressException.ForFile(path, e, DiagnosticCodes.OutputWriteFailed, path, e.Message);
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

/// <summary>Where an external tensor's bytes are: a checked full path inside the model folder, offset and length inside that file.</summary>
public sealed record ExternalDataRef(string FilePath, string Location, long Offset, long Length);

/// <summary>A model read by <see cref="ModelIO.LoadLazy"/>: the protobuf in memory, external tensors as checked references.</summary>
public sealed class LazyModel
{
    private readonly Dictionary<TensorProto, ExternalDataRef> _refs;

    internal LazyModel(ModelProto model, string fullPath, string displayName, long protoBytes, Dictionary<TensorProto, ExternalDataRef> refs)
    {
        Model = model;
        FullPath = fullPath;
        DisplayName = displayName;
        ProtoBytes = protoBytes;
        _refs = refs;
        ExternalBytes = refs.Values.Select(r => (r.FilePath, r.Offset, r.Length)).Distinct().Sum(r => r.Length);
        LargestExternalTensorBytes = refs.Count == 0 ? 0 : refs.Values.Max(r => r.Length);
    }

    /// <summary>The parsed model; tensors with data_location EXTERNAL still carry their external_data entries.</summary>
    public ModelProto Model { get; }

    public string FullPath { get; }

    public string DisplayName { get; }

    /// <summary>Length of the .onnx file itself.</summary>
    public long ProtoBytes { get; }

    /// <summary>Bytes referenced by external tensors (each distinct range once).</summary>
    public long ExternalBytes { get; }

    public long LargestExternalTensorBytes { get; }

    public IReadOnlyDictionary<TensorProto, ExternalDataRef> ExternalTensors => _refs;

    /// <summary>The checked reference of an external tensor of <see cref="Model"/>, or null when the tensor is stored inline.</summary>
    public ExternalDataRef? Resolve(TensorProto tensor) => _refs.TryGetValue(tensor, out ExternalDataRef? r) ? r : null;
}
