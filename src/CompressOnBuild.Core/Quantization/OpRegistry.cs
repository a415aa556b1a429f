using CompressOnBuild.Core.Quantization.Ops;

namespace CompressOnBuild.Core.Quantization;

/// <summary>The quantization schemes an item can ask for (metadata <c>Quantization</c>).</summary>
public enum QuantizationScheme
{
    None,
    Int8Dynamic,
    Float16,
    Int4Weights,
    Int8Static,
}

/// <summary>
/// The one table of which operators each scheme quantizes and how (scheme -> operator -> lowering). The passes run
/// <see cref="For"/> through <see cref="QuantizationDriver"/>; the settings check <c>OpTypesToQuantize</c> against
/// <see cref="OpTypes"/>, and CMPR0203 names them. Adding an operator to a scheme is one lowering class in Ops/ and
/// one line in <see cref="Entries"/>.
/// </summary>
public static class OpRegistry
{
    /// <summary>Every (scheme, lowering) pair, in the order <see cref="OpTypes"/> lists them (after a scheme's pass-owned operators).</summary>
    private static readonly (QuantizationScheme Scheme, IOperatorLowering Lowering)[] Entries =
    [
        (QuantizationScheme.Int8Dynamic, new Int8ConvLowering()),
        (QuantizationScheme.Int8Dynamic, new Int8MatMulLowering()),
        (QuantizationScheme.Int8Dynamic, new Int8GemmLowering()),
        (QuantizationScheme.Int8Dynamic, new GatherLowering()),
        (QuantizationScheme.Int8Dynamic, new LstmLowering()),
        (QuantizationScheme.Int8Dynamic, new Int8AttentionLowering()),
        (QuantizationScheme.Int4Weights, new Int4MatMulLowering()),
        (QuantizationScheme.Int4Weights, new Int4GemmLowering()),
        (QuantizationScheme.Int4Weights, new GatherLowering()),
        (QuantizationScheme.Int8Static, new LstmLowering()),
    ];

    /// <summary>
    /// Operators a pass still lowers with its own code rather than through a registered lowering, listed here so
    /// that <see cref="OpTypes"/> is complete: Int8Static places Q/DQ around Conv/MatMul/Gemm itself
    /// (Int8StaticQuantizer; its LSTMs go through the driver with <see cref="For"/>). An entry moves to
    /// <see cref="Entries"/> when its operator becomes an <see cref="IOperatorLowering"/>.
    /// </summary>
    private static readonly (QuantizationScheme Scheme, string OpType)[] PassOwned =
    [
        (QuantizationScheme.Int8Static, "Conv"),
        (QuantizationScheme.Int8Static, "MatMul"),
        (QuantizationScheme.Int8Static, "Gemm"),
    ];

    /// <summary>The operators <paramref name="scheme"/>'s pass lowers with its own code (see <see cref="PassOwned"/>).</summary>
    internal static IReadOnlySet<string> PassOwnedOpTypes(QuantizationScheme scheme) =>
        PassOwned.Where(e => e.Scheme == scheme).Select(e => e.OpType).ToHashSet(StringComparer.Ordinal);

    /// <summary>The lowerings of <paramref name="scheme"/> (empty for schemes that are not per operator).</summary>
    internal static IReadOnlyList<IOperatorLowering> For(QuantizationScheme scheme) =>
        [.. Entries.Where(e => e.Scheme == scheme).Select(e => e.Lowering)];

    /// <summary>
    /// The op types whose constant weights <paramref name="scheme"/> quantizes: what OpTypesToQuantize is checked
    /// against and what CMPR0203 names when a model has none of them. Empty for None and Float16 (Float16 converts
    /// every float tensor, not per operator).
    /// </summary>
    public static IReadOnlyList<string> OpTypes(QuantizationScheme scheme) =>
        [.. PassOwned.Where(e => e.Scheme == scheme).Select(e => e.OpType).Concat(For(scheme).Select(l => l.OpType)).Distinct(StringComparer.Ordinal)];

    /// <summary>
    /// Why <paramref name="opTypes"/> (OpTypesToQuantize) cannot apply to <paramref name="scheme"/>, or null when it can:
    /// None has nothing to filter; a per-operator scheme needs at least one of its <see cref="OpTypes"/> listed.
    /// </summary>
    public static string? OpTypesProblem(QuantizationScheme scheme, IReadOnlySet<string> opTypes)
    {
        ArgumentNullException.ThrowIfNull(opTypes);
        if (scheme == QuantizationScheme.None)
        {
            return "it filters what a Quantization scheme changes, and Quantization is None";
        }
        IReadOnlyList<string> handled = OpTypes(scheme);
        return handled.Count > 0 && !opTypes.Overlaps(handled)
            ? $"{scheme} quantizes only {string.Join(", ", handled)}; none of them is listed"
            : null;
    }

    /// <summary>CMPR0203's reason when a pass found no layer at all to report.</summary>
    public static string NoWeightsReason(QuantizationScheme scheme) =>
        OpTypes(scheme) is { Count: > 0 } ops
            ? $"the model has no {string.Join(", ", ops)} with a constant float weight"
            : "the model has no constant float weight this scheme converts";
}
