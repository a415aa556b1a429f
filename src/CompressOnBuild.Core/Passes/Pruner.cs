using System.Globalization;
using CompressOnBuild.Onnx;
using Google.Protobuf;

namespace CompressOnBuild.Core.Passes;

/// <summary>
/// Values of one intermediate float tensor over all calibration samples, concatenated along the first (batch) axis:
/// <paramref name="Shape"/>[0] counts the rows of every run together; the rest is the tensor's own shape.
/// </summary>
public sealed record Activation(float[] Data, long[] Shape)
{
    /// <summary>
    /// For an activation laid out [batch, tokens, ...] on data with an attention mask of [batch, tokens]: one value per
    /// (sample, token) row, the mask (0 at padding positions), so a layer's statistics can leave the padding out; null
    /// otherwise.
    /// </summary>
    public float[]? RowMask { get; init; }
}

/// <summary>
/// Supplies calibration activations: given the unchanged model and the names of intermediate float tensors (inputs
/// of the layers to prune, always the same calibration samples for every name), returns each tensor's values.
/// CompressOnBuild.Validation's ActivationCollector provides one.
/// </summary>
public delegate IReadOnlyDictionary<string, Activation> ActivationSource(ModelProto originalModel, IReadOnlyList<string> tensorNames);

/// <summary>
/// Weight pruning of the main graph's MatMul, Gemm and Conv layers whose weights are constant float32 tensors
/// (initializers, Constants, or Reshapes of those). Biases are never pruned.
/// <list type="bullet">
/// <item>Magnitude:s, Global:s, Sensitivity:s (per-layer sparsities chosen from measured harm, see
/// <see cref="SensitivityPruner"/>) and NofM:n:m set weights to zero. The graph keeps its shape; ONNX Runtime still runs
/// dense kernels, so the gain is in a compressed artifact (zip/apk/nupkg: runs of zeros deflate well) and, after
/// int8 quantization (zero maps exactly to the zero point), in both. <see cref="PruningSummary"/> reports zip
/// sizes before and after so this is measurable.</item>
/// <item>Channels:f removes output neurons/channels and the matching inputs of their consumer (see
/// <see cref="ChannelPruner"/>), which makes the model smaller and faster in ORT.</item>
/// </list>
/// Skipped (listed in <see cref="PruningSummary.Skipped"/>, never an error): layers inside subgraphs, weights
/// shared with another node or visible outside the main graph's nodes, weights that callers may override at run
/// time, weights below <see cref="PruningOptions.MinimumWeightElements"/>, and for Channels layers whose outputs
/// cannot be followed to exactly one consumer. Errors: CMPR0003 for bad options, CMPR0103 for a model without a
/// graph, CMPR0202 for NaN/infinite weights (checked before anything changes).
/// </summary>
public static class Pruner
{
    /// <summary>Prunes <paramref name="model"/> in place (the caller passes a copy) and reports what it did.</summary>
    /// <param name="activations">
    /// Optional calibration activations of the layers' inputs. Magnitude/Global/NofM then rank weights by
    /// |w| x RMS of their input feature (activation-aware magnitude, as in Wanda) and add the mean output shift of
    /// the removed weights to the layer's bias (bias correction, opt-in) when it has a constant bias; Channels refits the
    /// consumer by least squares. Null: plain |w| ranking, no refit.
    /// </param>
    /// <param name="harm">
    /// Measures the harm of the model with one layer pruned; called layers x grid points times on
    /// <paramref name="model"/> itself (the layer is restored after each call). Required by Sensitivity (CMPR0003 without
    /// it); with Magnitude and SparseGPT:&lt;s&gt; (unless <see cref="PruningOptions.Allocation"/> is Uniform) it turns on
    /// the per-layer allocation by measured harm (<see cref="SensitivityPruner.ChooseSparsities"/>); null: uniform.
    /// </param>
    public static PruningSummary Apply(ModelProto model, PruningOptions options, string displayName, ActivationSource? activations = null, HarmMeasure? harm = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(displayName);
        options.Validate(displayName);
        if (options.Method == PruningMethod.Sensitivity && harm == null)
        {
            throw CompressException.ForFile(displayName, DiagnosticCodes.InvalidOption, displayName, "Pruning", options.ToString(),
                "Sensitivity pruning measures each layer's harm on data: give CalibrationData (or ValidationData, whose inputs are used)");
        }
        if (options.Method == PruningMethod.SparseGpt && activations == null)
        {
            throw CompressException.ForFile(displayName, DiagnosticCodes.InvalidOption, displayName, "Pruning", options.ToString(),
                "SparseGPT updates the surviving weights from the layers' inputs on data: give CalibrationData (Magnitude needs no data)");
        }
        if (model.Graph == null)
        {
            throw CompressException.ForFile(displayName, DiagnosticCodes.ModelInvalid, displayName, "it has no graph");
        }
        byte[] beforeBytes = model.ToByteArray();
        (long paramsBefore, long flopsBefore, bool exactBefore) = PrunableLayers.Measure(model, displayName);
        if (options.Method == PruningMethod.None)
        {
            long zip = PruningSummary.ZipBytes(beforeBytes);
            return new PruningSummary
            {
                ModelDisplayName = displayName, Method = options.ToString(),
                ParametersBefore = paramsBefore, ParametersAfter = paramsBefore, FlopsBefore = flopsBefore, FlopsAfter = flopsBefore, FlopsExact = exactBefore,
                ModelBytesBefore = beforeBytes.Length, ModelBytesAfter = beforeBytes.Length, ZipBytesBefore = zip, ZipBytesAfter = zip,
            };
        }

        var skipped = new List<SkippedNode>();
        var pruned = new List<PrunedLayer>();
        var reconstructed = new List<string>();
        var notes = new List<string>();
        SensitivityAnalysis? sensitivity = null;
        double? layerSparsity = null;
        string? allocation = options.Method == PruningMethod.Sensitivity ? "sensitivity" : null;
        var g = new PassGraph(model);
        // The model's prunable weights: every layer pruning could touch, including those it will keep dense. The
        // requested sparsity is a fraction of these, and the output-layer rule looks at all of them (not at the
        // layers left after NodesToExclude).
        List<PrunableLayer> every = PrunableLayers.Find(g, options, displayName, [], everyLayer: true);
        long prunableWeights = every.Sum(l => (long)l.Data.Length);
        List<PrunableLayer> layers = PrunableLayers.Find(g, options, displayName, skipped);
        var excludedLabels = new HashSet<string>(options.ExcludedNodes, StringComparer.Ordinal);
        if (options.Method == PruningMethod.Channels)
        {
            ChannelPruner.Run(g, layers, options, displayName, activations, pruned, skipped, reconstructed);
        }
        else
        {
            // Magnitude and SparseGPT:<s> with a harm measure: per-layer sparsities from measured harm. The output layers
            // are then measured like the others: how much of them goes is the measurement's call, not a rule's.
            bool measured = (options.AllocatesBySensitivity && harm != null) || options.Method == PruningMethod.Sensitivity;
            allocation = measured || options.Method == PruningMethod.Sensitivity ? "sensitivity" : options.Method is PruningMethod.Magnitude or PruningMethod.SparseGpt && !options.IsNofM ? "uniform" : null;
            if (options.KeepOutputLayers && !measured)
            {
                var outputNodes = new HashSet<NodeProto>(PrunableLayers.OutputLayers(g, every).Select(l => l.Node), ReferenceEqualityComparer.Instance);
                foreach (PrunableLayer last in layers.Where(l => outputNodes.Contains(l.Node)).ToList())
                {
                    layers.Remove(last);
                    skipped.Add(new SkippedNode(last.Label, last.Node.OpType, "no other prunable layer follows it (output layer); kept dense because KeepOutputLayers is on"));
                }
                List<PrunableLayer> kept = every.Where(l => outputNodes.Contains(l.Node) && !excludedLabels.Contains(l.Label) && l.Data.Length >= options.MinimumWeightElements).ToList();
                if (kept.Count > 0)
                {
                    notes.Add(Note($"output layer(s) {Labels(kept)} kept dense (KeepOutputLayers)", kept, prunableWeights));
                }
            }
            List<PrunableLayer> excludedLayers = every.Where(l => excludedLabels.Contains(l.Label)).ToList();
            if (excludedLayers.Count > 0)
            {
                notes.Add(Note($"layer(s) {Labels(excludedLayers)} excluded (NodesToExclude)", excludedLayers, prunableWeights));
            }
            List<PrunableLayer> small = every.Where(l => !excludedLabels.Contains(l.Label) && l.Data.Length < options.MinimumWeightElements).ToList();
            if (small.Count > 0)
            {
                notes.Add(Note($"layer(s) {Labels(small)} smaller than MinimumWeightElements ({options.MinimumWeightElements})", small, prunableWeights));
            }
            PruningOptions effective = options;
            if (!options.IsNofM && options.RequestedSparsity is double requested && layers.Count > 0)
            {
                // The layers the tool keeps dense on its own (output layers, tiny layers) are made up for by the others,
                // up to a cap; the layers the user (or Tune) excluded are not.
                long prunedElements = layers.Sum(l => (long)l.Data.Length);
                long excludedElements = excludedLayers.Sum(l => (long)l.Data.Length);
                double cap = Math.Max(requested, Math.Min(0.95, (1 + requested) / 2));
                if (options.Method == PruningMethod.Sensitivity)
                {
                    cap = Math.Min(cap, options.SensitivityGrid[^1]);
                }
                double wanted = requested * (prunableWeights - excludedElements) / prunedElements;
                double chosen = Math.Max(requested, Math.Min(cap, wanted));
                if (wanted > cap + 1e-9)
                {
                    notes.Add(string.Create(CultureInfo.InvariantCulture, $"making that up would need {wanted:P1} of the pruned layers; they were capped at {cap:P0}"));
                }
                layerSparsity = measured ? null : chosen; // measured: per layer (the analysis), this is only their overall target
                effective = options with { Sparsity = chosen };
            }
            else if (options.IsNofM)
            {
                layerSparsity = options.RequestedSparsity;
            }
            long[] before = layers.Select(l => PrunableLayers.CountNonzeros(l.Data)).ToArray();
            Dictionary<PrunableLayer, FeatureStats> stats = activations == null || options.Method == PruningMethod.SparseGpt ? [] : FeatureStats.Collect(g, layers, activations, displayName);
            float[][] originals = layers.Select(l => (float[])l.Data.Clone()).ToArray();
            foreach ((PrunableLayer l, FeatureStats st) in stats)
            {
                l.Scores = st.Scores(l);
            }
            switch (options.Method)
            {
                case PruningMethod.Magnitude when measured && layers.Count > 0:
                    sensitivity = SensitivityPruner.Run(g, layers, effective, harm!, displayName, UniformAlternatives(g, layers, every, options, prunableWeights, excludedLayers));
                    break;
                case PruningMethod.Magnitude:
                    foreach (PrunableLayer l in layers)
                    {
                        SparsityMasks.ZeroSmallest([l.Data], l.Scores == null ? null : [l.Scores], (long)Math.Round(effective.Sparsity * l.Data.Length));
                    }
                    break;
                case PruningMethod.Global:
                    long total = layers.Sum(l => (long)l.Data.Length);
                    SparsityMasks.ZeroSmallest(layers.Select(l => l.Data).ToList(), stats.Count == layers.Count && layers.Count > 0 ? layers.Select(l => l.Scores!).ToList() : null, (long)Math.Round(effective.Sparsity * total));
                    break;
                case PruningMethod.Sensitivity when layers.Count > 0:
                    sensitivity = SensitivityPruner.Run(g, layers, effective, harm!, displayName, UniformAlternatives(g, layers, every, options, prunableWeights, excludedLayers));
                    break;
                case PruningMethod.NofM:
                    foreach (PrunableLayer l in layers)
                    {
                        SparsityMasks.KeepNofM(l, options.N, options.M);
                    }
                    break;
                case PruningMethod.SparseGpt when measured && layers.Count > 0:
                    sensitivity = SparseGpt.Allocate(g, layers, effective, harm!, activations!, displayName);
                    var chosen = new Dictionary<PrunableLayer, double>();
                    for (int i = 0; i < layers.Count; i++)
                    {
                        chosen[layers[i]] = (double)sensitivity.Layers[i].ChosenZeros / layers[i].Data.Length;
                    }
                    SparseGpt.Run(g, layers, effective, activations!, displayName, notes, reconstructed, chosen);
                    break;
                case PruningMethod.SparseGpt:
                    SparseGpt.Run(g, layers, effective, activations!, displayName, notes, reconstructed);
                    break;
            }
            if (sensitivity is { FellBackToUniform: true } fb)
            {
                allocation = "uniform";
                notes.Add(string.Create(CultureInfo.InvariantCulture,
                    $"the sensitivity allocation measured harm {fb.MeasuredHarm:G3} with every layer pruned together, not {SensitivityPruner.RequiredGain:P0} below uniform sparsity ({fb.UniformCandidate}: {fb.UniformMeasuredHarm:G3}) on the same {fb.Samples} samples; uniform sparsity used"));
            }
            for (int i = 0; i < layers.Count; i++)
            {
                PrunableLayer l = layers[i];
                long after = PrunableLayers.CountNonzeros(l.Data);
                if (after != before[i])
                {
                    PrunableLayers.SetConstant(g, l.WeightName, l.Data);
                    if (options.BiasCorrection && stats.TryGetValue(l, out FeatureStats? st) && st.CorrectBias(g, l, originals[i], displayName))
                    {
                        reconstructed.Add(l.Label);
                    }
                }
                pruned.Add(new PrunedLayer(l.Label, l.Node.OpType, l.WeightName, l.Data.Length, before[i], l.Data.Length, after, l.Outputs, l.Outputs));
            }
        }
        long nonzerosAfter = PrunableLayers.Find(new PassGraph(model), options, displayName, [], everyLayer: true).Sum(l => PrunableLayers.CountNonzeros(l.Data));

        byte[] afterBytes = model.ToByteArray();
        (long paramsAfter, long flopsAfter, bool exactAfter) = PrunableLayers.Measure(model, displayName);
        return new PruningSummary
        {
            ModelDisplayName = displayName,
            Method = options.ToString(),
            Pruned = pruned,
            Skipped = skipped,
            Reconstructed = reconstructed,
            Sensitivity = sensitivity,
            Allocation = allocation,
            RequestedSparsity = options.RequestedSparsity,
            RequestedChannelFraction = options.Method == PruningMethod.Channels ? options.ChannelFraction : null,
            ChannelsBefore = options.Method == PruningMethod.Channels ? every.Sum(l => (long)l.Outputs) : 0,
            ChannelsRemoved = options.Method == PruningMethod.Channels ? pruned.Sum(p => (long)(p.OutputsBefore - p.OutputsAfter)) : 0,
            LayerSparsity = layerSparsity,
            PrunableWeights = prunableWeights,
            PrunableNonzerosAfter = nonzerosAfter,
            SparsityNotes = notes,
            ParametersBefore = paramsBefore,
            ParametersAfter = paramsAfter,
            FlopsBefore = flopsBefore,
            FlopsAfter = flopsAfter,
            FlopsExact = exactBefore && exactAfter,
            ModelBytesBefore = beforeBytes.Length,
            ModelBytesAfter = afterBytes.Length,
            ZipBytesBefore = PruningSummary.ZipBytes(beforeBytes),
            ZipBytesAfter = PruningSummary.ZipBytes(afterBytes),
        };
    }

    /// <summary>
    /// Nonzero weights + biases of the prunable layers and their floating-point operations per sample (Conv at its output
    /// size, MatMul/Gemm once per row); Exact is false when a Conv's output size is unknown.
    /// </summary>
    public static (long Parameters, long Flops, bool Exact) Measure(ModelProto model, string displayName) => PrunableLayers.Measure(model, displayName);

    /// <summary>
    /// What the uniform allocation (<see cref="PruningAllocation.Uniform"/>) would place, for the sensitivity allocation to be
    /// checked against: with KeepOutputLayers, the output layers dense and the other layers at the requested sparsity raised
    /// to make up for them (capped as there); without it, nothing beyond every layer at the target (which is always checked).
    /// </summary>
    private static List<UniformCandidate> UniformAlternatives(PassGraph g, List<PrunableLayer> layers, List<PrunableLayer> every, PruningOptions options,
        long prunableWeights, List<PrunableLayer> excludedLayers)
    {
        if (!options.KeepOutputLayers || options.RequestedSparsity is not double requested)
        {
            return [];
        }
        var outputNodes = new HashSet<NodeProto>(PrunableLayers.OutputLayers(g, every).Select(l => l.Node), ReferenceEqualityComparer.Instance);
        long rest = layers.Where(l => !outputNodes.Contains(l.Node)).Sum(l => (long)l.Data.Length);
        if (rest == 0 || rest == layers.Sum(l => (long)l.Data.Length))
        {
            return [];
        }
        double cap = Math.Max(requested, Math.Min(0.95, (1 + requested) / 2));
        if (options.Method == PruningMethod.Sensitivity)
        {
            cap = Math.Min(cap, options.SensitivityGrid[^1]);
        }
        double s = Math.Max(requested, Math.Min(cap, requested * (prunableWeights - excludedLayers.Sum(l => (long)l.Data.Length)) / rest));
        return [new UniformCandidate(string.Create(CultureInfo.InvariantCulture, $"output layer(s) dense, the others at {s:P1}"),
            layers.Select(l => outputNodes.Contains(l.Node) ? 0 : (long)Math.Round(s * l.Data.Length)).ToArray())];
    }

    private static string Labels(List<PrunableLayer> layers) =>
        layers.Count <= 4 ? string.Join(", ", layers.Select(l => "'" + l.Label + "'")) : string.Join(", ", layers.Take(3).Select(l => "'" + l.Label + "'")) + $" and {layers.Count - 3} more";

    private static string Note(string what, List<PrunableLayer> layers, long prunableWeights)
    {
        long elements = layers.Sum(l => (long)l.Data.Length);
        return string.Create(CultureInfo.InvariantCulture, $"{what}: {elements} weights, {(prunableWeights == 0 ? 0 : (double)elements / prunableWeights):P1} of the model's prunable weights");
    }
}
