using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

namespace CompressOnBuild.Tasks
{
    /// <summary>
    /// Runs the CompressOnBuild worker (<c>dotnet exec CompressOnBuild.Cli.dll compress @file.rsp</c>) once for
    /// all given models. The worker's canonical lines ("file : error CMPR0401 : text") become MSBuild errors and
    /// warnings with their codes; its "CompressOnBuild: " summary lines are shown at normal verbosity. This task
    /// never loads ONNX Runtime or the compression code: all of that runs in the worker process.
    /// </summary>
    public sealed class CompressModels : ToolTask
    {
        internal const string SummaryPrefix = "CompressOnBuild: ";

        /// <summary>The worker's progress lines for long phases (about every 5 s): shown at normal verbosity, never parsed as diagnostics.</summary>
        internal const string ProgressPrefix = "CompressOnBuild progress: ";

        private string? _resolvedHost;
        private readonly List<string> _arguments = new List<string>();

        /// <summary>The models. The item spec (or the <c>SourceModel</c> metadata when present) is the source
        /// model; <c>OutputPath</c> metadata is required, <c>ReportPath</c> is optional; the other metadata map
        /// to worker options (see <see cref="ModelOptions"/>).</summary>
        [Required]
        public ITaskItem[] Models { get; set; } = Array.Empty<ITaskItem>();

        /// <summary>Full path of CompressOnBuild.Cli.dll.</summary>
        [Required]
        public string CliPath { get; set; } = string.Empty;

        /// <summary>Where the response file is written (normally in the intermediate directory).</summary>
        [Required]
        public string ResponseFilePath { get; set; } = string.Empty;

        /// <summary>The dotnet host; empty: DOTNET_HOST_PATH, else dotnet on PATH.</summary>
        public string? DotNetHostPath { get; set; }

        /// <summary>Directory the worker runs in and relative paths are resolved against; empty: the project's.</summary>
        public string? ProjectDirectory { get; set; }

        /// <summary>The shared result cache (<c>--cache-dir</c>); empty: no cache.</summary>
        public string? CacheDirectory { get; set; }

        /// <summary>Size bound of the cache in MiB (<c>--cache-max-mb</c>); empty: the worker's default.</summary>
        public string? CacheMaxMB { get; set; }

        /// <summary>Where the worker writes one Markdown table for all models (<c>--summary-markdown</c>).</summary>
        public string? SummaryMarkdownPath { get; set; }

        /// <summary>The app's obj/project.assets.json, to find the app's ONNX Runtime.</summary>
        public string? OnnxRuntimeAssets { get; set; }

        /// <summary>The NuGet packages folder ($(NuGetPackageRoot)).</summary>
        public string? NuGetPackageRoot { get; set; }

        /// <summary>Error (default) or Warning.</summary>
        public string? BudgetFailureSeverity { get; set; }

        public string? MaxParallelism { get; set; }

        /// <summary>The compressed models (item spec = output path, SourceModel = the source).</summary>
        [Output]
        public ITaskItem[] CompressedModels { get; private set; } = Array.Empty<ITaskItem>();

        protected override string ToolName => PathUtil.IsWindows ? "dotnet.exe" : "dotnet";

        protected override MessageImportance StandardOutputLoggingImportance => MessageImportance.Normal;

        protected override MessageImportance StandardErrorLoggingImportance => MessageImportance.Normal;

        /// <summary>The arguments written to the response file, one per line (valid after ValidateParameters).</summary>
        internal IReadOnlyList<string> ResponseFileArguments => _arguments;

        internal string EffectiveProjectDirectory =>
            !string.IsNullOrEmpty(ProjectDirectory)
                ? Path.GetFullPath(ProjectDirectory)
                : BuildEngine?.ProjectFileOfTaskNode is { Length: > 0 } projectFile
                    ? Path.GetDirectoryName(Path.GetFullPath(projectFile)) ?? Directory.GetCurrentDirectory()
                    : Directory.GetCurrentDirectory();

        protected override string GenerateFullPathToTool() => _resolvedHost ?? ToolName;

        protected override string GetWorkingDirectory() => EffectiveProjectDirectory;

        protected override bool ValidateParameters()
        {
            if (!BuildArguments())
            {
                return false;
            }
            if (!File.Exists(CliPath))
            {
                Log.LogCodedError(DiagnosticCodes.WorkerNotFound, null, CliPath);
                return false;
            }
            // ToolPath/ToolExe (standard ToolTask overrides) win over the host lookup.
            if (string.IsNullOrEmpty(ToolPath))
            {
                _resolvedHost = ResolveDotNetHost(DotNetHostPath, out string tried);
                if (_resolvedHost == null)
                {
                    Log.LogCodedError(DiagnosticCodes.DotNetHostNotFound, null, tried);
                    return false;
                }
            }
            return true;
        }

        /// <summary>Validates the models and fills <see cref="ResponseFileArguments"/>; logs CMPR0003/CMPR0006.</summary>
        internal bool BuildArguments()
        {
            _arguments.Clear();
            string projectDirectory = EffectiveProjectDirectory;
            bool ok = true;

            AddGlobal("--cache-dir", string.IsNullOrEmpty(CacheDirectory) ? null : PathUtil.Full(CacheDirectory!, projectDirectory));
            ok &= AddChecked("CompressModelCacheMaxMB", CacheMaxMB, add: !string.IsNullOrEmpty(CacheDirectory));
            AddGlobal("--onnxruntime-assets", OnnxRuntimeAssets);
            AddGlobal("--nuget-packages", NuGetPackageRoot);
            ok &= AddChecked("CompressModelBudgetFailureSeverity", BudgetFailureSeverity, add: true);
            ok &= AddChecked("CompressModelMaxParallelism", MaxParallelism, add: true);
            AddGlobal("--summary-markdown", string.IsNullOrEmpty(SummaryMarkdownPath) ? null : PathUtil.Full(SummaryMarkdownPath!, projectDirectory));

            var outputs = new Dictionary<string, string>(PathUtil.Comparer);
            var compressed = new List<ITaskItem>();
            foreach (ITaskItem item in Models)
            {
                string sourceSpec = item.GetMetadata("SourceModel") is { Length: > 0 } source ? source : item.ItemSpec;
                string modelPath = PathUtil.Full(sourceSpec, projectDirectory);
                string outputMetadata = item.GetMetadata("OutputPath");
                if (outputMetadata.Length == 0)
                {
                    Log.LogCodedError(DiagnosticCodes.InvalidOption, sourceSpec, sourceSpec, "OutputPath", string.Empty, "the output path of the compressed model is required");
                    ok = false;
                    continue;
                }
                string outputPath = PathUtil.Full(outputMetadata, projectDirectory);
                if (outputs.TryGetValue(outputPath, out string? other))
                {
                    Log.LogCodedError(DiagnosticCodes.OutputConflict, sourceSpec, other, sourceSpec, outputPath);
                    ok = false;
                    continue;
                }
                outputs.Add(outputPath, sourceSpec);

                var itemArguments = new List<string> { modelPath, "--output", outputPath };
                string report = item.GetMetadata("ReportPath");
                if (report.Length > 0)
                {
                    itemArguments.Add("--report");
                    itemArguments.Add(PathUtil.Full(report, projectDirectory));
                }
                foreach (OptionSpec option in ModelOptions.All)
                {
                    string value = item.GetMetadata(option.Name);
                    if (value.Length == 0)
                    {
                        continue;
                    }
                    string? problem = option.Validate(value);
                    if (problem != null)
                    {
                        Log.LogCodedError(DiagnosticCodes.InvalidOption, sourceSpec, sourceSpec, option.Name, value, problem);
                        ok = false;
                        continue;
                    }
                    itemArguments.Add(option.Cli);
                    itemArguments.Add(value);
                }
                _arguments.AddRange(itemArguments);

                var result = new TaskItem(outputPath);
                result.SetMetadata("SourceModel", modelPath);
                if (report.Length > 0)
                {
                    result.SetMetadata("ReportPath", PathUtil.Full(report, projectDirectory));
                }
                compressed.Add(result);
            }
            CompressedModels = compressed.ToArray();
            return ok;

            // A property of the global option table: checked, then passed as its CLI option (Choice values in the
            // table's spelling).
            bool AddChecked(string property, string? value, bool add)
            {
                if (string.IsNullOrEmpty(value))
                {
                    return true;
                }
                OptionSpec spec = OptionTable.GlobalByName(property);
                string? problem = spec.Validate(value!);
                if (problem != null)
                {
                    Log.LogCodedError(DiagnosticCodes.InvalidOption, null, property, property, value, problem);
                    return false;
                }
                if (add)
                {
                    AddGlobal(spec.Cli, spec.Kind == OptionKind.Choice
                        ? spec.Choices.First(c => string.Equals(c, value, StringComparison.OrdinalIgnoreCase))
                        : value);
                }
                return true;
            }

            void AddGlobal(string name, string? value)
            {
                if (!string.IsNullOrEmpty(value))
                {
                    _arguments.Add(name);
                    _arguments.Add(value!);
                }
            }
        }

        /// <summary>The response file text: a comment header and one argument per line.</summary>
        internal string ResponseFileText()
        {
            var builder = new StringBuilder();
            builder.Append("# CompressOnBuild worker arguments, one per line (written by the CompressModels task).\n");
            foreach (string argument in _arguments)
            {
                builder.Append(argument).Append('\n');
            }
            return builder.ToString();
        }

        protected override string GenerateCommandLineCommands()
        {
            var builder = new CommandLineBuilder();
            builder.AppendSwitch("exec");
            builder.AppendFileNameIfNotNull(CliPath);
            builder.AppendSwitch("compress");
            builder.AppendSwitchIfNotNull("@", Path.GetFullPath(ResponseFilePath));
            return builder.ToString();
        }

        protected override int ExecuteTool(string pathToTool, string responseFileCommands, string commandLineCommands)
        {
            string rsp = Path.GetFullPath(ResponseFilePath);
            try
            {
                string? directory = Path.GetDirectoryName(rsp);
                if (!string.IsNullOrEmpty(directory))
                {
                    Directory.CreateDirectory(directory);
                }
                File.WriteAllText(rsp, ResponseFileText(), new UTF8Encoding(false));
            }
            catch (Exception e) when (e is IOException || e is UnauthorizedAccessException)
            {
                Log.LogCodedError(DiagnosticCodes.OutputWriteFailed, rsp, rsp, e.Message);
                return -1;
            }
            Log.LogMessage(MessageImportance.Low, "Response file '{0}':\n{1}", rsp, ResponseFileText());
            // The runtime's debugger pipes and diagnostic socket (clr-debug-pipe-*, dotnet-diagnostic-*) would stay in
            // TMPDIR whenever the worker is killed (a cancelled build); the worker needs neither. A user's setting wins.
            if (Environment.GetEnvironmentVariable("DOTNET_EnableDiagnostics") == null)
            {
                var environment = new List<string>(EnvironmentVariables ?? Array.Empty<string>());
                if (!environment.Exists(e => e.StartsWith("DOTNET_EnableDiagnostics=", StringComparison.Ordinal)))
                {
                    environment.Add("DOTNET_EnableDiagnostics=0");
                    EnvironmentVariables = environment.ToArray();
                }
            }
            int exitCode = base.ExecuteTool(pathToTool, responseFileCommands, commandLineCommands);
            if (exitCode == 0 && !Log.HasLoggedErrors)
            {
                foreach (ITaskItem compressed in CompressedModels)
                {
                    if (!File.Exists(compressed.ItemSpec))
                    {
                        Log.LogCodedError(DiagnosticCodes.OutputWriteFailed, compressed.GetMetadata("SourceModel"), compressed.ItemSpec, "the worker reported success but did not write the file");
                    }
                }
            }
            // ToolTask trusts a zero exit code; an error logged here must still fail the task.
            return exitCode == 0 && Log.HasLoggedErrors ? -1 : exitCode;
        }

        protected override void LogEventsFromTextOutput(string singleLine, MessageImportance messageImportance)
        {
            if (singleLine.StartsWith(SummaryPrefix, StringComparison.Ordinal))
            {
                Log.LogMessage(MessageImportance.High, singleLine);
                return;
            }
            if (singleLine.StartsWith(ProgressPrefix, StringComparison.Ordinal))
            {
                Log.LogMessage(MessageImportance.Normal, singleLine);
                return;
            }
            // Canonical "origin : error CODE : text" lines become errors and warnings with their code and help link.
            string line = ApplyBudgetSeverity(singleLine, BudgetFailureSeverity);
            if (!Log.TryLogWorkerDiagnostic(line))
            {
                base.LogEventsFromTextOutput(line, messageImportance);
            }
        }

        /// <summary>A broken budget is reported with the severity this build asks for. The worker's result cache
        /// replays a cached verdict with the severity of the run that stored it, so the task applies the policy.</summary>
        internal static string ApplyBudgetSeverity(string line, string? severity) => ApplyBudgetSeverity(line, TaskLogging.ParseSeverity(severity));

        internal static string ApplyBudgetSeverity(string line, WorkerSeverity severity)
        {
            WorkerSeverity other = severity == WorkerSeverity.Warning ? WorkerSeverity.Error : WorkerSeverity.Warning;
            string from = " " + TaskLogging.Spelling(other) + " " + DiagnosticCodes.BudgetBroken;
            int at = line.IndexOf(from, StringComparison.Ordinal);
            return at < 0
                ? line
                : line.Substring(0, at) + " " + TaskLogging.Spelling(severity) + " " + DiagnosticCodes.BudgetBroken + line.Substring(at + from.Length);
        }

        protected override bool HandleTaskExecutionErrors()
        {
            if (!Log.HasLoggedErrors)
            {
                Log.LogCodedError(DiagnosticCodes.WorkerFailed, null, ExitCode.ToString(CultureInfo.InvariantCulture));
            }
            return false;
        }

        /// <summary>The dotnet host to run the worker with, or null; <paramref name="tried"/> names what was looked for.</summary>
        internal static string? ResolveDotNetHost(string? explicitPath, out string tried)
        {
            if (!string.IsNullOrEmpty(explicitPath))
            {
                tried = explicitPath!;
                return File.Exists(explicitPath) ? Path.GetFullPath(explicitPath) : null;
            }
            string? fromSdk = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
            if (!string.IsNullOrEmpty(fromSdk) && File.Exists(fromSdk))
            {
                tried = fromSdk!;
                return fromSdk;
            }
            string exe = PathUtil.IsWindows ? "dotnet.exe" : "dotnet";
            tried = exe;
            string? path = Environment.GetEnvironmentVariable("PATH");
            if (!string.IsNullOrEmpty(path))
            {
                foreach (string directory in path!.Split(Path.PathSeparator))
                {
                    if (directory.Length == 0)
                    {
                        continue;
                    }
                    try
                    {
                        string candidate = Path.Combine(directory.Trim('"'), exe);
                        if (File.Exists(candidate))
                        {
                            return candidate;
                        }
                    }
                    catch (ArgumentException)
                    {
                        // A malformed PATH entry: skip it.
                    }
                }
            }
            if (PathUtil.IsWindows)
            {
                string programFiles = Environment.GetEnvironmentVariable("ProgramFiles") ?? string.Empty;
                string candidate = Path.Combine(programFiles, "dotnet", exe);
                if (programFiles.Length > 0 && File.Exists(candidate))
                {
                    return candidate;
                }
            }
            return null;
        }
    }
}
