using System.Diagnostics;

namespace CompressOnBuild.Samples.Shapes;

public sealed record GeneratorOptions
{
    public required string OutputDirectory { get; init; }

    public int TrainCount { get; init; } = 4000;

    public int ValidationCount { get; init; } = 600;

    public int Hidden { get; init; } = 128;

    public int Epochs { get; init; } = 6;

    public int Seed { get; init; } = 20261123;

    public TextWriter? Log { get; init; }
}

public sealed record GeneratorResult(
    string ModelPath,
    string ValidationImagesPath,
    string ValidationLabelsPath,
    double TrainAccuracy,
    double ValidationAccuracy,
    TimeSpan Elapsed);

/// <summary>Generates the data set, trains the classifier and writes the sample's files.</summary>
public static class ShapesDataset
{
    public const string ModelFile = "shapes.onnx";

    public const string ValidationImagesFile = "val-images-idx3-ubyte";

    public const string ValidationLabelsFile = "val-labels-idx1-ubyte";

    public static (byte[] Pixels, int[] Labels) Draw(int count, int seed)
    {
        var rng = new Random(seed);
        var pixels = new byte[count * ShapeRenderer.Pixels];
        var labels = new int[count];
        for (int n = 0; n < count; n++)
        {
            labels[n] = n % 4;
            ShapeRenderer.Render((ShapeKind)labels[n], rng, pixels.AsSpan(n * ShapeRenderer.Pixels, ShapeRenderer.Pixels));
        }
        return (pixels, labels);
    }

    public static float[] ToInputs(byte[] pixels) => pixels.Select(p => p / 255f).ToArray();

    public static GeneratorResult Generate(GeneratorOptions options)
    {
        var clock = Stopwatch.StartNew();
        TextWriter log = options.Log ?? TextWriter.Null;
        Directory.CreateDirectory(options.OutputDirectory);

        (byte[] trainPixels, int[] trainLabels) = Draw(options.TrainCount, options.Seed);
        (byte[] valPixels, int[] valLabels) = Draw(options.ValidationCount, options.Seed + 1);
        log.WriteLine($"Drew {options.TrainCount} training and {options.ValidationCount} validation images (28x28, 4 classes).");

        float[] trainX = ToInputs(trainPixels);
        float[] valX = ToInputs(valPixels);
        var mlp = new Mlp(ShapeRenderer.Pixels, options.Hidden, 4, options.Seed);
        mlp.Train(trainX, trainLabels, options.Epochs, batchSize: 32, learningRate: 0.05f, seed: options.Seed,
            onEpoch: (epoch, loss) => log.WriteLine($"  epoch {epoch}/{options.Epochs}: loss {loss:F4}"));
        double trainAccuracy = mlp.Accuracy(trainX, trainLabels);
        double valAccuracy = mlp.Accuracy(valX, valLabels);
        log.WriteLine($"MLP 784-{options.Hidden}-4: train accuracy {trainAccuracy:P1}, validation accuracy {valAccuracy:P1}.");

        string model = Path.Combine(options.OutputDirectory, ModelFile);
        string images = Path.Combine(options.OutputDirectory, ValidationImagesFile);
        string labels = Path.Combine(options.OutputDirectory, ValidationLabelsFile);
        OnnxExport.Write(mlp, model);
        Idx.WriteImages(images, valPixels, options.ValidationCount, ShapeRenderer.Size, ShapeRenderer.Size);
        Idx.WriteLabels(labels, valLabels);
        File.WriteAllLines(Path.Combine(options.OutputDirectory, "classes.txt"), ShapeRenderer.ClassNames);
        log.WriteLine($"Wrote {model} ({new FileInfo(model).Length / 1024} KiB), {images} and {labels}.");
        return new GeneratorResult(model, images, labels, trainAccuracy, valAccuracy, clock.Elapsed);
    }
}
