using System;
using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace CompressOnBuild.Tasks
{
    /// <summary>How the task checks a metadata value before it reaches the worker.</summary>
    internal enum OptionKind
    {
        /// <summary>Passed through verbatim; the worker validates it.</summary>
        Text,

        /// <summary>A file or folder; passed through verbatim (relative to the project directory).</summary>
        Path,

        /// <summary>A finite number &gt;= 0.</summary>
        NonNegative,

        /// <summary>A finite number &gt; 0.</summary>
        Positive,

        /// <summary>A number in [0, 1].</summary>
        Fraction,

        /// <summary>A number in [-1, 1].</summary>
        SignedFraction,

        /// <summary>A whole number &gt; 0.</summary>
        Count,

        /// <summary>true or false.</summary>
        Boolean,
    }

    /// <summary>One <c>CompressModel</c> metadata name and the worker option it becomes.</summary>
    internal sealed class ModelOption
    {
        public ModelOption(string metadataName, OptionKind kind)
        {
            MetadataName = metadataName;
            Kind = kind;
            OptionName = "--" + ToKebabCase(metadataName);
        }

        public string MetadataName { get; }

        public string OptionName { get; }

        public OptionKind Kind { get; }

        /// <summary>MaxSizeKB -&gt; max-size-kb, OpTypesToQuantize -&gt; op-types-to-quantize.</summary>
        internal static string ToKebabCase(string name)
        {
            var builder = new StringBuilder(name.Length + 8);
            for (int i = 0; i < name.Length; i++)
            {
                char c = name[i];
                if (char.IsUpper(c) && i > 0)
                {
                    char previous = name[i - 1];
                    bool nextIsLower = i + 1 < name.Length && char.IsLower(name[i + 1]);
                    if (char.IsLower(previous) || char.IsDigit(previous) || (char.IsUpper(previous) && nextIsLower))
                    {
                        builder.Append('-');
                    }
                }
                builder.Append(char.ToLowerInvariant(c));
            }
            return builder.ToString();
        }

        /// <summary>Null when <paramref name="value"/> is acceptable, else why not.</summary>
        public string? Validate(string value)
        {
            if (value.IndexOf('\n') >= 0 || value.IndexOf('\r') >= 0)
            {
                return "a value cannot span several lines";
            }
            if (value.Trim().Length != value.Length)
            {
                return "the value has leading or trailing white space";
            }
            switch (Kind)
            {
                case OptionKind.Text:
                case OptionKind.Path:
                    return value.StartsWith("#", StringComparison.Ordinal)
                        ? "a value cannot start with '#'"
                        : null;
                case OptionKind.Boolean:
                    return string.Equals(value, "true", StringComparison.OrdinalIgnoreCase)
                        || string.Equals(value, "false", StringComparison.OrdinalIgnoreCase)
                        ? null
                        : "expected true or false";
                case OptionKind.Count:
                    return int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int count) && count > 0
                        ? null
                        : "expected a whole number greater than 0";
                default:
                    return ValidateNumber(value);
            }
        }

        private string? ValidateNumber(string value)
        {
            if (!double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out double number)
                || double.IsNaN(number) || double.IsInfinity(number))
            {
                return "expected a number such as 0.5 (with '.' as the decimal separator)";
            }
            switch (Kind)
            {
                case OptionKind.NonNegative:
                    return number >= 0 ? null : "expected a number greater than or equal to 0";
                case OptionKind.Positive:
                    return number > 0 ? null : "expected a number greater than 0";
                case OptionKind.Fraction:
                    return number >= 0 && number <= 1 ? null : "expected a number between 0 and 1";
                case OptionKind.SignedFraction:
                    return number >= -1 && number <= 1 ? null : "expected a number between -1 and 1";
                default:
                    return null;
            }
        }
    }

    /// <summary>The item metadata the worker understands, in the order they are written to the response file.</summary>
    internal static class ModelOptions
    {
        public static IReadOnlyList<ModelOption> All { get; } = new[]
        {
            new ModelOption("Quantization", OptionKind.Text),
            new ModelOption("Pruning", OptionKind.Text),
            new ModelOption("CalibrationData", OptionKind.Path),
            new ModelOption("ValidationData", OptionKind.Path),
            new ModelOption("Labels", OptionKind.Path),
            new ModelOption("Preprocessing", OptionKind.Text),
            new ModelOption("Tokenizer", OptionKind.Path),
            new ModelOption("SequenceLength", OptionKind.Count),
            new ModelOption("MaxAccuracyDrop", OptionKind.NonNegative),
            new ModelOption("MinAgreement", OptionKind.Fraction),
            new ModelOption("MinCosine", OptionKind.SignedFraction),
            new ModelOption("MaxRelativeError", OptionKind.NonNegative),
            new ModelOption("MaxAbsoluteError", OptionKind.NonNegative),
            new ModelOption("MinCompressionRatio", OptionKind.Positive),
            new ModelOption("MaxSizeKB", OptionKind.Positive),
            new ModelOption("MaxLatencyRatio", OptionKind.Positive),
            new ModelOption("ValidationSamples", OptionKind.Count),
            new ModelOption("CalibrationSamples", OptionKind.Count),
            new ModelOption("CalibrationMethod", OptionKind.Text),
            new ModelOption("ActivationType", OptionKind.Text),
            new ModelOption("PerChannel", OptionKind.Boolean),
            new ModelOption("NodesToExclude", OptionKind.Text),
            new ModelOption("OpTypesToQuantize", OptionKind.Text),
            new ModelOption("Tune", OptionKind.Boolean),
            new ModelOption("TuneTimeBudgetSeconds", OptionKind.Positive),
        };

        /// <summary>Metadata that name data files; their fingerprints go into the options stamp.</summary>
        public static IReadOnlyList<string> DataMetadata { get; } = new[] { "CalibrationData", "ValidationData", "Labels", "Tokenizer" };
    }
}
