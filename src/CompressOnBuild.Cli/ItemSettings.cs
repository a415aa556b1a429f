using System.Globalization;
using CompressOnBuild.Core;
using CompressOnBuild.Core.Graph;
using CompressOnBuild.Core.Passes;
using CompressOnBuild.Onnx;
using CompressOnBuild.Validation;

namespace CompressOnBuild.Cli;

/// <summary>A budget as set by the user: its metadata name, the limit, and whether larger measured values are better.</summary>
internal sealed record Budget(string Name, double Limit, bool HigherIsBetter, string Unit);

/// <summary>
/// The validated, typed settings of one item. Every option the grammar knows is either applied or rejected here:
/// options whose feature a later version implements fail with CMPR0004 instead of being ignored.
/// </summary>
internal sealed class ItemSettings
{
    public required string Model { get; init; }
    public required string Output { get; init; }
    public string? Report { get; init; }
    public required string QuantizationText { get; init; }
    public required QuantizationScheme Quantization { get; init; }
    public int Int4BlockSize { get; init; } = 32;
    public string? CalibrationData { get; init; }
    public PruningOptions Pruning { get; init; } = PruningOptions.None;
    public int CalibrationSamples { get; init; } = 256;
    /// <summary>The calibration method in its canonical spelling (see <see cref="CalibrationOptions.TryParseMethod"/>), e.g. "Percentile:99.99".</summary>
    public string CalibrationMethod { get; init; } = "MinMax";
    public bool Int4Symmetric { get; init; } = true;

    /// <summary>GPTQ when CalibrationData is given (unless ":rtn" asks for round to nearest), else RTN.</summary>
    public Int4Method Int4Method { get; init; } = Int4Method.Rtn;

    /// <summary>Int4 block ranges by MSE-optimal clipping (default) or plain min/max (":minmax").</summary>
    public bool Int4MseScales { get; init; } = true;

    /// <summary>GPTQ in activation order (default; ":inorder" quantizes the inputs in their own order).</summary>
    public bool Int4ActOrder { get; init; } = true;

    /// <summary>Static int8 activations (ActivationType): UInt8 asymmetric (default) or Int8 symmetric.</summary>
    public ActivationType ActivationType { get; init; } = ActivationType.UInt8;

    /// <summary>Static int8 weights: one scale per output channel (PerChannel, default true) or per tensor.</summary>
    public bool PerChannel { get; init; } = true;

    /// <summary>Op types the quantization pass may change (OpTypesToQuantize); null = every type it handles.</summary>
    public IReadOnlySet<string>? OpTypesToQuantize { get; init; }

    /// <summary>
    /// Labels (name, else first output) of the nodes, in every graph of <paramref name="model"/>, whose op type
    /// <see cref="OpTypesToQuantize"/> leaves out: the quantization passes get them as excluded nodes. Empty without a filter.
    /// </summary>
    public IReadOnlyList<string> OpTypeExclusions(ModelProto model)
    {
        if (OpTypesToQuantize == null)
        {
            return [];
        }
        return [.. CompressOnBuild.Core.Onnx.ModelWalker.Graphs(model)
            .SelectMany(g => g.Graph.Node)
            .Where(n => !OpTypesToQuantize.Contains(n.OpType))
            .Select(OnnxNames.Label)
            .Distinct(StringComparer.Ordinal)];
    }
    public string? ValidationData { get; init; }
    public string? Labels { get; init; }
    public string? Preprocessing { get; init; }

    /// <summary>Tokenizer (vocab.txt or WordPiece tokenizer.json) and sequence length for .txt data; null without Tokenizer.</summary>
    public TextOptions? Text { get; init; }
    public int ValidationSamples { get; init; }

    /// <summary>How the primary output is judged (Metric): Auto (from its shape), Classification or Embedding.</summary>
    public OutputKind Metric { get; init; }

    /// <summary>InputShapes / InputValues: how synthetic inputs are made when the item has no data.</summary>
    public InputOverrides Inputs { get; init; } = InputOverrides.None;
    public IReadOnlyList<string> NodesToExclude { get; init; } = [];
    public IReadOnlyList<Budget> Budgets { get; init; } = [];
    public bool Tune { get; init; }
    public double TuneTimeBudgetSeconds { get; init; } = 60;

    /// <summary>False when TuneTimeBudgetSeconds was left at its default (the tuner then scales it with the cost of one trial).</summary>
    public bool TuneTimeBudgetGiven { get; init; }

    /// <summary>Canonical text of every option that changes the result (for the cache key and the report).</summary>
    public required SortedDictionary<string, string> EffectiveOptions { get; init; }

    public static ItemSettings From(ItemRequest r)
    {
        string model = r.Model;
        CompressException Invalid(string option, string value, string why) =>
            new(DiagnosticCodes.InvalidOption, model, option, value, why) { File = model };

        // The value of a table option, checked against the table's type and range (CMPR0003), or null when unset.
        string? Checked(string name)
        {
            string? value = r.Get(name);
            if (value != null && OptionTable.ItemByName(name)!.Validate(value) is { } problem)
            {
                throw Invalid(name, value, problem);
            }
            return value;
        }

        string output = r.Get("OutputPath") ?? throw CommandLine.Usage($"model '{model}' has no --output");

        string qText = r.Get("Quantization") ?? "Int8";
        bool hasCalibration = r.Get("CalibrationData") != null;
        string[] qParts = qText.Split(':', StringSplitOptions.TrimEntries);
        int int4Block = 32;
        bool int4Symmetric = true;
        Int4Method? int4MethodAsked = null;
        bool int4Mse = true;
        bool int4ActOrder = true;
        QuantizationScheme scheme = qParts[0].ToUpperInvariant() switch
        {
            "NONE" when qParts.Length == 1 => QuantizationScheme.None,
            "INT8" when !hasCalibration && qParts.Length == 1 => QuantizationScheme.Int8Dynamic,
            "INT8" or "INT8STATIC" when qParts.Length == 1 => QuantizationScheme.Int8Static,
            "INT8DYNAMIC" when qParts.Length == 1 => QuantizationScheme.Int8Dynamic,
            "FLOAT16" when qParts.Length == 1 => QuantizationScheme.Float16,
            "INT4WEIGHTS" => QuantizationScheme.Int4Weights,
            _ => throw Invalid("Quantization", qText, "use None, Int8, Int8Dynamic, Int8Static, Float16 or Int4Weights[:<block size 16|32|64|128>][:sym|asym][:rtn|gptq][:mse|minmax][:actorder|inorder]"),
        };
        if (scheme == QuantizationScheme.Int4Weights)
        {
            foreach (string part in qParts.Skip(1))
            {
                if (int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out int block) && block is 16 or 32 or 64 or 128)
                {
                    int4Block = block;
                }
                else if (part.Equals("sym", StringComparison.OrdinalIgnoreCase) || part.Equals("asym", StringComparison.OrdinalIgnoreCase))
                {
                    int4Symmetric = part.Equals("sym", StringComparison.OrdinalIgnoreCase);
                }
                else if (part.Equals("gptq", StringComparison.OrdinalIgnoreCase) || part.Equals("rtn", StringComparison.OrdinalIgnoreCase))
                {
                    int4MethodAsked = part.Equals("gptq", StringComparison.OrdinalIgnoreCase) ? Int4Method.Gptq : Int4Method.Rtn;
                }
                else if (part.Equals("actorder", StringComparison.OrdinalIgnoreCase) || part.Equals("inorder", StringComparison.OrdinalIgnoreCase))
                {
                    int4ActOrder = part.Equals("actorder", StringComparison.OrdinalIgnoreCase);
                }
                else if (part.Equals("mse", StringComparison.OrdinalIgnoreCase) || part.Equals("minmax", StringComparison.OrdinalIgnoreCase))
                {
                    int4Mse = part.Equals("mse", StringComparison.OrdinalIgnoreCase);
                }
                else
                {
                    throw Invalid("Quantization", qText, "Int4Weights takes an optional block size (16, 32, 64 or 128), sym or asym, rtn or gptq, mse or minmax, and actorder or inorder (GPTQ), e.g. Int4Weights:64:asym:gptq");
                }
            }
        }
        // GPTQ is the default whenever there is calibration data to read the layers' inputs from.
        Int4Method int4Method = int4MethodAsked ?? (scheme == QuantizationScheme.Int4Weights && hasCalibration ? Int4Method.Gptq : Int4Method.Rtn);
        if (scheme == QuantizationScheme.Int8Static && !hasCalibration)
        {
            throw Invalid("Quantization", qText, "static int8 needs CalibrationData (representative inputs for the activation ranges)");
        }
        if (int4Method == Int4Method.Gptq && !hasCalibration)
        {
            throw Invalid("Quantization", qText, "GPTQ needs CalibrationData (representative inputs for the layers' input statistics)");
        }
        // Int8Dynamic reads CalibrationData for its activation smoothing (else it measures on validation samples).
        if (hasCalibration && scheme is not (QuantizationScheme.Int8Static or QuantizationScheme.Int8Dynamic) && int4Method != Int4Method.Gptq && (r.Get("Pruning") ?? "None").Equals("None", StringComparison.OrdinalIgnoreCase))
        {
            throw Invalid("CalibrationData", r.Get("CalibrationData")!, $"calibration data is used by Int8 / Int8Static, Int8Dynamic (activation smoothing), Int4Weights (GPTQ, unless :rtn) and pruning, not by {qText} alone");
        }
        int calibrationSamples = Checked("CalibrationSamples") is { } cs ? int.Parse(cs, CultureInfo.InvariantCulture) : 256;
        string calibrationMethod = r.Get("CalibrationMethod") ?? "MinMax";
        if (!CalibrationOptions.TryParseMethod(calibrationMethod, out _, out _, out string calibrationCanonical))
        {
            throw Invalid("CalibrationMethod", calibrationMethod, "use MinMax, Percentile[:<50..100, default 99.99>], Mse or Entropy");
        }

        string pruning = r.Get("Pruning") ?? "None";
        PruningOptions pruningOptions = PruningOptions.Parse(pruning, model);
        if (pruningOptions.Method == PruningMethod.Sensitivity && !hasCalibration && r.Get("ValidationData") == null)
        {
            throw Invalid("Pruning", pruning, "Sensitivity measures each layer's harm on data: set CalibrationData (or ValidationData, whose inputs are then used)");
        }
        HashSet<string>? opTypes = null;
        if (r.Get("OpTypesToQuantize") is { } ops)
        {
            opTypes = new HashSet<string>(ops.Split([';', ','], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries), StringComparer.Ordinal);
            if (opTypes.Count == 0 || opTypes.Any(o => !o.All(char.IsAsciiLetterOrDigit) || !char.IsAsciiLetterUpper(o[0])))
            {
                throw Invalid("OpTypesToQuantize", ops, "list ONNX op types separated by ';' (case-sensitive, e.g. Conv;MatMul)");
            }
            if (OpRegistry.OpTypesProblem(scheme, opTypes) is { } problem)
            {
                throw Invalid("OpTypesToQuantize", ops, problem);
            }
        }
        ActivationType activationType = ActivationType.UInt8;
        if (r.Get("ActivationType") is { } at)
        {
            if (scheme != QuantizationScheme.Int8Static)
            {
                throw Invalid("ActivationType", at, $"it applies to static int8 (Int8Static, or Int8 with CalibrationData), not to {qText}");
            }
            activationType = at.ToUpperInvariant() switch
            {
                "UINT8" => ActivationType.UInt8,
                "INT8" => ActivationType.Int8,
                _ => throw Invalid("ActivationType", at, "use UInt8 (asymmetric) or Int8 (symmetric, zero point 0)"),
            };
        }
        bool perChannel = true;
        if (r.Get("PerChannel") is { } pc)
        {
            if (scheme != QuantizationScheme.Int8Static)
            {
                throw Invalid("PerChannel", pc, $"it applies to static int8 (Int8Static, or Int8 with CalibrationData), not to {qText}");
            }
            perChannel = bool.Parse(Checked("PerChannel")!);
        }
        bool tuneOn = Checked("Tune") is { } tune && bool.Parse(tune);
        double tuneSeconds = Checked("TuneTimeBudgetSeconds") is { } ttb ? double.Parse(ttb, NumberStyles.Float, CultureInfo.InvariantCulture) : 60;
        if (tuneOn && scheme == QuantizationScheme.None && pruningOptions.Method == PruningMethod.None)
        {
            throw Invalid("Tune", "true", "tuning needs a quantization scheme to back off from");
        }

        int samples = Checked("ValidationSamples") is { } vs ? int.Parse(vs, CultureInfo.InvariantCulture) : 0;

        var budgets = new List<Budget>();
        foreach (OptionSpec budget in OptionTable.Budgets)
        {
            if (Checked(budget.Name) is { } limit)
            {
                budgets.Add(new Budget(budget.Name, double.Parse(limit, NumberStyles.Float, CultureInfo.InvariantCulture), budget.HigherIsBetter, budget.Unit));
            }
        }
        OutputKind metric = Checked("Metric") is { } metricText ? Enum.Parse<OutputKind>(metricText, ignoreCase: true) : OutputKind.Auto;

        string? validation = r.Get("ValidationData");
        string? labels = r.Get("Labels");
        if (labels != null && validation == null)
        {
            throw Invalid("Labels", labels, "labels need ValidationData");
        }

        TextOptions? text = null;
        int sequenceLength = Checked("SequenceLength") is { } sl ? int.Parse(sl, CultureInfo.InvariantCulture) : 0;
        if (r.Get("Tokenizer") is { } tokenizer)
        {
            if (validation == null && !hasCalibration)
            {
                throw Invalid("Tokenizer", tokenizer, "a tokenizer turns text ValidationData or CalibrationData (.txt, one sentence per line) into model inputs; neither is set");
            }
            text = new TextOptions(tokenizer, sequenceLength);
        }
        else if (sequenceLength > 0)
        {
            throw Invalid("SequenceLength", sequenceLength.ToString(CultureInfo.InvariantCulture), "it applies to text data, which needs a Tokenizer");
        }

        var shapes = new Dictionary<string, long[]>(StringComparer.Ordinal);
        var values = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach ((string option, bool isShapes) in new[] { ("InputShapes", true), ("InputValues", false) })
        {
            if (r.Get(option) is not { } spec)
            {
                continue;
            }
            if (validation != null || hasCalibration)
            {
                throw Invalid(option, spec, $"it describes the synthetic inputs used without data; the item has {(validation != null ? "ValidationData" : "CalibrationData")}, whose inputs are used");
            }
            string? why = isShapes ? InputOverrides.TryParseShapes(spec, out shapes) : InputOverrides.TryParseValues(spec, out values);
            if (why != null)
            {
                throw Invalid(option, spec, why);
            }
        }

        string[] exclude = (r.Get("NodesToExclude") ?? "").Split([';', ','], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

        var effective = new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["Quantization"] = scheme == QuantizationScheme.Int4Weights ? $"Int4Weights:{int4Block}:{(int4Symmetric ? "sym" : "asym")}{(int4Method == Int4Method.Gptq ? ":gptq" : "")}{(int4Mse ? "" : ":minmax")}{(int4Method == Int4Method.Gptq && !int4ActOrder ? ":inorder" : "")}" : scheme.ToString(),
            ["Pruning"] = pruningOptions.ToString(),
        };
        foreach ((string k, string v) in r.Values)
        {
            if (OptionTable.ItemByName(k) is { Role: CacheKeyRole.None } || k is "Quantization" or "Pruning" or "ActivationType" or "PerChannel" or "CalibrationMethod" or "SequenceLength" or "Metric"
                or "InputShapes" or "InputValues" || string.IsNullOrWhiteSpace(v))
            {
                continue;
            }
            effective[k] = v.Trim();
        }
        // Canonical and only when not the default: "int8" and "Int8" key the same result, and so do an unset
        // PerChannel and "true", or "percentile" and "Percentile:99.99" (and earlier cache entries, made before these
        // options existed, stay valid).
        if (calibrationCanonical != "MinMax")
        {
            effective["CalibrationMethod"] = calibrationCanonical;
        }
        if (activationType != ActivationType.UInt8)
        {
            effective["ActivationType"] = activationType.ToString();
        }
        if (!perChannel)
        {
            effective["PerChannel"] = "false";
        }
        if (metric != OutputKind.Auto)
        {
            effective["Metric"] = metric.ToString();
        }
        if (sequenceLength > 0)
        {
            effective["SequenceLength"] = sequenceLength.ToString(CultureInfo.InvariantCulture);
        }
        if (shapes.Count > 0)
        {
            effective["InputShapes"] = InputOverrides.FormatShapes(shapes);
        }
        if (values.Count > 0)
        {
            effective["InputValues"] = string.Join(";", values.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => p.Key + "=" + p.Value.ToString("R", CultureInfo.InvariantCulture)));
        }

        return new ItemSettings
        {
            Model = model,
            Output = output,
            Report = r.Get("ReportPath"),
            QuantizationText = qText,
            Quantization = scheme,
            Int4BlockSize = int4Block,
            CalibrationData = r.Get("CalibrationData"),
            Pruning = pruningOptions,
            CalibrationSamples = calibrationSamples,
            CalibrationMethod = calibrationCanonical,
            Int4Symmetric = int4Symmetric,
            Int4Method = int4Method,
            Int4MseScales = int4Mse,
            Int4ActOrder = int4ActOrder,
            Inputs = shapes.Count > 0 || values.Count > 0 ? new InputOverrides(shapes, values) : InputOverrides.None,
            ActivationType = activationType,
            PerChannel = perChannel,
            OpTypesToQuantize = opTypes,
            ValidationData = validation,
            Labels = labels,
            Preprocessing = r.Get("Preprocessing"),
            Text = text,
            ValidationSamples = samples,
            Metric = metric,
            NodesToExclude = exclude,
            Budgets = budgets,
            Tune = tuneOn,
            TuneTimeBudgetSeconds = tuneSeconds,
            TuneTimeBudgetGiven = r.Get("TuneTimeBudgetSeconds") != null,
            EffectiveOptions = effective,
        };
    }
}
