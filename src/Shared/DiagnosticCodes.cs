// Shared by CompressOnBuild.Tasks (netstandard2.0) and CompressOnBuild.Core (net10.0): the one list of
// diagnostic codes. Messages live in Diagnostics.resx next to this file, each prefixed with its code.
// A unit test checks that every constant here has a resx entry, every resx entry a constant, codes are
// unique, and each is documented in docs/diagnostics.md.
using System.Globalization;
using System.Resources;

namespace CompressOnBuild
{
#if COMPRESSONBUILD_TASKS
    internal static class DiagnosticCodes
#else
    public static class DiagnosticCodes
#endif
    {
        // 00xx: build integration and usage.
        public const string WorkerNotFound = "CMPR0001";
        public const string WorkerFailed = "CMPR0002";
        public const string InvalidOption = "CMPR0003";
        public const string NotSupportedYet = "CMPR0004";
        public const string Usage = "CMPR0005";
        public const string OutputConflict = "CMPR0006";
        public const string ResponseFile = "CMPR0007";
        public const string DotNetHostNotFound = "CMPR0008";
        public const string UnknownOption = "CMPR0009";
        public const string UnknownMetadata = "CMPR0010";
        public const string AccuracyNotGated = "CMPR0011";

        // 01xx: the model file.
        public const string ModelNotFound = "CMPR0101";
        public const string ModelNotOnnx = "CMPR0102";
        public const string ModelInvalid = "CMPR0103";
        public const string ExternalDataPath = "CMPR0104";
        public const string ExternalDataUnreadable = "CMPR0105";
        public const string OutputWriteFailed = "CMPR0106";
        public const string OutputIsSource = "CMPR0107";
        public const string UnknownInputName = "CMPR0108";
        public const string InputShapeMismatch = "CMPR0109";
        public const string SourceRejectedByOrt = "CMPR0110";
        public const string StreamingLeftFloat = "CMPR0114";

        // 02xx: compression passes.
        public const string AlreadyQuantized = "CMPR0201";
        public const string NonFiniteWeights = "CMPR0202";
        public const string NothingToQuantize = "CMPR0203";
        public const string Float16Clamped = "CMPR0204";
        public const string SparsityDiffers = "CMPR0220";
        public const string ChannelsShortfall = "CMPR0226";
        public const string NothingPruned = "CMPR0205";
        public const string NotSmaller = "CMPR0206";
        public const string FloatFallback = "CMPR0207";
        public const string AlreadyFloat16 = "CMPR0240";

        // 03xx: calibration and validation data.
        public const string DataNotFound = "CMPR0301";
        public const string DataUnreadable = "CMPR0302";
        public const string DataShape = "CMPR0303";
        public const string LabelsMismatch = "CMPR0304";
        public const string DataEmpty = "CMPR0305";
        public const string PreprocessingInvalid = "CMPR0306";
        public const string LabelOutOfRange = "CMPR0307";
        public const string TokenizerUnusable = "CMPR0313";

        // 04xx: validation in ONNX Runtime and budgets.
        public const string BudgetBroken = "CMPR0401";
        public const string OrtRunFailed = "CMPR0402";
        public const string OrtNotLoadable = "CMPR0403";
        public const string NonFiniteOutputs = "CMPR0404";
        public const string OutputMismatch = "CMPR0405";
        public const string LabelsRequired = "CMPR0406";
        public const string NoValidationData = "CMPR0407";
        public const string SyntheticInputsFailed = "CMPR0410";
        public const string SyntheticInputsNeeded = "CMPR0411";
        public const string SyntheticValidation = "CMPR0415";
        public const string Slower = "CMPR0416";
        public const string CalibrationIsValidationData = "CMPR0420";
        public const string TuneTimedOut = "CMPR0421";
        public const string TunedResultBelowGoal = "CMPR0422";
        public const string EmbeddingBudgetUnmeasurable = "CMPR0425";

        // 05xx: internal.
        public const string InternalError = "CMPR0501";
        public const string CacheEntryCorrupt = "CMPR0502";

        private static readonly ResourceManager Resources =
            new ResourceManager("CompressOnBuild.Diagnostics", typeof(DiagnosticCodes).Assembly);

        /// <summary>The resx message for <paramref name="code"/> formatted with <paramref name="args"/>;
        /// it starts with the code ("CMPR0101: ...").</summary>
        public static string Format(string code, params object?[] args)
        {
            string? template = Resources.GetString(code, CultureInfo.InvariantCulture);
            if (template == null)
            {
                return code + ": " + string.Join(" ", args);
            }
            return string.Format(CultureInfo.InvariantCulture, template, args);
        }

        /// <summary>The message text without its "CMPRnnnn: " prefix (MSBuild adds the code itself).</summary>
        public static string FormatWithoutCode(string code, params object?[] args)
        {
            string text = Format(code, args);
            string prefix = code + ": ";
            return text.StartsWith(prefix, System.StringComparison.Ordinal) ? text.Substring(prefix.Length) : text;
        }

        /// <summary>0 ok, 1 budget broken, 2 bad input or usage, 3 internal (CLI exit codes).</summary>
        public static int ExitCodeFor(string code)
        {
            if (code == BudgetBroken) return 1;
            if (code == InternalError || code == OrtRunFailed || code == OrtNotLoadable) return 3;
            return 2;
        }
    }
}
