using System.Buffers.Binary;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

// Loads the model that the build shipped (CompressOnBuild replaced generated/shapes.onnx in the output with
// its compressed version) and classifies validation images with ONNX Runtime.
string dir = AppContext.BaseDirectory;
string modelPath = Path.Combine(dir, "generated", "shapes.onnx");
string[] classes = File.ReadAllLines(Path.Combine(dir, "generated", "classes.txt"));
(byte[] pixels, int count) = ReadImages(Path.Combine(dir, "generated", "val-images-idx3-ubyte"));
byte[] labels = File.ReadAllBytes(Path.Combine(dir, "generated", "val-labels-idx1-ubyte"))[8..];

using var session = new InferenceSession(modelPath);
string input = session.InputMetadata.Keys.First();
Console.WriteLine($"ShapesApp: model {modelPath} ({new FileInfo(modelPath).Length / 1024} KiB)");

int correct = 0;
// One image per run, as the build's validation measures (batch 1): dynamic int8 quantizes each run's activations with
// that run's own range, so a batched run would give slightly different scores from the ones the build printed.
const int batch = 1;
for (int start = 0; start < count; start += batch)
{
    int n = Math.Min(batch, count - start);
    var tensor = new DenseTensor<float>([n, 784]);
    for (int i = 0; i < n * 784; i++)
    {
        tensor.Buffer.Span[i] = pixels[start * 784 + i] / 255f;
    }
    using IDisposableReadOnlyCollection<DisposableNamedOnnxValue> results =
        session.Run([NamedOnnxValue.CreateFromTensor(input, tensor)]);
    Tensor<float> logits = results.First().AsTensor<float>();
    for (int s = 0; s < n; s++)
    {
        int predicted = 0;
        for (int c = 1; c < classes.Length; c++)
        {
            if (logits[s, c] > logits[s, predicted])
            {
                predicted = c;
            }
        }
        int truth = labels[start + s];
        correct += predicted == truth ? 1 : 0;
        if (start + s < 8)
        {
            Console.WriteLine($"  image {start + s}: {classes[predicted],-8} (truth: {classes[truth]}){(predicted == truth ? "" : "  <- wrong")}");
        }
    }
}
Console.WriteLine($"ShapesApp: accuracy of the shipped model on {count} validation images: {100.0 * correct / count:F1}%");

static (byte[] Pixels, int Count) ReadImages(string path)
{
    byte[] bytes = File.ReadAllBytes(path);
    int count = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(4));
    return (bytes[16..], count);
}
