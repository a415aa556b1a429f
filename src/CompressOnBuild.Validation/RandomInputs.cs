namespace CompressOnBuild.Validation;

/// <summary>
/// A deterministic stand-in data set from the runner's input metadata alone: dynamic dimensions 1, values by element
/// type as <see cref="SyntheticInputs"/> makes them (floats uniform [0, 1), bool random, integers 1, uint8 0..255).
/// The compress command uses <see cref="SyntheticInputs.Create"/>, which also reads the graph and probes the model.
/// </summary>
public static class RandomInputs
{
    public static Dataset Create(ModelInputs inputs, int samples, int seed) => SyntheticInputs.CreateUnprobed(inputs, samples, seed);
}
