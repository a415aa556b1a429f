using System.Text.RegularExpressions;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Build.Tests;

/// <summary>
/// The README quick start must restore for a newcomer who follows it literally: the version it references must match
/// what build/pack.sh packs, and it must say how the app finds the local feed. (Checked end to end by hand: a fresh
/// app outside the repository built from the README text alone; see the commit that added this test.)
/// </summary>
[TestClass]
public sealed partial class ReadmeQuickStartTests
{
    [GeneratedRegex(@"<PackageReference Include=""CompressOnBuild"" Version=""(?<version>[^""]+)""")]
    private static partial Regex PackageReference();

    [TestMethod]
    public void QuickStartVersion_MatchesWhatPackShPacks()
    {
        string readme = File.ReadAllText(Path.Combine(Corpus.RepoRoot, "README.md"));
        string packSh = File.ReadAllText(Path.Combine(Corpus.RepoRoot, "build", "pack.sh"));
        string prefix = Regex.Match(File.ReadAllText(Path.Combine(Corpus.RepoRoot, "Directory.Build.props")), "<VersionPrefix>([^<]+)</VersionPrefix>").Groups[1].Value;
        Assert.IsFalse(string.IsNullOrEmpty(prefix));

        Match packDefault = Regex.Match(packSh, @"version=""\$\{1:-(?<v>[^$]+)\$\(date");
        Assert.IsTrue(packDefault.Success, "pack.sh's default version not found");
        string packed = packDefault.Groups["v"].Value + "20261202072617"; // what pack.sh makes, with a timestamp

        MatchCollection references = PackageReference().Matches(readme);
        Assert.IsNotEmpty(references, "the README quick start references the package");
        foreach (Match m in references)
        {
            string version = m.Groups["version"].Value;
            bool matches = version.EndsWith('*')
                ? packed.StartsWith(version[..^1], StringComparison.Ordinal) && version.StartsWith(prefix + "-", StringComparison.Ordinal)
                : version == packed;
            Assert.IsTrue(matches, $"README references CompressOnBuild {version}, which does not match what pack.sh packs ({packed})");
        }
        StringAssert.Contains(readme, "build/pack.sh");
        StringAssert.Contains(readme, "dotnet nuget add source", "the README must say how an app finds the local feed");
        StringAssert.Contains(readme, "artifacts/feed");
    }
}
