using System.Diagnostics;
using CompressOnBuild.Cli;

namespace CompressOnBuild.Cli.Tests;

internal sealed record CliRun(int ExitCode, string Output)
{
    public string[] Lines => Output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    public IEnumerable<string> Errors(string code) => Lines.Where(l => l.Contains(" : error " + code + " : ", StringComparison.Ordinal));
}

internal static class CliHarness
{
    /// <summary>Runs the CLI entry point in this process (ORT comes from the test host).</summary>
    public static CliRun InProcess(params string[] args)
    {
        var writer = new StringWriter();
        int code = Program.Run(args, writer);
        return new CliRun(code, writer.ToString());
    }

    /// <summary>The CLI as built (artifacts/bin/CompressOnBuild.Cli/&lt;config&gt;), for tests that need a separate process.</summary>
    public static string CliDll()
    {
        // This test assembly lives in artifacts/bin/CompressOnBuild.Cli.Tests/<config>/.
        string here = AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar);
        string config = Path.GetFileName(here);
        string bin = Path.GetDirectoryName(Path.GetDirectoryName(here))!;
        string dll = Path.Combine(bin, "CompressOnBuild.Cli", config, "CompressOnBuild.Cli.dll");
        if (!File.Exists(dll))
        {
            Assert.Fail("the CLI build output was not found at " + dll);
        }
        return dll;
    }

    public static CliRun OutOfProcess(string workingDirectory, params string[] args) => OutOfProcess(workingDirectory, new Dictionary<string, string?>(), args);

    /// <summary>The CLI in its own process, with <paramref name="environment"/> changes (null removes a variable).</summary>
    public static CliRun OutOfProcess(string workingDirectory, IReadOnlyDictionary<string, string?> environment, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = workingDirectory, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach ((string name, string? value) in environment)
        {
            if (value == null)
            {
                psi.Environment.Remove(name);
            }
            else
            {
                psi.Environment[name] = value;
            }
        }
        psi.ArgumentList.Add("exec");
        psi.ArgumentList.Add(CliDll());
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using Process p = Process.Start(psi)!;
        Task<string> err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail("the CLI did not finish within 5 minutes");
        }
        return new CliRun(p.ExitCode, output + err.Result);
    }
}
