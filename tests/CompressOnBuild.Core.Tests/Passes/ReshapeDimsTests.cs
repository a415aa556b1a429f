using CompressOnBuild.Core.Passes;

namespace CompressOnBuild.Core.Tests.Passes;

/// <summary>ONNX Reshape's target rules, shared by constant folding and the int8 pass's weight resolution.</summary>
[TestClass]
public sealed class ReshapeDimsTests
{
    [TestMethod]
    [DataRow(new long[] { 16, 4, 4, 10 }, new long[] { 256, 10 }, false, new long[] { 256, 10 })]
    [DataRow(new long[] { 16, 4, 4, 10 }, new long[] { -1, 10 }, false, new long[] { 256, 10 })]
    [DataRow(new long[] { 2, 3, 4 }, new long[] { 0, -1 }, false, new long[] { 2, 12 })]
    [DataRow(new long[] { 0, 3 }, new long[] { 0, 3 }, true, new long[] { 0, 3 })]
    [DataRow(new long[] { 2, 3 }, new long[] { 6 }, false, new long[] { 6 })]
    public void Valid_targets(long[] input, long[] target, bool allowZero, long[] expected) =>
        CollectionAssert.AreEqual(expected, PassGraph.ReshapeDims(input, target, allowZero));

    [TestMethod]
    [DataRow(new long[] { 2, 3 }, new long[] { -1, -1 }, false)] // two inferred dims
    [DataRow(new long[] { 2, 3 }, new long[] { 4, -1 }, false)] // 6 is not a multiple of 4
    [DataRow(new long[] { 2, 3 }, new long[] { 7 }, false)] // element count differs
    [DataRow(new long[] { 2, 3 }, new long[] { 2, 0, 3 }, false)] // 0 copies a dim the input does not have
    [DataRow(new long[] { 2, 3 }, new long[] { -2, 3 }, false)] // negative dim
    [DataRow(new long[] { 2, 3 }, new long[] { 0, -1 }, true)] // allowzero: a literal 0 dim cannot hold 6 elements
    public void Invalid_targets_are_null(long[] input, long[] target, bool allowZero) =>
        Assert.IsNull(PassGraph.ReshapeDims(input, target, allowZero));
}
