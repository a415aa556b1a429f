namespace CompressOnBuild.Samples.Shapes;

/// <summary>The four classes of the data set, in label order.</summary>
public enum ShapeKind
{
    Circle = 0,
    Square = 1,
    Triangle = 2,
    Cross = 3,
}

/// <summary>Draws one anti-aliased shape outline with random size, position, rotation, stroke, brightness
/// and noise into a 28x28 grayscale image (bytes, 0 = background).</summary>
public static class ShapeRenderer
{
    public const int Size = 28;

    public const int Pixels = Size * Size;

    public static readonly string[] ClassNames = ["circle", "square", "triangle", "cross"];

    public static void Render(ShapeKind kind, Random rng, Span<byte> image)
    {
        if (image.Length != Pixels)
        {
            throw new ArgumentException($"image must hold {Pixels} pixels", nameof(image));
        }
        double radius = 6 + rng.NextDouble() * 5.5;
        double margin = radius + 1.5;
        double cx = margin + rng.NextDouble() * (Size - 1 - 2 * margin);
        double cy = margin + rng.NextDouble() * (Size - 1 - 2 * margin);
        double angle = rng.NextDouble() * Math.PI * 2;
        double stroke = 1.0 + rng.NextDouble() * 1.2;
        double brightness = 0.65 + rng.NextDouble() * 0.35;
        double noise = rng.NextDouble() * 0.15;

        (double X, double Y)[][] segments = kind switch
        {
            ShapeKind.Circle => [],
            ShapeKind.Square => Polygon(cx, cy, radius, angle, 4),
            ShapeKind.Triangle => Polygon(cx, cy, radius, angle, 3),
            ShapeKind.Cross => Cross(cx, cy, radius, angle),
            _ => throw new ArgumentOutOfRangeException(nameof(kind)),
        };

        for (int y = 0; y < Size; y++)
        {
            for (int x = 0; x < Size; x++)
            {
                double distance = kind == ShapeKind.Circle
                    ? Math.Abs(Math.Sqrt((x - cx) * (x - cx) + (y - cy) * (y - cy)) - radius)
                    : DistanceToSegments(x, y, segments);
                // Full intensity inside the stroke, a one-pixel soft edge outside it.
                double ink = Math.Clamp(1 - (distance - stroke / 2), 0, 1) * brightness;
                double value = ink + Gaussian(rng) * noise;
                image[y * Size + x] = (byte)Math.Round(Math.Clamp(value, 0, 1) * 255);
            }
        }
    }

    private static (double X, double Y)[][] Polygon(double cx, double cy, double radius, double angle, int corners)
    {
        var points = new (double X, double Y)[corners];
        for (int i = 0; i < corners; i++)
        {
            double a = angle + i * 2 * Math.PI / corners;
            points[i] = (cx + radius * Math.Cos(a), cy + radius * Math.Sin(a));
        }
        var segments = new (double X, double Y)[corners][];
        for (int i = 0; i < corners; i++)
        {
            segments[i] = [points[i], points[(i + 1) % corners]];
        }
        return segments;
    }

    private static (double X, double Y)[][] Cross(double cx, double cy, double radius, double angle)
    {
        (double X, double Y) Arm(double a) => (cx + radius * Math.Cos(a), cy + radius * Math.Sin(a));
        return
        [
            [Arm(angle), Arm(angle + Math.PI)],
            [Arm(angle + Math.PI / 2), Arm(angle + 3 * Math.PI / 2)],
        ];
    }

    private static double DistanceToSegments(double px, double py, (double X, double Y)[][] segments)
    {
        double best = double.MaxValue;
        foreach ((double X, double Y)[] s in segments)
        {
            double dx = s[1].X - s[0].X, dy = s[1].Y - s[0].Y;
            double t = Math.Clamp(((px - s[0].X) * dx + (py - s[0].Y) * dy) / (dx * dx + dy * dy), 0, 1);
            double ex = s[0].X + t * dx - px, ey = s[0].Y + t * dy - py;
            best = Math.Min(best, Math.Sqrt(ex * ex + ey * ey));
        }
        return best;
    }

    private static double Gaussian(Random rng)
    {
        double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
        return Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }
}
