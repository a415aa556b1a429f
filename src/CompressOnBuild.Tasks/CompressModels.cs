namespace CompressOnBuild.Tasks
{
    internal static class Placeholder
    {
    }
}
