namespace CompressOnBuild.Kernels;

internal static class KernelInfo
{
}
