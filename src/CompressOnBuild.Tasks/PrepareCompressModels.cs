using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Reflection;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

namespace CompressOnBuild.Tasks
{
    /// <summary>
    /// Cheap, in-process and run on every build: decides where each <c>CompressModel</c> item's compressed model
    /// goes (intermediate file and path in the output), computes its options stamp (options, package version,
    /// fingerprints of the model and its data files) and the None/Content item swaps that make the compressed
    /// model replace the original in the build output and in publish. Validates metadata (CMPR0003) and
    /// detects two models with one output (CMPR0006).
    /// </summary>
    public sealed class PrepareCompressModels : Task
    {
        [Required]
        public ITaskItem[] Models { get; set; } = Array.Empty<ITaskItem>();

        public ITaskItem[] NoneItems { get; set; } = Array.Empty<ITaskItem>();

        public ITaskItem[] ContentItems { get; set; } = Array.Empty<ITaskItem>();

        /// <summary>The project's EmbeddedResource items: a model among them is embedded compressed.</summary>
        public ITaskItem[] EmbeddedResourceItems { get; set; } = Array.Empty<ITaskItem>();

        [Required]
        public string ProjectDirectory { get; set; } = string.Empty;

        /// <summary>$(CompressModelAllowedMetadata): ';'-separated metadata names of the team's own that are not
        /// reported as unknown.</summary>
        public string? AllowedMetadata { get; set; }

        /// <summary>Where compressed models, stamps and reports go (e.g. obj/Debug/net10.0/CompressOnBuild/).</summary>
        [Required]
        public string IntermediateDirectory { get; set; } = string.Empty;

        /// <summary>One item per model: item spec = its options stamp file; metadata = the model's metadata plus
        /// SourceModel, OutputPath, ReportPath and TargetRelativePath. The stamp is written here.</summary>
        [Output]
        public ITaskItem[] PreparedModels { get; private set; } = Array.Empty<ITaskItem>();

        [Output]
        public ITaskItem[] NoneToRemove { get; private set; } = Array.Empty<ITaskItem>();

        [Output]
        public ITaskItem[] NoneToAdd { get; private set; } = Array.Empty<ITaskItem>();

        [Output]
        public ITaskItem[] ContentToRemove { get; private set; } = Array.Empty<ITaskItem>();

        [Output]
        public ITaskItem[] ContentToAdd { get; private set; } = Array.Empty<ITaskItem>();

        [Output]
        public ITaskItem[] EmbeddedResourceToRemove { get; private set; } = Array.Empty<ITaskItem>();

        /// <summary>The swapped resources (item spec = compressed model, Link = the original's path, so the
        /// manifest resource name does not change). Compression must then run before CoreCompile.</summary>
        [Output]
        public ITaskItem[] EmbeddedResourceToAdd { get; private set; } = Array.Empty<ITaskItem>();

        internal static string ToolVersion { get; } =
            typeof(PrepareCompressModels).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
            ?? typeof(PrepareCompressModels).Assembly.GetName().Version?.ToString()
            ?? "0";

        public override bool Execute()
        {
            string projectDirectory = Path.GetFullPath(ProjectDirectory);
            string intermediate = PathUtil.Full(IntermediateDirectory, projectDirectory);
            var prepared = new List<ITaskItem>();
            var targets = new Dictionary<string, string>(PathUtil.Comparer);
            var noneRemove = new List<ITaskItem>();
            var noneAdd = new List<ITaskItem>();
            var contentRemove = new List<ITaskItem>();
            var contentAdd = new List<ITaskItem>();
            var resourceRemove = new List<ITaskItem>();
            var resourceAdd = new List<ITaskItem>();
            var consumed = new HashSet<ITaskItem>();
            HashSet<string> allowed = ModelOptions.ParseNameList(AllowedMetadata);

            foreach (ITaskItem model in Models)
            {
                string spec = model.ItemSpec;
                string sourceFull = PathUtil.Full(spec, projectDirectory);
                if (!ValidateMetadata(model, allowed))
                {
                    continue;
                }

                // Where the model lands in the output: TargetPath, else Link, else its path in the project.
                string relative = model.GetMetadata("TargetPath") is { Length: > 0 } targetPath ? targetPath
                    : model.GetMetadata("Link") is { Length: > 0 } link ? link
                    : PathUtil.RelativeInside(projectDirectory, sourceFull) ?? Path.GetFileName(sourceFull);
                if (!PathUtil.IsSafeRelative(relative))
                {
                    Log.LogCodedError(DiagnosticCodes.InvalidOption, spec, spec, "Link", relative, "the path in the output must be relative and stay inside the output folder");
                    continue;
                }
                string outputPath = Path.GetFullPath(Path.Combine(intermediate, relative));
                if (targets.TryGetValue(outputPath, out string? other))
                {
                    Log.LogCodedError(DiagnosticCodes.OutputConflict, spec, other, spec, relative);
                    continue;
                }
                targets.Add(outputPath, spec);

                var item = new TaskItem(outputPath + ".options");
                model.CopyMetadataTo(item);
                item.SetMetadata("SourceModel", sourceFull);
                item.SetMetadata("OutputPath", outputPath);
                item.SetMetadata("ReportPath", outputPath + ".report.json");
                item.SetMetadata("TargetRelativePath", relative);
                if (!WriteStamp(item.ItemSpec, StampLines(model, sourceFull, projectDirectory)))
                {
                    continue;
                }
                prepared.Add(item);

                // Replace a None/Content item of the same file, keeping its metadata, else add one.
                // An embedded model is not also copied to the output unless its None/Content item says so.
                bool embedded = ReplaceResource(sourceFull, outputPath, resourceRemove, resourceAdd, consumed, projectDirectory);
                bool replaced = Replace(NoneItems, sourceFull, outputPath, relative, noneRemove, noneAdd, consumed, projectDirectory, !embedded);
                replaced |= Replace(ContentItems, sourceFull, outputPath, relative, contentRemove, contentAdd, consumed, projectDirectory, !embedded);
                replaced |= embedded;
                if (!replaced)
                {
                    var added = new TaskItem(outputPath);
                    added.SetMetadata("Link", relative);
                    added.SetMetadata("CopyToOutputDirectory", "PreserveNewest");
                    added.SetMetadata("CopyToPublishDirectory", "PreserveNewest");
                    added.SetMetadata("CompressOnBuildSource", sourceFull);
                    noneAdd.Add(added);
                }
            }

            PreparedModels = prepared.ToArray();
            NoneToRemove = noneRemove.ToArray();
            NoneToAdd = noneAdd.ToArray();
            ContentToRemove = contentRemove.ToArray();
            ContentToAdd = contentAdd.ToArray();
            EmbeddedResourceToRemove = resourceRemove.ToArray();
            EmbeddedResourceToAdd = resourceAdd.ToArray();
            return !Log.HasLoggedErrors;
        }

        /// <summary>Writes the options stamp only when its text changed, so that its time stamp moves only then
        /// (the same contract as WriteLinesToFile's WriteOnlyWhenDifferent).</summary>
        private bool WriteStamp(string path, IEnumerable<string> lines)
        {
            string text = string.Join("\n", lines) + "\n";
            try
            {
                if (File.Exists(path) && string.Equals(File.ReadAllText(path), text, StringComparison.Ordinal))
                {
                    return true;
                }
                Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                File.WriteAllText(path, text, new UTF8Encoding(false));
                return true;
            }
            catch (Exception e) when (e is IOException || e is UnauthorizedAccessException)
            {
                Log.LogCodedError(DiagnosticCodes.OutputWriteFailed, path, path, e.Message);
                return false;
            }
        }

        /// <summary>Checks every option value (CMPR0003) and unknown metadata (CMPR0009/CMPR0010), and says when
        /// nothing gates the model's accuracy (CMPR0011). False when an error was logged.</summary>
        private bool ValidateMetadata(ITaskItem model, ICollection<string> allowed)
        {
            bool ok = ModelOptions.CheckUnknownMetadata(model, allowed, Log);
            foreach (OptionSpec option in ModelOptions.All)
            {
                string value = model.GetMetadata(option.Name);
                if (value.Length == 0)
                {
                    continue;
                }
                string? problem = option.Validate(value);
                if (problem != null)
                {
                    Log.LogCodedError(DiagnosticCodes.InvalidOption, model.ItemSpec, model.ItemSpec, option.Name, value, problem);
                    ok = false;
                }
            }
            if (ok && model.GetMetadata("ValidationData").Length == 0 && OptionTable.Budgets.All(b => model.GetMetadata(b.Name).Length == 0))
            {
                Log.LogCodedMessage(DiagnosticCodes.AccuracyNotGated, model.ItemSpec, model.ItemSpec);
            }
            return ok;
        }

        private static bool Replace(
            ITaskItem[] candidates, string sourceFull, string outputPath, string relative,
            List<ITaskItem> remove, List<ITaskItem> add, HashSet<ITaskItem> consumed, string projectDirectory, bool copyByDefault)
        {
            bool replaced = false;
            foreach ((ITaskItem candidate, TaskItem swapped) in Swaps(candidates, sourceFull, outputPath, remove, add, consumed, projectDirectory))
            {
                string link = candidate.GetMetadata("TargetPath") is { Length: > 0 } targetPath ? targetPath
                    : candidate.GetMetadata("Link") is { Length: > 0 } existing ? existing
                    : relative;
                swapped.SetMetadata("Link", link);
                bool copyUnset = copyByDefault && candidate.GetMetadata("CopyToOutputDirectory").Length == 0;
                if (copyUnset)
                {
                    swapped.SetMetadata("CopyToOutputDirectory", "PreserveNewest");
                    if (candidate.GetMetadata("CopyToPublishDirectory").Length == 0)
                    {
                        swapped.SetMetadata("CopyToPublishDirectory", "PreserveNewest");
                    }
                }
                replaced = true;
            }
            return replaced;
        }

        /// <summary>
        /// The items among <paramref name="candidates"/> that name the model and are not yet claimed: each is claimed,
        /// marked for removal, and replaced by a copy pointing at the compressed file (all metadata kept) that the
        /// caller may adjust.
        /// </summary>
        private static IEnumerable<(ITaskItem Original, TaskItem Swapped)> Swaps(
            IEnumerable<ITaskItem> candidates, string sourceFull, string outputPath, List<ITaskItem> remove, List<ITaskItem> add,
            HashSet<ITaskItem> consumed, string projectDirectory)
        {
            foreach (ITaskItem candidate in candidates)
            {
                if (consumed.Contains(candidate)
                    || !string.Equals(PathUtil.Full(candidate.ItemSpec, projectDirectory), sourceFull, PathUtil.Comparison))
                {
                    continue;
                }
                consumed.Add(candidate);
                remove.Add(candidate);
                var swapped = new TaskItem(outputPath);
                candidate.CopyMetadataTo(swapped);
                swapped.SetMetadata("CompressOnBuildSource", sourceFull);
                add.Add(swapped);
                yield return (candidate, swapped);
            }
        }

        /// <summary>Swaps an EmbeddedResource of the model for the compressed file. The manifest resource name
        /// comes from Link (else LogicalName/ManifestResourceName, which are kept), so Link is set to the original's
        /// path in the project when absent; nothing is copied to the output for it.</summary>
        private bool ReplaceResource(
            string sourceFull, string outputPath, List<ITaskItem> remove, List<ITaskItem> add,
            HashSet<ITaskItem> consumed, string projectDirectory)
        {
            bool replaced = false;
            foreach ((ITaskItem candidate, TaskItem swapped) in Swaps(EmbeddedResourceItems, sourceFull, outputPath, remove, add, consumed, projectDirectory))
            {
                if (candidate.GetMetadata("Link").Length == 0)
                {
                    swapped.SetMetadata("Link", PathUtil.RelativeInside(projectDirectory, sourceFull) ?? Path.GetFileName(sourceFull));
                }
                replaced = true;
            }
            return replaced;
        }

        /// <summary>What decides whether a model must be compressed again: the tool version, every option, and
        /// the size and time stamp of the model and of every data file it names.</summary>
        internal static IEnumerable<string> StampLines(ITaskItem model, string sourceFull, string projectDirectory)
        {
            yield return "tool=" + ToolVersion;
            yield return "model=" + Fingerprint(sourceFull);
            foreach (OptionSpec option in ModelOptions.All)
            {
                yield return option.Name + "=" + model.GetMetadata(option.Name);
            }
            foreach (string name in ModelOptions.DataMetadata)
            {
                string value = model.GetMetadata(name);
                if (value.Length == 0)
                {
                    continue;
                }
                string full;
                try
                {
                    full = PathUtil.Full(value, projectDirectory);
                }
                catch (ArgumentException)
                {
                    continue;
                }
                if (Directory.Exists(full))
                {
                    foreach (string file in Directory.GetFiles(full, "*", SearchOption.AllDirectories).OrderBy(f => f, StringComparer.Ordinal))
                    {
                        yield return name + ":" + file.Substring(full.Length).TrimStart('/', '\\') + "=" + Fingerprint(file);
                    }
                }
                else
                {
                    yield return name + ":=" + Fingerprint(full);
                }
            }
        }

        private static string Fingerprint(string path)
        {
            var info = new FileInfo(path);
            return info.Exists
                ? info.Length.ToString(CultureInfo.InvariantCulture) + "@" + info.LastWriteTimeUtc.Ticks.ToString(CultureInfo.InvariantCulture)
                : "missing";
        }
    }
}
