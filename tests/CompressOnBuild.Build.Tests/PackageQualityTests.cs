using System.IO.Compression;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using System.Text;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Build.Tests;

/// <summary>
/// What is inside the package (the .nupkg the class fixture packed), how its PDBs are built, and whether packing
/// is reproducible. The SDK's own package validation (EnablePackageValidation) compares lib/ref/runtimes assets
/// only, which this tools/-only package does not have, so these checks do the real work.
/// </summary>
public sealed partial class PackageIntegrationTests
{
    /// <summary>pack.sh fails above the same limit (MAX_PACKAGE_KB). ONNX Runtime's native code alone is 17+ MB.</summary>
    private const long MaxPackageBytes = 2048 * 1024;

    private static readonly Guid SourceLinkKind = new("CC110556-A091-4D38-9FEC-25AB9A351A6A");
    private static readonly Guid EmbeddedSourceKind = new("0E8A571B-6926-466E-B4AD-8AB04611F5FE");
    private static readonly XNamespace Nuspec = "http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd";

    [TestMethod]
    public void Package_IsADevelopmentDependencyWithMetadataAndTheExpectedLayout()
    {
        long size = new FileInfo(s_package).Length;
        TestContext.WriteLine($"{Path.GetFileName(s_package)}: {size} bytes ({size / 1024} KiB)");
        Assert.IsLessThan(MaxPackageBytes, size, $"the package is {size / 1024} KiB, above the limit of {MaxPackageBytes / 1024} KiB");

        using ZipArchive zip = ZipFile.OpenRead(s_package);
        string[] entries = zip.Entries.Select(e => e.FullName).ToArray();
        XElement metadata = ReadNuspec(zip).Element(Nuspec + "metadata")!;
        string Meta(string name) => metadata.Element(Nuspec + name)?.Value ?? "";

        // Metadata a gallery and an IDE show, each pointing at a file that is really in the package.
        Assert.AreEqual("CompressOnBuild", Meta("id"));
        Assert.AreEqual("true", Meta("developmentDependency"), "a build-time tool: PrivateAssets=all by default for the app");
        Assert.AreEqual("expression", metadata.Element(Nuspec + "license")?.Attribute("type")?.Value);
        Assert.AreEqual("MIT", Meta("license"));
        Assert.AreEqual("README.md", Meta("readme"));
        Assert.AreEqual("icon.png", Meta("icon"));
        CollectionAssert.IsSubsetOf(new[] { "README.md", "icon.png" }, entries);
        byte[] icon = ReadEntry(zip, "icon.png");
        CollectionAssert.AreEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, icon[..4], "icon.png is a PNG");
        Assert.IsFalse(string.IsNullOrWhiteSpace(Meta("description")));

        // The repository element: RepositoryUrl from Directory.Build.props and the commit that was packed.
        XElement repository = metadata.Element(Nuspec + "repository")!;
        Assert.IsNotNull(repository, "the nuspec has a repository element");
        Assert.AreEqual("git", repository.Attribute("type")?.Value);
        string repositoryUrl = Regex.Match(File.ReadAllText(Path.Combine(Corpus.RepoRoot, "Directory.Build.props")), "<RepositoryUrl>([^<]+)<").Groups[1].Value;
        Assert.AreEqual(repositoryUrl, repository.Attribute("url")?.Value);
        if (s_packedFromThisCheckout)
        {
            Assert.AreEqual(Git("rev-parse", "HEAD"), repository.Attribute("commit")?.Value, "the commit the package was built from");
        }

        // Dependencies: only ONNX Runtime (the worker's fallback), and only its contentFiles, which ORT does not
        // have: no compile, runtime, native or build asset of it can flow into the app.
        string ortVersion = Regex.Match(File.ReadAllText(Path.Combine(Corpus.RepoRoot, "Directory.Packages.props")), "<OnnxRuntimeVersion>([^<]+)<").Groups[1].Value;
        XElement[] dependencies = metadata.Descendants(Nuspec + "dependency").ToArray();
        Assert.HasCount(1, dependencies, string.Join("\n", dependencies.Select(d => d.ToString())));
        Assert.AreEqual("Microsoft.ML.OnnxRuntime", dependencies[0].Attribute("id")?.Value);
        Assert.AreEqual(ortVersion, dependencies[0].Attribute("version")?.Value);
        Assert.AreEqual("ContentFiles", dependencies[0].Attribute("include")?.Value, "the ORT dependency must not bring assets into the app");
        Assert.IsEmpty(metadata.Descendants(Nuspec + "frameworkAssemblies").Concat(metadata.Descendants(Nuspec + "frameworkReferences")),
            "no framework references are added to the app");

        // Layout: build logic, the task under tools/netstandard2.0, the worker under tools/net10.0/cli, and nothing
        // the app would reference or copy (no lib/, ref/, runtimes/, contentFiles/, analyzers/).
        string[] packaging = ["[Content_Types].xml", "_rels/.rels", "CompressOnBuild.nuspec", "README.md", "icon.png"];
        string[] unexpected = entries.Where(e => !packaging.Contains(e)
            && !e.StartsWith("package/services/metadata/core-properties/", StringComparison.Ordinal)
            && !Regex.IsMatch(e, @"^build(MultiTargeting)?/CompressOnBuild\.(props|targets)$")
            && !Regex.IsMatch(e, @"^tools/netstandard2\.0/CompressOnBuild\.Tasks\.(dll|pdb)$")
            && !e.StartsWith("tools/net10.0/cli/", StringComparison.Ordinal)).ToArray();
        Assert.IsEmpty(unexpected, "unexpected entries: " + string.Join(", ", unexpected));
        CollectionAssert.IsSubsetOf(new[]
        {
            "build/CompressOnBuild.props", "build/CompressOnBuild.targets",
            "buildMultiTargeting/CompressOnBuild.props", "buildMultiTargeting/CompressOnBuild.targets",
            "tools/netstandard2.0/CompressOnBuild.Tasks.dll", "tools/netstandard2.0/CompressOnBuild.Tasks.pdb",
            "tools/net10.0/cli/CompressOnBuild.Cli.dll", "tools/net10.0/cli/CompressOnBuild.Cli.runtimeconfig.json",
            "tools/net10.0/cli/CompressOnBuild.Cli.deps.json",
        }, entries);
        string targets = Encoding.UTF8.GetString(ReadEntry(zip, "build/CompressOnBuild.targets"));
        StringAssert.Contains(targets, "../tools/netstandard2.0/CompressOnBuild.Tasks.dll", "the targets load the task from where it is packed");
        StringAssert.Contains(targets, "../tools/net10.0/cli/CompressOnBuild.Cli.dll", "the targets start the worker from where it is packed");

        // No ONNX Runtime binary and no native code at all: the worker loads the app's ORT.
        string[] native = entries.Where(e => e.Contains("onnxruntime", StringComparison.OrdinalIgnoreCase)
            || Regex.IsMatch(e, @"\.(so|dylib|exe|lib|a)$", RegexOptions.IgnoreCase)
            || (e.EndsWith(".dll", StringComparison.OrdinalIgnoreCase) && !IsManaged(ReadEntry(zip, e)))).ToArray();
        Assert.IsEmpty(native, "native or ONNX Runtime files in the package: " + string.Join(", ", native));
    }

    [TestMethod]
    public void Package_PdbsBelongToTheirAssemblies_AndEmbedOnlyUntrackedSources()
    {
        using ZipArchive zip = ZipFile.OpenRead(s_package);
        string[] ours = zip.Entries.Select(e => e.FullName)
            .Where(e => Regex.IsMatch(e, @"^tools/.*/CompressOnBuild\.[A-Za-z]+\.dll$")).ToArray();
        Assert.HasCount(5, ours, "the task, the worker and its three libraries: " + string.Join(", ", ours));
        foreach (string dll in ours)
        {
            string pdbEntry = dll[..^4] + ".pdb";
            Assert.IsNotNull(zip.GetEntry(pdbEntry), pdbEntry + " is missing");
            PdbFacts pdb = ReadPdb(ReadEntry(zip, dll), ReadEntry(zip, pdbEntry));
            TestContext.WriteLine($"{pdbEntry}: {pdb.Documents.Count} documents, {pdb.Embedded.Count} embedded, source link: {pdb.SourceLink ?? "none"}");

            // Generated files (AssemblyInfo and friends, in obj/) are not in git: their text is in the PDB.
            Assert.IsTrue(pdb.Embedded.Any(d => d.EndsWith("AssemblyInfo.cs", StringComparison.Ordinal)),
                $"{pdbEntry} embeds the generated AssemblyInfo.cs; embedded: {string.Join(", ", pdb.Embedded)}");
            // Tracked sources are not embedded: a debugger fetches them through SourceLink when the build had a remote.
            string[] trackedEmbedded = pdb.Embedded.Where(d => d.Replace('\\', '/').Contains("/src/CompressOnBuild.", StringComparison.Ordinal)).ToArray();
            Assert.IsEmpty(trackedEmbedded, $"{pdbEntry} embeds tracked sources: {string.Join(", ", trackedEmbedded)}");
            Assert.IsTrue(pdb.Documents.Any(d => d.Replace('\\', '/').Contains("/src/CompressOnBuild.", StringComparison.Ordinal) || d.StartsWith("/_/src/", StringComparison.Ordinal)),
                $"{pdbEntry} lists the project's sources");
        }
        if (s_packedFromThisCheckout && Git("remote").Length == 0)
        {
            // This checkout has no remote: nothing to link to, and the build neither warns nor links (documented).
            foreach (string dll in ours)
            {
                Assert.IsNull(ReadPdb(ReadEntry(zip, dll), ReadEntry(zip, dll[..^4] + ".pdb")).SourceLink, dll);
            }
        }
    }

    /// <summary>
    /// Two clean packs (empty artifacts folder each time) as a CI server makes them, from this checkout with a GitHub
    /// remote: the PDBs link to the remote at HEAD with source paths under /_/, and the two packages have the same
    /// entries with the same bytes, and with SOURCE_DATE_EPOCH set (as build/pack.sh does) the same .nupkg bytes.
    /// The remote comes from a global git config in a scratch XDG_CONFIG_HOME (this checkout may have none);
    /// CI builds read only the repository's own git config, so these packs lift that for themselves
    /// (GitRepositoryConfigurationScope empty). The first pack runs as GitHub Actions, the second as Azure Pipelines,
    /// without CI=true: each must switch ContinuousIntegrationBuild on by itself.
    /// </summary>
    [TestMethod]
    public void CleanCiPacks_AreIdentical_AndTheirPdbsSourceLinkToTheGitRemote()
    {
        string scratch = Path.Combine(s_root, "deterministic");
        string gitConfig = Path.Combine(scratch, "xdg", "git");
        Directory.CreateDirectory(gitConfig);
        const string Remote = "https://github.com/example-org/compressonbuild-fork.git";
        File.WriteAllText(Path.Combine(gitConfig, "config"), $"[remote \"sourcelinkcheck\"]\n\turl = {Remote}\n");
        string head = Git("rev-parse", "HEAD");
        string epoch = Git("log", "-1", "--format=%ct");
        string artifacts = Path.Combine(scratch, "artifacts");

        var packages = new List<string>();
        foreach ((string ciVariable, string value) in new[] { ("GITHUB_ACTIONS", "true"), ("TF_BUILD", "True") })
        {
            if (Directory.Exists(artifacts))
            {
                Directory.Delete(artifacts, recursive: true);
            }
            string feed = Path.Combine(scratch, "feed-" + ciVariable);
            var environment = new Dictionary<string, string?>
            {
                ["CI"] = null, ["GITHUB_ACTIONS"] = null, ["TF_BUILD"] = null, [ciVariable] = value,
                ["XDG_CONFIG_HOME"] = Path.Combine(scratch, "xdg"),
                ["SOURCE_DATE_EPOCH"] = epoch,
            };
            var watch = System.Diagnostics.Stopwatch.StartNew();
            ProcessResult pack = DotNetProcess.Run(Corpus.RepoRoot, environment, Timeout,
                "pack", Path.Combine(Corpus.RepoRoot, "src", "CompressOnBuild.Tasks", "CompressOnBuild.Tasks.csproj"),
                "-c", "Release", "-nologo", "-nodeReuse:false", "-v:m", "-p:Version=0.1.0-deterministic",
                "-p:ArtifactsPath=" + artifacts, "-p:PackageOutputPath=" + feed + Path.DirectorySeparatorChar,
                "-p:GitRepositoryRemoteName=sourcelinkcheck", "-p:GitRepositoryConfigurationScope=");
            TestContext.WriteLine($"clean pack as {ciVariable}={value}: {watch.Elapsed.TotalSeconds:F1} s");
            Assert.AreEqual(0, pack.ExitCode, pack.Tail());
            Assert.DoesNotContain(": warning", pack.Output, "a CI pack without warnings: " + pack.Tail());
            string package = Path.Combine(feed, "CompressOnBuild.0.1.0-deterministic.nupkg");
            packages.Add(package);

            using ZipArchive zip = ZipFile.OpenRead(package);
            foreach (string dll in zip.Entries.Select(e => e.FullName).Where(e => Regex.IsMatch(e, @"^tools/.*/CompressOnBuild\.[A-Za-z]+\.dll$")))
            {
                PdbFacts pdb = ReadPdb(ReadEntry(zip, dll), ReadEntry(zip, dll[..^4] + ".pdb"));
                Assert.AreEqual(
                    $$$"""{"documents":{"/_/*":"https://raw.githubusercontent.com/example-org/compressonbuild-fork/{{{head}}}/*"}}""",
                    pdb.SourceLink, $"{dll} ({ciVariable}): source link to the remote at HEAD");
                string[] unmapped = pdb.Documents.Where(d => d.Contains(Corpus.RepoRoot, StringComparison.Ordinal)).ToArray();
                Assert.IsEmpty(unmapped, $"{dll} ({ciVariable}): CI builds map the checkout to /_/, found: {string.Join(", ", unmapped)}");
                Assert.IsTrue(pdb.Documents.Any(d => d.StartsWith("/_/src/", StringComparison.Ordinal)), dll);
            }
        }

        using ZipArchive first = ZipFile.OpenRead(packages[0]);
        using ZipArchive second = ZipFile.OpenRead(packages[1]);
        CollectionAssert.AreEqual(first.Entries.Select(e => e.FullName).ToArray(), second.Entries.Select(e => e.FullName).ToArray(),
            "the same entries in the same order");
        string[] different = first.Entries.Where(e => !ReadEntry(first, e.FullName).AsSpan().SequenceEqual(ReadEntry(second, e.FullName)))
            .Select(e => e.FullName).ToArray();
        Assert.IsEmpty(different, "entries whose bytes differ between two clean packs: " + string.Join(", ", different));
        Assert.IsTrue(File.ReadAllBytes(packages[0]).AsSpan().SequenceEqual(File.ReadAllBytes(packages[1])),
            "with SOURCE_DATE_EPOCH, the .nupkg files themselves are byte-identical (zip timestamps included)");
    }

    private static XElement ReadNuspec(ZipArchive zip)
    {
        using Stream stream = zip.GetEntry("CompressOnBuild.nuspec")!.Open();
        return XDocument.Load(stream).Root!;
    }

    private static byte[] ReadEntry(ZipArchive zip, string name)
    {
        ZipArchiveEntry entry = zip.GetEntry(name) ?? throw new AssertFailedException(name + " is not in the package");
        using Stream stream = entry.Open();
        using var memory = new MemoryStream();
        stream.CopyTo(memory);
        return memory.ToArray();
    }

    private static bool IsManaged(byte[] dll)
    {
        using var pe = new PEReader(new MemoryStream(dll));
        return pe.HasMetadata;
    }

    private sealed record PdbFacts(IReadOnlyList<string> Documents, IReadOnlyList<string> Embedded, string? SourceLink);

    /// <summary>Reads a portable PDB after checking that it is the one the assembly's CodeView entry names.</summary>
    private static PdbFacts ReadPdb(byte[] dll, byte[] pdbBytes)
    {
        using var pe = new PEReader(new MemoryStream(dll));
        DebugDirectoryEntry codeViewEntry = pe.ReadDebugDirectory().Single(e => e.Type == DebugDirectoryEntryType.CodeView);
        CodeViewDebugDirectoryData codeView = pe.ReadCodeViewDebugDirectoryData(codeViewEntry);
        Assert.IsTrue(pe.ReadDebugDirectory().Any(e => e.IsPortableCodeView), "a portable PDB");

        using MetadataReaderProvider provider = MetadataReaderProvider.FromPortablePdbStream(new MemoryStream(pdbBytes));
        MetadataReader pdb = provider.GetMetadataReader();
        var id = new BlobContentId(pdb.DebugMetadataHeader!.Id);
        Assert.AreEqual(codeView.Guid, id.Guid, "the PDB belongs to this build of the assembly");

        var documents = new List<string>();
        var embedded = new List<string>();
        foreach (DocumentHandle handle in pdb.Documents)
        {
            string name = pdb.GetString(pdb.GetDocument(handle).Name);
            documents.Add(name);
            if (pdb.GetCustomDebugInformation(handle).Any(c => pdb.GetGuid(pdb.GetCustomDebugInformation(c).Kind) == EmbeddedSourceKind))
            {
                embedded.Add(name);
            }
        }
        string? sourceLink = null;
        foreach (CustomDebugInformationHandle handle in pdb.GetCustomDebugInformation(EntityHandle.ModuleDefinition))
        {
            CustomDebugInformation information = pdb.GetCustomDebugInformation(handle);
            if (pdb.GetGuid(information.Kind) == SourceLinkKind)
            {
                sourceLink = Encoding.UTF8.GetString(pdb.GetBlobBytes(information.Value));
            }
        }
        return new PdbFacts(documents, embedded, sourceLink);
    }

    private static string Git(params string[] arguments)
    {
        var info = new System.Diagnostics.ProcessStartInfo("git") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add("-C");
        info.ArgumentList.Add(Corpus.RepoRoot);
        foreach (string argument in arguments)
        {
            info.ArgumentList.Add(argument);
        }
        using var process = System.Diagnostics.Process.Start(info)!;
        string output = process.StandardOutput.ReadToEnd();
        string error = process.StandardError.ReadToEnd();
        process.WaitForExit();
        Assert.AreEqual(0, process.ExitCode, $"git {string.Join(' ', arguments)}: {error}");
        return output.Trim();
    }
}
