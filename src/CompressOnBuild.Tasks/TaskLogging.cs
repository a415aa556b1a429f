using Microsoft.Build.Utilities;

namespace CompressOnBuild.Tasks
{
    internal static class TaskLogging
    {
        /// <summary>Logs a coded error (CMPRnnnn) whose text comes from Diagnostics.resx.</summary>
        public static void LogCodedError(this TaskLoggingHelper log, string code, string? file, params object?[] args)
        {
            log.LogError(
                subcategory: null,
                errorCode: code,
                helpKeyword: null,
                file: file ?? string.Empty,
                lineNumber: 0,
                columnNumber: 0,
                endLineNumber: 0,
                endColumnNumber: 0,
                message: DiagnosticCodes.FormatWithoutCode(code, args));
        }
    }
}
