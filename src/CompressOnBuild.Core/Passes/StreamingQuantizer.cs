using System.Globalization;
using System.Runtime.InteropServices;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Quantization;
using CompressOnBuild.Core.Quantization.Schemes;
using CompressOnBuild.Kernels;
using CompressOnBuild.Onnx;
using Google.Protobuf;
using Microsoft.Win32.SafeHandles;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Dynamic int8 quantization for models too big to hold in memory (external data, over 2 GB). The model's protobuf is
/// read with <see cref="ModelIO.LoadLazy"/> (external tensors stay file references); each MatMul weight is read from its
/// file in row chunks twice (column max |w|, then quantize) and the uint8/int8 result is appended to the output's
/// external data file, 4 KiB aligned; other external tensors are copied through in chunks. The data file and then the
/// small .onnx are written atomically (like <see cref="ModelIO.Save"/>). Peak managed memory is the chunk buffers plus
/// the protobuf plus, while a layer other than a chunked MatMul is lowered, that one weight and the encoder's copies of
/// it; not the model's weights.
/// <para>
/// Same weight math as <see cref="Int8DynamicQuantizer"/>: symmetric per output column, scale = max|W[:, j]| / 127
/// (63 for <see cref="WeightEncoding.Int8ReducedRange"/>), round half to even, uint8 with zero point 128 by default.
/// That chunked path takes the main graph's MatMul nodes whose weight B is a float32 rank-2 initializer read by
/// MatMuls only. Every other layer the in-memory pass quantizes (Gemm, Conv, Gather, LSTM, Attention, layers in
/// If/Loop/Scan bodies) is lowered by the in-memory pass's own registry lowerings on the lazily loaded graph, one
/// weight read at a time (see Writer.Run); weights computed by a Cast of external data stay float, with a reason
/// containing <see cref="StreamingLimit"/>, and a chunked MatMul's bias Add is not folded.
/// </para>
/// </summary>
public static class StreamingQuantizer
{
    /// <summary>
    /// The words every skip reason that comes from a limit of the streaming path (and not from the in-memory pass's own
    /// rules) contains; <see cref="IsStreamingLimit"/> finds them, so the worker can say which layers stayed float only
    /// because the model streamed.
    /// </summary>
    public const string StreamingLimit = "the streaming path for big models";

    /// <summary>True when <paramref name="skipped"/> stayed float only because the model went through the streaming path.</summary>
    public static bool IsStreamingLimit(SkippedNode skipped)
    {
        ArgumentNullException.ThrowIfNull(skipped);
        return skipped.Reason.Contains(StreamingLimit, StringComparison.Ordinal);
    }

    /// <summary>Bytes of float weight rows read per chunk (the working set per weight, besides the protobuf).</summary>
    public const int ChunkBytes = 32 << 20;

    /// <summary>
    /// Int8 weights of at most this many float bytes are read once, whole, and quantized from memory; while one is
    /// quantized and written, a reader thread reads the next (so at most two such buffers, 1 GiB, are held). Larger
    /// weights are read in <see cref="ChunkBytes"/> row chunks twice (column statistics, then quantize).
    /// </summary>
    public const long WholeWeightBytes = 512L << 20;

    /// <summary>The limit the int8 path uses (<see cref="WholeWeightBytes"/>; tests lower it to run the chunked path on small weights).</summary>
    internal static long WholeWeightLimit { get; set; } = WholeWeightBytes;

    /// <summary>Rows of a whole weight are checked, measured and quantized in blocks of about this many bytes (cache sized).</summary>
    private const int BlockBytes = 256 << 10;

    private const int Alignment = 4096;

    /// <summary>
    /// Models whose .onnx plus external data reach this many bytes go through the streaming path: the in-memory
    /// path holds the model about three times (loaded, cloned, serialized) and protobuf cannot hold 2 GiB.
    /// </summary>
    public const long DefaultStreamingThresholdBytes = 1_500_000_000;

    /// <summary>True when <paramref name="modelPath"/> (with its external data) is at least <paramref name="thresholdBytes"/>. Throws like <see cref="ModelIO.LoadLazy"/>.</summary>
    public static bool ShouldStream(string modelPath, long thresholdBytes = DefaultStreamingThresholdBytes) =>
        ModelIO.TotalBytesWithExternalData(modelPath) >= thresholdBytes;

    /// <summary>
    /// Quantizes <paramref name="modelPath"/> into <paramref name="outputPath"/> (plus "&lt;output&gt;.data").
    /// <paramref name="beforeSave"/> may change the small model last (e.g. add metadata) before it is written.
    /// Throws CMPR0101-0105 for bad input, CMPR0202 for a non-finite weight, CMPR0106 when writing fails,
    /// CMPR0107 when the output would overwrite the model or one of its data files. Nothing is written on failure.
    /// </summary>
    public static QuantizationSummary CompressInt8Dynamic(string modelPath, string outputPath, QuantizationOptions options, string displayName,
        Action<ModelProto>? beforeSave = null, StreamingProfile? profile = null)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        ArgumentNullException.ThrowIfNull(outputPath);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(displayName);
        LazyModel lazy = ModelIO.LoadLazy(modelPath);
        ModelChecker.Validate(lazy.Model, displayName);
        return new Writer(lazy, options, null, displayName, profile).Run(outputPath, beforeSave);
    }

    /// <summary>
    /// Weight-only 4-bit quantization (com.microsoft MatMulNBits) of <paramref name="modelPath"/> into
    /// <paramref name="outputPath"/> (plus "&lt;output&gt;.data"), with the same weights, scales, zero points and
    /// nodes as <see cref="Int4WeightQuantizer"/> with min/max block ranges (<see cref="Int4Options.MseScales"/> is not
    /// used by the chunked MatMuls: the column-block kernel has no range search; the other layers, lowered in memory
    /// like in <see cref="CompressInt8Dynamic"/>, follow the options). Each chunked MatMul weight is read in row chunks (whole K blocks, blocks run
    /// along K); the packed result of one weight (N*K/2 bytes plus scales) is held, then appended to the data file
    /// together with its scales and zero points. Same errors as <see cref="CompressInt8Dynamic"/>, plus CMPR0003
    /// for bad options.
    /// </summary>
    public static Int4Summary CompressInt4Weights(string modelPath, string outputPath, Int4Options options, string displayName,
        Action<ModelProto>? beforeSave = null, StreamingProfile? profile = null)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        ArgumentNullException.ThrowIfNull(outputPath);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(displayName);
        Int4WeightQuantizer.ValidateOptions(options, displayName);
        LazyModel lazy = ModelIO.LoadLazy(modelPath);
        ModelChecker.Validate(lazy.Model, displayName);
        var writer = new Writer(lazy, null, options, displayName, profile);
        QuantizationSummary s = writer.Run(outputPath, beforeSave);
        return new Int4Summary
        {
            ModelDisplayName = displayName,
            BlockSize = options.BlockSize,
            Symmetric = options.Symmetric,
            AlreadyQuantized = s.AlreadyQuantized,
            AlreadyQuantizedReason = s.AlreadyQuantizedReason,
            Quantized = s.Quantized,
            Skipped = s.Skipped,
            ModelBytesBefore = s.ModelBytesBefore,
            ModelBytesAfter = s.ModelBytesAfter,
            FloatWeightBytes = s.FloatWeightBytes,
            QuantizedWeightBytes = writer.Int4QuantizedBytes + writer.LoweredQuantizedBytes,
        };
    }

    /// <summary>
    /// float32 -> float16 (<see cref="Float16Converter"/>'s graph rules: the same nodes converted, Casts, kept nodes
    /// and reasons) of a model too big for memory: the converter runs on the lazily loaded graph, and each external
    /// float32 weight it converts is read in <see cref="ChunkBytes"/> chunks, converted with the same saturating kernel
    /// (finite values beyond +-65504 clamped and counted) and appended to "&lt;output&gt;.data"; other external tensors
    /// are copied through. Same errors as <see cref="CompressInt8Dynamic"/>.
    /// </summary>
    public static Float16Summary CompressFloat16(string modelPath, string outputPath, Float16Options options, string displayName,
        Action<ModelProto>? beforeSave = null, StreamingProfile? profile = null)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        ArgumentNullException.ThrowIfNull(outputPath);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(displayName);
        LazyModel lazy = ModelIO.LoadLazy(modelPath);
        ModelChecker.Validate(lazy.Model, displayName);
        return new Writer(lazy, null, null, displayName, profile).RunFloat16(outputPath, options, beforeSave);
    }

    /// <summary>
    /// The tensors static int8 calibration needs for <paramref name="modelPath"/> (<see cref="Int8StaticQuantizer.TensorsToCalibrate(ModelProto, Int8StaticOptions)"/>
    /// on the lazily loaded graph; weights the plan looks at are read from the external data one at a time), and the
    /// model's own outputs (which the calibration model must not add twice).
    /// </summary>
    public static (IReadOnlyList<string> Tensors, IReadOnlyList<string> Outputs) Int8StaticTensorsToCalibrate(string modelPath, Int8StaticOptions options, string displayName)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(displayName);
        LazyModel lazy = ModelIO.LoadLazy(modelPath);
        ModelChecker.Validate(lazy.Model, displayName);
        var writer = new Writer(lazy, null, null, displayName, null);
        try
        {
            writer.InlineSmallExternalTensors();
            return (Int8StaticQuantizer.TensorsToCalibrate(lazy.Model, options, writer.ReadExternal), [.. lazy.Model.Graph.Output.Select(o => o.Name)]);
        }
        finally
        {
            writer.CloseFiles();
        }
    }

    /// <summary>
    /// Static int8 (QDQ) of a model too big for memory, with the in-memory pass's own graph rewrite
    /// (<see cref="Int8StaticQuantizer"/>: folds, candidates, Q/DQ pairs, per-channel weights, LSTM lowering) run on the
    /// lazily loaded graph. Each weight the pass reads (finite check, then quantization) is read from the external data
    /// file when it is used and dropped afterwards; each int8/uint8 weight it makes is appended to "&lt;output&gt;.data"
    /// (4 KiB aligned) as it is made; external tensors the pass leaves are copied through in chunks. Non-float
    /// external tensors and float ones under 4 KiB are read into memory first (shape constants and the like, which
    /// the graph rewrites read directly). <paramref name="calibration"/> comes from the model file
    /// (<see cref="Int8StaticTensorsToCalibrate"/>). Same errors as <see cref="CompressInt8Dynamic"/>, plus CMPR0003
    /// for bad options.
    /// </summary>
    public static Int8StaticSummary CompressInt8Static(string modelPath, string outputPath, CalibrationResult calibration, Int8StaticOptions options,
        string displayName, Action<ModelProto>? beforeSave = null, StreamingProfile? profile = null)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        ArgumentNullException.ThrowIfNull(outputPath);
        ArgumentNullException.ThrowIfNull(calibration);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(displayName);
        LazyModel lazy = ModelIO.LoadLazy(modelPath);
        ModelChecker.Validate(lazy.Model, displayName);
        return new Writer(lazy, null, null, displayName, profile).RunInt8Static(outputPath, calibration, options, beforeSave);
    }

    private sealed class Weight
    {
        public required TensorProto Tensor { get; init; }

        public required int K { get; init; }

        public required int N { get; init; }

        public List<NodeProto> Users { get; } = [];

        public string QuantizedName { get; set; } = "";

        public string ScaleName { get; set; } = "";

        public string ZeroPointName { get; set; } = "";

        public float[] Scales { get; set; } = [];

        public float MaxError { get; set; }

        public string? Int4ZeroPointName { get; set; }
    }

    /// <summary>One worker's scratch for the int4 chunked kernel: a block's scales, zero points, codes, the packing's scratch and its largest error.</summary>
    private sealed class Int4BlockBuffers(int n, int blockSize)
    {
        public float[] Scales { get; } = new float[n];
        public float[] Zeros { get; } = new float[n];
        public float[] Scratch { get; } = new float[n];
        public byte[] Codes { get; } = new byte[(long)blockSize * n];
        public byte[] PackScratch { get; } = new byte[(long)blockSize / 2 * n];
        public float MaxError { get; set; }
    }

    private sealed class Writer(LazyModel lazy, QuantizationOptions? int8, Int4Options? int4, string displayName, StreamingProfile? profile)
    {
        private readonly QuantizationOptions options = int8 ?? QuantizationOptions.Default;

        public long Int4QuantizedBytes { get; private set; }

        private readonly ModelProto _model = lazy.Model;
        private readonly HashSet<string> _names = new(StringComparer.Ordinal);
        private readonly Dictionary<string, SafeFileHandle> _handles = new(StringComparer.Ordinal);

        /// <summary>Collects after every <see cref="ChunkBytes"/> allocated between two reads of <see cref="ExternalFloats"/>.</summary>
        private readonly CompressOnBuild.Core.IO.ProcessMemory.GarbageBound _garbage = new(ChunkBytes);

        private EncodingLevels Encoding => EncodingLevels.Of(options.WeightEncoding, displayName);

        /// <summary>Bytes of the codes, scales and zero points the registry's lowerings stored (what <see cref="Run"/> did not stream in chunks).</summary>
        public long LoweredQuantizedBytes { get; private set; }

        private Int4Options? Int4 => int4;

        /// <summary>
        /// Int8Dynamic or Int4Weights: the in-memory pass's lowerings (<see cref="OpRegistry"/>, through
        /// <see cref="QuantizationDriver.Run"/>) on the lazily loaded graph, each weight read from the data file when it
        /// is lowered and each large tensor a lowering adds appended to the output's data file as it is added; the
        /// main graph's MatMuls whose weight is an initializer read by MatMuls only are left to the chunked path
        /// (<see cref="WriteWeights"/>), then the tensors the pass left are copied through in chunks.
        /// </summary>
        public QuantizationSummary Run(string outputPath, Action<ModelProto>? beforeSave)
        {
            if (int4 == null)
            {
                _ = Encoding;
            }
            var phase = System.Diagnostics.Stopwatch.StartNew();
            long before = lazy.ProtoBytes + lazy.ExternalBytes;
            string full = Path.GetFullPath(outputPath);
            string dataPath = full + ".data";
            string dataName = Path.GetFileName(full) + ".data";
            CheckOutputIsNotAnInput(full, dataPath, outputPath);

            string? already = QuantizedOperators.Describe(_model);
            if (already == null)
            {
                try
                {
                    InlineSmallExternalTensors(InlineNonFloatBytes);
                }
                catch
                {
                    CloseFiles();
                    throw;
                }
            }
            if (profile != null)
            {
                profile.SetupSeconds += phase.Elapsed.TotalSeconds;
            }
            LoweringContext? context = null;
            var streamed = new List<StreamedSite>();
            List<Weight> weights = [];
            Publish(outputPath, full, dataPath, stream =>
            {
                var file = new DataFile(stream, dataName, profile);
                if (already == null)
                {
                    context = LowerLayers(file, streamed);
                    weights = StreamedWeights(streamed);
                }
                CollectNames();
                WriteWeights(file, weights);
                WriteRemaining(file, new HashSet<TensorProto>(weights.Select(w => w.Tensor), ReferenceEqualityComparer.Instance));
            }, () =>
            {
                Rewrite(weights);
                beforeSave?.Invoke(_model);
            });
            if (!ModelWalker.Tensors(_model).Any(TensorUtil.IsExternal))
            {
                DeleteStale(dataPath); // nothing refers to it (a model without external data that quantized nothing)
            }
            long after = new FileInfo(full).Length + (File.Exists(dataPath) ? new FileInfo(dataPath).Length : 0);
            List<QuantizedNode> quantized = context?.Quantized ?? [];
            foreach (StreamedSite site in streamed)
            {
                // The chunked MatMuls' entries, in lowering order, get their errors now.
                Weight w = site.Weight!;
                quantized[site.Index] = new QuantizedNode(OnnxNames.Label(site.Site.Node), "MatMul", w.Tensor.Name, w.K, w.N, w.MaxError);
            }
            LoweredQuantizedBytes = context?.QuantizedWeightBytes ?? 0;
            return new QuantizationSummary
            {
                ModelDisplayName = displayName,
                WeightEncoding = int4 == null ? options.WeightEncoding : default,
                AlreadyQuantized = already != null,
                AlreadyQuantizedReason = already,
                Quantized = quantized,
                Skipped = context?.Skipped ?? [],
                ModelBytesBefore = before,
                ModelBytesAfter = after,
                FloatWeightBytes = weights.Sum(w => (long)w.K * w.N * 4) + (context?.FloatWeightBytes ?? 0),
                // codes and float scales per chunked weight (int4 sums its own), plus what the lowerings stored (with
                // the shared zero points)
                QuantizedWeightBytes = weights.Sum(w => (long)w.K * w.N + (long)w.N * 4) + LoweredQuantizedBytes,
            };
        }

        /// <summary>A main-graph MatMul left to the chunked path, where its entry sits in the pass's quantized list, and its weight.</summary>
        private sealed class StreamedSite(WeightSite site, int index)
        {
            public WeightSite Site { get; } = site;

            public int Index { get; } = index;

            public Weight? Weight { get; set; }

            /// <summary>The shared uint8 zero-point tensor (unsigned int8 codes), else "".</summary>
            public string ZeroPoint { get; set; } = "";
        }

        /// <summary>Non-float external tensors of at most this many bytes are read into memory before the lowerings (shapes and axes they read); larger ones (float16 weights, int8 tables) are copied through.</summary>
        private const long InlineNonFloatBytes = 1L << 20;

        /// <summary>Float and float16 tensors a lowering adds (scales, biases) go to the data file from this size on (the constants folded before lowering are smaller).</summary>
        private const int SpillFloatBytes = 64 << 10;

        /// <summary>
        /// Runs the scheme's lowerings (<see cref="OpRegistry.For"/>) on the lazily loaded graph: the same sites, skip
        /// reasons, shared-weight rules, encodings and rewrites as the in-memory pass, each weight read through
        /// <see cref="ExternalFloats"/> when it is checked and when it is encoded (one at a time), each large tensor the
        /// lowerings add appended to <paramref name="file"/> as it is added. Weights computed by a Cast of external data
        /// stay float (<see cref="PassGraph.LazyExternalData"/>: each computed copy would stay in memory until the pass
        /// ends); a float32 Transpose of it is computed when read; Constant nodes and Reshape-like chains resolve as in
        /// memory. The chunked
        /// MatMuls go to <paramref name="streamed"/> (see <see cref="ChunkedMatMul"/>).
        /// </summary>
        private LoweringContext LowerLayers(DataFile file, List<StreamedSite> streamed)
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            var graph = new PassGraph(_model)
            {
                LazyExternalData = true,
                ExternalFloats = ExternalFloats,
                InitializerAdded = t =>
                {
                    if (!TensorUtil.IsExternal(t) && t.RawData.Length >= (t.DataType is (int)TensorProto.Types.DataType.Int8 or (int)TensorProto.Types.DataType.Uint8 ? SpillBytes
                        : t.DataType is (int)TensorProto.Types.DataType.Float or (int)TensorProto.Types.DataType.Float16 ? SpillFloatBytes : int.MaxValue))
                    {
                        file.Append(t, t.RawData.Span);
                    }
                },
            };
            LoweringContext context = int4 != null ? new Int4Context(graph, int4, displayName) : new Int8DynamicContext(graph, options, displayName);
            QuantizationScheme scheme = int4 != null ? QuantizationScheme.Int4Weights : QuantizationScheme.Int8Dynamic;
            var lowerings = OpRegistry.For(scheme)
                .Select(l => l.OpType == "MatMul" && l.Domain.Length == 0 ? new ChunkedMatMul(l, this, streamed) : l)
                .ToList();
            QuantizationDriver.Run(context, lowerings);
            if (int4 != null)
            {
                Int4WeightQuantizer.ReportRecurrentFloat(context, displayName);
            }
            else
            {
                Int8DynamicQuantizer.ReportRecurrentFloat(context, displayName);
            }
            if (profile != null)
            {
                profile.QuantizeSeconds += watch.Elapsed.TotalSeconds;
            }
            return context;
        }

        /// <summary>The chunked MatMuls' weights, once each, in graph order (a weight read by several MatMuls is written once).</summary>
        private static List<Weight> StreamedWeights(List<StreamedSite> streamed)
        {
            var weights = new Dictionary<string, Weight>(StringComparer.Ordinal);
            foreach (StreamedSite site in streamed)
            {
                TensorProto t = site.Site.Weight.Tensor;
                if (!weights.TryGetValue(site.Site.WeightName, out Weight? w))
                {
                    w = new Weight { Tensor = t, K = (int)t.Dims[0], N = (int)t.Dims[1] };
                    weights[site.Site.WeightName] = w;
                }
                w.Users.Add(site.Site.Node);
                w.ZeroPointName = site.ZeroPoint;
                site.Weight = w;
            }
            return [.. weights.Values];
        }

        /// <summary>
        /// The scheme's MatMul lowering, except for the main graph's MatMuls whose weight is an initializer read by
        /// MatMuls only: those keep the chunked path (<see cref="WriteWeights"/>: read in row chunks or whole with a
        /// reader thread, never twice), found by the same site rule (<see cref="WeightSites.MatrixSite(PassGraph, string, long, NodeProto, Action{string}, long)"/>)
        /// and exclusion and shared-weight rules, not read by the driver's up-front check (the chunked path checks the
        /// values as it reads them), and given a placeholder entry in the lowering order that <see cref="Run"/> fills in.
        /// Every other MatMul (inside an If/Loop/Scan body, or sharing its weight with a Gemm) goes to the lowering itself.
        /// </summary>
        private sealed class ChunkedMatMul(IOperatorLowering lowering, Writer writer, List<StreamedSite> streamed) : IOperatorLowering
        {
            public string OpType => lowering.OpType;

            public string Domain => lowering.Domain;

            public bool AlwaysALayer => lowering.AlwaysALayer;

            public WeightSite? FindSite(LoweringContext context, NodeProto node, Action<string> skip)
            {
                PassGraph g = context.Graph;
                if (!g.IsMain || node.Input.Count < 2 || !ReadByMatMulsOnly(g, node.Input[1]))
                {
                    return lowering.FindSite(context, node, skip);
                }
                // Int8 never holds such a weight whole (row chunks past WholeWeightLimit); int4 holds its packed codes.
                WeightSite? site = WeightSites.MatrixSite(g, context.DisplayName, context.MinimumWeightElements, node, skip,
                    writer.Int4 != null ? context.MaximumWeightElements : long.MaxValue);
                if (site == null)
                {
                    return null;
                }
                long[] dims = site.Weight.Dims;
                if (writer.Int4 != null && dims[1] * 4 * 2 * writer.Int4.BlockSize > 1L << 30)
                {
                    skip($"weight '{site.WeightName}' has rows too wide for {StreamingLimit} (its int4 buffer of two K blocks of rows would be over 1 GiB)");
                    return null;
                }
                if (dims[0] > int.MaxValue || dims[1] > int.MaxValue / 4)
                {
                    skip($"weight '{site.WeightName}' has dimensions too large for this pass");
                    return null;
                }
                site.ChecksItsOwnValues = true;
                return site;
            }

            public void Lower(LoweringContext context, WeightSite site)
            {
                if (!site.ChecksItsOwnValues)
                {
                    lowering.Lower(context, site);
                    return;
                }
                var entry = new StreamedSite(site, context.Quantized.Count);
                if (context is Int8DynamicContext int8 && int8.Levels.Unsigned)
                {
                    // Unsigned codes: the zero-point tensor is taken here, in lowering order, so it is shared with the
                    // lowered layers (and named) as in the in-memory pass. Signed codes use the default zero point 0.
                    entry.ZeroPoint = int8.SharedZeroPoint(int8.Levels.Zero, (int)site.Weight.Dims[1], site.WeightName, out long bytes);
                    context.QuantizedWeightBytes += bytes;
                }
                streamed.Add(entry);
                context.Quantized.Add(new QuantizedNode(OnnxNames.Label(site.Node), "MatMul", site.WeightName, (int)site.Weight.Dims[0], (int)site.Weight.Dims[1], 0f));
            }

            /// <summary>An initializer of this graph read only as input B of default-domain MatMuls (not a graph output, not read by a body).</summary>
            private static bool ReadByMatMulsOnly(PassGraph g, string weight) =>
                g.Initializers.ContainsKey(weight) && !g.Outer.Contains(weight)
                && g.Consumers(weight).All(n => n.OpType == "MatMul" && OnnxNames.IsDefaultDomain(n) && n.Input.Count == 2 && n.Input[0] != weight);
        }

        /// <summary>
        /// Publishes the output pair: the data file first, written by <paramref name="writeData"/> (it may fail, e.g. on a
        /// non-finite weight, without touching the output; null: there is no external data and a stale data file is
        /// removed), then <paramref name="beforeModel"/> and the model, each file atomically; the source files' handles are
        /// closed either way. An I/O failure is CMPR0106 on <paramref name="outputPath"/>.
        /// </summary>
        private void Publish(string outputPath, string full, string dataPath, Action<Stream>? writeData, Action beforeModel)
        {
            try
            {
                Directory.CreateDirectory(Path.GetDirectoryName(full)!);
                if (writeData != null)
                {
                    var total = System.Diagnostics.Stopwatch.StartNew();
                    double written = 0;
                    AtomicFile.Write(dataPath, stream =>
                    {
                        writeData(stream);
                        written = total.Elapsed.TotalSeconds;
                    });
                    if (profile != null)
                    {
                        profile.FlushSeconds += total.Elapsed.TotalSeconds - written;
                    }
                }
                else
                {
                    DeleteStale(dataPath);
                }
                var phase = System.Diagnostics.Stopwatch.StartNew();
                beforeModel();
                AtomicFile.Write(full, stream =>
                {
                    using var output = new CodedOutputStream(stream, leaveOpen: true);
                    _model.WriteTo(output);
                    output.Flush();
                });
                if (profile != null)
                {
                    profile.FinishSeconds += phase.Elapsed.TotalSeconds;
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw CompressException.ForFile(outputPath, e, DiagnosticCodes.OutputWriteFailed, outputPath, e.Message);
            }
            finally
            {
                foreach (SafeFileHandle h in _handles.Values)
                {
                    h.Dispose();
                }
            }
        }

        public Float16Summary RunFloat16(string outputPath, Float16Options f16, Action<ModelProto>? beforeSave)
        {
            var phase = System.Diagnostics.Stopwatch.StartNew();
            long before = lazy.ProtoBytes + lazy.ExternalBytes;
            string full = Path.GetFullPath(outputPath);
            string dataPath = full + ".data";
            string dataName = Path.GetFileName(full) + ".data";
            CheckOutputIsNotAnInput(full, dataPath, outputPath);

            // The converter decides; each external weight it converts becomes an empty float16 tensor filled below.
            var deferred = new Dictionary<TensorProto, ExternalDataRef>(ReferenceEqualityComparer.Instance);
            Float16Summary summary = Float16Converter.Apply(_model, f16, displayName, t =>
            {
                if (lazy.Resolve(t) is not { } r)
                {
                    return null;
                }
                var half = new TensorProto { Name = t.Name, DataType = (int)TensorProto.Types.DataType.Float16, DocString = t.DocString };
                half.Dims.AddRange(t.Dims);
                deferred[half] = r;
                return half;
            });
            var toWrite = new List<(TensorProto Tensor, ExternalDataRef Source, bool Half)>();
            foreach (TensorProto t in ModelWalker.Tensors(_model))
            {
                if (deferred.TryGetValue(t, out ExternalDataRef? r))
                {
                    toWrite.Add((t, r, true));
                }
                else if (lazy.Resolve(t) is { } kept)
                {
                    toWrite.Add((t, kept, false));
                }
            }
            if (profile != null)
            {
                profile.SetupSeconds += phase.Elapsed.TotalSeconds;
            }
            long clamped = 0;
            Publish(outputPath, full, dataPath, toWrite.Count > 0 ? stream => clamped = WriteFloat16Data(stream, toWrite, dataName) : null,
                () => beforeSave?.Invoke(_model));
            long after = new FileInfo(full).Length + (File.Exists(dataPath) ? new FileInfo(dataPath).Length : 0);
            return new Float16Summary
            {
                ModelDisplayName = summary.ModelDisplayName,
                AlreadyFloat16 = summary.AlreadyFloat16,
                AlreadyQuantized = summary.AlreadyQuantized,
                UnchangedReason = summary.UnchangedReason,
                ConvertedNodes = summary.ConvertedNodes,
                KeptFloat32 = summary.KeptFloat32,
                ConvertedTensors = summary.ConvertedTensors,
                ConvertedElements = summary.ConvertedElements,
                ClampedValues = summary.ClampedValues + clamped,
                CastsInserted = summary.CastsInserted,
                ModelBytesBefore = before,
                ModelBytesAfter = after,
            };
        }

        /// <summary>External tensors at most this big (float32), and every non-float external tensor, are read into memory before a graph rewrite.</summary>
        private const int InlineBytes = 4096;

        /// <summary>Quantized (int8/uint8) initializers of at least this many bytes go to the data file as the pass adds them.</summary>
        private const int SpillBytes = 4096;

        /// <summary>The tensors <see cref="InlineSmallExternalTensors"/> read into memory (written back to the data file when big enough).</summary>
        private readonly HashSet<TensorProto> _inlined = new(ReferenceEqualityComparer.Instance);

        /// <summary>The external references by their entries (location, offset, length): a cloned tensor or a reshaped copy carries the same entries.</summary>
        private Dictionary<(string Location, long Offset, long Length), ExternalDataRef>? _byEntries;

        /// <summary>
        /// Reads float external tensors of at most <see cref="InlineBytes"/> and non-float ones of at most
        /// <paramref name="nonFloatBytes"/> into the model (the rewrites read shapes, axes, clip bounds directly).
        /// </summary>
        public void InlineSmallExternalTensors(long nonFloatBytes = long.MaxValue)
        {
            foreach ((TensorProto t, ExternalDataRef r) in lazy.ExternalTensors)
            {
                if (r.Length > (t.DataType == (int)TensorProto.Types.DataType.Float ? InlineBytes : nonFloatBytes))
                {
                    continue;
                }
                byte[] bytes = GC.AllocateUninitializedArray<byte>(checked((int)r.Length));
                ReadExactly(Handle(r.FilePath), bytes, r.Offset, t.Name);
                t.ExternalData.Clear();
                t.DataLocation = TensorProto.Types.DataLocation.Default;
                t.RawData = UnsafeByteOperations.UnsafeWrap(bytes);
                _inlined.Add(t);
            }
        }

        private static (string, long, long) EntriesOf(TensorProto t)
        {
            string location = "";
            long offset = 0, length = -1;
            foreach (StringStringEntryProto e in t.ExternalData)
            {
                switch (e.Key)
                {
                    case "location":
                        location = e.Value;
                        break;
                    case "offset":
                        _ = long.TryParse(e.Value, NumberStyles.None, CultureInfo.InvariantCulture, out offset);
                        break;
                    case "length":
                        _ = long.TryParse(e.Value, NumberStyles.None, CultureInfo.InvariantCulture, out length);
                        break;
                }
            }
            return (location, offset, length);
        }

        /// <summary>The checked reference of an external tensor of the model, a clone of one or a reshaped copy of one (null for others).</summary>
        private ExternalDataRef? ResolveEntries(TensorProto t)
        {
            if (lazy.Resolve(t) is { } direct)
            {
                return direct;
            }
            if (_byEntries == null)
            {
                _byEntries = [];
                foreach ((TensorProto source, ExternalDataRef r) in lazy.ExternalTensors)
                {
                    if (TensorUtil.IsExternal(source))
                    {
                        _byEntries.TryAdd(EntriesOf(source), r);
                    }
                }
            }
            return _byEntries.GetValueOrDefault(EntriesOf(t));
        }

        /// <summary>Sets a pass's graph index to read external float tensors through <see cref="ExternalFloats"/>.</summary>
        public void ReadExternal(PassGraph g) => g.ExternalFloats = ExternalFloats;

        /// <summary>An external float32 tensor's values, read from its file (the length checked against its dims).</summary>
        private float[] ExternalFloats(TensorProto t)
        {
            ExternalDataRef r = ResolveEntries(t)
                ?? throw CompressException.ForFile(displayName, DiagnosticCodes.ModelInvalid, displayName, $"tensor '{t.Name}' refers to external data that was not checked");
            long count = TensorUtil.ElementCount(t);
            if (t.DataType != (int)TensorProto.Types.DataType.Float || count < 0 || count > Array.MaxLength || r.Length != count * 4)
            {
                throw CompressException.ForFile(displayName, DiagnosticCodes.ModelInvalid, displayName,
                    $"tensor '{t.Name}' has {r.Length} bytes of external data, not the {count * 4} its dims need as float32");
            }
            // The weights read before (and their copies made by the lowerings) are garbage by now: collected before
            // this one is read, so they do not pile up (forced full collections, blocking while few bytes are live).
            _garbage.Check();
            var watch = System.Diagnostics.Stopwatch.StartNew();
            float[] values = GC.AllocateUninitializedArray<float>((int)count);
            ReadExactly(Handle(r.FilePath), MemoryMarshal.AsBytes(values.AsSpan()), r.Offset, t.Name);
            if (profile != null)
            {
                profile.ReadSeconds += watch.Elapsed.TotalSeconds;
            }
            return values;
        }

        /// <summary>Closes the source files (when no <see cref="Publish"/> does).</summary>
        public void CloseFiles()
        {
            foreach (SafeFileHandle h in _handles.Values)
            {
                h.Dispose();
            }
            _handles.Clear();
        }

        public Int8StaticSummary RunInt8Static(string outputPath, CalibrationResult calibration, Int8StaticOptions options, Action<ModelProto>? beforeSave)
        {
            long before = lazy.ProtoBytes + lazy.ExternalBytes;
            string full = Path.GetFullPath(outputPath);
            string dataPath = full + ".data";
            string dataName = Path.GetFileName(full) + ".data";
            CheckOutputIsNotAnInput(full, dataPath, outputPath);
            Int8StaticSummary? summary = null;
            try
            {
                InlineSmallExternalTensors();
            }
            catch
            {
                CloseFiles();
                throw;
            }
            Publish(outputPath, full, dataPath, stream =>
            {
                var file = new DataFile(stream, dataName, profile);
                // The pass reads each weight when it uses it and hands each quantized one over as it adds it: the codes
                // go to the data file there and then, so neither the float weights nor their codes pile up.
                summary = Int8StaticQuantizer.Apply(_model, calibration, options, displayName, g =>
                {
                    g.ExternalFloats = ExternalFloats;
                    g.InitializerAdded = t =>
                    {
                        if (t.DataType is (int)TensorProto.Types.DataType.Int8 or (int)TensorProto.Types.DataType.Uint8
                            && !TensorUtil.IsExternal(t) && t.RawData.Length >= SpillBytes)
                        {
                            file.Append(t, t.RawData.Span);
                        }
                    };
                });
                WriteRemaining(file, new HashSet<TensorProto>(ReferenceEqualityComparer.Instance));
            }, () => beforeSave?.Invoke(_model));
            long after = new FileInfo(full).Length + (File.Exists(dataPath) ? new FileInfo(dataPath).Length : 0);
            summary!.ModelBytesBefore = before;
            summary.ModelBytesAfter = after;
            return summary;
        }

        /// <summary>
        /// What the pass left in the model, after the tensors <paramref name="file"/> already holds and those in
        /// <paramref name="skip"/>: the source's external tensors (copied through in chunks, also under a new name or
        /// shape) and the big ones <see cref="InlineSmallExternalTensors"/> read into memory.
        /// </summary>
        private void WriteRemaining(DataFile file, HashSet<TensorProto> skip)
        {
            byte[]? buffer = null;
            foreach (TensorProto t in ModelWalker.Tensors(_model).ToList())
            {
                if (file.Written.Contains(t) || skip.Contains(t))
                {
                    continue;
                }
                if (TensorUtil.IsExternal(t))
                {
                    ExternalDataRef r = ResolveEntries(t)
                        ?? throw new InvalidOperationException($"tensor '{t.Name}' refers to external data the model did not have");
                    if (buffer == null || buffer.Length < Math.Min(ChunkBytes, r.Length))
                    {
                        buffer = new byte[Math.Min(ChunkBytes, Math.Max(Alignment, r.Length))];
                    }
                    var watch = System.Diagnostics.Stopwatch.StartNew();
                    long start = file.Start();
                    for (long done = 0; done < r.Length;)
                    {
                        int n = (int)Math.Min(buffer.Length, r.Length - done);
                        ReadExactly(Handle(r.FilePath), buffer.AsSpan(0, n), r.Offset + done, t.Name);
                        file.Write(buffer.AsSpan(0, n));
                        done += n;
                    }
                    file.Point(t, start, r.Length);
                    if (profile != null)
                    {
                        profile.WriteSeconds += watch.Elapsed.TotalSeconds;
                    }
                }
                else if (_inlined.Contains(t) && t.RawData.Length >= InlineBytes)
                {
                    file.Append(t, t.RawData.Span);
                }
            }
        }

        /// <summary>The output's data file as it is written: each tensor appended 4 KiB aligned and pointed at where it went.</summary>
        private sealed class DataFile(Stream stream, string name, StreamingProfile? profile)
        {
            public Stream Stream => stream;

            /// <summary>Bytes written so far.</summary>
            public long Position { get; set; }

            /// <summary>The tensors pointed into this file.</summary>
            public HashSet<TensorProto> Written { get; } = new(ReferenceEqualityComparer.Instance);

            /// <summary>Pads to the next 4 KiB boundary and returns it (where the next tensor starts).</summary>
            public long Start()
            {
                long aligned = (Position + Alignment - 1) / Alignment * Alignment;
                if (aligned > Position)
                {
                    stream.Write(new byte[aligned - Position]);
                    Position = aligned;
                }
                return Position;
            }

            public void Write(ReadOnlySpan<byte> bytes)
            {
                stream.Write(bytes);
                Position += bytes.Length;
            }

            /// <summary>Makes <paramref name="t"/> an external tensor of this file at <paramref name="offset"/>.</summary>
            public void Point(TensorProto t, long offset, long length)
            {
                PointAt(t, name, offset, length);
                Written.Add(t);
            }

            /// <summary>Appends <paramref name="t"/>'s bytes (its in-memory data is dropped).</summary>
            public void Append(TensorProto t, ReadOnlySpan<byte> bytes)
            {
                var watch = System.Diagnostics.Stopwatch.StartNew();
                long start = Start();
                Write(bytes);
                Point(t, start, bytes.Length);
                if (profile != null)
                {
                    profile.WriteSeconds += watch.Elapsed.TotalSeconds;
                }
            }
        }

        private static void PointAt(TensorProto t, string dataName, long offset, long length)
        {
            t.ExternalData.Clear();
            t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = dataName });
            t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString(CultureInfo.InvariantCulture) });
            t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = length.ToString(CultureInfo.InvariantCulture) });
            t.DataLocation = TensorProto.Types.DataLocation.External;
            t.ClearRawData();
        }

        /// <summary>Appends each tensor (4 KiB aligned): float16 conversions in chunks, the rest copied; returns the clamped count.</summary>
        private long WriteFloat16Data(Stream stream, List<(TensorProto Tensor, ExternalDataRef Source, bool Half)> tensors, string dataName)
        {
            long position = 0, clamped = 0;
            byte[] buffer = new byte[ChunkBytes];
            var half = new Half[ChunkBytes / 4];
            foreach ((TensorProto t, ExternalDataRef r, bool toHalf) in tensors)
            {
                long aligned = (position + Alignment - 1) / Alignment * Alignment;
                if (aligned > position)
                {
                    stream.Write(new byte[aligned - position]);
                    position = aligned;
                }
                SafeFileHandle h = Handle(r.FilePath);
                long length = 0;
                for (long done = 0; done < r.Length;)
                {
                    var watch = System.Diagnostics.Stopwatch.StartNew();
                    int n = (int)Math.Min(buffer.Length, r.Length - done);
                    ReadExactly(h, buffer.AsSpan(0, n), r.Offset + done, t.Name);
                    double read = watch.Elapsed.TotalSeconds;
                    ReadOnlySpan<byte> output = buffer.AsSpan(0, n);
                    if (toHalf)
                    {
                        int count = n / 4;
                        clamped += Float16Kernels.ConvertSaturating(MemoryMarshal.Cast<byte, float>(buffer.AsSpan(0, count * 4)), half.AsSpan(0, count));
                        output = MemoryMarshal.AsBytes(half.AsSpan(0, count));
                    }
                    double converted = watch.Elapsed.TotalSeconds;
                    stream.Write(output);
                    if (profile != null)
                    {
                        profile.ReadSeconds += read;
                        profile.QuantizeSeconds += converted - read;
                        profile.WriteSeconds += watch.Elapsed.TotalSeconds - converted;
                    }
                    done += n;
                    length += output.Length;
                }
                t.ExternalData.Clear();
                t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = dataName });
                t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = position.ToString(CultureInfo.InvariantCulture) });
                t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = length.ToString(CultureInfo.InvariantCulture) });
                t.DataLocation = TensorProto.Types.DataLocation.External;
                t.ClearRawData();
                position += length;
            }
            return clamped;
        }

        private void CheckOutputIsNotAnInput(string full, string dataPath, string outputPath)
        {
            StringComparison cmp = OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
            var inputs = new List<string> { SafePath.RealPath(lazy.FullPath) };
            inputs.AddRange(lazy.ExternalTensors.Values.Select(r => r.FilePath));
            foreach (string candidate in new[] { SafePath.RealPath(full), SafePath.RealPath(dataPath) })
            {
                if (inputs.Any(i => string.Equals(i, candidate, cmp)))
                {
                    throw new CompressException(DiagnosticCodes.OutputIsSource, outputPath) { File = lazy.DisplayName };
                }
            }
        }

        private void CollectNames()
        {
            foreach ((GraphProto g, _) in ModelWalker.Graphs(_model))
            {
                _names.UnionWith(g.Input.Select(i => i.Name));
                _names.UnionWith(g.Initializer.Select(i => i.Name));
                foreach (NodeProto n in g.Node)
                {
                    _names.UnionWith(n.Output);
                    _names.Add(n.Name);
                }
            }
        }

        private string Unique(string name) => PassGraph.Unique(_names, name);

        /// <summary>
        /// Writes the chunked MatMuls' weights: a reader thread loads the next weight whole while this one is quantized
        /// and written (int8 weights over <see cref="WholeWeightLimit"/>: two chunked passes here). A non-finite weight
        /// throws and AtomicFile discards the partly written data file.
        /// </summary>
        private void WriteWeights(DataFile file, List<Weight> weights)
        {
            if (weights.Count == 0)
            {
                return;
            }
            if (int4 != null)
            {
                using var reader = new Prefetcher(this, weights);
                foreach ((Weight w, byte[]? data, int offset) in reader.Items())
                {
                    WriteInt4(w, file, data, offset);
                }
                return;
            }
            Stream stream = file.Stream;
            byte[]? buffer = null;
            byte[] codes = [];
            using var prefetch = new Prefetcher(this, weights);
            var wait = System.Diagnostics.Stopwatch.StartNew();
            foreach ((Weight w, byte[]? data, int offset) in prefetch.Items())
            {
                if (profile != null)
                {
                    profile.WaitSeconds += wait.Elapsed.TotalSeconds;
                }
                long start = file.Start();
                if (data != null)
                {
                    file.Position += QuantizeWhole(w, data.AsSpan(offset, w.K * w.N * 4), stream, ref codes);
                }
                else
                {
                    buffer ??= new byte[Math.Max(Alignment, ChunkBytes)];
                    w.Scales = ColumnScales(w, buffer);
                    file.Position += QuantizeInto(w, stream, buffer);
                }
                var q = new TensorProto { Name = Unique(w.Tensor.Name + "_quantized"), DataType = (int)(Encoding.Unsigned ? TensorProto.Types.DataType.Uint8 : TensorProto.Types.DataType.Int8) };
                q.Dims.Add(w.K);
                q.Dims.Add(w.N);
                file.Point(q, start, (long)w.K * w.N);
                w.QuantizedName = q.Name;
                _model.Graph.Initializer.Add(q);
                wait.Restart();
            }
        }

        /// <summary>
        /// Int4: reads the weight in chunks of whole K blocks (an even number of them, so packed zero points start on a
        /// byte), quantizes each chunk's blocks with <see cref="Int4WeightQuantizer.QuantizeBlocks"/> into the weight's
        /// packed [N, blocks, block/2] codes, scales and zero points, then appends those three tensors.
        /// </summary>
        private void WriteInt4(Weight w, DataFile file, byte[]? data, int offset)
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            int bs = int4!.BlockSize;
            int k = w.K, n = w.N;
            int blocks = (k + bs - 1) / bs;
            int half = bs / 2;
            int zpBytes = (blocks + 1) / 2;
            long rowBytes = (long)n * 4;
            var packed = new byte[(long)n * blocks * half];
            var scales = new float[(long)n * blocks];
            byte[]? zeros = int4.Symmetric ? null : new byte[(long)n * zpBytes];
            float maxError = 0;
            var gate = new object();
            var parallel = new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount };

            // Blocks run down K: each block of bs rows gives every column one scale, zero point and bs codes
            // ([N, blocks, bs/2] packed, like Int4WeightQuantizer.QuantizeBlocks on the transposed weight). Two
            // consecutive blocks share the zero points' bytes and nothing else, so runs of pairs of blocks go to the
            // cores (each with its own buffers; the output bytes do not depend on the order).
            void Rows(byte[] source, int byteOffset, int rows, long row0)
            {
                int bytes = (int)(rows * rowBytes);
                bool nonFinite = false;
                // Contiguous runs of pairs, one per core: neighbouring blocks' codes, scales and zero points share cache
                // lines in every column, so interleaved pairs would make the cores contend for them.
                int pairs = (rows + 2 * bs - 1) / (2 * bs);
                int parts = Math.Min(pairs, parallel.MaxDegreeOfParallelism);
                Parallel.For(0, parts, parallel, () => new Int4BlockBuffers(n, bs), (part, _, buffers) =>
                {
                    ReadOnlySpan<float> values = MemoryMarshal.Cast<byte, float>(source.AsSpan(byteOffset, bytes));
                    int first = (int)((long)pairs * part / parts), end = (int)((long)pairs * (part + 1) / parts);
                    int lastRow = Math.Min(rows, end * 2 * bs);
                    if (!TensorStats.AllFinite(values[(first * 2 * bs * n)..(lastRow * n)]))
                    {
                        Volatile.Write(ref nonFinite, true);
                        return buffers;
                    }
                    for (int r0 = first * 2 * bs; r0 < lastRow; r0 += bs)
                    {
                        int len = Math.Min(bs, rows - r0);
                        int b = (int)((row0 + r0) / bs);
                        byte[] codes = buffers.Codes;
                        buffers.MaxError = MathF.Max(buffers.MaxError, Int4Kernels.QuantizeColumnBlock(values.Slice(r0 * n, len * n), len, n,
                            int4.Symmetric, buffers.Scales, buffers.Zeros, codes.AsSpan(0, len * n), buffers.Scratch));
                        // A short last block is padded with zeros, whose code is the column's zero point.
                        for (int e = len; e < bs; e++)
                        {
                            Span<byte> padRow = codes.AsSpan(e * n, n);
                            for (int j = 0; j < n; j++)
                            {
                                padRow[j] = (byte)buffers.Zeros[j];
                            }
                        }
                        Int4Kernels.PackColumnBlock(codes.AsSpan(0, bs * n), bs, n, packed.AsSpan(b * half), blocks * half, buffers.PackScratch);
                        for (int j = 0; j < n; j++)
                        {
                            scales[(long)j * blocks + b] = buffers.Scales[j];
                            if (zeros != null)
                            {
                                byte zero = (byte)buffers.Zeros[j];
                                zeros[(long)j * zpBytes + b / 2] |= (byte)(b % 2 == 0 ? zero : zero << 4);
                            }
                        }
                    }
                    return buffers;
                }, buffers =>
                {
                    lock (gate)
                    {
                        maxError = MathF.Max(maxError, buffers.MaxError);
                    }
                });
                if (nonFinite)
                {
                    throw CompressException.ForFile(displayName, DiagnosticCodes.NonFiniteWeights, displayName, w.Tensor.Name);
                }
            }

            if (data != null)
            {
                Rows(data, offset, k, 0);
            }
            else
            {
                long unit = rowBytes * 2 * bs;
                int rowsPerChunk = (int)Math.Min(k, Math.Max(1, ChunkBytes / unit) * 2 * bs);
                byte[] buffer = new byte[Math.Max(Alignment, Math.Min((long)rowsPerChunk * rowBytes, (long)k * rowBytes))];
                long row0 = 0;
                foreach (int rows in Chunks(w, buffer, rowsPerChunk))
                {
                    Rows(buffer, 0, rows, row0);
                    row0 += rows;
                }
            }
            if (profile != null)
            {
                profile.QuantizeSeconds += watch.Elapsed.TotalSeconds;
            }
            w.MaxError = maxError;

            string baseName = Int4WeightQuantizer.QuantizedBaseName(w.Tensor.Name);
            var parts = new List<(string Name, int Type, byte[] Data, long[] Dims)>
            {
                (Unique(baseName), (int)TensorProto.Types.DataType.Uint8, packed, Int4WeightQuantizer.PackedDims(k, n, bs)),
                (Unique(baseName + "_scales"), (int)TensorProto.Types.DataType.Float, MemoryMarshal.AsBytes(scales.AsSpan()).ToArray(), [(long)n * blocks]),
            };
            if (zeros != null)
            {
                parts.Add((Unique(baseName + "_zero_points"), (int)TensorProto.Types.DataType.Uint8, zeros, [zeros.Length]));
            }
            foreach ((string name, int type, byte[] bytes, long[] dims) in parts)
            {
                var t = new TensorProto { Name = name, DataType = type };
                t.Dims.AddRange(dims);
                long start = file.Start();
                file.Write(bytes);
                file.Point(t, start, bytes.Length);
                _model.Graph.Initializer.Add(t);
            }
            w.QuantizedName = parts[0].Name;
            w.ScaleName = parts[1].Name;
            w.Int4ZeroPointName = zeros == null ? null : parts[2].Name;
            Int4QuantizedBytes += packed.Length + (long)scales.Length * 4 + (zeros?.Length ?? 0);
        }

        /// <summary>
        /// Reads the float data of the batch's weights into <paramref name="buffer"/> at their offsets (called on the
        /// reader thread); weights that lie back to back in one file are read with one call.
        /// </summary>
        internal void ReadBatch(List<(Weight W, int Offset)> batch, byte[] buffer)
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            for (int i = 0; i < batch.Count;)
            {
                (Weight w, int offset) = batch[i];
                int bytes = w.K * w.N * 4;
                ExternalDataRef? r = lazy.Resolve(w.Tensor);
                if (r == null)
                {
                    TensorUtil.ToRawBytes(w.Tensor).AsSpan(0, bytes).CopyTo(buffer.AsSpan(offset));
                    i++;
                    continue;
                }
                int j = i + 1;
                long end = r.Offset + bytes;
                int length = bytes;
                while (j < batch.Count && lazy.Resolve(batch[j].W.Tensor) is { } next && next.FilePath == r.FilePath && next.Offset == end)
                {
                    int more = batch[j].W.K * batch[j].W.N * 4;
                    end += more;
                    length += more;
                    j++;
                }
                ReadExactly(Handle(r.FilePath), buffer.AsSpan(offset, length), r.Offset, w.Tensor.Name);
                i = j;
            }
            if (profile != null)
            {
                lock (profile)
                {
                    profile.ReadSeconds += watch.Elapsed.TotalSeconds;
                }
            }
        }

        /// <summary>Even row count of a block of about <see cref="BlockBytes"/> (pairs of K rows never straddle two blocks).</summary>
        private static int BlockRows(int n) => Math.Max(2, BlockBytes / Math.Max(1, n * 4) & ~1);

        /// <summary>
        /// One whole weight in memory: finite check, per-column max |w| (and the same-sign pair bound), scales, then
        /// quantize, pair fix-ups and the max error block by block, all through the vector kernels; the codes are
        /// written in one piece. Returns the bytes written.
        /// </summary>
        private long QuantizeWhole(Weight w, ReadOnlySpan<byte> data, Stream stream, ref byte[] codes)
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            int k = w.K, n = w.N;
            int count = checked(k * n);
            EncodingLevels e = Encoding;
            ReadOnlySpan<float> values = MemoryMarshal.Cast<byte, float>(data);
            int block = BlockRows(n);
            var maxAbs = new float[n];
            var blockMax = new float[n];
            float[]? maxPair = e.PairBounded ? new float[n] : null;
            for (int r0 = 0; r0 < k; r0 += block)
            {
                int rows = Math.Min(block, k - r0);
                ReadOnlySpan<float> b = values.Slice(r0 * n, rows * n);
                if (!TensorStats.AllFinite(b))
                {
                    throw CompressException.ForFile(displayName, DiagnosticCodes.NonFiniteWeights, displayName, w.Tensor.Name);
                }
                TensorStats.ColumnMaxAbs(b, rows, n, blockMax);
                for (int j = 0; j < n; j++)
                {
                    maxAbs[j] = MathF.Max(maxAbs[j], blockMax[j]);
                }
                if (maxPair != null)
                {
                    for (int r = 0; r + 1 < rows; r += 2)
                    {
                        TensorStats.AccumulateSameSignPairMax(b.Slice(r * n, n), b.Slice((r + 1) * n, n), maxPair);
                    }
                }
            }
            w.Scales = ScalesFrom(maxAbs, maxPair);

            if (codes.Length < count)
            {
                codes = GC.AllocateUninitializedArray<byte>(count);
            }
            var zeros = new byte[n];
            Array.Fill(zeros, e.Zero);
            var zeroPoints = new float[n];
            Array.Fill(zeroPoints, e.Zero);
            float maxError = 0;
            for (int r0 = 0; r0 < k; r0 += block)
            {
                int rows = Math.Min(block, k - r0);
                ReadOnlySpan<float> b = values.Slice(r0 * n, rows * n);
                Span<byte> dest = codes.AsSpan(r0 * n, rows * n);
                QuantizeBlock(w, b, rows, zeros, dest);
                maxError = MathF.Max(maxError, QuantizationKernels.MaxAbsErrorPerColumn(b, rows, n, w.Scales, zeroPoints, dest, e.Unsigned));
            }
            w.MaxError = maxError;
            double quantized = watch.Elapsed.TotalSeconds;
            stream.Write(codes, 0, count);
            if (profile != null)
            {
                profile.QuantizeSeconds += quantized;
                profile.WriteSeconds += watch.Elapsed.TotalSeconds - quantized;
            }
            return count;
        }

        /// <summary>Quantizes rows (an even count but for the last block) with the weight's scales; pair-bounded codes get their rare fix-ups.</summary>
        private void QuantizeBlock(Weight w, ReadOnlySpan<float> values, int rows, byte[] zeros, Span<byte> dest)
        {
            (_, byte min, byte max, bool unsigned, _) = Encoding;
            int n = w.N;
            if (unsigned)
            {
                QuantizationKernels.QuantizePerColumn(values, rows, n, w.Scales, zeros, dest, min, max);
                return;
            }
            Span<sbyte> signed = MemoryMarshal.Cast<byte, sbyte>(dest);
            QuantizationKernels.QuantizePerColumn(values, rows, n, w.Scales, MemoryMarshal.Cast<byte, sbyte>(zeros.AsSpan()), signed, (sbyte)min, (sbyte)max);
            if (!Encoding.PairBounded)
            {
                return;
            }
            for (int r = 0; r + 1 < rows; r += 2)
            {
                Span<sbyte> pair = signed.Slice(r * n, 2 * n);
                if (QuantizationKernels.AnySameSignPairOver(pair[..n], pair[n..], AdjacentPairBound.MaxPairLevels))
                {
                    ReadOnlySpan<float> v = values.Slice(r * n, 2 * n);
                    for (int j = 0; j < n; j++)
                    {
                        AdjacentPairBound.Enforce(v, w.Scales[j], pair, j, 2, n);
                    }
                }
            }
        }

        /// <summary>Per-column scales from max |w| (and the same-sign pair maxima for the pair-bounded encoding), like the in-memory pass.</summary>
        private float[] ScalesFrom(float[] maxAbs, float[]? maxPair)
        {
            var scales = new float[maxAbs.Length];
            float levels = Encoding.LevelsPerSide;
            for (int j = 0; j < scales.Length; j++)
            {
                float scale = maxPair != null ? AdjacentPairBound.Scale(maxAbs[j], maxPair[j]) : maxAbs[j] / levels;
                scales[j] = scale >= 1e-30f && float.IsFinite(scale) ? scale : 1f;
            }
            return scales;
        }

        /// <summary>Pass 1: per-column max |w| (and the finite check), reading row chunks.</summary>
        private float[] ColumnScales(Weight w, byte[] buffer)
        {
            var maxAbs = new float[w.N];
            var chunkMax = new float[w.N];
            var maxPair = new float[w.N];
            foreach (int rows in Chunks(w, buffer, pairs: Encoding.PairBounded))
            {
                ReadOnlySpan<float> values = MemoryMarshal.Cast<byte, float>(buffer.AsSpan(0, rows * w.N * 4));
                if (!TensorStats.AllFinite(values))
                {
                    throw new CompressException(DiagnosticCodes.NonFiniteWeights, displayName, w.Tensor.Name) { File = displayName };
                }
                TensorStats.ColumnMaxAbs(values, rows, w.N, chunkMax);
                for (int j = 0; j < w.N; j++)
                {
                    maxAbs[j] = MathF.Max(maxAbs[j], chunkMax[j]);
                }
                if (Encoding.PairBounded)
                {
                    // Chunks hold an even number of rows, so K pairs (rows 2i, 2i + 1) never straddle two chunks.
                    for (int r = 0; r + 1 < rows; r += 2)
                    {
                        TensorStats.AccumulateSameSignPairMax(values.Slice(r * w.N, w.N), values.Slice((r + 1) * w.N, w.N), maxPair);
                    }
                }
            }
            return ScalesFrom(maxAbs, Encoding.PairBounded ? maxPair : null);
        }

        /// <summary>Pass 2: quantize row chunks per column and write them ([K, N] row-major, like the float weight).</summary>
        private long QuantizeInto(Weight w, Stream stream, byte[] buffer)
        {
            (byte zero, _, _, bool unsigned, _) = Encoding;
            var zeros = new byte[w.N];
            Array.Fill(zeros, zero);
            var zeroPoints = new float[w.N];
            Array.Fill(zeroPoints, zero);
            byte[] q = new byte[Math.Max(1, buffer.Length / 4)];
            long written = 0;
            float maxError = 0;
            foreach (int rows in Chunks(w, buffer, pairs: Encoding.PairBounded))
            {
                int count = rows * w.N;
                ReadOnlySpan<float> values = MemoryMarshal.Cast<byte, float>(buffer.AsSpan(0, count * 4));
                Span<byte> dest = q.AsSpan(0, count);
                QuantizeBlock(w, values, rows, zeros, dest);
                maxError = MathF.Max(maxError, QuantizationKernels.MaxAbsErrorPerColumn(values, rows, w.N, w.Scales, zeroPoints, dest, unsigned));
                stream.Write(dest);
                written += count;
            }
            w.MaxError = maxError;
            return written;
        }

        /// <summary>Fills <paramref name="buffer"/> with successive whole rows of the weight's float data.</summary>
        /// <param name="pairs">Chunks of an even number of rows (but the last), so that K pairs stay in one chunk.</param>
        private IEnumerable<int> Chunks(Weight w, byte[] buffer, int maxRows = int.MaxValue, bool pairs = false)
        {
            long rowBytes = (long)w.N * 4;
            if (rowBytes > buffer.Length)
            {
                throw new CompressException(DiagnosticCodes.ModelInvalid, displayName, $"weight '{w.Tensor.Name}' has rows of {rowBytes} bytes, more than the streaming buffer") { File = displayName };
            }
            int rowsPerChunk = (int)Math.Min(maxRows, buffer.Length / rowBytes);
            if (pairs && rowsPerChunk % 2 == 1)
            {
                rowsPerChunk--;
                if (rowsPerChunk == 0)
                {
                    throw new CompressException(DiagnosticCodes.ModelInvalid, displayName, $"weight '{w.Tensor.Name}' has rows of {rowBytes} bytes; the pair-bounded int8 encoding streams two rows at a time, more than the streaming buffer") { File = displayName };
                }
            }
            ExternalDataRef? r = lazy.Resolve(w.Tensor);
            byte[]? inline = null;
            if (r == null)
            {
                inline = TensorUtil.ToRawBytes(w.Tensor);
            }
            for (long row = 0; row < w.K; row += rowsPerChunk)
            {
                int rows = (int)Math.Min(rowsPerChunk, w.K - row);
                int bytes = (int)(rows * rowBytes);
                if (r != null)
                {
                    ReadExactly(Handle(r.FilePath), buffer.AsSpan(0, bytes), r.Offset + row * rowBytes, w.Tensor.Name);
                }
                else
                {
                    inline.AsSpan((int)(row * rowBytes), bytes).CopyTo(buffer);
                }
                yield return rows;
            }
        }

        private SafeFileHandle Handle(string file)
        {
            lock (_handles)
            {
                return OpenHandle(file);
            }
        }

        private SafeFileHandle OpenHandle(string file)
        {
            if (!_handles.TryGetValue(file, out SafeFileHandle? h))
            {
                try
                {
                    h = File.OpenHandle(file, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.SequentialScan);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    throw new CompressException(e, DiagnosticCodes.ExternalDataUnreadable, displayName, "", file, e.Message) { File = displayName };
                }
                _handles[file] = h;
            }
            return h;
        }

        private void ReadExactly(SafeFileHandle h, Span<byte> destination, long offset, string tensor)
        {
            while (destination.Length > 0)
            {
                int n = RandomAccess.Read(h, destination, offset);
                if (n <= 0)
                {
                    // The file shrank after it was checked.
                    throw new CompressException(DiagnosticCodes.ExternalDataUnreadable, displayName, tensor, "", "the file ended early") { File = displayName };
                }
                destination = destination[n..];
                offset += n;
            }
        }

        /// <summary>Replaces the chunked MatMuls by the scheme's node, reading their codes, scales and zero points.</summary>
        private void Rewrite(List<Weight> weights)
        {
            if (weights.Count == 0)
            {
                return;
            }
            GraphProto graph = _model.Graph;
            if (int4 != null)
            {
                RewriteInt4(weights);
                return;
            }
            foreach (Weight w in weights)
            {
                w.ScaleName = Unique(w.Tensor.Name + "_scale");
                AddInitializer(TensorUtil.FromFloats(w.ScaleName, w.Scales, w.N));
                // Unsigned codes read the zero-point tensor taken when the MatMul was lowered (shared per length, like
                // the in-memory pass's); signed codes use DynamicQuantizeMatMul's default zero point 0.
                if (_model.IrVersion < 4)
                {
                    AddInputDeclaration(graph.Initializer.First(t => t.Name == w.QuantizedName));
                }
                foreach (NodeProto node in w.Users)
                {
                    var q = new NodeProto
                    {
                        OpType = Int8DynamicQuantizer.QuantizedOpType,
                        Domain = OnnxNames.MicrosoftDomain,
                        Name = node.Name.Length > 0 ? node.Name : Unique(OnnxNames.Label(node) + "_quant"),
                        DocString = node.DocString,
                    };
                    q.Input.Add(node.Input[0]);
                    q.Input.Add(w.QuantizedName);
                    q.Input.Add(w.ScaleName);
                    if (w.ZeroPointName.Length > 0)
                    {
                        q.Input.Add(w.ZeroPointName);
                    }
                    q.Output.Add(node.Output[0]);
                    int index = graph.Node.IndexOf(node);
                    graph.Node[index] = q;
                }
                RemoveFloatWeight(w);
            }
            EnsureMicrosoftOpset();
        }

        private void RewriteInt4(List<Weight> weights)
        {
            GraphProto graph = _model.Graph;
            foreach (Weight w in weights)
            {
                if (_model.IrVersion < 4)
                {
                    foreach (string? name in new[] { w.QuantizedName, w.ScaleName, w.Int4ZeroPointName })
                    {
                        if (name != null)
                        {
                            AddInputDeclaration(graph.Initializer.First(t => t.Name == name));
                        }
                    }
                }
                foreach (NodeProto node in w.Users)
                {
                    string name = node.Name.Length > 0 ? node.Name : Unique(Int4WeightQuantizer.NodeBaseName(OnnxNames.Label(node)));
                    NodeProto q = Int4WeightQuantizer.MatMulNBitsNode(name, node.Input[0], w.QuantizedName, w.ScaleName, w.Int4ZeroPointName,
                        node.Output[0], w.K, w.N, int4!);
                    if (w.Int4ZeroPointName == null)
                    {
                        q.Input.RemoveAt(3);
                    }
                    graph.Node[graph.Node.IndexOf(node)] = q;
                }
                RemoveFloatWeight(w);
            }
            EnsureMicrosoftOpset();
        }

        private void RemoveFloatWeight(Weight w)
        {
            GraphProto graph = _model.Graph;
            graph.Initializer.Remove(w.Tensor);
            for (int i = graph.Input.Count - 1; i >= 0; i--)
            {
                if (graph.Input[i].Name == w.Tensor.Name)
                {
                    graph.Input.RemoveAt(i);
                }
            }
            PassGraph.RemoveValueInfo(graph, w.Tensor.Name);
        }

        private void EnsureMicrosoftOpset() => PassGraph.EnsureOpset(_model, OnnxNames.MicrosoftDomain, 1);

        private void AddInitializer(TensorProto t)
        {
            _model.Graph.Initializer.Add(t);
            if (_model.IrVersion < 4)
            {
                AddInputDeclaration(t);
            }
        }

        private void AddInputDeclaration(TensorProto t) => _model.Graph.Input.Add(PassGraph.ValueInfo(t.Name, t.DataType, t.Dims));

        private static void DeleteStale(string path)
        {
            if (File.Exists(path))
            {
                File.Delete(path);
            }
        }
    }

    /// <summary>
    /// Reads whole int8 weights ahead on its own thread (weights over <see cref="WholeWeightBytes"/> are handed over
    /// without data, for the chunked two-pass path). Two buffers circulate: one being read, one being quantized.
    /// </summary>
    private sealed class Prefetcher : IDisposable
    {
        /// <summary>Consecutive small weights are read together into one buffer of up to this many bytes (one hand-over per batch).</summary>
        private const long BatchBytes = 64L << 20;

        private readonly System.Collections.Concurrent.BlockingCollection<Batch> _ready = new(boundedCapacity: 1);
        private readonly System.Collections.Concurrent.BlockingCollection<byte[]> _free = new(boundedCapacity: 2);
        private readonly CancellationTokenSource _cancel = new();
        private readonly Thread _thread;
        private Exception? _error;

        /// <summary>Weights (each at an offset of the buffer; the buffer is null for weights read in chunks by the consumer).</summary>
        private sealed record Batch(List<(Weight W, int Offset)> Weights, byte[]? Buffer);

        public Prefetcher(Writer writer, List<Weight> weights)
        {
            _free.Add([]);
            _free.Add([]);
            _thread = new Thread(() => Run(writer, weights)) { IsBackground = true, Name = "CompressOnBuild streaming reader" };
            _thread.Start();
        }

        private static long Bytes(Weight w) => (long)w.K * w.N * 4;

        private void Run(Writer writer, List<Weight> weights)
        {
            try
            {
                for (int i = 0; i < weights.Count;)
                {
                    if (Bytes(weights[i]) > WholeWeightLimit)
                    {
                        _ready.Add(new Batch([(weights[i], 0)], null), _cancel.Token);
                        i++;
                        continue;
                    }
                    var batch = new List<(Weight W, int Offset)>();
                    long size = 0;
                    for (; i < weights.Count && Bytes(weights[i]) <= WholeWeightLimit && (size == 0 || size + Bytes(weights[i]) <= BatchBytes); i++)
                    {
                        batch.Add((weights[i], (int)size));
                        size += Bytes(weights[i]);
                    }
                    byte[] buffer = _free.Take(_cancel.Token);
                    if (buffer.Length < size)
                    {
                        buffer = GC.AllocateUninitializedArray<byte>((int)Math.Max(size, Math.Min(BatchBytes, WholeWeightBytes)));
                    }
                    writer.ReadBatch(batch, buffer);
                    _ready.Add(new Batch(batch, buffer), _cancel.Token);
                }
            }
            catch (OperationCanceledException)
            {
            }
            catch (Exception e)
            {
                _error = e;
            }
            finally
            {
                _ready.CompleteAdding();
            }
        }

        /// <summary>
        /// The weights in order, each with its buffer and offset (null buffer: read it in chunks); a batch's buffer
        /// goes back to the reader when the next batch is asked for. Rethrows the reader's error.
        /// </summary>
        public IEnumerable<(Weight W, byte[]? Data, int Offset)> Items()
        {
            foreach (Batch batch in _ready.GetConsumingEnumerable())
            {
                foreach ((Weight w, int offset) in batch.Weights)
                {
                    yield return (w, batch.Buffer, offset);
                }
                if (batch.Buffer != null)
                {
                    _free.Add(batch.Buffer);
                }
            }
            if (_error != null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(_error);
            }
        }

        public void Dispose()
        {
            _cancel.Cancel();
            _thread.Join();
            _cancel.Dispose();
            _ready.Dispose();
            _free.Dispose();
        }
    }
}

/// <summary>
/// Where the streaming path spent its time (benchmarks): seconds the reader spent reading weights (on its own thread,
/// overlapping the rest), quantizing (statistics, codes, errors), writing codes and copying other tensors, and the
/// final flush of the data file to disk.
/// </summary>
public sealed class StreamingProfile
{
    public double ReadSeconds { get; set; }

    public double QuantizeSeconds { get; set; }

    public double WriteSeconds { get; set; }

    public double FlushSeconds { get; set; }

    /// <summary>Before the data file: checks, finding the weights (the lazy load is the caller's).</summary>
    public double SetupSeconds { get; set; }

    /// <summary>The main thread waiting for the reader.</summary>
    public double WaitSeconds { get; set; }

    /// <summary>After the data file: rewriting the graph and writing the small .onnx.</summary>
    public double FinishSeconds { get; set; }
}
