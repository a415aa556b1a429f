using System.Globalization;
using CompressOnBuild.Core;

namespace CompressOnBuild.Validation;

/// <summary>Memory layout of an image input.</summary>
public enum DataLayout
{
    /// <summary>Chosen from the model input's rank and shape.</summary>
    Auto,
    /// <summary>[N, C, H, W].</summary>
    Nchw,
    /// <summary>[N, H, W, C].</summary>
    Nhwc,
    /// <summary>[N, H*W*C], row-major HWC pixels.</summary>
    Flat,
}

/// <summary>Channel order of an image input.</summary>
public enum ChannelOrder
{
    /// <summary>GRAY for one channel, RGB for three.</summary>
    Auto,
    /// <summary>Red, green, blue.</summary>
    Rgb,
    /// <summary>Blue, green, red.</summary>
    Bgr,
    /// <summary>One luminance channel.</summary>
    Gray,
}

/// <summary>
/// How raw pixels (or bytes) become model input: x = (raw * scale - mean[c]) / std[c], with raw = 255 - pixel when
/// inverted. Parsed from "layout=NCHW;scale=0.003921569;mean=0.5;std=0.5" (keys: layout=NCHW|NHWC|FLAT, scale,
/// mean, std (one value or one per channel, comma separated), channels=RGB|BGR|GRAY, invert=true|false,
/// size=HxW (bilinear resize), resize=N (shorter side, bilinear) with crop=HxW (center crop), dtype=float32|float16|uint8).
/// Applies to 8-bit sources (IDX, images, uint8 .npy); float data (.npy, .pb) is used as stored.
/// </summary>
public sealed class Preprocessing
{
    /// <summary>The default: scale 1/255, mean 0, std 1, layout and channels from the model input.</summary>
    public static Preprocessing Default { get; } = new();

    /// <summary>The text this was parsed from ("" for the default).</summary>
    public string Text { get; private init; } = "";

    /// <summary>Layout; <see cref="DataLayout.Auto"/> picks it from the model input rank.</summary>
    public DataLayout Layout { get; private init; } = DataLayout.Auto;

    /// <summary>Multiplier applied to the raw value.</summary>
    public float Scale { get; private init; } = 1f / 255f;

    /// <summary>Subtracted after scaling: one value or one per channel.</summary>
    public IReadOnlyList<float> Mean { get; private init; } = [0f];

    /// <summary>Divisor after subtracting the mean: one value or one per channel.</summary>
    public IReadOnlyList<float> Std { get; private init; } = [1f];

    /// <summary>Channel order.</summary>
    public ChannelOrder Channels { get; private init; } = ChannelOrder.Auto;

    /// <summary>Use 255 - pixel.</summary>
    public bool Invert { get; private init; }

    /// <summary>Resize every image to exactly this (height, width), bilinear.</summary>
    public (int Height, int Width)? Size { get; private init; }

    /// <summary>Resize the shorter side to this many pixels (keeping the aspect ratio) before cropping.</summary>
    public int? ResizeShorter { get; private init; }

    /// <summary>Center crop to (height, width) after <see cref="ResizeShorter"/>.</summary>
    public (int Height, int Width)? Crop { get; private init; }

    /// <summary>Expected element type of the model input (checked against the model), or null.</summary>
    public TensorElementType? ElementType { get; private init; }

    /// <summary>Parses a preprocessing string; null or blank gives <see cref="Default"/>.</summary>
    /// <exception cref="CompressException">PreprocessingInvalid.</exception>
    public static Preprocessing Parse(string? text)
    {
        if (string.IsNullOrWhiteSpace(text))
        {
            return Default;
        }
        DataLayout layout = DataLayout.Auto;
        float scale = 1f / 255f;
        float[] mean = [0f];
        float[] std = [1f];
        ChannelOrder channels = ChannelOrder.Auto;
        bool invert = false;
        (int, int)? size = null;
        (int, int)? crop = null;
        int? resize = null;
        TensorElementType? dtype = null;
        HashSet<string> seen = new(StringComparer.OrdinalIgnoreCase);
        foreach (string part in text.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = part.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0)
            {
                throw Invalid(text, $"'{part}' is not key=value");
            }
            string key = part[..eq].Trim().ToLowerInvariant();
            string value = part[(eq + 1)..].Trim();
            if (!seen.Add(key))
            {
                throw Invalid(text, $"key '{key}' is given twice");
            }
            switch (key)
            {
                case "layout":
                    layout = value.ToUpperInvariant() switch
                    {
                        "NCHW" => DataLayout.Nchw,
                        "NHWC" => DataLayout.Nhwc,
                        "FLAT" => DataLayout.Flat,
                        _ => throw Invalid(text, $"layout '{value}' is not NCHW, NHWC or FLAT"),
                    };
                    break;
                case "scale":
                    scale = ParseFloat(text, key, value);
                    break;
                case "mean":
                    mean = ParseList(text, key, value);
                    break;
                case "std":
                    std = ParseList(text, key, value);
                    if (std.Any(s => s == 0f))
                    {
                        throw Invalid(text, "std must not be 0");
                    }
                    break;
                case "channels":
                    channels = value.ToUpperInvariant() switch
                    {
                        "RGB" => ChannelOrder.Rgb,
                        "BGR" => ChannelOrder.Bgr,
                        "GRAY" or "GREY" => ChannelOrder.Gray,
                        _ => throw Invalid(text, $"channels '{value}' is not RGB, BGR or GRAY"),
                    };
                    break;
                case "invert":
                    invert = value.ToLowerInvariant() switch
                    {
                        "true" => true,
                        "false" => false,
                        _ => throw Invalid(text, $"invert '{value}' is not true or false"),
                    };
                    break;
                case "size":
                    size = ParseSize(text, key, value);
                    break;
                case "crop":
                    crop = ParseSize(text, key, value);
                    break;
                case "resize":
                    if (!int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n <= 0)
                    {
                        throw Invalid(text, $"resize '{value}' is not a positive pixel count");
                    }
                    resize = n;
                    break;
                case "dtype":
                    dtype = value.ToLowerInvariant() switch
                    {
                        "float32" or "float" => TensorElementType.Float,
                        "float16" or "half" => TensorElementType.Float16,
                        "uint8" => TensorElementType.UInt8,
                        _ => throw Invalid(text, $"dtype '{value}' is not float32, float16 or uint8"),
                    };
                    break;
                default:
                    throw Invalid(text, $"unknown key '{key}' (known: layout, scale, mean, std, channels, invert, size, resize, crop, dtype)");
            }
        }
        if (size != null && (crop != null || resize != null))
        {
            throw Invalid(text, "size cannot be combined with resize/crop");
        }
        if (mean.Length > 1 && std.Length > 1 && mean.Length != std.Length)
        {
            throw Invalid(text, $"mean has {mean.Length} values but std has {std.Length}");
        }
        return new Preprocessing
        {
            Text = text,
            Layout = layout,
            Scale = scale,
            Mean = mean,
            Std = std,
            Channels = channels,
            Invert = invert,
            Size = size,
            Crop = crop,
            ResizeShorter = resize,
            ElementType = dtype,
        };
    }

    /// <summary>The normalized value of raw value <paramref name="raw"/> (0..255) in channel <paramref name="channel"/>.</summary>
    public float Apply(float raw, int channel)
    {
        float r = Invert ? 255f - raw : raw;
        float m = Mean.Count == 1 ? Mean[0] : Mean[channel];
        float s = Std.Count == 1 ? Std[0] : Std[channel];
        return (r * Scale - m) / s;
    }

    /// <inheritdoc/>
    public override string ToString() => Text.Length == 0 ? "(default)" : Text;

    internal CompressException Invalid(string why) => Invalid(Text.Length == 0 ? "(default)" : Text, why);

    private static CompressException Invalid(string text, string why) =>
        new(DiagnosticCodes.PreprocessingInvalid, text, why);

    private static float ParseFloat(string text, string key, string value)
    {
        // A simple fraction ("1/255", "-3/4") is what people write for a scale: numerator / denominator, both decimals.
        int slash = value.IndexOf('/', StringComparison.Ordinal);
        if (slash > 0 && slash == value.LastIndexOf('/')
            && double.TryParse(value[..slash], NumberStyles.Float, CultureInfo.InvariantCulture, out double numerator)
            && double.TryParse(value[(slash + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out double denominator)
            && denominator != 0 && float.IsFinite((float)(numerator / denominator)))
        {
            return (float)(numerator / denominator);
        }
        if (!float.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out float f) || !float.IsFinite(f))
        {
            throw Invalid(text, $"{key} '{value}' is not a number (write a decimal such as 0.5, or a fraction such as 1/255)");
        }
        return f;
    }

    private static float[] ParseList(string text, string key, string value)
    {
        string[] parts = value.Split(',', StringSplitOptions.TrimEntries);
        if (parts.Length == 0 || parts.Length > 4)
        {
            throw Invalid(text, $"{key} needs one value or one per channel");
        }
        return [.. parts.Select(p => ParseFloat(text, key, p))];
    }

    private static (int, int) ParseSize(string text, string key, string value)
    {
        string[] parts = value.ToLowerInvariant().Split('x');
        if (parts.Length == 2
            && int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out int h)
            && int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int w)
            && h > 0 && w > 0)
        {
            return (h, w);
        }
        throw Invalid(text, $"{key} '{value}' is not HxW (e.g. 224x224)");
    }
}
