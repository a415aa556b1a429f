using System;
using System.Collections;
using System.Collections.Generic;
using System.Linq;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

namespace CompressOnBuild.Tasks
{
    /// <summary>The <c>CompressModel</c> metadata the task reads, from the one option table (<see cref="OptionTable"/>).</summary>
    internal static class ModelOptions
    {
        /// <summary>The item metadata the worker understands, in the order they are written to the response file.</summary>
        public static IReadOnlyList<OptionSpec> All { get; } = OptionTable.ItemOptions.Where(o => !o.ComputedByBuild).ToArray();

        /// <summary>Metadata that name data files; their fingerprints go into the options stamp.</summary>
        public static IReadOnlyList<string> DataMetadata { get; } = All.Where(o => o.Kind == OptionKind.Path).Select(o => o.Name).ToArray();

        /// <summary>
        /// Item metadata that is not ours but legitimately found on a <c>CompressModel</c> item: the well-known
        /// metadata MSBuild defines on every item, the common item metadata of the SDK (an item made from a None or
        /// Content item keeps them) and NuGet's pack metadata. Compared case-insensitively, as MSBuild does.
        /// </summary>
        public static IReadOnlyCollection<string> ForeignMetadata { get; } = new HashSet<string>(StringComparer.OrdinalIgnoreCase)
        {
            // MSBuild's well-known item metadata.
            "FullPath", "RootDir", "Filename", "Extension", "RelativeDir", "Directory", "RecursiveDir", "Identity",
            "ModifiedTime", "CreatedTime", "AccessedTime", "DefiningProjectFullPath", "DefiningProjectDirectory",
            "DefiningProjectName", "DefiningProjectExtension",
            // Common item metadata (None, Content, EmbeddedResource, Compile) and what tasks add to items.
            "Link", "LinkBase", "Visible", "CopyToOutputDirectory", "CopyToPublishDirectory", "DependentUpon", "Generator",
            "LastGenOutput", "CustomToolNamespace", "SubType", "AutoGen", "DesignTime", "DesignTimeSharedInput", "TargetPath",
            "ExcludeFromSingleFile", "IncludeInSingleFile", "PublishState", "IsAssembly", "Group", "InProject", "Private",
            "LogicalName", "ManifestResourceName", "WithCulture", "Culture", "Type", "OriginalItemSpec",
            "MSBuildSourceProjectFile", "MSBuildSourceTargetName", "BuildAction", "Condition", "KeepMetadata", "RemoveMetadata",
            "KeepDuplicates", "MatchOnMetadata", "MatchOnMetadataOptions",
            // NuGet pack metadata.
            "Pack", "PackagePath", "PackageCopyToOutput", "PackageFlatten",
        };

        /// <summary>
        /// Reports the metadata of <paramref name="model"/> that is neither an option, nor foreign metadata, nor listed
        /// in <paramref name="allowed"/>: an error (CMPR0009) when it looks like a misspelled option (a misspelled budget
        /// would silently remove a gate), else a warning (CMPR0010). Returns false when an error was logged.
        /// </summary>
        public static bool CheckUnknownMetadata(ITaskItem model, ICollection<string> allowed, TaskLoggingHelper log)
        {
            bool ok = true;
            IEnumerable<string> knownNames = All.Select(o => o.Name).Concat(OptionTable.BuildOnlyMetadata);
            foreach (DictionaryEntry entry in model.CloneCustomMetadata())
            {
                string name = (string)entry.Key;
                if (OptionTable.ItemByName(name) is { ComputedByBuild: false } || ForeignMetadata.Contains(name)
                    || OptionTable.BuildOnlyMetadata.Contains(name, StringComparer.OrdinalIgnoreCase) || allowed.Contains(name))
                {
                    continue;
                }
                string? suggestion = OptionTable.Suggest(name, knownNames);
                if (suggestion != null)
                {
                    log.LogCodedError(DiagnosticCodes.UnknownOption, model.ItemSpec, model.ItemSpec, name,
                        "Did you mean '" + suggestion + "'? (If '" + name + "' is metadata of your own, list it in the CompressModelAllowedMetadata property.)");
                    ok = false;
                }
                else
                {
                    log.LogCodedWarning(DiagnosticCodes.UnknownMetadata, model.ItemSpec, model.ItemSpec, name);
                }
            }
            return ok;
        }

        private static readonly char[] Separators = { ';', ',' };

        /// <summary>The names in a ';'-separated property value (CompressModelAllowedMetadata).</summary>
        public static HashSet<string> ParseNameList(string? list) =>
            new HashSet<string>(
                (list ?? string.Empty).Split(Separators, StringSplitOptions.RemoveEmptyEntries).Select(n => n.Trim()).Where(n => n.Length > 0),
                StringComparer.OrdinalIgnoreCase);
    }
}
