extern alias core;

using System.Text.RegularExpressions;
using Google.Protobuf;
using core::CompressOnBuild.Onnx;

namespace CompressOnBuild.Build.Tests;

public sealed partial class PackageIntegrationTests
{
    /// <summary>
    /// A compressed model whose weights live in an external data file (what the worker writes for outputs over
    /// 1.8 GB and on the streaming path; COMPRESSONBUILD_STREAMING_THRESHOLD_BYTES=1 forces that path for a small
    /// MatMul model here): build and publish copy the content-named "&lt;model&gt;.&lt;hash&gt;.data" next to the model
    /// under its Link, and the app loads the shipped pair from the publish folder.
    /// </summary>
    [TestMethod]
    public void Publish_ShipsTheExternalDataFile_OfACompressedModel()
    {
        Assert.AreEqual(0, s_firstBuild!.ExitCode, s_firstBuild.Tail());
        string app = Path.Combine(s_root, "app-data");
        Directory.CreateDirectory(Path.Combine(app, "generated"));
        WriteMatMulModel(Path.Combine(app, "generated", "mm.onnx"));
        File.WriteAllText(Path.Combine(app, "app.csproj"),
            Regex.Replace(File.ReadAllText(Path.Combine(s_app, "app.csproj")), "<ItemGroup>\\s*<CompressModel Include=\"generated/shapes.onnx\"[\\s\\S]*?</ItemGroup>",
                "<ItemGroup><CompressModel Include=\"generated/mm.onnx\" Link=\"models/mm.onnx\" Quantization=\"Int8Dynamic\" /></ItemGroup>"));
        StringAssert.Contains(File.ReadAllText(Path.Combine(app, "app.csproj")), "generated/mm.onnx");
        File.WriteAllText(Path.Combine(app, "Program.cs"), """
            using Microsoft.ML.OnnxRuntime;
            using Microsoft.ML.OnnxRuntime.Tensors;

            string model = Path.Combine(AppContext.BaseDirectory, "models", "mm.onnx");
            using var session = new InferenceSession(model);
            var input = new DenseTensor<float>(Enumerable.Repeat(1f, 256).ToArray(), new[] { 1, 256 });
            using var results = session.Run(new[] { NamedOnnxValue.CreateFromTensor("x", input) });
            Console.WriteLine($"APP-OK {results.First().AsTensor<float>().Dimensions[1]} {results.First().AsTensor<float>()[0, 0]:F3}");
            """);
        var environment = new Dictionary<string, string?>(s_environment) { ["COMPRESSONBUILD_STREAMING_THRESHOLD_BYTES"] = "1" };
        string publish = Path.Combine(s_root, "publish-data");
        string binlog = Path.Combine(s_root, $"{++s_buildNumber:D2}-publish-data.binlog");
        ProcessResult result = DotNetProcess.Run(app, environment, Timeout,
            "publish", Path.Combine(app, "app.csproj"), "-nologo", "-nodeReuse:false", "-bl:" + binlog, "-c", "Release", "-o", publish);
        Assert.AreEqual(0, result.ExitCode, result.Tail());

        foreach (string folder in new[] { Path.Combine(app, "bin", "Release", "net10.0", "models"), Path.Combine(publish, "models") })
        {
            Assert.IsTrue(File.Exists(Path.Combine(folder, "mm.onnx")), $"{folder}/mm.onnx is missing");
            string[] data = Directory.GetFiles(folder, "mm.onnx.*.data");
            Assert.HasCount(1, data, $"{folder}: the model's content-named external data file ships beside it ({string.Join(", ", Directory.GetFiles(folder))})");
            ModelProto shipped = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Path.Combine(folder, "mm.onnx")));
            string[] locations = [.. shipped.Graph.Initializer.SelectMany(t => t.ExternalData).Where(e => e.Key == "location").Select(e => e.Value).Distinct()];
            CollectionAssert.AreEqual(new[] { Path.GetFileName(data[0]) }, locations, "the shipped .onnx refers to the shipped data file");
        }
        ProcessResult run = DotNetProcess.Run(app, s_environment, Timeout, Path.Combine(publish, "app.dll"));
        Assert.AreEqual(0, run.ExitCode, run.Tail());
        StringAssert.Contains(run.Output, "APP-OK 256 ", "the published app loads the model and its external data with ONNX Runtime");
    }

    /// <summary>x[1, 256] -> MatMul W[256, 256] -> y: one weight the streaming path quantizes.</summary>
    private static void WriteMatMulModel(string path)
    {
        var rng = new Random(3);
        float[] w = [.. Enumerable.Range(0, 256 * 256).Select(_ => (float)(rng.NextDouble() - 0.5) / 8)];
        var weight = new TensorProto { Name = "w", DataType = (int)TensorProto.Types.DataType.Float, RawData = ByteString.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(w.AsSpan())) };
        weight.Dims.Add(256);
        weight.Dims.Add(256);
        var graph = new GraphProto { Name = "mm" };
        graph.Initializer.Add(weight);
        graph.Input.Add(Value("x"));
        graph.Output.Add(Value("y"));
        var node = new NodeProto { OpType = "MatMul", Name = "mm" };
        node.Input.Add("x");
        node.Input.Add("w");
        node.Output.Add("y");
        graph.Node.Add(node);
        var model = new ModelProto { IrVersion = 8, Graph = graph };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 13 });
        File.WriteAllBytes(path, model.ToByteArray());

        static ValueInfoProto Value(string name)
        {
            var shape = new TensorShapeProto();
            shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = 1 });
            shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = 256 });
            return new ValueInfoProto
            {
                Name = name,
                Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float, Shape = shape } },
            };
        }
    }
}
