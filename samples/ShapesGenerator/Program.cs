using System.Globalization;
using CompressOnBuild.Samples.Shapes;

// Usage: ShapesGenerator [--out DIR] [--train N] [--val N] [--epochs N] [--hidden N] [--seed N]
// Default output: samples/ShapesApp/generated (relative to the current directory if it is the repository root,
// else the current directory's generated/ folder).
string output = Directory.Exists(Path.Combine("samples", "ShapesApp"))
    ? Path.Combine("samples", "ShapesApp", "generated")
    : "generated";
var options = new GeneratorOptions { OutputDirectory = output, Log = Console.Out };
for (int i = 0; i < args.Length; i++)
{
    string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
    int NextInt() => int.Parse(Next(), NumberStyles.None, CultureInfo.InvariantCulture);
    options = args[i] switch
    {
        "--out" => options with { OutputDirectory = Next() },
        "--train" => options with { TrainCount = NextInt() },
        "--val" => options with { ValidationCount = NextInt() },
        "--epochs" => options with { Epochs = NextInt() },
        "--hidden" => options with { Hidden = NextInt() },
        "--seed" => options with { Seed = NextInt() },
        _ => throw new ArgumentException($"unknown argument '{args[i]}'"),
    };
}
GeneratorResult result = ShapesDataset.Generate(options);
Console.WriteLine($"ShapesGenerator: done in {result.Elapsed.TotalSeconds:F1} s; validation accuracy {result.ValidationAccuracy:P1}.");
return 0;
