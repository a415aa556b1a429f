using System.Diagnostics;
using System.Globalization;

namespace CompressOnBuild.Core.IO;

/// <summary>
/// COMPRESSONBUILD_MEMORY_TRACE=1: one stderr line per phase of an item with the process's resident memory, its peak
/// so far and the managed heap ("CompressOnBuild memory: model.onnx: validating: at 1.25 s, rss 812 MiB, peak 1020 MiB, managed
/// 300 MiB"), with the seconds since the process started, so a benchmark can tell which phase sets the peak. Off by default: no cost.
/// </summary>
public static class MemoryTrace
{
    /// <summary>True when COMPRESSONBUILD_MEMORY_TRACE is "1".</summary>
    public static bool Enabled { get; } = Environment.GetEnvironmentVariable("COMPRESSONBUILD_MEMORY_TRACE") == "1";

    /// <summary>
    /// Writes the line for <paramref name="phase"/> of <paramref name="item"/> when tracing is on, with "phase max": the
    /// largest resident size sampled (every <see cref="SampleMilliseconds"/> ms, by a background thread that only runs
    /// while tracing) since the previous line, so the peak of a phase shows even when an earlier phase set the process's.
    /// </summary>
    public static void Mark(string item, string phase)
    {
        if (Enabled)
        {
            long phaseMax = Sampler.TakePhaseMax();
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"CompressOnBuild memory: {item}: {phase}: at {SinceStart().TotalSeconds:0.00} s, {Status()}, phase max {phaseMax >> 20} MiB"));
        }
    }

    /// <summary>How often the tracing sampler reads the resident size.</summary>
    public const int SampleMilliseconds = 2;

    /// <summary>The resident-size sampler behind "phase max" (started by the first <see cref="Mark"/>).</summary>
    private static class Sampler
    {
        private static long _max;

        static Sampler()
        {
            var t = new Thread(() =>
            {
                while (true)
                {
                    Observe(ResidentBytes());
                    Thread.Sleep(SampleMilliseconds);
                }
            })
            { IsBackground = true, Name = "memory trace sampler" };
            t.Start();
        }

        private static void Observe(long rss)
        {
            long seen = Interlocked.Read(ref _max);
            while (rss > seen)
            {
                long was = Interlocked.CompareExchange(ref _max, rss, seen);
                if (was == seen)
                {
                    return;
                }
                seen = was;
            }
        }

        /// <summary>The largest resident size seen since the previous call (this moment's included); restarts from now.</summary>
        public static long TakePhaseMax()
        {
            long now = ResidentBytes();
            Observe(now);
            return Interlocked.Exchange(ref _max, now);
        }

        /// <summary>Resident bytes from /proc/self/statm (cheaper to read than status); 0 where it cannot be read.</summary>
        private static long ResidentBytes()
        {
            try
            {
                string statm = File.ReadAllText("/proc/self/statm");
                string[] fields = statm.Split(' ', 3);
                return fields.Length > 1 && long.TryParse(fields[1], NumberStyles.None, CultureInfo.InvariantCulture, out long pages) ? pages * Environment.SystemPageSize : 0;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return 0;
            }
        }
    }

    /// <summary>Wall time since this process started (0 where the start time cannot be read).</summary>
    private static TimeSpan SinceStart()
    {
        try
        {
            using var self = Process.GetCurrentProcess();
            return DateTime.Now - self.StartTime;
        }
        catch (Exception e) when (e is InvalidOperationException or NotSupportedException or System.ComponentModel.Win32Exception)
        {
            return TimeSpan.Zero;
        }
    }

    /// <summary>Peak resident bytes of this process so far (VmHWM on Linux, the peak working set elsewhere).</summary>
    public static long PeakResidentBytes() => Read().Peak;

    /// <summary>"rss N MiB, peak N MiB, managed N MiB".</summary>
    public static string Status()
    {
        (long rss, long peak) = Read();
        return string.Create(CultureInfo.InvariantCulture, $"rss {rss >> 20} MiB, peak {peak >> 20} MiB, managed {GC.GetTotalMemory(false) >> 20} MiB");
    }

    private static (long Rss, long Peak) Read()
    {
        long rss = 0, peak = 0;
        try
        {
            foreach (string line in File.ReadLines("/proc/self/status"))
            {
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                {
                    rss = KiB(line);
                }
                else if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                {
                    peak = KiB(line);
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            rss = peak = 0;
        }
        if (rss == 0 || peak == 0)
        {
            using var self = Process.GetCurrentProcess();
            return (self.WorkingSet64, self.PeakWorkingSet64);
        }
        return (rss, peak);
    }

    private static long KiB(string line)
    {
        ReadOnlySpan<char> v = line.AsSpan(line.IndexOf(':', StringComparison.Ordinal) + 1).Trim();
        if (v.EndsWith("kB", StringComparison.Ordinal))
        {
            v = v[..^2].Trim();
        }
        return long.Parse(v, NumberStyles.None, CultureInfo.InvariantCulture) * 1024;
    }
}

/// <summary>Returning memory a phase no longer needs to the operating system.</summary>
public static partial class ProcessMemory
{
    /// <summary>
    /// A full blocking, compacting collection that decommits the freed managed pages, then (glibc) malloc_trim so the
    /// native heap hands back what a closed ONNX Runtime session freed. Called where a phase has just dropped a
    /// model-sized amount of memory and the next allocates as much again: without it the peak is the sum of both
    /// (the collector cannot see native allocations, and glibc keeps freed chunks mapped).
    /// </summary>
    public static void Release()
    {
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        if (OperatingSystem.IsLinux())
        {
            try
            {
                _ = MallocTrim(0);
            }
            catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
            {
                // Not glibc (musl): nothing to trim.
            }
        }
    }

    /// <summary>
    /// Bounds the garbage a loop of large temporaries leaves: <see cref="Check"/> (once per step) runs a full blocking,
    /// non-compacting collection when the thread has allocated at least <paramref name="bytes"/> since the last one.
    /// Arrays of 85,000 bytes and more are freed only by a full collection, which the runtime triggers on its own
    /// budget (tens of MB); a model-sized heap plus that much garbage is what sets the peak of such a loop.
    /// </summary>
    public sealed class GarbageBound(long bytes)
    {
        private long _mark = GC.GetAllocatedBytesForCurrentThread();

        /// <summary>Collects when the allocations since the last collection reach the bound.</summary>
        public void Check()
        {
            long now = GC.GetAllocatedBytesForCurrentThread();
            if (now - _mark >= bytes)
            {
                GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: false);
                _mark = now;
            }
        }
    }

    /// <summary>Allocations from this size on get pages of their own (mmap), returned to the system when freed.</summary>
    public const int MmapThresholdBytes = 256 * 1024;

    /// <summary>
    /// (glibc) Fixes malloc's mmap threshold at <see cref="MmapThresholdBytes"/>. By default glibc raises the threshold
    /// to the size of each large block freed (up to 32 MiB), so once an ONNX Runtime session has been closed, the next
    /// session's weight-sized buffers and load-time temporaries come from the heap, where freed memory stays resident:
    /// the second session of a 100 MB model peaked 100 MiB higher than the first (measured: 171, 269, 281 MiB for three
    /// opens in a row, 159 MiB each with the threshold fixed), and each later session more. Call once at start, before
    /// ONNX Runtime allocates. Runs are unchanged (ONNX Runtime's arena serves them). False where it did nothing.
    /// </summary>
    public static bool FixMmapThreshold()
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }
        try
        {
            return Mallopt(MmapThresholdParameter, MmapThresholdBytes) == 1;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            return false; // not glibc
        }
    }

    /// <summary>M_MMAP_THRESHOLD in glibc's malloc.h.</summary>
    private const int MmapThresholdParameter = -3;

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int Mallopt(int parameter, int value);
}
