using CompressOnBuild.Core;

namespace CompressOnBuild.Validation;

/// <summary>Turns an 8-bit HWC image into one model input sample (batch dimension 1) following a <see cref="Preprocessing"/>.</summary>
internal static class ImagePipeline
{
    /// <summary>
    /// Converts channels (gray, gray+alpha, RGB, RGBA sources), resizes (size=, or resize= then crop=, then to the model's
    /// fixed H and W when they still differ), normalizes and lays out the pixels for <paramref name="input"/>.
    /// </summary>
    public static TensorData ToTensor(ReadOnlySpan<byte> pixels, int height, int width, int channels,
        TensorInfo input, Preprocessing p, string file)
    {
        IReadOnlyList<long> shape = input.Shape;
        int rank = shape.Count;
        DataLayout layout = p.Layout;
        if (layout == DataLayout.Auto)
        {
            layout = rank switch
            {
                4 => IsNhwc(shape) ? DataLayout.Nhwc : DataLayout.Nchw,
                2 => DataLayout.Flat,
                3 => DataLayout.Nchw, // [N, H, W]: one gray plane
                _ => throw Shape(file, input, $"an image cannot feed a rank-{rank} input"),
            };
        }
        bool threeDim = rank == 3 && layout == DataLayout.Nchw;
        if (!threeDim && ((layout is DataLayout.Nchw or DataLayout.Nhwc && rank != 4) || (layout == DataLayout.Flat && rank != 2)))
        {
            throw Shape(file, input, $"layout {layout} does not fit a rank-{rank} input");
        }
        long modelC = threeDim ? 1 : layout switch
        {
            DataLayout.Nchw => shape[1],
            DataLayout.Nhwc => shape[3],
            _ => -1,
        };
        int targetC;
        if (modelC > 0)
        {
            targetC = (int)modelC;
        }
        else if (p.Channels != ChannelOrder.Auto)
        {
            targetC = p.Channels == ChannelOrder.Gray ? 1 : 3;
        }
        else if (layout == DataLayout.Flat && shape[1] > 0 && shape[1] % 3 == 0 && channels >= 3)
        {
            targetC = 3;
        }
        else
        {
            targetC = channels >= 3 ? 3 : 1;
        }
        if (targetC is not (1 or 3))
        {
            throw Shape(file, input, ChannelMismatch(input, layout, p.Layout != DataLayout.Auto, targetC));
        }
        ChannelOrder order = p.Channels != ChannelOrder.Auto ? p.Channels : targetC == 1 ? ChannelOrder.Gray : ChannelOrder.Rgb;
        if ((order == ChannelOrder.Gray) != (targetC == 1))
        {
            throw Shape(file, input, $"the input {input.Describe()} ({layout}) expects {targetC} channel(s), but channels={order.ToString().ToUpperInvariant()} "
                + $"would produce {(order == ChannelOrder.Gray ? 1 : 3)}; use {(targetC == 1 ? "channels=GRAY" : "channels=RGB or BGR")} or leave channels out");
        }
        if (p.Mean.Count > 1 && p.Mean.Count != targetC)
        {
            throw p.Invalid($"mean has {p.Mean.Count} values but the input has {targetC} channels");
        }
        if (p.Std.Count > 1 && p.Std.Count != targetC)
        {
            throw p.Invalid($"std has {p.Std.Count} values but the input has {targetC} channels");
        }

        float[] img = ConvertChannels(pixels, height * width, channels, order);
        int h = height, w = width;
        if (p.Size is { } size)
        {
            img = Resize(img, h, w, targetC, size.Height, size.Width);
            (h, w) = size;
        }
        if (p.ResizeShorter is { } shorter)
        {
            int nh = h <= w ? shorter : (int)Math.Round((double)h * shorter / w);
            int nw = h <= w ? (int)Math.Round((double)w * shorter / h) : shorter;
            img = Resize(img, h, w, targetC, nh, nw);
            (h, w) = (nh, nw);
        }
        if (p.Crop is { } crop)
        {
            if (crop.Height > h || crop.Width > w)
            {
                throw Shape(file, input, $"crop {crop.Height}x{crop.Width} is larger than the image ({h}x{w})");
            }
            img = CenterCrop(img, h, w, targetC, crop.Height, crop.Width);
            (h, w) = crop;
        }
        long modelH = layout switch
        {
            DataLayout.Nchw => threeDim ? shape[1] : shape[2],
            DataLayout.Nhwc => shape[1],
            _ => -1,
        };
        long modelW = layout switch
        {
            DataLayout.Nchw => threeDim ? shape[2] : shape[3],
            DataLayout.Nhwc => shape[2],
            _ => -1,
        };
        if (((modelH > 0 && modelH != h) || (modelW > 0 && modelW != w)) && (p.Size != null || p.Crop != null || p.ResizeShorter != null))
        {
            // The user's own resizing would be resized again to the model's fixed size: say so instead of guessing.
            string step = p.Crop != null ? $"crop={p.Crop.Value.Height}x{p.Crop.Value.Width}"
                : p.ResizeShorter != null ? $"resize={p.ResizeShorter}" : $"size={p.Size!.Value.Height}x{p.Size.Value.Width}";
            throw Shape(file, input, $"the input {input.Describe()} ({layout}) expects {(modelH > 0 ? modelH.ToString(System.Globalization.CultureInfo.InvariantCulture) : "any")}x"
                + $"{(modelW > 0 ? modelW.ToString(System.Globalization.CultureInfo.InvariantCulture) : "any")} images, but the preprocessing ({step}) would produce {h}x{w}; "
                + $"set it to the model's size or leave it out (images are then resized to {(modelH > 0 ? modelH : h)}x{(modelW > 0 ? modelW : w)})");
        }
        if ((modelH > 0 && modelH != h) || (modelW > 0 && modelW != w))
        {
            int th = modelH > 0 ? (int)modelH : h;
            int tw = modelW > 0 ? (int)modelW : w;
            img = Resize(img, h, w, targetC, th, tw);
            (h, w) = (th, tw);
        }

        int plane = h * w;
        float[] data = new float[plane * targetC];
        if (layout == DataLayout.Nchw)
        {
            for (int c = 0; c < targetC; c++)
            {
                for (int i = 0; i < plane; i++)
                {
                    data[c * plane + i] = p.Apply(img[i * targetC + c], c);
                }
            }
        }
        else
        {
            for (int i = 0; i < plane; i++)
            {
                for (int c = 0; c < targetC; c++)
                {
                    data[i * targetC + c] = p.Apply(img[i * targetC + c], c);
                }
            }
        }
        long[] outShape = layout switch
        {
            DataLayout.Nchw when threeDim => [1, h, w],
            DataLayout.Nchw => [1, targetC, h, w],
            DataLayout.Nhwc => [1, h, w, targetC],
            _ => [1, (long)plane * targetC],
        };
        return new TensorData(data, outShape);
    }

    /// <summary>Why a rank-4 input's channel dimension under <paramref name="layout"/> cannot take an image, and what would.</summary>
    private static string ChannelMismatch(TensorInfo input, DataLayout layout, bool layoutGiven, int channels)
    {
        string text = $"the input {input.Describe()} read as {layout} has {channels} channel(s) (dimension {(layout == DataLayout.Nhwc ? 3 : 1)}); an image gives 1 (gray) or 3 (color)";
        IReadOnlyList<long> shape = input.Shape;
        if (shape.Count == 4)
        {
            DataLayout other = layout == DataLayout.Nhwc ? DataLayout.Nchw : DataLayout.Nhwc;
            long otherC = other == DataLayout.Nchw ? shape[1] : shape[3];
            long otherH = other == DataLayout.Nchw ? shape[2] : shape[1];
            long otherW = other == DataLayout.Nchw ? shape[3] : shape[2];
            if (otherC is 1 or 3)
            {
                return text + $"; as {other} it expects {otherC} channel(s) of {Dim(otherH)}x{Dim(otherW)}: "
                    + (layoutGiven ? $"the model's layout is {other}, use layout={other.ToString().ToUpperInvariant()} (or leave layout out)" : $"set layout={other.ToString().ToUpperInvariant()}");
            }
        }
        return text;
    }

    private static string Dim(long d) => d > 0 ? d.ToString(System.Globalization.CultureInfo.InvariantCulture) : "any";

    private static bool IsNhwc(IReadOnlyList<long> shape) =>
        shape[3] is 1 or 3 && shape[1] is not (1 or 3);

    private static CompressException Shape(string file, TensorInfo input, string why) =>
        new(DiagnosticCodes.DataShape, file, input.Name, why) { File = file };

    /// <summary>HWC floats with 1 (gray) or 3 channels in the requested order.</summary>
    internal static float[] ConvertChannels(ReadOnlySpan<byte> src, int pixels, int srcC, ChannelOrder order)
    {
        int dstC = order == ChannelOrder.Gray ? 1 : 3;
        float[] dst = new float[pixels * dstC];
        for (int i = 0; i < pixels; i++)
        {
            float r, g, b;
            if (srcC >= 3)
            {
                r = src[i * srcC];
                g = src[i * srcC + 1];
                b = src[i * srcC + 2];
            }
            else
            {
                r = g = b = src[i * srcC];
            }
            switch (order)
            {
                case ChannelOrder.Gray:
                    dst[i] = srcC >= 3 ? 0.299f * r + 0.587f * g + 0.114f * b : r;
                    break;
                case ChannelOrder.Bgr:
                    dst[i * 3] = b;
                    dst[i * 3 + 1] = g;
                    dst[i * 3 + 2] = r;
                    break;
                default:
                    dst[i * 3] = r;
                    dst[i * 3 + 1] = g;
                    dst[i * 3 + 2] = b;
                    break;
            }
        }
        return dst;
    }

    /// <summary>Bilinear resize of HWC floats with half-pixel centers (edge pixels clamped).</summary>
    internal static float[] Resize(float[] src, int h, int w, int c, int nh, int nw)
    {
        if (h == nh && w == nw)
        {
            return src;
        }
        float[] dst = new float[nh * nw * c];
        double sy = (double)h / nh;
        double sx = (double)w / nw;
        for (int y = 0; y < nh; y++)
        {
            double fy = Math.Clamp((y + 0.5) * sy - 0.5, 0, h - 1);
            int y0 = (int)fy;
            int y1 = Math.Min(y0 + 1, h - 1);
            float wy = (float)(fy - y0);
            for (int x = 0; x < nw; x++)
            {
                double fx = Math.Clamp((x + 0.5) * sx - 0.5, 0, w - 1);
                int x0 = (int)fx;
                int x1 = Math.Min(x0 + 1, w - 1);
                float wx = (float)(fx - x0);
                for (int k = 0; k < c; k++)
                {
                    float a = src[(y0 * w + x0) * c + k];
                    float b = src[(y0 * w + x1) * c + k];
                    float cc = src[(y1 * w + x0) * c + k];
                    float d = src[(y1 * w + x1) * c + k];
                    float top = a + (b - a) * wx;
                    float bottom = cc + (d - cc) * wx;
                    dst[(y * nw + x) * c + k] = top + (bottom - top) * wy;
                }
            }
        }
        return dst;
    }

    internal static float[] CenterCrop(float[] src, int h, int w, int c, int ch, int cw)
    {
        int top = (h - ch) / 2;
        int left = (w - cw) / 2;
        float[] dst = new float[ch * cw * c];
        for (int y = 0; y < ch; y++)
        {
            Array.Copy(src, ((top + y) * w + left) * c, dst, y * cw * c, cw * c);
        }
        return dst;
    }
}
