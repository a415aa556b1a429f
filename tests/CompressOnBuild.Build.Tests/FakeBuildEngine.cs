using System.Collections;
using Microsoft.Build.Framework;

namespace CompressOnBuild.Build.Tests;

/// <summary>The engine seam of MSBuild tasks: collects what a task logs.</summary>
internal sealed class FakeBuildEngine : IBuildEngine
{
    public FakeBuildEngine(string projectFile) => ProjectFileOfTaskNode = projectFile;

    public List<BuildErrorEventArgs> Errors { get; } = [];

    public List<BuildWarningEventArgs> Warnings { get; } = [];

    public List<BuildMessageEventArgs> Messages { get; } = [];

    public bool ContinueOnError => false;

    public int LineNumberOfTaskNode => 0;

    public int ColumnNumberOfTaskNode => 0;

    public string ProjectFileOfTaskNode { get; }

    public bool BuildProjectFile(string projectFileName, string[] targetNames, IDictionary globalProperties, IDictionary targetOutputs) =>
        throw new NotSupportedException();

    public void LogCustomEvent(CustomBuildEventArgs e)
    {
    }

    public void LogErrorEvent(BuildErrorEventArgs e) => Errors.Add(e);

    public void LogMessageEvent(BuildMessageEventArgs e) => Messages.Add(e);

    public void LogWarningEvent(BuildWarningEventArgs e) => Warnings.Add(e);

    public string Describe() =>
        string.Join("\n", Errors.Select(e => $"error {e.Code} [{e.File}]: {e.Message}")
            .Concat(Warnings.Select(w => $"warning {w.Code} [{w.File}]: {w.Message}")));
}
