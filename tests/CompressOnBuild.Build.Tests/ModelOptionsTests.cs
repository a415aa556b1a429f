using System.Text.RegularExpressions;
using System.Xml.Linq;
using CompressOnBuild.Tasks;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Build.Tests;

/// <summary>The option table (src/Shared/OptionTable.cs) as the task sees it, and the documents that must agree with it.</summary>
[TestClass]
public sealed partial class ModelOptionsTests
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
        Assert.AreEqual(option, OptionSpec.ToKebabCase(metadata));

    [TestMethod]
    public void EveryMetadata_MapsToADistinctOption_NamedByItsKebabCase()
    {
        var names = ModelOptions.All.Select(o => o.Cli).ToList();
        Assert.AreEqual(names.Count, names.Distinct(StringComparer.Ordinal).Count());
        foreach (OptionSpec option in ModelOptions.All)
        {
            Assert.AreEqual("--" + OptionSpec.ToKebabCase(option.Name), option.Cli, option.Name);
        }
        CollectionAssert.AreEquivalent(new[] { "CalibrationData", "ValidationData", "Labels", "Tokenizer" }, ModelOptions.DataMetadata.ToArray());
    }

    [TestMethod]
    [DataRow("MinAgreement", "0.99", true)]
    [DataRow("MinAgreement", "1", true)]
    [DataRow("MinAgreement", "1.01", false)]
    [DataRow("MinAgreement", "0,99", false)]
    [DataRow("MaxAccuracyDrop", "-0.1", false)]
    [DataRow("MaxAccuracyDrop", "NaN", false)]
    [DataRow("MaxAccuracyDrop", "101", false)]
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
    [DataRow("ActivationType", "uint8", true)]
    [DataRow("ActivationType", "Int16", false)]
    [DataRow("TuneTimeBudgetSeconds", "0", false)]
    [DataRow("TuneTimeBudgetSeconds", "86401", false)]
    public void Validate_AcceptsAndRejects(string metadata, string value, bool valid)
    {
        OptionSpec option = ModelOptions.All.Single(o => o.Name == metadata);
        string? problem = option.Validate(value);
        Assert.AreEqual(valid, problem == null, problem);
    }

    [TestMethod]
    [DataRow("MaxAcuracyDrop", "MaxAccuracyDrop")]
    [DataRow("maxaccuracydrop", "MaxAccuracyDrop")]
    [DataRow("MinAgrement", "MinAgreement")]
    [DataRow("ValidationDate", "ValidationData")]
    [DataRow("Quantisation", "Quantization")]
    [DataRow("MaxSizeKb", "MaxSizeKB")]
    [DataRow("Lables", "Labels")]
    [DataRow("Tun", "Tune")]
    [DataRow("Name", null)]
    [DataRow("Owner", null)]
    [DataRow("Checksum", null)]
    [DataRow("Notes", null)]
    public void Suggest_FindsTyposOnly(string name, string? expected) =>
        Assert.AreEqual(expected, OptionTable.Suggest(name, ModelOptions.All.Select(o => o.Name)));

    [GeneratedRegex(@"^\|\s*(?<name>[^|]*?)\s*\|\s*(?<cli>[^|]*?)\s*\|\s*(?<default>[^|]*?)\s*\|")]
    private static partial Regex TableRow();

    /// <summary>The (name, CLI, default) cells of the option rows of one Markdown table in docs/options.md.</summary>
    private static List<(string Name, string Cli, string Default)> DocRows(string section)
    {
        string[] lines = File.ReadAllLines(Path.Combine(Corpus.RepoRoot, "docs", "options.md"));
        int start = Array.FindIndex(lines, l => l.StartsWith(section, StringComparison.Ordinal));
        Assert.IsGreaterThanOrEqualTo(0, start, section + " not found in docs/options.md");
        var rows = new List<(string, string, string)>();
        bool inTable = false;
        for (int i = start; i < lines.Length; i++)
        {
            if (!lines[i].StartsWith('|'))
            {
                if (inTable)
                {
                    break;
                }
                continue;
            }
            inTable = true;
            Match m = TableRow().Match(lines[i]);
            string name = m.Groups["name"].Value.Replace("`", "", StringComparison.Ordinal);
            if (!m.Success || name is "metadata" or "MSBuild property" || name.StartsWith("---", StringComparison.Ordinal))
            {
                continue;
            }
            rows.Add((name, m.Groups["cli"].Value.Replace("`", "", StringComparison.Ordinal), m.Groups["default"].Value.Replace("`", "", StringComparison.Ordinal)));
        }
        return rows;
    }

    [TestMethod]
    public void OptionsDoc_ListsExactlyTheTablesItemOptions()
    {
        List<(string Name, string Cli, string Default)> rows = DocRows("# Options");
        string[] expected = ModelOptions.All.Select(o => $"{o.Name} | {o.Cli} | {o.Default}")
            .Concat(OptionTable.BuildOnlyMetadata.Where(m => rows.Any(r => r.Name == m)).Select(m => rows.First(r => r.Name == m)).Select(r => $"{r.Name} | {r.Cli} | {r.Default}"))
            .ToArray();
        CollectionAssert.AreEquivalent(expected, rows.Select(r => $"{r.Name} | {r.Cli} | {r.Default}").ToArray(),
            "docs/options.md rows: " + string.Join("; ", rows.Select(r => $"{r.Name} | {r.Cli} | {r.Default}")));
    }

    [TestMethod]
    public void OptionsDoc_ListsExactlyTheTablesGlobalOptions()
    {
        string Dash(string s) => s.Length == 0 ? "-" : s;
        string[] expected = OptionTable.GlobalOptions.Select(o => $"{Dash(o.Name)} | {Dash(o.Cli)} | {o.Default}").ToArray();
        string[] documented = DocRows("## Global settings").Select(r => $"{r.Name} | {r.Cli} | {r.Default}").ToArray();
        CollectionAssert.AreEquivalent(expected, documented, "docs/options.md global rows: " + string.Join("; ", documented));
    }

    [TestMethod]
    public void PackageProps_DeclareEveryItemOption()
    {
        XDocument props = XDocument.Load(Path.Combine(Corpus.RepoRoot, "src", "CompressOnBuild.Tasks", "build", "CompressOnBuild.props"));
        string[] declared = props.Descendants("CompressModel").Single(e => e.Parent?.Name == "ItemDefinitionGroup")
            .Elements().Select(e => e.Name.LocalName).ToArray();
        CollectionAssert.AreEquivalent(ModelOptions.All.Select(o => o.Name).Concat(["Link"]).ToArray(), declared);
    }

    [TestMethod]
    public void EveryTableProperty_IsDefinedByTheTargets()
    {
        string targets = File.ReadAllText(Path.Combine(Corpus.RepoRoot, "src", "CompressOnBuild.Tasks", "build", "CompressOnBuild.targets"));
        foreach (OptionSpec option in OptionTable.GlobalOptions.Where(o => o.Name.Length > 0))
        {
            StringAssert.Contains(targets, "$(" + option.Name + ")", option.Name + " is in the option table but the targets never read it");
        }
    }
}
