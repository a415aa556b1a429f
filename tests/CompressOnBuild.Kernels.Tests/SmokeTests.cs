namespace CompressOnBuild.Kernels.Tests;

[TestClass]
public sealed class AssemblySetup
{
    [AssemblyInitialize]
    public static void Init(TestContext context) => _ = context;
}
