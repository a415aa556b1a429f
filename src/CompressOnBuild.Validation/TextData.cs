using System.Text;
using System.Text.Json;
using CompressOnBuild.Core;
using Microsoft.ML.Tokenizers;

namespace CompressOnBuild.Validation;

/// <summary>How a text data file (one sentence per line) becomes model inputs.</summary>
/// <param name="TokenizerPath">A WordPiece <c>vocab.txt</c> (one token per line, id = line number) or a Hugging Face
/// <c>tokenizer.json</c> whose model is WordPiece.</param>
/// <param name="SequenceLength">Tokens per sample (padded or cut to exactly this many); 0 = the model's fixed sequence
/// dimension, or for a dynamic one each sentence at its own length (cut at <see cref="MaxUnpaddedLength"/>), as an app
/// runs one sentence at a time.</param>
public sealed record TextOptions(string TokenizerPath, int SequenceLength = 0)
{
    /// <summary>Without SequenceLength and with a dynamic sequence dimension, longer sentences are cut here (BERT's limit).</summary>
    public const int MaxUnpaddedLength = 512;
}

/// <summary>
/// A BERT-style WordPiece tokenizer (Microsoft.ML.Tokenizers' <see cref="BertTokenizer"/>) and the mapping of its output
/// onto a model's inputs by name: token ids, attention mask (1 for real tokens), token type ids (0), position ids.
/// </summary>
public sealed class TextEncoder
{
    private readonly BertTokenizer tokenizer;
    private readonly InputRole[] roles;

    /// <summary>What a model input receives.</summary>
    public enum InputRole
    {
        /// <summary>Token ids ([CLS] ... [SEP], then padding).</summary>
        TokenIds,
        /// <summary>1 for real tokens, 0 for padding.</summary>
        AttentionMask,
        /// <summary>Segment ids: 0 (one sentence per sample).</summary>
        TokenTypeIds,
        /// <summary>0, 1, 2, ... along the sequence.</summary>
        PositionIds,
    }

    private TextEncoder(BertTokenizer tokenizer, InputRole[] roles, int sequenceLength)
    {
        this.tokenizer = tokenizer;
        this.roles = roles;
        SequenceLength = sequenceLength;
    }

    /// <summary>Tokens per sample; 0: each sample at its own length (at most <see cref="TextOptions.MaxUnpaddedLength"/>).</summary>
    public int SequenceLength { get; }

    /// <summary>The role of each model input, in model order.</summary>
    public IReadOnlyList<InputRole> Roles => roles;

    /// <summary>Samples whose tokens did not fit <see cref="SequenceLength"/> and were cut (the [SEP] kept).</summary>
    public int Truncated { get; private set; }

    /// <summary>Reads the tokenizer and maps the model's inputs.</summary>
    /// <exception cref="CompressException">DataNotFound (no tokenizer file), TokenizerUnusable, DataShape (inputs that text cannot feed).</exception>
    public static TextEncoder Create(TextOptions options, ModelInputs inputs, string dataPath)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(inputs);
        if (!File.Exists(options.TokenizerPath))
        {
            throw CompressException.ForFile(options.TokenizerPath, DiagnosticCodes.DataNotFound, options.TokenizerPath);
        }
        InputRole[] roles = MapInputs(inputs, dataPath);
        int length = SequenceLengthFor(options.SequenceLength, inputs, dataPath);
        return new TextEncoder(LoadTokenizer(options.TokenizerPath), roles, length);
    }

    /// <summary>Loads vocab.txt or a WordPiece tokenizer.json as a <see cref="BertTokenizer"/>.</summary>
    /// <exception cref="CompressException">TokenizerUnusable.</exception>
    public static BertTokenizer LoadTokenizer(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (Core.IO.InputFiles.NotReadableReason(path) is { } notRegular)
        {
            throw Unusable(path, notRegular);
        }
        try
        {
            if (Path.GetExtension(path).Equals(".json", StringComparison.OrdinalIgnoreCase))
            {
                return FromTokenizerJson(path);
            }
            BertTokenizer t = BertTokenizer.Create(path, new BertOptions());
            // The library accepts any text as a vocabulary; one without BERT's special tokens is not a BERT vocab.
            if (t.ClassificationTokenId < 0 || t.SeparatorTokenId < 0 || t.PaddingTokenId < 0)
            {
                throw Unusable(path, "the vocabulary has no [CLS], [SEP] or [PAD] token (expected a BERT WordPiece vocab.txt)");
            }
            return t;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or InvalidOperationException
            or FormatException or JsonException or KeyNotFoundException or DecoderFallbackException)
        {
            throw CompressException.ForFile(path, e, DiagnosticCodes.TokenizerUnusable, path, e.Message);
        }
    }

    private static CompressException Unusable(string path, string why) =>
        new(DiagnosticCodes.TokenizerUnusable, path, why) { File = path };

    /// <summary>
    /// A Hugging Face tokenizer.json with a WordPiece model: its vocabulary (token -&gt; id) is handed to
    /// <see cref="BertTokenizer"/> as vocab lines in id order, with lower-casing and accent stripping from its BertNormalizer.
    /// Other tokenizer models (BPE, Unigram) are refused with a coded error.
    /// </summary>
    private static BertTokenizer FromTokenizerJson(string path)
    {
        using FileStream fs = Core.IO.InputFiles.OpenRead(path, (why, inner) => CompressException.ForFile(path, inner ?? new IOException(why), DiagnosticCodes.TokenizerUnusable, path, why));
        using JsonDocument doc = JsonDocument.Parse(fs);
        JsonElement root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("model", out JsonElement model) || model.ValueKind != JsonValueKind.Object)
        {
            throw Unusable(path, "no \"model\" object (expected a Hugging Face tokenizer.json)");
        }
        string type = model.TryGetProperty("type", out JsonElement t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "(none)";
        if (type != "WordPiece")
        {
            throw Unusable(path, $"its model type is {type}; only WordPiece (BERT-style) tokenizers are supported, give a vocab.txt otherwise");
        }
        if (!model.TryGetProperty("vocab", out JsonElement vocab) || vocab.ValueKind != JsonValueKind.Object)
        {
            throw Unusable(path, "the WordPiece model has no \"vocab\" object");
        }
        var byId = new SortedDictionary<int, string>();
        foreach (JsonProperty p in vocab.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0 || !byId.TryAdd(id, p.Name))
            {
                throw Unusable(path, $"vocab entry '{p.Name}' has no unique non-negative integer id");
            }
            if (p.Name.Contains('\n', StringComparison.Ordinal) || p.Name.Contains('\r', StringComparison.Ordinal))
            {
                throw Unusable(path, "a vocab token contains a line break");
            }
        }
        if (byId.Count == 0 || byId.Keys.Last() != byId.Count - 1)
        {
            throw Unusable(path, "vocab ids are not 0..n-1 without gaps");
        }
        bool lower = true;
        bool stripAccents = false;
        if (root.TryGetProperty("normalizer", out JsonElement norm) && norm.ValueKind == JsonValueKind.Object)
        {
            if (norm.TryGetProperty("lowercase", out JsonElement lc) && lc.ValueKind is JsonValueKind.True or JsonValueKind.False)
            {
                lower = lc.GetBoolean();
            }
            // BertNormalizer: strip_accents null means "as lowercase".
            stripAccents = norm.TryGetProperty("strip_accents", out JsonElement sa) && sa.ValueKind is JsonValueKind.True or JsonValueKind.False
                ? sa.GetBoolean() : lower;
        }
        using var lines = new MemoryStream();
        using (var writer = new StreamWriter(lines, new UTF8Encoding(false), leaveOpen: true) { NewLine = "\n" })
        {
            foreach (string token in byId.Values)
            {
                writer.WriteLine(token);
            }
        }
        lines.Position = 0;
        var options = new BertOptions { LowerCaseBeforeTokenization = lower, RemoveNonSpacingMarks = stripAccents };
        if (model.TryGetProperty("unk_token", out JsonElement unk) && unk.ValueKind == JsonValueKind.String)
        {
            options.UnknownToken = unk.GetString()!;
        }
        return BertTokenizer.Create(lines, options);
    }

    /// <summary>Which input gets what, by name: "*mask*" the attention mask, "*type*"/"*segment*" the token types,
    /// "*position*" the positions, the one remaining input the token ids.</summary>
    internal static InputRole[] MapInputs(ModelInputs inputs, string dataPath)
    {
        var roles = new InputRole[inputs.Count];
        int ids = 0;
        for (int i = 0; i < inputs.Count; i++)
        {
            TensorInfo input = inputs[i];
            if (input.Shape.Count is not (0 or 2))
            {
                throw CompressException.ForFile(dataPath, DiagnosticCodes.DataShape, dataPath, input.Name,
                    $"text data feeds [batch, sequence] inputs, and this input is {input.Describe()}");
            }
            string name = input.Name.ToLowerInvariant();
            roles[i] = name.Contains("mask", StringComparison.Ordinal) ? InputRole.AttentionMask
                : name.Contains("type", StringComparison.Ordinal) || name.Contains("segment", StringComparison.Ordinal) ? InputRole.TokenTypeIds
                : name.Contains("position", StringComparison.Ordinal) ? InputRole.PositionIds
                : InputRole.TokenIds;
            ids += roles[i] == InputRole.TokenIds ? 1 : 0;
        }
        if (ids != 1)
        {
            throw CompressException.ForFile(dataPath, DiagnosticCodes.DataShape, dataPath, string.Join(",", inputs.Select(i => i.Name)),
                ids == 0 ? "no input takes the token ids (inputs named like masks, token types or positions only)"
                    : "more than one input could take the token ids; text data fills input_ids, attention_mask, token_type_ids and position_ids by name");
        }
        return roles;
    }

    private static int SequenceLengthFor(int requested, ModelInputs inputs, string dataPath)
    {
        long fixedDim = inputs.Select(i => i.Shape.Count == 2 ? i.Shape[1] : -1).FirstOrDefault(d => d > 0, -1);
        if (requested > 0 && fixedDim > 0 && requested != fixedDim)
        {
            throw CompressException.ForFile(dataPath, DiagnosticCodes.DataShape, dataPath, inputs[0].Name,
                $"SequenceLength {requested} does not match the model's fixed sequence length {fixedDim}");
        }
        return requested > 0 ? requested : fixedDim > 0 ? (int)fixedDim : 0;
    }

    /// <summary>Tokenizes one line into the model's inputs ([1, SequenceLength] each, or [1, tokens] without a fixed length; as float values).</summary>
    public TensorData[] Encode(string text, ModelInputs inputs)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(inputs);
        IReadOnlyList<int> ids = tokenizer.EncodeToIds(text, addSpecialTokens: true);
        int length = SequenceLength > 0 ? SequenceLength : Math.Min(ids.Count, TextOptions.MaxUnpaddedLength);
        int n = ids.Count;
        if (n > length)
        {
            Truncated++;
            n = length;
        }
        var result = new TensorData[roles.Length];
        long[] shape = [1, length];
        for (int i = 0; i < roles.Length; i++)
        {
            float[] data = new float[length];
            switch (roles[i])
            {
                case InputRole.TokenIds:
                    for (int k = 0; k < length; k++)
                    {
                        data[k] = k < n ? ids[k] : tokenizer.PaddingTokenId;
                    }
                    if (n < ids.Count)
                    {
                        data[n - 1] = tokenizer.SeparatorTokenId; // a cut sequence still ends with [SEP]
                    }
                    break;
                case InputRole.AttentionMask:
                    data.AsSpan(0, n).Fill(1f);
                    break;
                case InputRole.PositionIds:
                    for (int k = 0; k < length; k++)
                    {
                        data[k] = k;
                    }
                    break;
                default:
                    break;
            }
            result[i] = new TensorData(data, (long[])shape.Clone()) { Name = inputs[i].Name };
        }
        return result;
    }

    /// <summary>The non-blank lines of a UTF-8 text file with their 1-based line numbers.</summary>
    /// <exception cref="CompressException">DataUnreadable (not UTF-8 text, unreadable).</exception>
    public static List<(int Line, string Text)> ReadLines(string path)
    {
        string text;
        try
        {
            // Regular files only: /dev/zero or a FIFO as text data would read forever or block.
            text = new UTF8Encoding(false, true).GetString(Core.IO.InputFiles.ReadAll(path, int.MaxValue / 2,
                (why, inner) => CompressException.ForFile(path, inner ?? new IOException(why), DiagnosticCodes.DataUnreadable, path, why)));
        }
        catch (DecoderFallbackException e)
        {
            throw CompressException.ForFile(path, e, DiagnosticCodes.DataUnreadable, path, "not UTF-8 text (expected one sentence per line)");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw CompressException.ForFile(path, e, DiagnosticCodes.DataUnreadable, path, e.Message);
        }
        if (text.Contains('\0', StringComparison.Ordinal))
        {
            throw CompressException.ForFile(path, DiagnosticCodes.DataUnreadable, path, "binary content (NUL characters); expected one sentence per line");
        }
        var lines = new List<(int, string)>();
        string[] raw = text.TrimStart('\uFEFF').Split('\n');
        for (int i = 0; i < raw.Length; i++)
        {
            string line = raw[i].TrimEnd('\r');
            if (line.Trim().Length > 0)
            {
                lines.Add((i + 1, line));
            }
        }
        return lines;
    }
}
