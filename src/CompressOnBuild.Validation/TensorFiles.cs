using CompressOnBuild.Core;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using Google.Protobuf;

namespace CompressOnBuild.Validation;

/// <summary>Reads ONNX TensorProto files (input_*.pb / output_*.pb) as float tensors.</summary>
internal static class TensorFiles
{
    public static TensorData Read(string file)
    {
        TensorProto proto;
        try
        {
            proto = TensorProto.Parser.ParseFrom(Core.IO.InputFiles.ReadAll(file, Array.MaxLength,
                (why, inner) => CompressException.ForFile(file, inner ?? new IOException(why), DiagnosticCodes.DataUnreadable, file, why)));
        }
        catch (Exception e) when (e is InvalidProtocolBufferException or IOException or UnauthorizedAccessException)
        {
            throw CompressException.ForFile(file, e, DiagnosticCodes.DataUnreadable, file, e.Message);
        }
        try
        {
            return new TensorData(ToFloats(proto), [.. proto.Dims]) { Name = proto.Name };
        }
        catch (NotSupportedException e)
        {
            throw CompressException.ForFile(file, e, DiagnosticCodes.DataUnreadable, file, e.Message);
        }
    }

    private static float[] ToFloats(TensorProto t)
    {
        try
        {
            return (TensorProto.Types.DataType)t.DataType switch
            {
                TensorProto.Types.DataType.Float or TensorProto.Types.DataType.Float16 or TensorProto.Types.DataType.Bfloat16
                    or TensorProto.Types.DataType.Double => TensorUtil.ToFloatArray(t),
                _ => [.. TensorUtil.ToInt64Array(t).Select(v => (float)v)],
            };
        }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException or OverflowException)
        {
            throw new NotSupportedException(e.Message, e);
        }
    }
}
