using System.Text.RegularExpressions;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

namespace CompressOnBuild.Tasks
{
    /// <summary>The severity of a worker diagnostic line, and of CompressModelBudgetFailureSeverity.</summary>
    internal enum WorkerSeverity
    {
        Error,
        Warning,
    }

    internal static class TaskLogging
    {
        /// <summary>Where every code is documented; each code has an anchor of its own (lower case, e.g. #cmpr0401).</summary>
        public const string DiagnosticsDocument = "https://github.com/compressonbuild/compressonbuild/blob/main/docs/diagnostics.md";

        private static readonly Regex CanonicalWorkerLine = new Regex(
            @"^(?<file>.*?) ?: (?<severity>error|warning) (?<code>CMPR\d{4}) ?: ?(?<text>.*)$", RegexOptions.CultureInvariant);

        /// <summary>"Warning" (any case) is <see cref="WorkerSeverity.Warning"/>; anything else, unset included, is an error.</summary>
        public static WorkerSeverity ParseSeverity(string? text) =>
            string.Equals(text, "Warning", System.StringComparison.OrdinalIgnoreCase) ? WorkerSeverity.Warning : WorkerSeverity.Error;

        /// <summary>The worker's spelling of a severity in a canonical line ("error", "warning").</summary>
        public static string Spelling(WorkerSeverity severity) => severity == WorkerSeverity.Warning ? "warning" : "error";

        /// <summary>The help link of a code: its section in docs/diagnostics.md.</summary>
        public static string HelpLink(string code) => DiagnosticsDocument + "#" + code.ToLowerInvariant();

        /// <summary>Logs a coded error (CMPRnnnn) whose text comes from Diagnostics.resx, with its help link.</summary>
        public static void LogCodedError(this TaskLoggingHelper log, string code, string? file, params object?[] args)
        {
            log.LogError(
                subcategory: null,
                errorCode: code,
                helpKeyword: null,
                helpLink: HelpLink(code),
                file: file ?? string.Empty,
                lineNumber: 0,
                columnNumber: 0,
                endLineNumber: 0,
                endColumnNumber: 0,
                message: DiagnosticCodes.FormatWithoutCode(code, args));
        }

        /// <summary>Logs a coded warning whose text comes from Diagnostics.resx, with its help link.</summary>
        public static void LogCodedWarning(this TaskLoggingHelper log, string code, string? file, params object?[] args)
        {
            log.LogWarning(null, code, null, HelpLink(code), file ?? string.Empty, 0, 0, 0, 0, "{0}", DiagnosticCodes.FormatWithoutCode(code, args));
        }

        /// <summary>Logs a coded informational message (shown at normal verbosity) whose text comes from Diagnostics.resx.</summary>
        public static void LogCodedMessage(this TaskLoggingHelper log, string code, string? file, params object?[] args)
        {
            log.LogMessage(null, code, null, file ?? string.Empty, 0, 0, 0, 0, MessageImportance.High, "{0}", DiagnosticCodes.FormatWithoutCode(code, args));
        }

        /// <summary>
        /// Logs a worker line "file : error CMPRnnnn : text" as a real error or warning with its code and help link
        /// (so NoWarn, WarningsAsErrors and -warnaserror apply as usual). Returns false for any other line.
        /// </summary>
        public static bool TryLogWorkerDiagnostic(this TaskLoggingHelper log, string line)
        {
            Match m = CanonicalWorkerLine.Match(line);
            if (!m.Success)
            {
                return false;
            }
            string code = m.Groups["code"].Value;
            string file = m.Groups["file"].Value;
            string text = m.Groups["text"].Value;
            if (ParseSeverity(m.Groups["severity"].Value) == WorkerSeverity.Error)
            {
                log.LogError(null, code, null, HelpLink(code), file, 0, 0, 0, 0, "{0}", text);
            }
            else
            {
                log.LogWarning(null, code, null, HelpLink(code), file, 0, 0, 0, 0, "{0}", text);
            }
            return true;
        }
    }
}
