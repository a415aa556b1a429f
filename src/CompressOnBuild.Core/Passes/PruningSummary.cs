using System.IO.Compression;
using CompressOnBuild.Onnx;
using Google.Protobuf;

namespace CompressOnBuild.Core.Passes;

/// <summary>One layer the pruner changed.</summary>
/// <param name="Node">Node name (or first output when unnamed).</param>
/// <param name="OpType">MatMul, Gemm or Conv.</param>
/// <param name="Weight">The weight tensor it pruned.</param>
/// <param name="ElementsBefore">Weight elements before (Channels removes elements; the other methods only zero them).</param>
/// <param name="NonzerosBefore">Nonzero weights before.</param>
/// <param name="ElementsAfter">Weight elements after.</param>
/// <param name="NonzerosAfter">Nonzero weights after.</param>
/// <param name="OutputsBefore">Output neurons/channels before (Channels).</param>
/// <param name="OutputsAfter">Output neurons/channels after (Channels; equal to before otherwise).</param>
public sealed record PrunedLayer(string Node, string OpType, string Weight, long ElementsBefore, long NonzerosBefore, long ElementsAfter, long NonzerosAfter, int OutputsBefore, int OutputsAfter)
{
    /// <summary>Fraction of the original elements that are zero or gone after pruning.</summary>
    public double Sparsity => ElementsBefore == 0 ? 0 : 1.0 - (double)NonzerosAfter / ElementsBefore;
}

/// <summary>What <see cref="Pruner.Apply"/> did.</summary>
public sealed class PruningSummary
{
    public required string ModelDisplayName { get; init; }

    public required string Method { get; init; }

    public IReadOnlyList<PrunedLayer> Pruned { get; init; } = [];

    public IReadOnlyList<SkippedNode> Skipped { get; init; } = [];

    /// <summary>
    /// The fraction of the model's prunable weights the options asked to remove (<see cref="PruningOptions.RequestedSparsity"/>);
    /// null for Channels and None.
    /// </summary>
    public double? RequestedSparsity { get; init; }

    /// <summary>
    /// Weights of every MatMul/Gemm/Conv whose weight pruning could touch (constant float, main graph, not shared),
    /// before pruning, including the layers kept dense (output layers, excluded, too small): the denominator of
    /// <see cref="AchievedSparsity"/>.
    /// </summary>
    public long PrunableWeights { get; init; }

    /// <summary>Nonzero weights of those layers after pruning (Channels: of what is left of them).</summary>
    public long PrunableNonzerosAfter { get; init; }

    /// <summary>Fraction of <see cref="PrunableWeights"/> that is zero or gone after pruning: the sparsity of the whole model.</summary>
    public double AchievedSparsity => PrunableWeights == 0 ? 0 : 1.0 - (double)PrunableNonzerosAfter / PrunableWeights;

    /// <summary>The sparsity each pruned layer was asked for (unstructured methods: the requested sparsity raised so that the
    /// layers kept dense by the tool are made up for, capped; see <see cref="Pruner"/>); null when not applicable.</summary>
    public double? LayerSparsity { get; init; }

    /// <summary>Why the achieved sparsity differs from the requested one (layers kept dense and their weights, caps).</summary>
    public IReadOnlyList<string> SparsityNotes { get; init; } = [];

    /// <summary>Requested and achieved sparsity differ by more than 10 points (the CLI warns, CMPR0220).</summary>
    public bool SparsityDiffers => RequestedSparsity is double r && Math.Abs(r - AchievedSparsity) > 0.10;

    /// <summary>Channels: the fraction of output channels/neurons asked to go from every layer; null for the other methods.</summary>
    public double? RequestedChannelFraction { get; init; }

    /// <summary>Channels: output channels/neurons of every MatMul/Gemm/Conv with a constant float weight (the layers left whole included), before.</summary>
    public long ChannelsBefore { get; init; }

    /// <summary>Channels: how many of those were removed.</summary>
    public long ChannelsRemoved { get; init; }

    /// <summary>Fraction of <see cref="ChannelsBefore"/> that was removed.</summary>
    public double ChannelFractionRemoved => ChannelsBefore == 0 ? 0 : (double)ChannelsRemoved / ChannelsBefore;

    /// <summary>Channels removed far fewer channels than asked (more than 10 points short over the whole model; the CLI warns, CMPR0226).</summary>
    public bool ChannelsShortfall => RequestedChannelFraction is double r && r - ChannelFractionRemoved > 0.10;

    /// <summary>Nothing was pruned (no prunable layer; the CLI may warn).</summary>
    public bool NothingPruned => Pruned.Count == 0;

    /// <summary>Nonzero float weights of MatMul/Gemm/Conv layers (pruned or not) plus their biases, before.</summary>
    public long ParametersBefore { get; init; }

    /// <summary>The same count after pruning.</summary>
    public long ParametersAfter { get; init; }

    /// <summary>
    /// Multiply-adds x 2 of every MatMul/Gemm/Conv per input sample (per row for MatMul/Gemm; Conv output positions
    /// from a small shape propagation), counting only nonzero weights: for unstructured and N:M sparsity this is
    /// what a sparse kernel could save, not what ORT's dense kernels run.
    /// </summary>
    public long FlopsBefore { get; init; }

    public long FlopsAfter { get; init; }

    /// <summary>False when some Conv output size was unknown and counted as one position.</summary>
    public bool FlopsExact { get; init; } = true;

    /// <summary>Serialized model size before.</summary>
    public long ModelBytesBefore { get; init; }

    public long ModelBytesAfter { get; init; }

    /// <summary>Size of a zip (Deflate, smallest size) holding only the serialized model, before.</summary>
    public long ZipBytesBefore { get; init; }

    /// <summary>The same after: unstructured zeros pay off here (.zip/.apk/.nupkg), not in the .onnx file.</summary>
    public long ZipBytesAfter { get; init; }

    /// <summary>With an activation source: layers whose bias was corrected (unstructured) or whose consumer was refit by least squares (Channels).</summary>
    public IReadOnlyList<string> Reconstructed { get; init; } = [];

    /// <summary>
    /// How the per-layer sparsities were chosen: "sensitivity" (from measured harm, <see cref="Sensitivity"/> holds the
    /// curves and choices), "uniform" (every pruned layer at <see cref="LayerSparsity"/>), or null
    /// (N:M, Global, Channels, None: their own rules).
    /// </summary>
    public string? Allocation { get; init; }

    /// <summary>Sensitivity allocation: every layer's measured harm curve and chosen sparsity; null otherwise.</summary>
    public SensitivityAnalysis? Sensitivity { get; init; }

    public double ZipRatio => ZipBytesBefore == 0 ? 1.0 : (double)ZipBytesAfter / ZipBytesBefore;

    /// <summary>Bytes of a zip archive (Deflate, <see cref="CompressionLevel.SmallestSize"/>) holding the serialized model.</summary>
    public static long ZipBytes(ModelProto model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return ZipBytes(model.ToByteArray());
    }

    /// <inheritdoc cref="ZipBytes(ModelProto)"/>
    public static long ZipBytes(byte[] serialized)
    {
        ArgumentNullException.ThrowIfNull(serialized);
        using var stream = new MemoryStream();
        using (var zip = new ZipArchive(stream, ZipArchiveMode.Create, leaveOpen: true))
        {
            ZipArchiveEntry entry = zip.CreateEntry("model.onnx", CompressionLevel.SmallestSize);
            using Stream s = entry.Open();
            s.Write(serialized);
        }
        return stream.Length;
    }
}
