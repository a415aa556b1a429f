using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Cli.Tests;

/// <summary>
/// The layer inputs the worker collects for activation smoothing before the pass parses the model: read from the
/// graph alone, they must include every MatMul/Gemm input a weight site can have and leave out products of two
/// activations.
/// </summary>
[TestClass]
public sealed class SmoothingCandidatesTests
{
    [TestMethod]
    public void MatMul_and_Gemm_inputs_with_a_constant_operand_are_candidates_and_activation_products_are_not()
    {
        var g = new GraphProto { Name = "g" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 4));
        g.Output.Add(TinyModels.FloatValue("y", 1, 4));
        g.Output.Add(TinyModels.FloatValue("s", 1, 1));
        g.Initializer.Add(TensorUtil.FromFloats("w", TinyModels.RandomFloats(16, 1), 4, 4));
        g.Initializer.Add(TensorUtil.FromFloats("wt", TinyModels.RandomFloats(16, 2), 4, 4));
        g.Initializer.Add(TensorUtil.FromFloats("g", TinyModels.RandomFloats(16, 3), 4, 4));
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["h"], "weight"));                    // candidate: x
        g.Node.Add(TinyModels.Node("Transpose", ["wt"], ["wtt"], "fold"));                      // a constant computed from constants
        g.Node.Add(TinyModels.Node("MatMul", ["h", "wtt"], ["h2"], "behind-transpose"));       // candidate: h
        g.Node.Add(TinyModels.Node("Transpose", ["h2"], ["h2t"], "activation-transpose"));
        g.Node.Add(TinyModels.Node("MatMul", ["h2", "h2t"], ["scores"], "two-activations"));   // not a candidate
        g.Node.Add(TinyModels.Node("Gemm", ["h2", "g"], ["y"], "gemm"));                        // candidate: h2
        g.Node.Add(TinyModels.Node("Gemm", ["scores", "g"], ["s"], "gemm-transA", TinyModels.IntAttr("transA", 1))); // not: transA
        (string[] inputs, string[] outputs) = Compressor.SmoothingCandidates(TinyModels.Model(g));
        CollectionAssert.AreEquivalent(new[] { "x", "h", "h2" }, inputs);
        CollectionAssert.AreEqual(new[] { "y", "s" }, outputs);
    }
}
