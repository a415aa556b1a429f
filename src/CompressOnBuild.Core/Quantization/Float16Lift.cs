using CompressOnBuild.Core.Graph;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using DataType = CompressOnBuild.Onnx.TensorProto.Types.DataType;

namespace CompressOnBuild.Core.Quantization;

/// <summary>
/// Lets the int8/int4 passes quantize a model whose weights are float16. <see cref="Apply"/> lifts the model to float32
/// compute in place: float16 initializers and Constant tensors become float32 (exact), Casts to float16 and float16
/// dtype attributes become float32, float16 value_info and subgraph signatures are retyped, and the main graph's
/// float16 inputs and outputs keep their type through Casts at the edges (so the app feeds and reads the same
/// tensors). The pass then quantizes from the float16 values. <see cref="Restore"/> stores every lifted weight the pass
/// left float back as its original float16 tensor behind a Cast (ORT folds it at load), so those weights do not
/// grow in the file. The layers left float compute in float32, which on CPU is what ONNX Runtime does for most
/// float16 operators anyway (its CPU kernels are largely float32-only).
/// </summary>
internal sealed class Float16Lift
{
    private readonly List<(GraphProto Graph, TensorProto Lifted, TensorProto Original)> _initializers = [];
    private readonly List<(GraphProto Graph, NodeProto Constant, TensorProto Lifted, TensorProto Original)> _constants = [];
    private readonly ModelProto _before;

    private Float16Lift(ModelProto before) => _before = before;

    /// <summary>Float16 weight tensors (initializers and Constant values) the lift turned into float32.</summary>
    public int LiftedTensors => _initializers.Count + _constants.Count;

    /// <summary>Names of the lifted model mapped to the name of the same values in the original (the Casts at the graph edges).</summary>
    public Dictionary<string, string> OriginalNames { get; } = new(StringComparer.Ordinal);

    private static readonly HashSet<string> DtypeOps = new(StringComparer.Ordinal)
    {
        "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
    };

    /// <summary>The report line of a pass that quantized a model with float16 weights.</summary>
    public static string Describe(int lifted, int restored) => string.Create(System.Globalization.CultureInfo.InvariantCulture,
        $"quantized from float16 weights ({lifted - restored} of {lifted} float16 tensors replaced; the {restored} left float stay float16 in the file, cast to float32 at load); float16 compute now runs in float32, inputs and outputs keep float16");

    /// <summary><paramref name="calibration"/> with each range also under the lifted model's name for the same values.</summary>
    public CalibrationResult Alias(CalibrationResult calibration)
    {
        if (OriginalNames.Count == 0)
        {
            return calibration;
        }
        var ranges = new Dictionary<string, TensorRange>(calibration.Ranges, StringComparer.Ordinal);
        foreach ((string lifted, string original) in OriginalNames)
        {
            if (calibration.Ranges.TryGetValue(original, out TensorRange r))
            {
                ranges[lifted] = r;
            }
        }
        return new CalibrationResult { Ranges = ranges, Method = calibration.Method, Samples = calibration.Samples };
    }

    /// <summary>Whether any graph of <paramref name="model"/> holds a float16 initializer or Constant tensor.</summary>
    public static bool HasFloat16Weights(ModelProto model) => ModelWalker.Tensors(model).Any(t => t.DataType == (int)DataType.Float16);

    /// <summary>Lifts <paramref name="model"/> in place; null (nothing changed) when it has no float16 weights.</summary>
    public static Float16Lift? Apply(ModelProto model, string displayName)
    {
        if (model.Graph == null || !HasFloat16Weights(model))
        {
            return null;
        }
        GraphProto main = model.Graph;
        var produced = new HashSet<string>(main.Node.SelectMany(n => n.Output), StringComparer.Ordinal);
        if (main.Output.Any(o => IsHalf(o) && !produced.Contains(o.Name)))
        {
            return null; // a float16 output that is an initializer or an input: left to the pass as it is
        }
        var lift = new Float16Lift(model.Clone());
        var names = new PassGraph(model);
        foreach ((GraphProto graph, int depth) in ModelWalker.Graphs(model).ToList())
        {
            for (int i = 0; i < graph.Initializer.Count; i++)
            {
                TensorProto t = graph.Initializer[i];
                if (t.DataType == (int)DataType.Float16)
                {
                    TensorProto lifted = ToFloat(t, displayName);
                    graph.Initializer[i] = lifted;
                    lift._initializers.Add((graph, lifted, t));
                }
            }
            foreach (NodeProto n in graph.Node)
            {
                LiftNode(lift, graph, n, displayName);
            }
            IEnumerable<ValueInfoProto> typed = depth == 0 ? graph.ValueInfo : graph.ValueInfo.Concat(graph.Input).Concat(graph.Output);
            foreach (ValueInfoProto v in typed)
            {
                Retype(v);
            }
            if (depth == 0 && model.IrVersion < 4)
            {
                // IR 3 declares initializers as inputs too: those declarations follow their (now float32) tensors.
                var initializers = new HashSet<string>(graph.Initializer.Select(t => t.Name), StringComparer.Ordinal);
                foreach (ValueInfoProto v in graph.Input.Where(v => initializers.Contains(v.Name)))
                {
                    Retype(v);
                }
            }
        }

        var initializerNames = new HashSet<string>(main.Initializer.Select(t => t.Name), StringComparer.Ordinal);
        var front = new List<NodeProto>();
        foreach (ValueInfoProto input in main.Input.Where(v => IsHalf(v) && !initializerNames.Contains(v.Name)))
        {
            string lifted = names.Unique(input.Name + "_fp32");
            Rename(model, input.Name, lifted, inputsOnly: true);
            front.Add(names.Cast(input.Name, lifted, DataType.Float));
            lift.OriginalNames[lifted] = input.Name;
        }
        var back = new List<NodeProto>();
        var graphInputs = new HashSet<string>(main.Input.Select(v => v.Name), StringComparer.Ordinal);
        foreach (ValueInfoProto output in main.Output.Where(v => IsHalf(v) && !graphInputs.Contains(v.Name)))
        {
            string lifted = names.Unique(output.Name + "_fp32");
            Rename(model, output.Name, lifted, inputsOnly: false);
            back.Add(names.Cast(lifted, output.Name, DataType.Float16));
            lift.OriginalNames[lifted] = output.Name;
        }
        if (front.Count + back.Count > 0)
        {
            var nodes = front.Concat(main.Node).Concat(back).ToList();
            main.Node.Clear();
            main.Node.AddRange(nodes);
        }
        PassGraph.EnsureOpset(model, "", 6); // Cast with the 'to' attribute
        return lift;
    }

    /// <summary>
    /// Ends the lift after the pass: when it quantized nothing (<paramref name="changed"/> false) the model goes back to
    /// exactly what it was; otherwise every lifted weight still in the model unchanged (its layer stayed float) is put
    /// back as its original float16 tensor behind a Cast to float32. Returns how many weights were restored.
    /// </summary>
    public int Finish(ModelProto model, bool changed)
    {
        if (!changed)
        {
            model.Graph = _before.Graph;
            model.IrVersion = _before.IrVersion;
            model.OpsetImport.Clear();
            model.OpsetImport.AddRange(_before.OpsetImport);
            return 0;
        }
        var names = new PassGraph(model);
        int restored = 0;
        var byGraph = new Dictionary<GraphProto, List<(TensorProto Lifted, TensorProto Original)>>(ReferenceEqualityComparer.Instance);
        foreach ((GraphProto g, TensorProto l, TensorProto o) in _initializers)
        {
            if (!byGraph.TryGetValue(g, out var list))
            {
                byGraph[g] = list = [];
            }
            list.Add((l, o));
        }
        foreach ((GraphProto graph, var group) in byGraph)
        {
            var position = new Dictionary<TensorProto, int>(ReferenceEqualityComparer.Instance);
            for (int i = 0; i < graph.Initializer.Count; i++)
            {
                position.TryAdd(graph.Initializer[i], i);
            }
            var casts = new List<NodeProto>();
            foreach ((TensorProto lifted, TensorProto original) in group)
            {
                if (!position.TryGetValue(lifted, out int index))
                {
                    continue;
                }
                TensorProto half = original.Clone();
                half.Name = names.Unique(lifted.Name + "_fp16");
                graph.Initializer[index] = half;
                casts.Add(names.Cast(half.Name, lifted.Name, DataType.Float));
                restored++;
            }
            if (casts.Count > 0)
            {
                var nodes = casts.Concat(graph.Node).ToList();
                graph.Node.Clear();
                graph.Node.AddRange(nodes);
            }
        }
        var constants = new Dictionary<NodeProto, (TensorProto Lifted, TensorProto Original)>(ReferenceEqualityComparer.Instance);
        foreach ((_, NodeProto constant, TensorProto lifted, TensorProto original) in _constants)
        {
            constants[constant] = (lifted, original);
        }
        var constantGraphs = new HashSet<GraphProto>(_constants.Select(c => c.Graph), ReferenceEqualityComparer.Instance);
        foreach (GraphProto graph in constantGraphs)
        {
            var nodes = new List<NodeProto>(graph.Node.Count);
            foreach (NodeProto n in graph.Node)
            {
                nodes.Add(n);
                if (!constants.TryGetValue(n, out var c) || n.Output.Count != 1
                    || n.Attribute.FirstOrDefault(a => a.Name == "value") is not { } value || !ReferenceEquals(value.T, c.Lifted))
                {
                    continue;
                }
                value.T = c.Original;
                string output = n.Output[0];
                n.Output[0] = names.Unique(output + "_fp16");
                nodes.Add(names.Cast(n.Output[0], output, DataType.Float));
                restored++;
            }
            graph.Node.Clear();
            graph.Node.AddRange(nodes);
        }
        if (restored > 0)
        {
            PassGraph.DropInitializerInputs(model); // IR 3 input declarations of the renamed initializers go (IR 4 needs none)
        }
        return restored;
    }

    private static void LiftNode(Float16Lift lift, GraphProto graph, NodeProto n, string displayName)
    {
        if (!OnnxNames.IsDefaultDomain(n))
        {
            return;
        }
        foreach (AttributeProto a in n.Attribute)
        {
            if (n.OpType == "Constant" && a.Name == "value" && a.T is { DataType: (int)DataType.Float16 } t)
            {
                TensorProto lifted = ToFloat(t, displayName);
                a.T = lifted;
                lift._constants.Add((graph, n, lifted, t));
            }
            else if (n.OpType == "ConstantOfShape" && a.Name == "value" && a.T is { DataType: (int)DataType.Float16 } fill)
            {
                a.T = ToFloat(fill, displayName);
            }
            else if ((n.OpType == "Cast" && a.Name == "to") || (DtypeOps.Contains(n.OpType) && a.Name == "dtype"))
            {
                if (a.I == (long)DataType.Float16)
                {
                    a.I = (long)DataType.Float;
                }
            }
        }
    }

    private static TensorProto ToFloat(TensorProto t, string displayName)
    {
        TensorProto lifted = TensorUtil.FromFloats(t.Name, PassGraph.Floats(t, displayName), [.. t.Dims]);
        lifted.DocString = t.DocString;
        return lifted;
    }

    private static bool IsHalf(ValueInfoProto v) => v.Type?.TensorType?.ElemType == (int)DataType.Float16;

    private static void Retype(ValueInfoProto v)
    {
        if (IsHalf(v))
        {
            v.Type.TensorType.ElemType = (int)DataType.Float;
        }
    }

    /// <summary>Renames the value <paramref name="from"/> in every node of every graph: inputs, and (unless <paramref name="inputsOnly"/>) outputs.</summary>
    private static void Rename(ModelProto model, string from, string to, bool inputsOnly)
    {
        foreach ((GraphProto graph, int depth) in ModelWalker.Graphs(model))
        {
            foreach (NodeProto n in graph.Node)
            {
                for (int i = 0; i < n.Input.Count; i++)
                {
                    if (n.Input[i] == from)
                    {
                        n.Input[i] = to;
                    }
                }
                if (!inputsOnly && depth == 0)
                {
                    for (int i = 0; i < n.Output.Count; i++)
                    {
                        if (n.Output[i] == from)
                        {
                            n.Output[i] = to;
                        }
                    }
                }
            }
            if (depth > 0)
            {
                foreach (ValueInfoProto o in graph.Output.Where(o => o.Name == from))
                {
                    o.Name = to; // a subgraph returning an outer value by name
                }
            }
        }
        foreach (ValueInfoProto v in model.Graph.ValueInfo.Where(v => v.Name == from))
        {
            v.Name = to;
        }
    }
}
