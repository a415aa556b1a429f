using System.Reflection;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Build.Tests;

/// <summary>Guards the diagnostics catalogue: DiagnosticCodes, Diagnostics.resx and docs/diagnostics.md agree.</summary>
[TestClass]
public sealed partial class DiagnosticsGuardTests
{
    private static readonly string[] Codes = typeof(DiagnosticCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Where(f => f.IsLiteral && f.FieldType == typeof(string))
        .Select(f => (string)f.GetRawConstantValue()!)
        .ToArray();

    private static Dictionary<string, string> ResxMessages()
    {
        XDocument resx = XDocument.Load(Path.Combine(Corpus.RepoRoot, "src", "Shared", "Diagnostics.resx"));
        return resx.Root!.Elements("data").ToDictionary(
            d => (string)d.Attribute("name")!,
            d => (string)d.Element("value")!);
    }

    [GeneratedRegex(@"^CMPR\d{4}$")]
    private static partial Regex CodePattern();

    [TestMethod]
    public void Codes_AreWellFormedAndUnique()
    {
        Assert.IsGreaterThan(20, Codes.Length);
        foreach (string code in Codes)
        {
            Assert.IsTrue(CodePattern().IsMatch(code), code);
        }
        string[] duplicates = Codes.GroupBy(c => c).Where(g => g.Count() > 1).Select(g => g.Key).ToArray();
        Assert.IsEmpty(duplicates, "duplicate codes: " + string.Join(", ", duplicates));
    }

    [TestMethod]
    public void EveryCode_HasAResxMessage_AndEveryMessageACode()
    {
        Dictionary<string, string> messages = ResxMessages();
        CollectionAssert.AreEquivalent(Codes, messages.Keys.ToArray());
    }

    [TestMethod]
    public void EveryMessage_StartsWithItsCode()
    {
        foreach ((string code, string message) in ResxMessages())
        {
            StringAssert.StartsWith(message, code + ": ", $"message of {code}");
        }
    }

    [TestMethod]
    public void EveryCode_IsDocumented()
    {
        string doc = File.ReadAllText(Path.Combine(Corpus.RepoRoot, "docs", "diagnostics.md"));
        var documented = Regex.Matches(doc, @"^## (CMPR\d{4})\b", RegexOptions.Multiline).Select(m => m.Groups[1].Value).ToList();
        CollectionAssert.AreEquivalent(Codes, documented, "docs/diagnostics.md needs one '## CMPRnnnn' section per code");
    }

    /// <summary>A code cited in README.md or docs/*.md is one the code base defines (no stale or mistyped number).</summary>
    [TestMethod]
    public void EveryCodeCitedInTheDocs_Exists()
    {
        IEnumerable<string> files = Directory.GetFiles(Path.Combine(Corpus.RepoRoot, "docs"), "*.md")
            .Append(Path.Combine(Corpus.RepoRoot, "README.md"))
            .Append(Path.Combine(Corpus.RepoRoot, "src", "CompressOnBuild.Tasks", "README.md"));
        foreach (string file in files)
        {
            foreach (Match m in Regex.Matches(File.ReadAllText(file), @"CMPR\d{4}"))
            {
                CollectionAssert.Contains(Codes, m.Value, $"{Path.GetFileName(file)} cites {m.Value}, which DiagnosticCodes does not define");
            }
        }
    }

    [TestMethod]
    public void EveryCode_HasTheAnchorItsHelpLinkPointsTo()
    {
        string doc = File.ReadAllText(Path.Combine(CompressOnBuild.Tests.Corpus.RepoRoot, "docs", "diagnostics.md"));
        foreach (string code in typeof(DiagnosticCodes).GetFields(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Static)
                     .Where(f => f.IsLiteral).Select(f => (string)f.GetRawConstantValue()!))
        {
            string link = CompressOnBuild.Tasks.TaskLogging.HelpLink(code);
            string anchor = link[(link.IndexOf('#', StringComparison.Ordinal) + 1)..];
            StringAssert.Contains(doc, $"<a id=\"{anchor}\"></a>", $"{code}: its help link {link} has no anchor in docs/diagnostics.md");
        }
    }

    [TestMethod]
    public void TaskAssembly_EmbedsTheMessages()
    {
        // The task formats its own errors from the resx embedded into CompressOnBuild.Tasks.dll.
        foreach (string code in Codes)
        {
            string text = DiagnosticCodes.Format(code, "a", "b", "c", "d");
            StringAssert.StartsWith(text, code + ": ");
            Assert.AreNotEqual(code + ": a b c d", text, $"{code} has no embedded message");
        }
    }
}
