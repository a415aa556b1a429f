using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Core.Tests.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;

namespace CompressOnBuild.Core.Tests.Graph;

/// <summary>
/// The passes' batched graph edits (issue 17: nodes removed, moved and replaced in one pass over the graph, value_info
/// dropped at commit, constants moved into If bodies at once) give on a graph of hundreds of blocks what they give
/// on one and two blocks, in a valid order: each operator count grows by the same amount per block (count(n) =
/// count(1) + (n - 1) x (count(2) - count(1))), no node has to move for the model to be topologically sorted, the
/// checker accepts it and ONNX Runtime runs it (close to the original where the pass keeps the values).
/// </summary>
[TestClass]
public sealed class LargeGraphRewriteTests
{
    private const int Blocks = 300;

    private static Dictionary<string, int> OpCounts(ModelProto model) =>
        ModelWalker.Graphs(model).SelectMany(g => g.Graph.Node).GroupBy(n => n.OpType).ToDictionary(g => g.Key, g => g.Count(), StringComparer.Ordinal);

    /// <summary>Runs <paramref name="pass"/> on one, two and <see cref="Blocks"/> blocks of <paramref name="shape"/> and checks the large result (<paramref name="minCosine"/> null: outputs not compared).</summary>
    private static ModelProto AssertScalesLikeOneBlock(string shape, int nodesPerBlock, Action<ModelProto> pass, double? minCosine)
    {
        ModelProto one = ScalingModels.Make(shape, nodesPerBlock);
        pass(one);
        ModelProto two = ScalingModels.Make(shape, 2 * nodesPerBlock);
        pass(two);
        ModelProto original = ScalingModels.Make(shape, Blocks * nodesPerBlock);
        ModelProto large = original.Clone();
        pass(large);

        Dictionary<string, int> c1 = OpCounts(one), c2 = OpCounts(two);
        var expected = c1.Keys.Union(c2.Keys).Select(op => $"{op} {c1.GetValueOrDefault(op) + (Blocks - 1) * (c2.GetValueOrDefault(op) - c1.GetValueOrDefault(op))}")
            .Where(x => !x.EndsWith(" 0", StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToList();
        var actual = OpCounts(large).Select(kv => $"{kv.Key} {kv.Value}").Order(StringComparer.Ordinal).ToList();
        Assert.AreEqual(string.Join(", ", expected), string.Join(", ", actual), $"{shape}: operator counts of {Blocks} blocks");
        Assert.IsFalse(TopologicalSort.Sort(large.Clone(), "large"), $"{shape}: every node of the rewritten graph already follows the nodes it reads");
        ModelChecker.Validate(large, "large");

        float[] before = OrtHelper.RunRandom(original.ToByteArray()).Single().Value;
        float[] after = OrtHelper.RunRandom(large.ToByteArray()).Single().Value;
        Assert.IsTrue(after.All(float.IsFinite), $"{shape}: finite outputs");
        if (minCosine is not double min)
        {
            return large;
        }
        double dot = 0, a = 0, b = 0;
        for (int i = 0; i < before.Length; i++)
        {
            dot += before[i] * (double)after[i];
            a += before[i] * (double)before[i];
            b += after[i] * (double)after[i];
        }
        Assert.IsGreaterThan(min, dot / Math.Sqrt(a * b), $"{shape}: cosine of the outputs");
        return large;
    }

    [TestMethod]
    public void Int8Static_folds_and_moves_every_block_of_a_large_graph()
    {
        int folded = 0;
        ModelProto large = AssertScalesLikeOneBlock("mixed", 9, m =>
        {
            // Every Conv quantized (the blocks' 8-channel Convs are below the default minimum reduction of 64).
            var options = new Int8StaticOptions { MinimumConvReduction = 1 };
            var ranges = Int8StaticQuantizer.TensorsToCalibrate(m, options).ToDictionary(t => t, _ => new TensorRange(-4f, 4f), StringComparer.Ordinal);
            folded = Int8StaticQuantizer.Apply(m, new CalibrationResult { Ranges = ranges }, options, "mixed").FoldedBatchNormalizations;
        }, minCosine: 0.9);
        Assert.AreEqual(Blocks, folded, "one BatchNormalization folded per block");
        Assert.IsFalse(large.Graph.Node.Any(n => n.OpType is "BatchNormalization" or "Transpose" or "Constant"), "folded normalizations and the weights' Transpose(Constant) chains are gone");
        Assert.AreEqual(0, large.Graph.ValueInfo.Count(v => v.Name.StartsWith("ca", StringComparison.Ordinal)), "value_info of the folded Conv outputs dropped");
    }

    [TestMethod]
    public void Int8Static_fuses_every_MatMul_Add_of_a_large_chain() =>
        AssertScalesLikeOneBlock("chain", 2, m =>
        {
            var options = new Int8StaticOptions();
            var ranges = Int8StaticQuantizer.TensorsToCalibrate(m, options).ToDictionary(t => t, _ => new TensorRange(-2f, 2f), StringComparer.Ordinal);
            Int8StaticQuantizer.Apply(m, new CalibrationResult { Ranges = ranges }, options, "chain");
            Assert.IsFalse(m.Graph.Node.Any(n => n.OpType is "MatMul" or "Add"), "every MatMul + bias Add became a Gemm");
        }, minCosine: 0.99);

    [TestMethod]
    public void Weight_passes_quantize_every_If_branch_of_a_large_graph()
    {
        AssertScalesLikeOneBlock("if", 4, m => Assert.HasCount(2 * Math.Max(1, ScalingModels.CountNodes(m) / 4),
            Int8DynamicQuantizer.Apply(m, QuantizationOptions.Default, "if").Quantized), minCosine: 0.99);
        AssertScalesLikeOneBlock("if", 4, m => Float16Converter.Apply(m, Float16Options.Default, "if"), minCosine: 0.999);
    }

    [TestMethod]
    public void Magnitude_pruning_prunes_every_layer_of_a_large_graph() =>
        AssertScalesLikeOneBlock("conv", 4, m => Assert.HasCount(2 * Math.Max(1, ScalingModels.CountNodes(m) / 4),
            Pruner.Apply(m, new PruningOptions { Method = PruningMethod.Magnitude, Sparsity = 0.5, KeepOutputLayers = false }, "conv").Pruned), minCosine: null);
}
