using System.Collections;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Validation;

/// <summary>Element types the validator feeds and reads (ONNX TensorProto.DataType values).</summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Naming", "CA1720:Identifier contains type name", Justification = "The ONNX element type names.")]
public enum TensorElementType
{
    /// <summary>Anything else (sequences, maps, optionals, 4-bit and 8-bit float types, ...).</summary>
    Other = 0,
    /// <summary>float32.</summary>
    Float = 1,
    /// <summary>uint8.</summary>
    UInt8 = 2,
    /// <summary>int8.</summary>
    Int8 = 3,
    /// <summary>uint16.</summary>
    UInt16 = 4,
    /// <summary>int16.</summary>
    Int16 = 5,
    /// <summary>int32.</summary>
    Int32 = 6,
    /// <summary>int64.</summary>
    Int64 = 7,
    /// <summary>string (model inputs only; values are fed as their invariant number text).</summary>
    String = 8,
    /// <summary>bool (0 = false, anything else = true).</summary>
    Bool = 9,
    /// <summary>float16.</summary>
    Float16 = 10,
    /// <summary>float64.</summary>
    Double = 11,
    /// <summary>uint32.</summary>
    UInt32 = 12,
    /// <summary>uint64.</summary>
    UInt64 = 13,
    /// <summary>bfloat16.</summary>
    BFloat16 = 16,
}

/// <summary>A model input or output: name, element type and shape (-1 for a dynamic or unknown dimension).</summary>
public sealed record TensorInfo(string Name, TensorElementType ElementType, IReadOnlyList<long> Shape)
{
    /// <summary>True when the first dimension is dynamic (rank &gt;= 1).</summary>
    public bool HasDynamicBatch => Shape.Count > 0 && Shape[0] < 0;

    /// <summary>"[-1,1,28,28] float" style text for messages.</summary>
    public string Describe() => "[" + string.Join(",", Shape) + "] " + ElementType.ToString().ToLowerInvariant();

    internal static TensorElementType MapOnnxType(int onnxType) => onnxType switch
    {
        >= 1 and <= 13 and not 8 or 16 => (TensorElementType)onnxType,
        _ => TensorElementType.Other,
    };

    /// <summary>True for the integer element types (bool excluded).</summary>
    public bool IsInteger => ElementType is TensorElementType.UInt8 or TensorElementType.Int8 or TensorElementType.UInt16 or TensorElementType.Int16
        or TensorElementType.Int32 or TensorElementType.Int64 or TensorElementType.UInt32 or TensorElementType.UInt64;
}

/// <summary>The graph inputs of a model that the data must feed (initializers excluded).</summary>
public sealed class ModelInputs : IReadOnlyList<TensorInfo>
{
    private readonly List<TensorInfo> inputs;

    /// <summary>Wraps a list of inputs.</summary>
    public ModelInputs(IEnumerable<TensorInfo> inputs)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        this.inputs = [.. inputs];
    }

    /// <summary>Number of inputs.</summary>
    public int Count => inputs.Count;

    /// <summary>Input by position.</summary>
    public TensorInfo this[int index] => inputs[index];

    /// <summary>Input by name, or null.</summary>
    public TensorInfo? Find(string name) => inputs.FirstOrDefault(i => i.Name == name);

    /// <summary>
    /// Reads the graph inputs from an ONNX model as an ONNX Runtime session lists them (<see cref="ModelRunner.Inputs"/>),
    /// without opening one: in graph order, inputs that are also initializers skipped (at IR 4 and later ORT makes them
    /// overridable initializers, below IR 4 constants; neither is an input to feed), -1 for a symbolic or unknown
    /// dimension, no dims for an unknown rank, string tensors as <see cref="TensorElementType.String"/>, and non-tensor
    /// inputs (optional, sequence, map) as <see cref="TensorElementType.Other"/>.
    /// </summary>
    public static ModelInputs FromModel(ModelProto model)
    {
        ArgumentNullException.ThrowIfNull(model);
        HashSet<string> initializers = [.. model.Graph.Initializer.Select(t => t.Name)];
        return new ModelInputs(model.Graph.Input.Where(i => !initializers.Contains(i.Name)).Select(i =>
            FromValueInfo(i) is { ElementType: TensorElementType.Other } info && i.Type?.TensorType?.ElemType == (int)TensorProto.Types.DataType.String
                ? info with { ElementType = TensorElementType.String }
                : FromValueInfo(i)));
    }

    /// <summary>Reads the graph outputs from an ONNX model.</summary>
    public static IReadOnlyList<TensorInfo> OutputsFromModel(ModelProto model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return [.. model.Graph.Output.Select(FromValueInfo)];
    }

    internal static TensorInfo FromValueInfo(ValueInfoProto value)
    {
        if (value.Type?.TensorType is not { } tensor)
        {
            return new TensorInfo(value.Name, TensorElementType.Other, []);
        }
        long[] shape = tensor.Shape == null
            ? []
            : [.. tensor.Shape.Dim.Select(d => d.ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue ? d.DimValue : -1L)];
        return new TensorInfo(value.Name, TensorInfo.MapOnnxType(tensor.ElemType), shape);
    }

    /// <inheritdoc/>
    public IEnumerator<TensorInfo> GetEnumerator() => inputs.GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}
