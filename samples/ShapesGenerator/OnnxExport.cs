using System.Runtime.InteropServices;
using CompressOnBuild.Onnx;
using Google.Protobuf;

namespace CompressOnBuild.Samples.Shapes;

/// <summary>Writes an <see cref="Mlp"/> as ONNX: input [batch, 784] -> Gemm -> Relu -> Gemm -> logits [batch, C];
/// opset 13, IR version 7, dynamic batch dimension.</summary>
public static class OnnxExport
{
    public const string InputName = "input";

    public const string OutputName = "logits";

    public static ModelProto ToModel(Mlp mlp)
    {
        var graph = new GraphProto { Name = "shapes_mlp" };
        graph.Input.Add(Value(InputName, mlp.Inputs));
        graph.Output.Add(Value(OutputName, mlp.Classes));
        graph.Initializer.Add(Tensor("fc1.weight", mlp.W1, mlp.Inputs, mlp.Hidden));
        graph.Initializer.Add(Tensor("fc1.bias", mlp.B1, mlp.Hidden));
        graph.Initializer.Add(Tensor("fc2.weight", mlp.W2, mlp.Hidden, mlp.Classes));
        graph.Initializer.Add(Tensor("fc2.bias", mlp.B2, mlp.Classes));
        graph.Node.Add(Node("Gemm", "fc1", [InputName, "fc1.weight", "fc1.bias"], "fc1.out"));
        graph.Node.Add(Node("Relu", "relu1", ["fc1.out"], "relu1.out"));
        graph.Node.Add(Node("Gemm", "fc2", ["relu1.out", "fc2.weight", "fc2.bias"], OutputName));

        var model = new ModelProto
        {
            IrVersion = 7,
            ProducerName = "CompressOnBuild.Samples.ShapesGenerator",
            ProducerVersion = "1.0",
            DocString = "28x28 grayscale shapes classifier (circle, square, triangle, cross); input scaled to [0, 1].",
            Graph = graph,
        };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 13 });
        return model;
    }

    public static void Write(Mlp mlp, string path)
    {
        using FileStream stream = File.Create(path);
        ToModel(mlp).WriteTo(stream);
    }

    private static ValueInfoProto Value(string name, int features)
    {
        var shape = new TensorShapeProto();
        shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimParam = "batch" });
        shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = features });
        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto
            {
                TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float, Shape = shape },
            },
        };
    }

    private static TensorProto Tensor(string name, float[] values, params long[] dims)
    {
        var tensor = new TensorProto
        {
            Name = name,
            DataType = (int)TensorProto.Types.DataType.Float,
            // ONNX raw data is little-endian, as are the platforms .NET runs this sample on.
            RawData = ByteString.CopyFrom(MemoryMarshal.AsBytes(values.AsSpan())),
        };
        tensor.Dims.AddRange(dims);
        return tensor;
    }

    private static NodeProto Node(string op, string name, string[] inputs, string output)
    {
        var node = new NodeProto { OpType = op, Name = name };
        node.Input.AddRange(inputs);
        node.Output.Add(output);
        return node;
    }
}
