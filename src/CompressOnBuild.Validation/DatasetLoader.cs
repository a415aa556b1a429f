using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;
using CompressOnBuild.Core;
using CompressOnBuild.Core.IO;
using StbImageSharp;

namespace CompressOnBuild.Validation;

/// <summary>
/// Loads validation data for a model. Formats, chosen by what <c>path</c> is:
/// <list type="bullet">
/// <item>a folder of ONNX <c>test_data_set_*</c> folders, or a folder with loose <c>input_*.pb</c> files (one sample):
/// TensorProto files, mapped to model inputs by tensor name, else by the file index; <c>output_*.pb</c> are kept
/// as reference outputs;</item>
/// <item><c>.npy</c> (one input) or <c>.npz</c> (arrays named like the inputs, else by position; an array named
/// "labels" holds labels): the leading dimension counts samples, the array rank equals the input rank;</item>
/// <item>an IDX file (MNIST idx3 uint8 images; labels from an idx1 file);</item>
/// <item>a <c>.txt</c> file, one sentence per line, with <see cref="TextOptions"/> (a WordPiece tokenizer): each
/// non-blank line is one sample, its tokens fill the inputs by name (see <see cref="TextEncoder"/>);</item>
/// <item>a folder of images (PNG, JPEG, BMP, GIF, TGA) with one subfolder per class (class index = ordinal order of
/// the subfolder names), or images directly in the folder (no labels).</item>
/// </list>
/// Without preprocessing text, 8-bit sources are scaled by 1/255 for float inputs and passed raw (scale 1) to uint8/int8 inputs.
/// Labels (<c>labelsPath</c>) may be an idx1 file, a .npy of integers, or a text file with one integer per line.
/// When <c>maxSamples</c> is positive and smaller than the sample count, the samples at indices
/// floor(i * count / maxSamples), i = 0..maxSamples-1 are kept: an evenly spaced, deterministic subset.
/// </summary>
public static class DatasetLoader
{
    private static readonly string[] ImageExtensions = [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tga"];

    /// <summary>Loads <paramref name="path"/> for a model with inputs <paramref name="inputs"/>. Every sample is decoded
    /// and checked here; when the decoded samples exceed <paramref name="memoryBudget"/> bytes they are not kept but
    /// decoded again on each access (<see cref="Dataset.IsInMemory"/> is false).</summary>
    /// <exception cref="CompressException">DataNotFound, DataUnreadable, DataShape, LabelsMismatch, DataEmpty, PreprocessingInvalid.</exception>
    public static Dataset Load(string path, string? labelsPath, ModelInputs inputs, Preprocessing? preprocessing = null, int maxSamples = 0,
        long memoryBudget = DefaultMemoryBudget, TextOptions? text = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(inputs);
        Preprocessing pre = preprocessing ?? Preprocessing.Default;
        if (pre.Text.Length == 0 && inputs.Count > 0 && inputs.All(i => i.ElementType is TensorElementType.UInt8 or TensorElementType.Int8))
        {
            // A model that takes 8-bit pixels wants them raw, not scaled to 0..1.
            pre = Preprocessing.Parse("scale=1");
        }
        if (inputs.Count == 0)
        {
            throw CompressException.ForFile(path, DiagnosticCodes.DataShape, path, "(none)", "the model has no inputs to feed");
        }
        if (pre.ElementType is { } wanted)
        {
            foreach (TensorInfo input in inputs)
            {
                if (input.ElementType != TensorElementType.Other && input.ElementType != wanted)
                {
                    throw pre.Invalid($"dtype {wanted} does not match model input '{input.Name}' ({input.ElementType})");
                }
            }
        }
        if (!File.Exists(path) && !Directory.Exists(path))
        {
            throw CompressException.ForFile(path, DiagnosticCodes.DataNotFound, path);
        }
        if (labelsPath != null && !File.Exists(labelsPath))
        {
            throw CompressException.ForFile(labelsPath, DiagnosticCodes.DataNotFound, labelsPath);
        }

        Source source = Directory.Exists(path) ? OpenFolder(path, inputs, pre) : OpenFile(path, inputs, pre, text);
        if (source.Count == 0)
        {
            throw CompressException.ForFile(path, DiagnosticCodes.DataEmpty, path);
        }
        int[]? labels = source.Labels;
        if (labelsPath != null)
        {
            labels = ReadLabels(labelsPath);
            if (labels.Length != source.Count)
            {
                throw CompressException.ForFile(labelsPath, DiagnosticCodes.LabelsMismatch, labelsPath, labels.Length, path, source.Count);
            }
        }
        else if (labels != null && labels.Length != source.Count)
        {
            throw CompressException.ForFile(path, DiagnosticCodes.LabelsMismatch, path, labels.Length, path, source.Count);
        }

        int[] indices = SubsetIndices(source.Count, maxSamples);
        List<TensorData[]>? samples = new(indices.Length);
        List<string> sources = new(indices.Length);
        List<TensorData[]?>? references = source.Reference == null ? null : new(indices.Length);
        long bytes = 0;
        bool canBatch = true;
        TensorData[]? first = null;
        // Every sample is decoded and checked now, so bad data fails before any model runs. Samples are kept in memory
        // up to memoryBudget; beyond that the data set decodes them again on each access.
        foreach (int index in indices)
        {
            string where = source.Describe(index);
            TensorData[] sample = DecodeChecked(source, index, inputs, where);
            first ??= sample;
            for (int i = 0; i < sample.Length; i++)
            {
                bytes += sample[i].Data.Length * 4L;
                canBatch &= sample[i].Shape.Length > 0 && sample[i].Shape[0] == 1 && sample[i].Shape.AsSpan().SequenceEqual(first[i].Shape);
            }
            if (samples != null && bytes > memoryBudget)
            {
                samples = null;
            }
            samples?.Add(sample);
            sources.Add(where);
            references?.Add(source.Reference!(index));
        }
        int[]? kept = labels == null ? null : [.. indices.Select(i => labels[i])];
        string[] names = [.. inputs.Select(i => i.Name)];
        if (samples != null)
        {
            return new Dataset(path, names, samples, sources, kept, references);
        }
        return new Dataset(path, names, k => DecodeChecked(source, indices[k], inputs, sources[k]), sources, kept, references, canBatch);
    }

    /// <summary>Default for Load's memoryBudget: decoded data sets larger than this (512 MiB) are decoded again on each access.</summary>
    public const long DefaultMemoryBudget = 512L << 20;

    private static TensorData[] DecodeChecked(Source source, int index, ModelInputs inputs, string where)
    {
        TensorData[] sample = source.Decode(index);
        for (int i = 0; i < inputs.Count; i++)
        {
            CheckShape(sample[i], inputs[i], where);
        }
        return sample;
    }

    /// <summary>The deterministic subset: indices floor(i * count / max) for i in [0, max), or all when max is 0 or &gt;= count.</summary>
    public static int[] SubsetIndices(int count, int maxSamples)
    {
        if (maxSamples <= 0 || maxSamples >= count)
        {
            return [.. Enumerable.Range(0, count)];
        }
        int[] result = new int[maxSamples];
        for (int i = 0; i < maxSamples; i++)
        {
            result[i] = (int)((long)i * count / maxSamples);
        }
        return result;
    }

    /// <summary>Checks rank and fixed dimensions (dimension 0 too, unless the model's is dynamic).</summary>
    internal static void CheckShape(TensorData tensor, TensorInfo input, string file)
    {
        if (tensor.ElementCount != tensor.Data.Length)
        {
            throw CompressException.ForFile(file, DiagnosticCodes.DataUnreadable, file, $"shape {tensor.ShapeText} does not match its {tensor.Data.Length} values");
        }
        if (input.Shape.Count == 0)
        {
            return;
        }
        bool ok = tensor.Shape.Length == input.Shape.Count;
        for (int d = 0; ok && d < tensor.Shape.Length; d++)
        {
            ok = input.Shape[d] < 0 || input.Shape[d] == tensor.Shape[d];
        }
        if (!ok)
        {
            throw CompressException.ForFile(file, DiagnosticCodes.DataShape, file, input.Name,
                $"sample shape {tensor.ShapeText} does not match the input's {input.Describe()}");
        }
    }

    private sealed class Source
    {
        public required int Count { get; init; }
        public required Func<int, TensorData[]> Decode { get; init; }
        public required Func<int, string> Describe { get; init; }
        public int[]? Labels { get; init; }
        public Func<int, TensorData[]?>? Reference { get; init; }
    }

    private static CompressException Unreadable(string file, string why) =>
        new(DiagnosticCodes.DataUnreadable, file, why) { File = file };

    /// <summary>CMPR0302 for <paramref name="file"/>, from a reason and the I/O error behind it (if any).</summary>
    private static Func<string, Exception?, CompressException> Fail(string file) =>
        (why, inner) => inner == null ? Unreadable(file, why) : CompressException.ForFile(file, inner, DiagnosticCodes.DataUnreadable, file, why);

    private static CompressException Shape(string file, string input, string why) =>
        new(DiagnosticCodes.DataShape, file, input, why) { File = file };

    /// <summary>A whole data file: regular files only (never /dev/zero, a FIFO or a socket), at most what one array holds.</summary>
    private static byte[] ReadBytes(string file) =>
        InputFiles.ReadAll(file, Array.MaxLength, Fail(file));

    private static Source OpenFile(string path, ModelInputs inputs, Preprocessing pre, TextOptions? text)
    {
        string ext = Path.GetExtension(path).ToLowerInvariant();
        if (ext == ".txt")
        {
            if (text == null)
            {
                throw Unreadable(path, "text data (one sentence per line) needs a Tokenizer (a WordPiece vocab.txt or tokenizer.json)");
            }
            return FromText(path, inputs, text);
        }
        if (ext == ".npy")
        {
            NpyArray array;
            using (FileStream fs = InputFiles.OpenRead(path, Fail(path)))
            {
                array = NpyReader.Read(fs, fs.Length, path);
            }
            if (inputs.Count != 1)
            {
                throw Shape(path, inputs[0].Name, $"a .npy file feeds one input but the model has {inputs.Count}; use .npz");
            }
            return FromArrays(path, [array], inputs, pre, null);
        }
        if (ext == ".npz")
        {
            return OpenNpz(path, inputs, pre);
        }
        if (ext == ".pb")
        {
            TensorData t = TensorFiles.Read(path);
            TensorData[] mapped = MapTensors([t], [path], inputs, path);
            return new Source { Count = 1, Decode = _ => mapped, Describe = _ => path };
        }
        if (ImageExtensions.Contains(ext))
        {
            return FromImages(path, [path], null, inputs, pre);
        }
        byte[] bytes = ReadBytes(path);
        if (bytes.Length >= 4 && bytes[0] == 0 && bytes[1] == 0 && bytes[2] == 0x08 && bytes[3] is 3 or 4)
        {
            return OpenIdxImages(path, bytes, inputs, pre);
        }
        throw Unreadable(path, "unknown data format (expected .npy, .npz, .pb, an image, an IDX image file, or a folder)");
    }

    private static Source FromText(string path, ModelInputs inputs, TextOptions text)
    {
        TextEncoder encoder = TextEncoder.Create(text, inputs, path);
        List<(int Line, string Text)> lines = TextEncoder.ReadLines(path);
        return new Source
        {
            Count = lines.Count,
            Describe = i => $"{path} (line {lines[i].Line})",
            Decode = i => encoder.Encode(lines[i].Text, inputs),
        };
    }

    private static Source OpenIdxImages(string path, byte[] bytes, ModelInputs inputs, Preprocessing pre)
    {
        int rank = bytes[3];
        if (bytes.Length < 4 + 4 * rank)
        {
            throw Unreadable(path, "truncated IDX header");
        }
        int[] dims = new int[rank];
        long total = 1;
        for (int i = 0; i < rank; i++)
        {
            dims[i] = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(4 + 4 * i));
            if (dims[i] < 0)
            {
                throw Unreadable(path, "negative IDX dimension");
            }
            // Every product is checked: the dimensions of a hostile header overflow even 64 bits.
            total = total <= (long)Array.MaxLength ? total * dims[i] : long.MaxValue;
        }
        if (rank < 3 || dims[1] == 0 || dims[2] == 0 || (rank == 4 && dims[3] == 0))
        {
            throw Unreadable(path, $"IDX images must be N x H x W (x C) with non-zero sizes, not {string.Join("x", dims)}");
        }
        int header = 4 + 4 * rank;
        if (bytes.Length - header != total)
        {
            throw Unreadable(path, $"IDX header promises {total} bytes of data but the file has {bytes.Length - header}");
        }
        if (inputs.Count != 1)
        {
            throw Shape(path, inputs[0].Name, $"IDX images feed one input but the model has {inputs.Count}");
        }
        int n = dims[0], h = dims[1], w = dims[2], c = rank == 4 ? dims[3] : 1;
        int per = (int)(total / Math.Max(1, n)); // total equals the file's data length, so it and one image's size fit an int
        return new Source
        {
            Count = n,
            Decode = i => [ImagePipeline.ToTensor(bytes.AsSpan(header + (int)((long)i * per), per), h, w, c, inputs[0], pre, path) with { Name = inputs[0].Name }],
            Describe = i => $"{path} (image {i})",
        };
    }

    private static Source OpenNpz(string path, ModelInputs inputs, Preprocessing pre)
    {
        List<(string Name, NpyArray Array)> arrays = [];
        try
        {
            using FileStream file = InputFiles.OpenRead(path, Fail(path));
            using var zip = new ZipArchive(file, ZipArchiveMode.Read);
            ZipArchiveEntry[] entries = [.. zip.Entries.Where(e => e.FullName.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))];
            // Decode only what the model can use: the arrays named like its inputs (plus "labels"), else exactly one
            // array per input. The archive's other members are never decompressed.
            bool byName = inputs.All(i => entries.Any(e => e.FullName[..^4] == i.Name));
            ZipArchiveEntry[] wanted = byName
                ? [.. entries.Where(e => e.FullName[..^4] == "labels" || inputs.Any(i => i.Name == e.FullName[..^4]))]
                : entries;
            if (!byName && wanted.Count(e => e.FullName[..^4] != "labels") != inputs.Count)
            {
                throw Shape(path, string.Join(",", inputs.Select(i => i.Name)),
                    $"the archive holds arrays [{string.Join(",", entries.Select(a => a.FullName[..^4]))}]; name them like the model inputs");
            }
            foreach (ZipArchiveEntry entry in wanted)
            {
                // A zip bomb (a megabyte that inflates to gigabytes of one repeated byte) is refused before inflating:
                // real arrays do not compress 200:1.
                if (entry.Length > MinBombBytes && entry.Length / Math.Max(1, entry.CompressedLength) > MaxInflateRatio)
                {
                    throw Unreadable(path, $"member '{entry.FullName}' inflates {entry.CompressedLength} bytes to {entry.Length} (over {MaxInflateRatio}:1); refused as a decompression bomb");
                }
                using Stream s = entry.Open();
                arrays.Add((entry.FullName[..^4], NpyReader.Read(s, entry.Length, path + ":" + entry.FullName)));
            }
        }
        catch (Exception e) when (e is InvalidDataException or IOException or UnauthorizedAccessException)
        {
            throw CompressException.ForFile(path, e, DiagnosticCodes.DataUnreadable, path, e.Message);
        }
        int[]? labels = null;
        int labelIndex = arrays.FindIndex(a => a.Name == "labels");
        if (labelIndex >= 0)
        {
            labels = ToLabels(arrays[labelIndex].Array, path + ":labels.npy");
            arrays.RemoveAt(labelIndex);
        }
        NpyArray[] ordered = new NpyArray[inputs.Count];
        if (inputs.All(i => arrays.Any(a => a.Name == i.Name)))
        {
            for (int i = 0; i < inputs.Count; i++)
            {
                ordered[i] = arrays.First(a => a.Name == inputs[i].Name).Array;
            }
        }
        else if (arrays.Count == inputs.Count)
        {
            for (int i = 0; i < inputs.Count; i++)
            {
                ordered[i] = arrays[i].Array;
            }
        }
        else
        {
            throw Shape(path, string.Join(",", inputs.Select(i => i.Name)),
                $"the archive holds arrays [{string.Join(",", arrays.Select(a => a.Name))}]; name them like the model inputs");
        }
        return FromArrays(path, ordered, inputs, pre, labels);
    }

    /// <summary>.npz members that inflate more than this ratio (and past <see cref="MinBombBytes"/>) are refused.</summary>
    public const long MaxInflateRatio = 200;

    private const long MinBombBytes = 64L << 20;

    private static Source FromArrays(string path, NpyArray[] arrays, ModelInputs inputs, Preprocessing pre, int[]? labels)
    {
        int n = -1;
        for (int i = 0; i < arrays.Length; i++)
        {
            NpyArray a = arrays[i];
            TensorInfo input = inputs[i];
            if (a.Shape.Length == 0 || (input.Shape.Count > 0 && a.Shape.Length != input.Shape.Count))
            {
                throw Shape(path, input.Name,
                    $"array shape ({string.Join(",", a.Shape)}) must have the input's rank {input.Shape.Count} with samples along the first dimension; input is {input.Describe()}");
            }
            if (n >= 0 && a.Shape[0] != n)
            {
                throw Shape(path, input.Name, $"arrays disagree on the sample count ({n} vs {a.Shape[0]})");
            }
            n = (int)a.Shape[0];
        }
        return new Source
        {
            Count = n,
            Labels = labels,
            Describe = i => $"{path} (sample {i})",
            Decode = s =>
            {
                TensorData[] result = new TensorData[arrays.Length];
                for (int i = 0; i < arrays.Length; i++)
                {
                    NpyArray a = arrays[i];
                    int per = (int)(a.Data.Length / Math.Max(1, a.Shape[0]));
                    float[] data = a.Data.AsSpan(s * per, per).ToArray();
                    long[] shape = (long[])a.Shape.Clone();
                    shape[0] = 1;
                    if (a.IsUInt8)
                    {
                        ApplyToRaw(data, shape, pre);
                    }
                    result[i] = new TensorData(data, shape) { Name = inputs[i].Name };
                }
                return result;
            },
        };
    }

    /// <summary>Preprocessing of raw 8-bit values already in model layout: the channel axis is 1 (NCHW) or last (NHWC).</summary>
    private static void ApplyToRaw(float[] data, long[] shape, Preprocessing pre)
    {
        int channels = 1;
        int inner = data.Length;
        bool lastAxis = false;
        if (shape.Length == 4 && pre.Mean.Count * pre.Std.Count > 1)
        {
            lastAxis = pre.Layout == DataLayout.Nhwc || (pre.Layout == DataLayout.Auto && shape[3] is 1 or 3 && shape[1] is not (1 or 3));
            channels = (int)(lastAxis ? shape[3] : shape[1]);
            inner = (int)(shape[2] * (lastAxis ? 1 : shape[3]));
        }
        for (int i = 0; i < data.Length; i++)
        {
            int c = channels == 1 ? 0 : lastAxis ? i % channels : i / inner % channels;
            data[i] = pre.Apply(data[i], c);
        }
    }

    private static Source OpenFolder(string path, ModelInputs inputs, Preprocessing pre)
    {
        string[] sets = [.. Directory.GetDirectories(path, "test_data_set_*").Order(StringComparer.Ordinal)];
        if (sets.Length > 0)
        {
            return FromTestSets(sets, inputs);
        }
        if (Directory.GetFiles(path, "input_*.pb").Length > 0)
        {
            return FromTestSets([path], inputs);
        }
        string[] classDirs = [.. Directory.GetDirectories(path).Order(StringComparer.Ordinal)];
        string[] loose = ImagesIn(path);
        if (classDirs.Length > 0 && loose.Length == 0)
        {
            List<string> files = [];
            List<int> labels = [];
            for (int c = 0; c < classDirs.Length; c++)
            {
                foreach (string f in ImagesIn(classDirs[c]))
                {
                    files.Add(f);
                    labels.Add(c);
                }
            }
            return FromImages(path, [.. files], [.. labels], inputs, pre);
        }
        return FromImages(path, loose, null, inputs, pre);
    }

    private static string[] ImagesIn(string dir) =>
        [.. Directory.GetFiles(dir).Where(f => ImageExtensions.Contains(Path.GetExtension(f).ToLowerInvariant())).Order(StringComparer.Ordinal)];

    private static Source FromImages(string path, string[] files, int[]? labels, ModelInputs inputs, Preprocessing pre)
    {
        if (files.Length > 0 && inputs.Count != 1)
        {
            throw Shape(path, inputs[0].Name, $"images feed one input but the model has {inputs.Count}");
        }
        return new Source
        {
            Count = files.Length,
            Labels = labels,
            Describe = i => files[i],
            Decode = i =>
            {
                string file = files[i];
                byte[] bytes = ReadBytes(file);
                ImageResult image;
                try
                {
                    CheckImageSize(file, bytes);
                    image = ImageResult.FromMemory(bytes, ColorComponents.Default);
                }
                catch (Exception e) when (e is InvalidOperationException or ArgumentException or IndexOutOfRangeException or NotSupportedException or InvalidDataException or OverflowException || e.GetType() == typeof(Exception))
                {
                    throw CompressException.ForFile(file, e, DiagnosticCodes.DataUnreadable, file, "not a decodable image: " + e.Message);
                }
                if (image?.Data == null || image.Width <= 0 || image.Height <= 0)
                {
                    throw Unreadable(file, "not a decodable image");
                }
                return [ImagePipeline.ToTensor(image.Data, image.Height, image.Width, (int)image.Comp, inputs[0], pre, file) with { Name = inputs[0].Name }];
            },
        };
    }

    /// <summary>Largest image decoded: 2^27 pixels (134 megapixels, 512 MiB as RGBA), far above any camera photo.</summary>
    public const long MaxImagePixels = 1L << 27;

    /// <summary>Reads the size from the image header before decoding, so a small file that declares a huge image is refused.</summary>
    private static void CheckImageSize(string file, byte[] bytes)
    {
        using var ms = new MemoryStream(bytes, writable: false);
        ImageInfo? info = ImageInfo.FromStream(ms);
        if (info is { } i && (i.Width <= 0 || i.Height <= 0 || (long)i.Width * i.Height > MaxImagePixels))
        {
            throw Unreadable(file, $"the image header declares {i.Width}x{i.Height} pixels; images of 1 to {MaxImagePixels} pixels are decoded");
        }
    }

    private static Source FromTestSets(string[] sets, ModelInputs inputs)
    {
        List<TensorData[]> samples = [];
        List<TensorData[]?> refs = [];
        foreach (string set in sets)
        {
            string[] inputFiles = NumberedFiles(set, "input_");
            string[] outputFiles = NumberedFiles(set, "output_");
            if (inputFiles.Length == 0)
            {
                throw CompressException.ForFile(set, DiagnosticCodes.DataEmpty, set);
            }
            TensorData[] tensors = [.. inputFiles.Select(TensorFiles.Read)];
            samples.Add(MapTensors(tensors, inputFiles, inputs, set));
            refs.Add(outputFiles.Length == 0 ? null : [.. outputFiles.Select(TensorFiles.Read)]);
        }
        return new Source
        {
            Count = samples.Count,
            Decode = i => samples[i],
            Describe = i => sets[i],
            Reference = i => refs[i],
        };
    }

    private static string[] NumberedFiles(string dir, string prefix) =>
        [.. Directory.GetFiles(dir, prefix + "*.pb")
            .Select(f => (File: f, Index: int.TryParse(Path.GetFileNameWithoutExtension(f)[prefix.Length..], NumberStyles.None, CultureInfo.InvariantCulture, out int k) ? k : int.MaxValue))
            .OrderBy(x => x.Index).ThenBy(x => x.File, StringComparer.Ordinal)
            .Select(x => x.File)];

    /// <summary>Orders TensorProto tensors like the model inputs: all by name when every name matches, else by position.</summary>
    private static TensorData[] MapTensors(TensorData[] tensors, string[] files, ModelInputs inputs, string where)
    {
        TensorData[] result = new TensorData[inputs.Count];
        bool byName = inputs.All(i => tensors.Count(t => t.Name == i.Name) == 1);
        if (!byName && tensors.Length != inputs.Count)
        {
            throw Shape(where, string.Join(",", inputs.Select(i => i.Name)),
                $"{tensors.Length} input tensor files for {inputs.Count} model inputs, and their names ({string.Join(",", tensors.Select(t => t.Name))}) do not match");
        }
        for (int i = 0; i < inputs.Count; i++)
        {
            int k = byName ? Array.FindIndex(tensors, t => t.Name == inputs[i].Name) : i;
            CheckShape(tensors[k], inputs[i], files[k]);
            result[i] = tensors[k] with { Name = inputs[i].Name };
        }
        return result;
    }

    /// <summary>Reads labels: IDX (idx1 uint8), .npy of integers, or text with one integer per line.</summary>
    internal static int[] ReadLabels(string file)
    {
        byte[] bytes = ReadBytes(file);
        if (bytes.Length >= 8 && bytes[0] == 0 && bytes[1] == 0 && bytes[2] == 0x08 && bytes[3] == 1)
        {
            int n = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(4));
            if (n < 0 || bytes.Length - 8 != n)
            {
                throw Unreadable(file, $"IDX header promises {n} labels but the file holds {bytes.Length - 8}");
            }
            return [.. bytes.AsSpan(8).ToArray().Select(b => (int)b)];
        }
        if (file.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
        {
            return ToLabels(NpyReader.Read(bytes, file), file);
        }
        string text;
        try
        {
            text = new System.Text.UTF8Encoding(false, true).GetString(bytes);
        }
        catch (System.Text.DecoderFallbackException e)
        {
            throw CompressException.ForFile(file, e, DiagnosticCodes.DataUnreadable, file, "labels are neither IDX, .npy nor text");
        }
        List<int> labels = [];
        string[] lines = text.Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].Trim();
            if (line.Length == 0)
            {
                continue;
            }
            if (!int.TryParse(line, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) || v < 0)
            {
                throw Unreadable(file, $"line {i + 1} '{(line.Length > 40 ? line[..40] : line)}' is not a class index");
            }
            labels.Add(v);
        }
        return [.. labels];
    }

    private static int[] ToLabels(NpyArray array, string file)
    {
        if (array.Shape.Length > 2 || (array.Shape.Length == 2 && array.Shape[1] != 1) || !array.IsInteger)
        {
            throw Unreadable(file, $"labels must be a 1-D integer array, not ({string.Join(",", array.Shape)}) '{array.Descr}'");
        }
        return [.. array.Data.Select(v => (int)v)];
    }
}
