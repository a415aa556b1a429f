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

    /// <summary>A float16 initializer holding <paramref name="values"/> rounded to float16, inline (raw data).</summary>
    public static TensorProto Float16(string name, ReadOnlySpan<float> values, params long[] dims)
    {
        var h = new Half[values.Length];
        for (int i = 0; i < h.Length; i++)
        {
            h[i] = (Half)values[i];
        }
        return TensorUtil.FromRaw(name, TensorProto.Types.DataType.Float16, System.Runtime.InteropServices.MemoryMarshal.AsBytes(h.AsSpan()), dims);
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

    /// <summary>
    /// A deep chain of <paramref name="layers"/> Linear layers as exporters write them, x -> MatMul(w_i [width, width])
    /// -> Add(b_i) -> ... -> y, with a value_info entry for every intermediate value: the shape of a large graph
    /// (10^4-10^5 nodes) for scaling tests and benchmarks.
    /// </summary>
    public static ModelProto MatMulChain(int layers, int width = 4)
    {
        var g = new GraphProto { Name = "chain" };
        g.Input.Add(FloatValue("x", "N", width));
        string previous = "x";
        float[] w = RandomFloats(width * width, 1, 0.5f);
        float[] b = RandomFloats(width, 2, 0.1f);
        for (int i = 0; i < layers; i++)
        {
            string mm = "mm" + i.ToString(System.Globalization.CultureInfo.InvariantCulture);
            string y = i == layers - 1 ? "y" : "h" + i.ToString(System.Globalization.CultureInfo.InvariantCulture);
            g.Initializer.Add(TensorUtil.FromFloats("w" + mm, w, width, width));
            g.Initializer.Add(TensorUtil.FromFloats("b" + mm, b, width));
            g.Node.Add(Node("MatMul", [previous, "w" + mm], [mm + "_out"], mm));
            g.Node.Add(Node("Add", [mm + "_out", "b" + mm], [y], mm + "_add"));
            g.ValueInfo.Add(FloatValue(mm + "_out", "N", width));
            if (y != "y")
            {
                g.ValueInfo.Add(FloatValue(y, "N", width));
            }
            previous = y;
        }
        g.Output.Add(FloatValue("y", "N", width));
        return Model(g);
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

    /// <summary>
    /// A BERT-shaped encoder: input_ids, attention_mask, token_type_ids int64 [N,S] -&gt; Gather(word embeddings) + Gather(type
    /// embeddings) -&gt; MatMul W[dim,dim] -&gt; Tanh, times the attention mask -&gt; last_hidden_state float [N,S,dim] (per token).
    /// </summary>
    public static ModelProto Encoder(int vocab, int dim = 16, int seed = 5, object? sequence = null)
    {
        sequence ??= "S";
        var g = new GraphProto { Name = "encoder" };
        foreach (string name in new[] { "input_ids", "attention_mask", "token_type_ids" })
        {
            ValueInfoProto v = FloatValue(name, "N", sequence);
            v.Type.TensorType.ElemType = (int)TensorProto.Types.DataType.Int64;
            g.Input.Add(v);
        }
        g.Output.Add(FloatValue("last_hidden_state", "N", sequence, dim));
        g.Initializer.Add(TensorUtil.FromFloats("word_embeddings", RandomFloats(vocab * dim, seed, 1f), vocab, dim));
        g.Initializer.Add(TensorUtil.FromFloats("type_embeddings", RandomFloats(2 * dim, seed + 1, 0.1f), 2, dim));
        g.Initializer.Add(TensorUtil.FromFloats("w", RandomFloats(dim * dim, seed + 2, 0.5f), dim, dim));
        var axes = new TensorProto { Name = "axes", DataType = (int)TensorProto.Types.DataType.Int64 };
        axes.Dims.Add(1);
        axes.Int64Data.Add(2);
        g.Initializer.Add(axes);
        g.Node.Add(Node("Gather", ["word_embeddings", "input_ids"], ["we"], "word_gather"));
        g.Node.Add(Node("Gather", ["type_embeddings", "token_type_ids"], ["te"], "type_gather"));
        g.Node.Add(Node("Add", ["we", "te"], ["e"], "add"));
        g.Node.Add(Node("MatMul", ["e", "w"], ["h"], "proj"));
        g.Node.Add(Node("Tanh", ["h"], ["ht"], "tanh"));
        g.Node.Add(Node("Cast", ["attention_mask"], ["maskf"], "cast", IntAttr("to", (long)TensorProto.Types.DataType.Float)));
        g.Node.Add(Node("Unsqueeze", ["maskf", "axes"], ["mask3"], "unsqueeze"));
        g.Node.Add(Node("Mul", ["ht", "mask3"], ["last_hidden_state"], "masked"));
        return Model(g);
    }
}
