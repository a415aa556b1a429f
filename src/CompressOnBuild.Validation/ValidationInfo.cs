namespace CompressOnBuild.Validation;

internal static class ValidationInfo
{
}
