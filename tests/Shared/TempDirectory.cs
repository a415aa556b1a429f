namespace CompressOnBuild.Tests;

/// <summary>A fresh folder under the system temp folder for one test, deleted (best effort) by Delete (call it from [TestCleanup]).</summary>
internal sealed class TempDirectory
{
    public TempDirectory(string prefix)
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), prefix + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public void Delete()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // A file still held open by a finished child process; the folder name is unique, so it harms nothing.
        }
    }
}
