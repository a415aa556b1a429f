using CompressOnBuild.Cli;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Cli.Tests;

/// <summary>
/// How many calibration samples the default sensitivity allocation measures its harm on (AttemptContext.AllocationSamples):
/// as many as fit the per-probe work budget at the model's FLOPs per sample, at least 32, at most CalibrationSamples.
/// </summary>
[TestClass]
public sealed class AllocationSamplesTests
{
    [TestMethod]
    public void A_tiny_model_measures_on_every_calibration_sample()
    {
        ModelProto mlp = TinyModels.Mlp(inF: 16, hidden: 8, classes: 4); // 320 FLOPs per sample
        Assert.AreEqual(256, AttemptContext.AllocationSamples(mlp, 256, "m"));
        Assert.AreEqual(1000, AttemptContext.AllocationSamples(mlp, 1000, "m"));
        Assert.AreEqual(20, AttemptContext.AllocationSamples(mlp, 20, "m"), "never more than CalibrationSamples");
    }

    [TestMethod]
    public void A_model_with_more_work_per_sample_gets_fewer_down_to_32()
    {
        // Conv 3 -> 16 channels, 3x3, on 224 x 224 with padding 1: 2 x 432 x 50,176 = 43,352,064 FLOPs per sample.
        var g = new GraphProto { Name = "conv" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 3, 224, 224));
        g.Output.Add(TinyModels.FloatValue("y", 1, 16, 224, 224));
        g.Initializer.Add(TensorUtil.FromFloats("w", TinyModels.RandomFloats(432, 3), 16, 3, 3, 3));
        g.Node.Add(TinyModels.Node("Conv", ["x", "w"], ["y"], "conv", TinyModels.IntsAttr("pads", 1, 1, 1, 1)));
        ModelProto conv = TinyModels.Model(g);
        Assert.AreEqual((int)Math.Floor(AttemptContext.AllocationProbeFlops / 43_352_064), AttemptContext.AllocationSamples(conv, 256, "m"));
        Assert.AreEqual(59, AttemptContext.AllocationSamples(conv, 256, "m"));

        // 40 x the channels: the budget would allow 1 sample; the floor is 32.
        var big = new GraphProto { Name = "big" };
        big.Input.Add(TinyModels.FloatValue("x", 1, 3, 224, 224));
        big.Output.Add(TinyModels.FloatValue("y", 1, 640, 224, 224));
        big.Initializer.Add(TensorUtil.FromFloats("w", TinyModels.RandomFloats(640 * 27, 3), 640, 3, 3, 3));
        big.Node.Add(TinyModels.Node("Conv", ["x", "w"], ["y"], "conv", TinyModels.IntsAttr("pads", 1, 1, 1, 1)));
        Assert.AreEqual(AttemptContext.AllocationProbeSamples, AttemptContext.AllocationSamples(TinyModels.Model(big), 256, "m"));
    }

    [TestMethod]
    public void Token_ids_or_variable_lengths_keep_the_default_32()
    {
        // Integer inputs (token ids): the MatMuls run once per token, which the weights alone do not tell.
        Assert.AreEqual(AttemptContext.AllocationProbeSamples, AttemptContext.AllocationSamples(TinyModels.Encoder(vocab: 50), 256, "m"));
        // A float input whose second dimension is not fixed.
        ModelProto mlp = TinyModels.Mlp(inF: 16, hidden: 8, classes: 4);
        mlp.Graph.Input.Clear();
        mlp.Graph.Input.Add(TinyModels.FloatValue("x", "N", "S", 16));
        Assert.AreEqual(AttemptContext.AllocationProbeSamples, AttemptContext.AllocationSamples(mlp, 256, "m"));
    }
}
