namespace CompressOnBuild.Kernels.Tests;

[TestClass]
public sealed class AssemblySetup
{
    [AssemblyInitialize]
    public static void Init(TestContext context) => _ = context;
}

[TestClass]
public sealed class Smoke
{
    [TestMethod]
    public void One() => Assert.AreEqual(4, int.Parse("4", System.Globalization.CultureInfo.InvariantCulture));
}
