// Shared by CompressOnBuild.Tasks (netstandard2.0) and CompressOnBuild.Cli (net10.0): the one declaration of every
// option. The task validates and forwards item metadata and properties from it, the CLI parses its command line
// from it, `--help` is rendered from it, and tests check docs/options.md against it. Adding an option = one row here
// (then read its value where it takes effect: ItemSettings for item options).
using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Text;

namespace CompressOnBuild
{
    /// <summary>How a value is checked (the same check in the task, before the worker starts, and in the CLI).</summary>
    internal enum OptionKind
    {
        /// <summary>Free text; the worker parses it (schemes, lists, specs).</summary>
        Text,

        /// <summary>A file or folder (relative to the project directory, CLI: the current directory).</summary>
        Path,

        /// <summary>A finite number in [Min, Max] ('.' as the decimal separator); Min excluded when MinExclusive.</summary>
        Number,

        /// <summary>A whole number in [Min, Max].</summary>
        Count,

        /// <summary>true or false (any case).</summary>
        Boolean,

        /// <summary>One of <see cref="OptionSpec.Choices"/> (any case).</summary>
        Choice,
    }

    /// <summary>What an item option's value decides, and so what it must key in the result cache.</summary>
    internal enum CacheKeyRole
    {
        /// <summary>Not part of the result (where files go).</summary>
        None,

        /// <summary>Changes the compressed model or its measurements.</summary>
        Result,

        /// <summary>A budget: decides the verdict from the measurements.</summary>
        Budget,
    }

    /// <summary>One option: its item metadata (or MSBuild property) name, CLI spelling, check, default and help.</summary>
    internal sealed class OptionSpec
    {
        /// <summary>The <c>CompressModel</c> metadata name (item options) or MSBuild property (global options); for
        /// CLI-only options the name the build computes it from.</summary>
        public string Name { get; set; } = string.Empty;

        /// <summary>The CLI spelling (<c>--max-accuracy-drop</c>); empty when there is none.</summary>
        public string Cli { get; set; } = string.Empty;

        public OptionKind Kind { get; set; }

        public double Min { get; set; } = double.NegativeInfinity;

        public double Max { get; set; } = double.PositiveInfinity;

        public bool MinExclusive { get; set; }

        public IReadOnlyList<string> Choices { get; set; } = Array.Empty<string>();

        /// <summary>The default as shown in docs/options.md and --help ("-" when unset means "off").</summary>
        public string Default { get; set; } = "-";

        /// <summary>Placeholder of the value in --help (e.g. &lt;path&gt;).</summary>
        public string ValueHint { get; set; } = string.Empty;

        /// <summary>One line of --help (further lines after '\n'); docs/options.md has the full story.</summary>
        public string Help { get; set; } = string.Empty;

        public CacheKeyRole Role { get; set; } = CacheKeyRole.Result;

        /// <summary>Budgets: true when a larger measured value is better (MinAgreement), false for Max* budgets.</summary>
        public bool HigherIsBetter { get; set; }

        /// <summary>Budgets: the unit printed after values ("points", "KB", "x" or empty).</summary>
        public string Unit { get; set; } = string.Empty;

        /// <summary>True for item options the build computes (OutputPath, ReportPath): the CLI takes them, the
        /// project file does not set them.</summary>
        public bool ComputedByBuild { get; set; }

        private static readonly char[] LineBreaks = { '\n', '\r' };

        /// <summary>Null when <paramref name="value"/> is acceptable, else why not (a phrase such as
        /// "expected a number between 0 and 1").</summary>
        public string? Validate(string value)
        {
            if (value.IndexOfAny(LineBreaks) >= 0)
            {
                return "a value cannot span several lines";
            }
            if (value.Trim().Length != value.Length)
            {
                return "the value has leading or trailing white space";
            }
            switch (Kind)
            {
                case OptionKind.Boolean:
                    return string.Equals(value, "true", StringComparison.OrdinalIgnoreCase)
                        || string.Equals(value, "false", StringComparison.OrdinalIgnoreCase)
                        ? null
                        : "expected true or false";
                case OptionKind.Choice:
                    return Choices.Any(c => string.Equals(c, value, StringComparison.OrdinalIgnoreCase))
                        ? null
                        : "expected " + string.Join(" or ", Choices);
                case OptionKind.Count:
                    return long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out long count) && count >= Min && count <= Max
                        ? null
                        : "expected a whole number " + RangeText();
                case OptionKind.Number:
                    if (!TryParseNumber(value, out double number))
                    {
                        return "expected a number such as 0.5 (with '.' as the decimal separator)";
                    }
                    bool aboveMin = MinExclusive ? number > Min : number >= Min;
                    return aboveMin && number <= Max ? null : "expected a number " + RangeText();
                default:
                    return value.Length > 0 && value[0] == '#' ? "a value cannot start with '#'" : null;
            }
        }

        /// <summary>A finite number with '.' as the decimal separator.</summary>
        public static bool TryParseNumber(string value, out double number) =>
            double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out number)
            && !double.IsNaN(number) && !double.IsInfinity(number);

        /// <summary>"between 0 and 1", "greater than 0", "from 1 to 64", ... for the kind's range.</summary>
        public string RangeText()
        {
            string min = Min.ToString(CultureInfo.InvariantCulture);
            string max = Max.ToString(CultureInfo.InvariantCulture);
            bool hasMin = !double.IsNegativeInfinity(Min);
            bool hasMax = !double.IsPositiveInfinity(Max);
            if (hasMin && hasMax)
            {
                return MinExclusive ? "greater than " + min + " and at most " + max : "from " + min + " to " + max;
            }
            if (hasMin)
            {
                return MinExclusive ? "greater than " + min : "of at least " + min;
            }
            return hasMax ? "of at most " + max : string.Empty;
        }

        /// <summary>MaxSizeKB -&gt; max-size-kb, OpTypesToQuantize -&gt; op-types-to-quantize.</summary>
        public static string ToKebabCase(string name)
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
    }

    /// <summary>Every option of CompressOnBuild, declared once.</summary>
    internal static class OptionTable
    {
        private static OptionSpec Item(string name, OptionKind kind, string hint, string help, string defaultText = "-",
            CacheKeyRole role = CacheKeyRole.Result)
            => new OptionSpec
            {
                Name = name, Cli = "--" + OptionSpec.ToKebabCase(name), Kind = kind, ValueHint = hint, Help = help,
                Default = defaultText, Role = role,
            };

        private static OptionSpec Budget(string name, double min, double max, bool minExclusive, bool higherIsBetter, string unit, string hint, string help)
            => new OptionSpec
            {
                Name = name, Cli = "--" + OptionSpec.ToKebabCase(name), Kind = OptionKind.Number, Min = min, Max = max,
                MinExclusive = minExclusive, HigherIsBetter = higherIsBetter, Unit = unit, ValueHint = hint, Help = help,
                Role = CacheKeyRole.Budget,
            };

        /// <summary>
        /// The per-model options: <c>CompressModel</c> item metadata and the CLI options after a model path, in the
        /// order the task writes them to the response file and the options stamp.
        /// </summary>
        public static IReadOnlyList<OptionSpec> ItemOptions { get; } = new[]
        {
            new OptionSpec
            {
                Name = "OutputPath", Cli = "--output", Kind = OptionKind.Path, ValueHint = "<path>", ComputedByBuild = true,
                Role = CacheKeyRole.None, Default = "computed by the build",
                Help = "where the compressed model goes (written atomically)",
            },
            new OptionSpec
            {
                Name = "ReportPath", Cli = "--report", Kind = OptionKind.Path, ValueHint = "<path>", ComputedByBuild = true,
                Role = CacheKeyRole.None, Default = "computed by the build",
                Help = "report.json with every metric and budget, plus .md and .html beside it",
            },
            Item("Quantization", OptionKind.Text, "<scheme>",
                "None | Int8 (static with calibration data, else dynamic) | Int8Dynamic\n| Int8Static | Float16 | Int4Weights[:<block>][:sym|asym][:rtn|gptq]\n| [:mse|minmax][:actorder|inorder]", "Int8"),
            Item("Pruning", OptionKind.Text, "<method>",
                "None | Magnitude:<s>[:uniform] | Global:<s> | Sensitivity:<s> | NofM:<n>:<m>\n| SparseGPT:<s>[:uniform] | SparseGPT:<n>:<m> (needs --calibration-data) | Channels:<f>[:norefit]\n(before quantization; ranked/refit with --calibration-data when given; with it, Magnitude and\nSparseGPT:<s> choose per-layer sparsities from measured harm unless :uniform)", "None"),
            Item("CalibrationData", OptionKind.Path, "<path>", "representative inputs for static int8 activation ranges, Int8Dynamic activation smoothing, GPTQ and pruning"),
            Item("ValidationData", OptionKind.Path, "<path>", "test_data_set_* folders / input_*.pb, .npy/.npz, IDX, image folders"),
            Item("Labels", OptionKind.Path, "<path>", "IDX labels for IDX images"),
            Item("Preprocessing", OptionKind.Text, "<spec>", "\"layout=NCHW;scale=1/255;mean=..;std=..\" (see docs/options.md)", "scale=1/255"),
            Item("Tokenizer", OptionKind.Path, "<vocab.txt|tokenizer.json>", "WordPiece tokenizer for .txt data (one sentence per line)"),
            new OptionSpec
            {
                Name = "SequenceLength", Cli = "--sequence-length", Kind = OptionKind.Count, Min = 2, Max = 65536, ValueHint = "<n>",
                Default = "model's fixed length, else each sentence's own", Help = "tokens per text sample (padded or cut to this)",
            },
            Budget("MaxAccuracyDrop", 0, 100, false, false, "points", "<points>", "top-1 percentage points lost vs labels"),
            Budget("MinAgreement", 0, 1, false, true, "", "<0..1>", "top-1 agreement with the original"),
            Budget("MinCosine", -1, 1, false, true, "", "<-1..1>", "mean cosine similarity of outputs"),
            Budget("MaxRelativeError", 0, double.PositiveInfinity, false, false, "", "<x>", "mean relative L2 error per output"),
            Budget("MaxAbsoluteError", 0, double.PositiveInfinity, false, false, "", "<x>", "largest absolute output difference"),
            Budget("MinCompressionRatio", 0, double.PositiveInfinity, true, true, "x", "<x>", "original bytes / compressed bytes"),
            Budget("MaxSizeKB", 0, double.PositiveInfinity, true, false, "KB", "<n>", "compressed size in KiB"),
            Budget("MaxLatencyRatio", 0, double.PositiveInfinity, true, false, "", "<x>", "compressed / original median latency, same run"),
            Budget("MinNeighborAgreement", 0, 1, false, true, "", "<0..1>", "embeddings: same nearest other sample, over samples with a clear neighbour"),
            Budget("MinSimilarityCorrelation", -1, 1, false, true, "", "<-1..1>", "embeddings: Spearman rank correlation of all pairwise similarities"),
            new OptionSpec
            {
                Name = "Metric", Cli = "--metric", Kind = OptionKind.Choice, Choices = new[] { "Auto", "Classification", "Embedding" },
                ValueHint = "Auto|Classification|Embedding", Default = "Auto",
                Help = "how the output is judged: top-1 (classification) or embedding metrics; Auto: from its shape",
            },
            new OptionSpec
            {
                Name = "ValidationSamples", Cli = "--validation-samples", Kind = OptionKind.Count, Min = 1, Max = int.MaxValue,
                ValueHint = "<n>", Default = "all", Help = "deterministic, evenly spaced subset",
            },
            Item("InputShapes", OptionKind.Text, "<name:dims;..>",
                "without data: shapes of the synthetic inputs, e.g. input:1x3x640x640;samples:16000", "from the model, else probed"),
            Item("InputValues", OptionKind.Text, "<name=v;..>", "without data: one value for a whole input, e.g. sr=16000", "by consumer"),
            new OptionSpec
            {
                Name = "CalibrationSamples", Cli = "--calibration-samples", Kind = OptionKind.Count, Min = 1, Max = int.MaxValue,
                ValueHint = "<n>", Default = "256", Help = "evenly spaced subset used for calibration",
            },
            Item("CalibrationMethod", OptionKind.Text, "<m>", "MinMax | Percentile[:99.99] | Mse | Entropy", "MinMax"),
            new OptionSpec
            {
                Name = "ActivationType", Cli = "--activation-type", Kind = OptionKind.Choice, Choices = new[] { "UInt8", "Int8" },
                ValueHint = "UInt8|Int8", Default = "UInt8", Help = "static int8 activations: UInt8 asymmetric | Int8 symmetric",
            },
            Item("PerChannel", OptionKind.Boolean, "true|false", "static int8 weight scales per output channel or per tensor", "true"),
            Item("NodesToExclude", OptionKind.Text, "<a;b>", "nodes that stay float"),
            Item("OpTypesToQuantize", OptionKind.Text, "<a;b>", "only these op types are quantized (e.g. Conv;Gemm)", "all"),
            Item("Tune", OptionKind.Boolean, "true|false", "back off layer by layer (most harmful first) until the budgets hold", "false"),
            new OptionSpec
            {
                Name = "TuneTimeBudgetSeconds", Cli = "--tune-time-budget-seconds", Kind = OptionKind.Number, Min = 0, MinExclusive = true,
                Max = 86400, ValueHint = "<s>", Default = "60", Help = "the tuning search stops here and keeps the best configuration",
            },
        };

        /// <summary>
        /// Options of the whole build / CLI run: MSBuild properties (empty Name: CLI only, set by the build) and the
        /// CLI's global options (empty Cli: build only).
        /// </summary>
        public static IReadOnlyList<OptionSpec> GlobalOptions { get; } = new[]
        {
            new OptionSpec
            {
                Name = "CompressOnBuildEnabled", Kind = OptionKind.Boolean, Default = "true", Role = CacheKeyRole.None,
                Help = "turn the step off",
            },
            new OptionSpec
            {
                Name = "CompressModelCacheDir", Cli = "--cache-dir", Kind = OptionKind.Path, ValueHint = "<dir>", Role = CacheKeyRole.None,
                Default = "under the user profile (see targets)", Help = "shared content-addressed result cache",
            },
            new OptionSpec
            {
                Name = "CompressModelUseCache", Kind = OptionKind.Boolean, Default = "true", Role = CacheKeyRole.None,
                Help = "false: no shared cache",
            },
            new OptionSpec
            {
                Name = "CompressModelCacheMaxMB", Cli = "--cache-max-mb", Kind = OptionKind.Count, Min = 1, Max = 1L << 30,
                ValueHint = "<n>", Default = "4096", Role = CacheKeyRole.None,
                Help = "trim the cache to this size after the run, least recently used first",
            },
            new OptionSpec
            {
                Name = "CompressModelBudgetFailureSeverity", Cli = "--budget-severity", Kind = OptionKind.Choice,
                Choices = new[] { "Error", "Warning" }, ValueHint = "Error|Warning", Default = "Error", Role = CacheKeyRole.None,
                Help = "broken budgets fail the build, or warn and ship the model",
            },
            new OptionSpec
            {
                Name = "CompressModelMaxParallelism", Cli = "--max-parallelism", Kind = OptionKind.Count, Min = 1, Max = 64,
                ValueHint = "<n>", Default = "1", Role = CacheKeyRole.None, Help = "models compressed at once in the one worker process",
            },
            new OptionSpec
            {
                Name = "CompressModelSummaryMarkdown", Cli = "--summary-markdown", Kind = OptionKind.Path, ValueHint = "<file>",
                Default = "obj/.../CompressOnBuild/summary.md", Role = CacheKeyRole.None,
                Help = "one Markdown table for all models (e.g. for $GITHUB_STEP_SUMMARY)",
            },
            new OptionSpec
            {
                Name = "CompressModelAllowedMetadata", Kind = OptionKind.Text, Role = CacheKeyRole.None,
                Help = "';'-separated metadata names of your own on CompressModel items, not reported as unknown (CMPR0010)",
            },
            new OptionSpec
            {
                Cli = "--onnxruntime-assets", Kind = OptionKind.Path, ValueHint = "<file>", Default = "$(ProjectAssetsFile)",
                Role = CacheKeyRole.None, Help = "the app's obj/project.assets.json: validate with the app's ONNX Runtime",
            },
            new OptionSpec
            {
                Cli = "--nuget-packages", Kind = OptionKind.Path, ValueHint = "<dir>", Default = "$(NuGetPackageRoot)",
                Role = CacheKeyRole.None, Help = "NuGet global packages folder (fallback ONNX Runtime)",
            },
        };

        /// <summary>Item metadata the build reads besides the options (not passed to the worker).</summary>
        public static IReadOnlyList<string> BuildOnlyMetadata { get; } = new[] { "Link", "TargetPath" };

        /// <summary>The item option with metadata name <paramref name="name"/> (case-insensitive, as MSBuild
        /// metadata is), or null.</summary>
        public static OptionSpec? ItemByName(string name) =>
            ItemOptions.FirstOrDefault(o => string.Equals(o.Name, name, StringComparison.OrdinalIgnoreCase));

        /// <summary>The global option with MSBuild property name <paramref name="name"/>.</summary>
        public static OptionSpec GlobalByName(string name) =>
            GlobalOptions.First(o => string.Equals(o.Name, name, StringComparison.Ordinal));

        /// <summary>The budget options.</summary>
        public static IEnumerable<OptionSpec> Budgets => ItemOptions.Where(o => o.Role == CacheKeyRole.Budget);

        /// <summary>
        /// The candidate closest to <paramref name="name"/> when it looks like a misspelling of it (case-insensitive
        /// edit distance with transpositions: 1 for names of up to 5 letters, else a quarter of the longer name and
        /// at least 2), else null. Short names get 1 so that a team's own "Name" is not taken for "Tune".
        /// </summary>
        public static string? Suggest(string name, IEnumerable<string> candidates)
        {
            string? best = null;
            int bestDistance = int.MaxValue;
            foreach (string candidate in candidates)
            {
                int distance = EditDistance(name.ToUpperInvariant(), candidate.ToUpperInvariant());
                int longer = Math.Max(name.Length, candidate.Length);
                int allowed = longer <= 5 ? 1 : Math.Max(2, longer / 4);
                if (distance <= allowed && distance < bestDistance)
                {
                    best = candidate;
                    bestDistance = distance;
                }
            }
            return best;
        }

        /// <summary>Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps.</summary>
        internal static int EditDistance(string a, string b)
        {
            var d = new int[a.Length + 1, b.Length + 1];
            for (int i = 0; i <= a.Length; i++)
            {
                d[i, 0] = i;
            }
            for (int j = 0; j <= b.Length; j++)
            {
                d[0, j] = j;
            }
            for (int i = 1; i <= a.Length; i++)
            {
                for (int j = 1; j <= b.Length; j++)
                {
                    int cost = a[i - 1] == b[j - 1] ? 0 : 1;
                    int best = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + cost);
                    if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                    {
                        best = Math.Min(best, d[i - 2, j - 2] + 1);
                    }
                    d[i, j] = best;
                }
            }
            return d[a.Length, b.Length];
        }

        private static readonly char[] NotAPlainDefault = { ' ', '/' };

        /// <summary>The "Item options" and "Global options" sections of --help.</summary>
        public static string HelpSections()
        {
            var text = new StringBuilder();
            text.Append("Item options (metadata name in brackets):\n");
            foreach (OptionSpec o in ItemOptions)
            {
                AppendHelpLine(text, o, o.ComputedByBuild ? "[computed by the build] " : "[" + o.Name + "] ",
                    o.Help + (o.Default is "-" or "computed by the build" ? string.Empty : " (default " + o.Default + ")"));
            }
            text.Append("\nGlobal options (MSBuild property in brackets):\n");
            foreach (OptionSpec o in GlobalOptions.Where(g => g.Cli.Length > 0))
            {
                AppendHelpLine(text, o, o.Name.Length > 0 ? "[" + o.Name + "] " : string.Empty,
                    o.Help + (o.Default == "-" || o.Default.StartsWith("$(", StringComparison.Ordinal) || o.Default.IndexOfAny(NotAPlainDefault) >= 0
                        ? string.Empty : " (default " + o.Default + ")"));
            }
            return text.ToString();
        }

        private static void AppendHelpLine(StringBuilder text, OptionSpec o, string prefix, string help)
        {
            const int Column = 36;
            string head = "  " + o.Cli + (o.ValueHint.Length > 0 ? " " + o.ValueHint : string.Empty);
            text.Append(head.PadRight(Column - 1)).Append(' ');
            string[] lines = (prefix + help).Split('\n');
            text.Append(lines[0]).Append('\n');
            for (int i = 1; i < lines.Length; i++)
            {
                text.Append(new string(' ', Column)).Append(lines[i]).Append('\n');
            }
        }
    }
}
