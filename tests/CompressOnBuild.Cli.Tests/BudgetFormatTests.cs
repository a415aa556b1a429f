namespace CompressOnBuild.Cli.Tests;

/// <summary>CMPR0401 prints the limit as the user wrote it and a measurement that cannot read like a pass.</summary>
[TestClass]
public sealed class BudgetFormatTests
{
    [TestMethod]
    public void Limit_IsPrintedAsWritten_NotRounded()
    {
        // Before: MinAgreement 0.99999 printed as "limit 1".
        (string measured, string limit) = Budgets.FormatBroken("MinAgreement", 0.9996, 0.99999);
        Assert.AreEqual("0.99999", limit);
        Assert.AreEqual("0.9996", measured);
    }

    [TestMethod]
    public void Measured_GetsAllDigits_WhenRoundingWouldReadAsAPass()
    {
        // A drop of 0.5004 points against a 0.5 budget rounds to "0.5 points": it would read as equal to the limit.
        (string measured, string limit) = Budgets.FormatBroken("MaxAccuracyDrop", 0.5004, 0.5);
        Assert.AreEqual("0.5 points", limit);
        Assert.AreEqual("0.5004 points", measured);

        (measured, limit) = Budgets.FormatBroken("MinCompressionRatio", 3.9999, 4);
        Assert.AreEqual("4x", limit);
        Assert.AreEqual("3.9999x", measured);
    }

    [TestMethod]
    public void Measured_KeepsItsUsualRounding_WhenItAlreadyReadsAsBroken()
    {
        (string measured, string limit) = Budgets.FormatBroken("MaxSizeKB", 1234.5678, 1000);
        Assert.AreEqual("1234.6 KB", measured);
        Assert.AreEqual("1000 KB", limit);
    }
}
