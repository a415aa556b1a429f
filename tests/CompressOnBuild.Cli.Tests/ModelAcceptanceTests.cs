using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Microsoft.ML.OnnxRuntime;

namespace CompressOnBuild.Cli.Tests;

/// <summary>Models ONNX Runtime runs must be accepted and compressed, never refused or ended in exit 3 (issue 13).</summary>
[TestClass]
public sealed class ModelAcceptanceTests
{
    private TempDirectory _temp = null!;

    private string _dir => _temp.Path;

    [TestInitialize]
    public void Init() => _temp = new TempDirectory("cob-accept");

    [TestCleanup]
    public void Cleanup() => _temp.Delete();

    private string P(string name) => Path.Combine(_dir, name);

    [TestMethod]
    public void NodesOutOfTopologicalOrderAreCompressedAndTheOutputIsSorted()
    {
        ModelProto m = TinyModels.Mlp(inF: 64, hidden: 32, classes: 4, seed: 9);
        NodeProto first = m.Graph.Node[0];
        m.Graph.Node.RemoveAt(0);
        m.Graph.Node.Add(first); // fc1 listed last, as ONNX Runtime's transformer optimizer writes some graphs
        string model = P("unsorted.onnx");
        ModelIO.Save(m, model);
        using (new InferenceSession(model))
        {
            // ONNX Runtime loads the unsorted model.
        }

        CliRun run = CliHarness.InProcess("compress", model, "--output", P("out/unsorted.onnx"));

        Assert.AreEqual(0, run.ExitCode, run.Output);
        ModelProto output = ModelIO.Load(P("out/unsorted.onnx"));
        var produced = new HashSet<string>(output.Graph.Input.Select(i => i.Name).Concat(output.Graph.Initializer.Select(t => t.Name)));
        foreach (NodeProto n in output.Graph.Node)
        {
            Assert.IsTrue(n.Input.All(i => i.Length == 0 || produced.Contains(i)), $"node {n.Name} is listed before a producer of its inputs");
            produced.UnionWith(n.Output);
        }
        using var session = new InferenceSession(P("out/unsorted.onnx"));
        using OrtValue x = OrtValue.CreateTensorValueFromMemory(new float[64], [1, 64]);
        using var runOptions = new RunOptions();
        using IDisposableReadOnlyCollection<OrtValue> y = session.Run(runOptions, ["x"], [x], ["y"]);
        Assert.AreEqual(4, y[0].GetTensorDataAsSpan<float>().Length);
    }
}
