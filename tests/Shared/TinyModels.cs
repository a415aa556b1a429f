using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Tests;

/// <summary>Builds small ONNX models in code for unit tests (compiled into every test project that references Core).</summary>
internal static class TinyModels
{
    public static ValueInfoProto FloatValue(string name, params object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (object d in dims)
        {
            shape.Dim.Add(d is string s ? new TensorShapeProto.Types.Dimension { DimParam = s } : new TensorShapeProto.Types.Dimension { DimValue = Convert.ToInt64(d, System.Globalization.CultureInfo.InvariantCulture) });
        }
        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float, Shape = shape } },
        };
    }

    public static NodeProto Node(string op, string[] inputs, string[] outputs, string? name = null, params AttributeProto[] attributes)
    {
        var n = new NodeProto { OpType = op, Name = name ?? op + "_" + outputs[0] };
        n.Input.AddRange(inputs);
        n.Output.AddRange(outputs);
        n.Attribute.AddRange(attributes);
        return n;
    }

    public static AttributeProto IntAttr(string name, long value) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };

    public static AttributeProto FloatAttr(string name, float value) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = value };

    public static AttributeProto IntsAttr(string name, params long[] values)
    {
        var a = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints };
        a.Ints.AddRange(values);
        return a;
    }

    public static ModelProto Model(GraphProto graph, long opset = 13, long irVersion = 7)
    {
        var m = new ModelProto { IrVersion = irVersion, ProducerName = "CompressOnBuild.Tests", ProducerVersion = "1", Graph = graph };
        m.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = opset });
        return m;
    }

    /// <summary>Deterministic pseudo-random floats in [-scale, scale].</summary>
    public static float[] RandomFloats(int count, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        var v = new float[count];
        for (int i = 0; i < count; i++)
        {
            v[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
        }
        return v;
    }

    /// <summary>x[batch,inF] -> Gemm(W[outF,inF], transB=1, bias) -> Relu -> Gemm(W2[classes,outF]) -> y[batch,classes].</summary>
    public static ModelProto Mlp(int inF = 16, int hidden = 8, int classes = 4, int seed = 1)
    {
        var g = new GraphProto { Name = "mlp" };
        g.Input.Add(FloatValue("x", "N", inF));
        g.Output.Add(FloatValue("y", "N", classes));
        g.Initializer.Add(TensorUtil.FromFloats("w1", RandomFloats(hidden * inF, seed, 0.5f), hidden, inF));
        g.Initializer.Add(TensorUtil.FromFloats("b1", RandomFloats(hidden, seed + 1, 0.1f), hidden));
        g.Initializer.Add(TensorUtil.FromFloats("w2", RandomFloats(classes * hidden, seed + 2, 0.5f), classes, hidden));
        g.Initializer.Add(TensorUtil.FromFloats("b2", RandomFloats(classes, seed + 3, 0.1f), classes));
        g.Node.Add(Node("Gemm", ["x", "w1", "b1"], ["h"], "fc1", IntAttr("transB", 1)));
        g.Node.Add(Node("Relu", ["h"], ["hr"], "relu1"));
        g.Node.Add(Node("Gemm", ["hr", "w2", "b2"], ["y"], "fc2", IntAttr("transB", 1)));
        return Model(g);
    }
}
