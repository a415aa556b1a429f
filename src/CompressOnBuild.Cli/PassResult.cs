using System.Text.Json.Nodes;
using CompressOnBuild.Core.Passes;

namespace CompressOnBuild.Cli;

/// <summary>What a compression pass did, in one shape for every scheme (for diagnostics, tuning and report.json).</summary>
internal sealed record PassResult(
    string Scheme,
    bool Unchanged,
    string? UnchangedReason,
    IReadOnlyList<QuantizedNode> Nodes,
    IReadOnlyList<SkippedNode> Skipped,
    JsonObject Details)
{
    /// <summary>The pass found nothing it could compress (and the model was not already compressed).</summary>
    public bool NothingDone => !Unchanged && Nodes.Count == 0 && Details["convertedNodes"] is null;

    /// <summary>Float16 met a model whose weights are float16 already (CMPR0240 rather than CMPR0201).</summary>
    public bool AlreadyFloat16 { get; init; }

    public static PassResult From(QuantizationSummary q) => new("Int8Dynamic", q.AlreadyQuantized, q.AlreadyQuantizedReason, q.Quantized, q.Skipped,
        new JsonObject
        {
            ["weightEncoding"] = q.WeightEncoding.ToString(),
            ["floatWeightBytes"] = q.FloatWeightBytes,
            ["quantizedWeightBytes"] = q.QuantizedWeightBytes,
            ["float16Weights"] = q.Float16Weights,
            ["smoothedInputs"] = q.Smoothing.Count(s => s.Alpha > 0),
            ["smoothingMeasured"] = q.Smoothing.Count,
        });

    public static PassResult From(Int8StaticSummary q) => new("Int8Static", q.AlreadyQuantized, q.AlreadyQuantizedReason, q.Quantized, q.Skipped,
        new JsonObject
        {
            ["weightEncoding"] = q.WeightEncoding.ToString(),
            ["activationType"] = q.ActivationType.ToString(),
            ["perChannel"] = q.PerChannel,
            ["quantizedActivations"] = q.QuantizedActivations,
            ["opsetRaisedFrom"] = q.OpsetRaisedFrom,
            ["float16Weights"] = q.Float16Weights,
            ["opsetRaisedTo"] = q.OpsetRaisedTo,
            ["opsetNote"] = q.OpsetNote,
            ["foldedBatchNormalizations"] = q.FoldedBatchNormalizations,
        });

    public static PassResult From(Int4Summary q) => new("Int4Weights", q.AlreadyQuantized, q.AlreadyQuantizedReason, q.Quantized, q.Skipped,
        new JsonObject
        {
            ["blockSize"] = q.BlockSize,
            ["symmetric"] = q.Symmetric,
            ["method"] = q.Method,
            ["roundedToNearest"] = new JsonArray([.. q.RoundedToNearest.Select(n => (JsonNode)n)]),
            ["floatWeightBytes"] = q.FloatWeightBytes,
            ["quantizedWeightBytes"] = q.QuantizedWeightBytes,
            ["float16Weights"] = q.Float16Weights,
        });

    public static PassResult From(Float16Summary f)
    {
        bool unchanged = f.AlreadyFloat16 || f.AlreadyQuantized;
        var details = new JsonObject
        {
            ["convertedTensors"] = f.ConvertedTensors,
            ["convertedElements"] = f.ConvertedElements,
            ["clampedValues"] = f.ClampedValues,
            ["castsInserted"] = f.CastsInserted,
        };
        if (f.ConvertedNodes > 0 || f.ConvertedTensors > 0)
        {
            details["convertedNodes"] = f.ConvertedNodes;
        }
        return new PassResult("Float16", unchanged, f.UnchangedReason, [], f.KeptFloat32, details) { AlreadyFloat16 = f.AlreadyFloat16 };
    }
}
