using System.Diagnostics;
using System.Globalization;

namespace CompressOnBuild.Validation;

/// <summary>
/// Progress lines for one item's long phases ("CompressOnBuild progress: model.onnx: validating 812/4000 samples, 21 s"):
/// nothing for phases shorter than <see cref="FirstAfter"/>, then one line at most every <see cref="Every"/>, written
/// from a timer so a phase stuck inside one long call still shows it is alive. The build task logs worker lines at
/// normal importance, so MSBuild shows them at normal verbosity.
/// </summary>
public sealed class ProgressReporter : IDisposable
{
    /// <summary>Prefix of every progress line (distinct from the "CompressOnBuild: " summary line).</summary>
    public const string Prefix = "CompressOnBuild progress: ";

    private readonly string item;
    private readonly Action<string> write;
    private readonly Timer? timer;
    private readonly Lock gate = new();
    private readonly Stopwatch total = Stopwatch.StartNew();
    private string phase = "starting";
    private TimeSpan phaseStart;
    private long lastWrite = long.MinValue;
    private int done;
    private int count;

    /// <summary>Reports for <paramref name="item"/> through <paramref name="write"/>; <paramref name="timerPeriod"/> null: no timer (tests call <see cref="Tick"/>).</summary>
    public ProgressReporter(string item, Action<string> write, TimeSpan? firstAfter = null, TimeSpan? every = null, TimeSpan? timerPeriod = null)
    {
        this.item = item;
        this.write = write;
        FirstAfter = firstAfter ?? TimeSpan.FromSeconds(3);
        Every = every ?? TimeSpan.FromSeconds(5);
        TimeSpan period = timerPeriod ?? TimeSpan.FromSeconds(1);
        if (period > TimeSpan.Zero)
        {
            timer = new Timer(_ => Emit(Tick(total.Elapsed)), null, period, period);
        }
    }

    /// <summary>A phase writes nothing until it has run this long (default 3 s).</summary>
    public TimeSpan FirstAfter { get; }

    /// <summary>At most one line per this interval (default 5 s).</summary>
    public TimeSpan Every { get; }

    /// <summary>Starts a phase ("quantizing", "validating"); <paramref name="steps"/> &gt; 0 shows done/steps <paramref name="unit"/>.
    /// <paramref name="at"/>: when, as time since the reporter started (default now).</summary>
    public void Phase(string name, int steps = 0, string unit = "samples", TimeSpan? at = null)
    {
        lock (gate)
        {
            phase = steps > 0 ? name + "|" + unit : name;
            count = steps;
            done = 0;
            phaseStart = at ?? total.Elapsed;
            lastWrite = long.MinValue;
        }
    }

    /// <summary>Counts finished steps of the current phase (thread-safe).</summary>
    public void Advance(int steps = 1) => Interlocked.Add(ref done, steps);

    /// <summary>The line due at <paramref name="now"/> (time since the reporter started), or null.</summary>
    public string? Tick(TimeSpan now)
    {
        lock (gate)
        {
            TimeSpan inPhase = now - phaseStart;
            if (inPhase < FirstAfter || (lastWrite != long.MinValue && now.Ticks - lastWrite < Every.Ticks))
            {
                return null;
            }
            lastWrite = now.Ticks;
            string[] p = phase.Split('|');
            string steps = count > 0 ? string.Create(CultureInfo.InvariantCulture, $" {Math.Min(Volatile.Read(ref done), count)}/{count} {p[1]}") : "";
            return string.Create(CultureInfo.InvariantCulture, $"{Prefix}{item}: {p[0]}{steps}, {inPhase.TotalSeconds:0} s");
        }
    }

    private void Emit(string? line)
    {
        if (line != null)
        {
            write(line);
        }
    }

    /// <inheritdoc/>
    public void Dispose() => timer?.Dispose();
}
