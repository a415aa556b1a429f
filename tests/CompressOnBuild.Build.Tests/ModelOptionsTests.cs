using CompressOnBuild.Tasks;

namespace CompressOnBuild.Build.Tests;

[TestClass]
public sealed class ModelOptionsTests
{
    [TestMethod]
    [DataRow("MaxSizeKB", "max-size-kb")]
    [DataRow("OpTypesToQuantize", "op-types-to-quantize")]
    [DataRow("TuneTimeBudgetSeconds", "tune-time-budget-seconds")]
    [DataRow("Labels", "labels")]
    [DataRow("MinCompressionRatio", "min-compression-ratio")]
    [DataRow("CalibrationMethod", "calibration-method")]
    [DataRow("ActivationType", "activation-type")]
    [DataRow("PerChannel", "per-channel")]
    public void KebabCase_FollowsTheContract(string metadata, string option) =>
        Assert.AreEqual(option, ModelOption.ToKebabCase(metadata));

    [TestMethod]
    public void EveryMetadata_MapsToADistinctOption()
    {
        var names = ModelOptions.All.Select(o => o.OptionName).ToList();
        Assert.AreEqual(names.Count, names.Distinct(StringComparer.Ordinal).Count());
        Assert.AreEqual(25, names.Count);
    }

    [TestMethod]
    [DataRow("MinAgreement", "0.99", true)]
    [DataRow("MinAgreement", "1", true)]
    [DataRow("MinAgreement", "1.01", false)]
    [DataRow("MinAgreement", "0,99", false)]
    [DataRow("MaxAccuracyDrop", "-0.1", false)]
    [DataRow("MaxAccuracyDrop", "NaN", false)]
    [DataRow("MaxSizeKB", "0", false)]
    [DataRow("MaxSizeKB", "250", true)]
    [DataRow("ValidationSamples", "100", true)]
    [DataRow("ValidationSamples", "1.5", false)]
    [DataRow("ValidationSamples", "0", false)]
    [DataRow("Tune", "True", true)]
    [DataRow("Tune", "yes", false)]
    [DataRow("MinCosine", "-1", true)]
    [DataRow("ValidationData", "#data", false)]
    [DataRow("ValidationData", " data", false)]
    [DataRow("Quantization", "Int8", true)]
    [DataRow("PerChannel", "false", true)]
    [DataRow("PerChannel", "per-tensor", false)]
    [DataRow("ActivationType", "Int8", true)]
    public void Validate_AcceptsAndRejects(string metadata, string value, bool valid)
    {
        ModelOption option = ModelOptions.All.Single(o => o.MetadataName == metadata);
        string? problem = option.Validate(value);
        Assert.AreEqual(valid, problem == null, problem);
    }
}
