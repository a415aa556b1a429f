using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using CompressOnBuild.Core.IO;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;

namespace CompressOnBuild.Cli.Tests.Hostile;

/// <summary>
/// Regression suite for hostile inputs (issue 17): each case builds its own small model and data in code
/// (deterministic, bounded: every case is a few KB to a few MB on disk) and asserts a coded input error (exit 2 with
/// the expected CMPR code), never exit 3, never a hang (60 s guard per case), never a replaced device node.
/// </summary>
[TestClass]
public sealed class HostileInputTests
{
    private TempDirectory _temp = null!;

    private string _dir => _temp.Path;

    [TestInitialize]
    public void Init() => _temp = new TempDirectory("cob-hostile");

    [TestCleanup]
    public void Cleanup() => _temp.Delete();

    private string P(string name) => Path.Combine(_dir, name);

    /// <summary>x[N,16] -> MLP -> y[N,4].</summary>
    private string Model()
    {
        string path = P("mlp.onnx");
        if (!File.Exists(path))
        {
            ModelIO.Save(TinyModels.Mlp(), path);
        }
        return path;
    }

    private static CliRun Guarded(params string[] args)
    {
        Task<CliRun> run = Task.Run(() => CliHarness.InProcess(args));
        if (!run.Wait(TimeSpan.FromSeconds(60)))
        {
            Assert.Fail("no result within 60 s (hang): " + string.Join(" ", args));
        }
        return run.Result;
    }

    private CliRun Compress(string data, params string[] extra) =>
        Guarded(["compress", Model(), "--output", P("out/m.onnx"), "--min-agreement", "0", "--validation-data", data, .. extra]);

    private static void AssertCoded(CliRun run, string code, string because)
    {
        Assert.AreEqual(2, run.ExitCode, because + ": " + run.Output);
        Assert.IsTrue(run.Errors(code).Any(), because + $": expected {code}: " + run.Output);
        Assert.IsFalse(run.Errors("CMPR0501").Any(), because + ": " + run.Output);
    }

    private static byte[] Npy(string descr, string shape, int version = 1, uint? headerLength = null, byte[]? data = null)
    {
        string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
        h += new string(' ', (64 - (10 + h.Length + 1) % 64) % 64) + "\n";
        var ms = new MemoryStream();
        ms.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', (byte)version, 0]);
        if (version == 1)
        {
            ms.Write(BitConverter.GetBytes((ushort)(headerLength ?? (uint)h.Length)));
        }
        else
        {
            ms.Write(BitConverter.GetBytes(headerLength ?? (uint)h.Length));
        }
        ms.Write(Encoding.ASCII.GetBytes(h));
        ms.Write(data ?? []);
        return ms.ToArray();
    }

    private string WriteFile(string name, byte[] bytes)
    {
        string path = P(name);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private string GoodNpy(int samples = 4) => WriteFile("good.npy", Npy("<f4", $"({samples}, 16)", data: new byte[samples * 16 * 4]));

    [TestMethod]
    [DataRow("(-1, 16)", 1, null, DisplayName = "negative dimension")]
    [DataRow("(99999999999999999999, 16)", 1, null, DisplayName = "dimension over 64 bits")]
    [DataRow("(4611686018427387904, 4)", 1, null, DisplayName = "element count overflows")]
    [DataRow("(3037000500, 3037000500)", 1, null, DisplayName = "element count over one array")]
    [DataRow("(1, 16)", 2, 0xFFFFFFF0u, DisplayName = "v2 header length near 4 GiB")]
    [DataRow("(1, 16)", 3, 0x7FFFFFFFu, DisplayName = "v3 header length 2 GiB")]
    [DataRow("(1, 16)", 1, 0xFFFFu, DisplayName = "v1 header longer than the file")]
    public void HostileNpyHeadersAreCodedDataErrors(string shape, int version, uint? headerLength)
    {
        string data = WriteFile("bad.npy", Npy("<f4", shape, version, headerLength));
        AssertCoded(Compress(data), "CMPR0302", shape);
    }

    [TestMethod]
    [DataRow(new[] { 65536, 65536, 65536, 65536 }, DisplayName = "4 dims whose product wraps 64 bits to 0")]
    [DataRow(new[] { int.MaxValue, int.MaxValue, 4 }, DisplayName = "3 dims over the file")]
    [DataRow(new[] { 10, 0, 0 }, DisplayName = "0x0 images")]
    [DataRow(new[] { 0, 0, 0 }, DisplayName = "no images of 0x0")]
    public void HostileIdxHeadersAreCodedDataErrors(int[] dims)
    {
        var bytes = new byte[4 + 4 * dims.Length];
        bytes[2] = 0x08;
        bytes[3] = (byte)dims.Length;
        for (int i = 0; i < dims.Length; i++)
        {
            BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(4 + 4 * i), dims[i]);
        }
        AssertCoded(Compress(WriteFile("bad-idx3-ubyte", bytes)), "CMPR0302", string.Join("x", dims));
    }

    [TestMethod]
    public void DevicesFifosAndLinksToThemAreRefusedAsDataLabelsAndImages()
    {
        if (!OperatingSystem.IsLinux())
        {
            Assert.Inconclusive("device and FIFO cases need Linux");
        }
        AssertCoded(Compress("/dev/zero"), "CMPR0302", "/dev/zero as data");
        AssertCoded(Compress(GoodNpy(), "--labels", "/dev/zero"), "CMPR0302", "/dev/zero as labels");

        string link = P("zero.npy");
        File.CreateSymbolicLink(link, "/dev/zero");
        AssertCoded(Compress(link), "CMPR0302", "a .npy linked to /dev/zero");
        Directory.CreateDirectory(P("images/cat"));
        File.CreateSymbolicLink(P("images/cat/a.png"), "/dev/zero");
        AssertCoded(Compress(P("images")), "CMPR0302", "an image linked to /dev/zero");

        string fifo = P("fifo.npy");
        using (Process p = Process.Start(new ProcessStartInfo("mkfifo", [fifo]) { UseShellExecute = false })!)
        {
            p.WaitForExit();
        }
        Assert.AreEqual(FileKind.Special, InputFiles.Kind(fifo), "mkfifo must have made a FIFO");
        AssertCoded(Compress(fifo), "CMPR0302", "a FIFO as data");
        AssertCoded(Compress(fifo, "--cache-dir", P("cache")), "CMPR0302", "a FIFO as data, fingerprinted by the cache");
        AssertCoded(Compress(GoodNpy(), "--labels", fifo), "CMPR0302", "a FIFO as labels");
    }

    [TestMethod]
    public void ANpzThatInflatesOverTwoHundredfoldIsRefusedBeforeInflating()
    {
        // 128 MiB of zeros deflate to about 130 KB.
        string path = P("bomb.npz");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Create))
        {
            using Stream s = zip.CreateEntry("x.npy", CompressionLevel.SmallestSize).Open();
            s.Write(Npy("<f4", "(2097152, 16)"));
            byte[] zeros = new byte[1 << 20];
            for (int i = 0; i < 128; i++)
            {
                s.Write(zeros);
            }
        }
        Assert.IsTrue(new FileInfo(path).Length < 1 << 20, "the bomb must be small on disk");
        long before = GC.GetAllocatedBytesForCurrentThread();
        CliRun run = Compress(path);
        AssertCoded(run, "CMPR0302", "npz bomb");
        StringAssert.Contains(run.Output, "decompression bomb");
        Assert.IsTrue(GC.GetAllocatedBytesForCurrentThread() - before < 64L << 20, "nothing near the inflated size may be allocated");
    }

    [TestMethod]
    public void AnNpzWithExtraMembersOnlyDecodesTheInputs()
    {
        // A member nobody asked for is never inflated: here it would not even parse.
        string path = P("extra.npz");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Create))
        {
            using (Stream s = zip.CreateEntry("x.npy").Open())
            {
                s.Write(Npy("<f4", "(4, 16)", data: new byte[4 * 16 * 4]));
            }
            using (Stream s = zip.CreateEntry("junk.npy").Open())
            {
                s.Write(Npy("<f4", "(-5,)"));
            }
        }
        CliRun run = Compress(path);
        Assert.AreEqual(0, run.ExitCode, run.Output);
    }

    [TestMethod]
    public void APngDeclaringTwentyThousandSquaredPixelsIsRefusedFromItsHeader()
    {
        // A valid PNG signature and IHDR for 20000x20000 grey pixels, then a tiny IDAT: decoding would need 400 MB.
        var png = new MemoryStream();
        png.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, 20000);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), 20000);
        ihdr[8] = 8;
        WriteChunk(png, "IHDR", ihdr);
        WriteChunk(png, "IDAT", [0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        WriteChunk(png, "IEND", []);
        WriteFile("images/cat/huge.png", png.ToArray());
        long before = GC.GetAllocatedBytesForCurrentThread();
        CliRun run = Compress(P("images"));
        AssertCoded(run, "CMPR0302", "20000x20000 png");
        StringAssert.Contains(run.Output, "20000x20000");
        Assert.IsTrue(GC.GetAllocatedBytesForCurrentThread() - before < 64L << 20, "the image must not be decoded");
    }

    private static void WriteChunk(Stream s, string type, byte[] data)
    {
        var len = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(len, data.Length);
        s.Write(len);
        byte[] typeAndData = [.. Encoding.ASCII.GetBytes(type), .. data];
        s.Write(typeAndData);
        var crc = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(crc, Crc32(typeAndData));
        s.Write(crc);
    }

    private static uint Crc32(byte[] bytes)
    {
        uint c = 0xFFFFFFFF;
        foreach (byte b in bytes)
        {
            c ^= b;
            for (int k = 0; k < 8; k++)
            {
                c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
            }
        }
        return ~c;
    }

    [TestMethod]
    public void LabelsOutsideTheModelsClassesAreACodedError()
    {
        string labels = WriteFile("labels.txt", Encoding.ASCII.GetBytes("0\n1\n57\n3\n"));
        CliRun run = Compress(GoodNpy(), "--labels", labels, "--max-accuracy-drop", "1");
        AssertCoded(run, "CMPR0307", "label 57 for 4 classes");
        StringAssert.Contains(run.Output, "label 57");
    }

    [TestMethod]
    public void ALinkLoopInsideADataFolderDoesNotBreakTheCacheFingerprint()
    {
        Directory.CreateDirectory(P("loop/a"));
        File.CreateSymbolicLink(P("loop/a/up"), P("loop"));
        File.WriteAllBytes(P("loop/a/x.png"), [1, 2, 3]);
        string first = DataFingerprint.Of(P("loop"));
        Assert.AreEqual(first, DataFingerprint.Of(P("loop")), "the fingerprint is deterministic");
        File.WriteAllBytes(P("loop/a/x.png"), [1, 2, 4]);
        Assert.AreNotEqual(first, DataFingerprint.Of(P("loop")), "a changed file changes the fingerprint");

        CliRun run = Compress(P("loop"), "--cache-dir", P("cache"));
        Assert.AreEqual(2, run.ExitCode, run.Output);
        Assert.IsFalse(run.Errors("CMPR0501").Any(), run.Output);
    }

    [TestMethod]
    public void UnwritableOutputsAreCmpr0106AndNeverReplaceADevice()
    {
        File.WriteAllText(P("afile"), "x");
        foreach (string output in new[] { P("afile/m.onnx"), "/proc/cob-test/m.onnx", "/proc/self/m.onnx" })
        {
            CliRun run = Guarded("compress", Model(), "--output", output);
            AssertCoded(run, "CMPR0106", output);
        }
        if (OperatingSystem.IsLinux() && InputFiles.Kind("/dev/full") == FileKind.Special)
        {
            CliRun run = Guarded("compress", Model(), "--output", "/dev/full");
            AssertCoded(run, "CMPR0106", "/dev/full");
            Assert.AreEqual(FileKind.Special, InputFiles.Kind("/dev/full"), "/dev/full must still be a device");
            CliRun report = Guarded("compress", Model(), "--output", P("out2/m.onnx"), "--report", "/dev/full");
            AssertCoded(report, "CMPR0106", "/dev/full as the report");
            Assert.AreEqual(FileKind.Special, InputFiles.Kind("/dev/full"), "/dev/full must still be a device");
        }
        if (OperatingSystem.IsWindows())
        {
            return;
        }
        Directory.CreateDirectory(P("ro"));
        File.SetUnixFileMode(P("ro"), UnixFileMode.UserRead | UnixFileMode.UserExecute);
        try
        {
            // Root writes into read-only folders; the case only means something for other users.
            if (!CanWrite(P("ro")))
            {
                AssertCoded(Guarded("compress", Model(), "--output", P("ro/m.onnx")), "CMPR0106", "read-only folder");
            }
        }
        finally
        {
            File.SetUnixFileMode(P("ro"), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
    }

    private static bool CanWrite(string dir)
    {
        try
        {
            File.WriteAllText(Path.Combine(dir, "probe"), "");
            File.Delete(Path.Combine(dir, "probe"));
            return true;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }

    [TestMethod]
    public void AWritePastTheFileSizeLimitIsCmpr0106NotAKill()
    {
        if (!OperatingSystem.IsLinux())
        {
            Assert.Inconclusive("ulimit -f needs a POSIX shell");
        }
        // 200k weights: 400 KB as float16, over a 256 KB limit; the source model is written before the limit applies.
        ModelIO.Save(TinyModels.Mlp(inF: 784, hidden: 256, classes: 10), P("big.onnx"));
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = _dir };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("ulimit -f 256; exec dotnet exec \"$0\" compress big.onnx --output out/big.onnx --quantization Float16");
        psi.ArgumentList.Add(CliHarness.CliDll());
        // CoreCLR's double-mapped code heap is a file too; without W^X it needs none.
        psi.Environment["DOTNET_EnableWriteXorExecute"] = "0";
        using Process p = Process.Start(psi)!;
        Task<string> err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        Assert.IsTrue(p.WaitForExit(TimeSpan.FromSeconds(120)), "hang");
        var run = new CliRun(p.ExitCode, output + err.Result);
        AssertCoded(run, "CMPR0106", "ulimit -f 256");
        Assert.IsFalse(File.Exists(P("out/big.onnx")));
    }

    /// <summary>Models that pass our checks but that ONNX Runtime refuses: bad input (exit 2), never our bug (exit 3).</summary>
    [TestMethod]
    [DataRow("empty-op-type")]
    [DataRow("unknown-opset")]
    [DataRow("matmul-shapes")]
    [DataRow("matmul-shapes-dynamic")]
    public void ModelsOnnxRuntimeRefusesAreCodedInputErrors(string kind)
    {
        var g = new GraphProto { Name = "g" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 16));
        g.Output.Add(TinyModels.FloatValue("y", "N", 4));
        long opset = 13;
        switch (kind)
        {
            case "empty-op-type":
                g.Node.Add(TinyModels.Node("", ["x"], ["y"], "nameless"));
                break;
            case "unknown-opset":
                opset = 999;
                g.Initializer.Add(TensorUtil.FromFloats("w", TinyModels.RandomFloats(64, 1), 16, 4));
                g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["y"], "mm"));
                break;
            case "matmul-shapes":
                g.Initializer.Add(TensorUtil.FromFloats("w", TinyModels.RandomFloats(32, 1), 8, 4));
                g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["y"], "mm"));
                break;
            default:
                // The weight's shape comes from a Reshape of a runtime value, so only a run shows the mismatch.
                g.Input[0] = TinyModels.FloatValue("x", "N", "K");
                g.Initializer.Add(TensorUtil.FromFloats("w", TinyModels.RandomFloats(32, 1), 8, 4));
                g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["y"], "mm"));
                break;
        }
        string model = P(kind + ".onnx");
        ModelIO.Save(TinyModels.Model(g, opset), model);
        string data = WriteFile(kind + ".npy", Npy("<f4", "(2, 16)", data: new byte[2 * 16 * 4]));
        CliRun run = Guarded("compress", model, "--output", P("out/" + kind + ".onnx"), "--validation-data", data, "--min-cosine", "0.9");
        Assert.AreEqual(2, run.ExitCode, run.Output);
        Assert.IsTrue(run.Errors("CMPR0103").Any() || run.Errors("CMPR0110").Any(), run.Output);
    }

    [TestMethod]
    [DataRow(-1L)]
    [DataRow(-4611686018427387904L)]
    [DataRow(4611686018427387904L)]
    [DataRow(long.MaxValue)]
    public void InspectOnHostileDimsIsACodedError(long dim)
    {
        var g = new GraphProto { Name = "g" };
        g.Input.Add(TinyModels.FloatValue("x", "N", 4));
        g.Output.Add(TinyModels.FloatValue("y", "N", 4));
        var w = new TensorProto { Name = "w", DataType = (int)TensorProto.Types.DataType.Float };
        w.Dims.Add(dim);
        w.Dims.Add(4);
        g.Initializer.Add(w);
        g.Node.Add(TinyModels.Node("Add", ["x", "w"], ["y"], "add"));
        var vi = TinyModels.FloatValue("z", dim, 4);
        g.ValueInfo.Add(vi);
        string model = P("dims.onnx");
        File.WriteAllBytes(model, Google.Protobuf.MessageExtensions.ToByteArray(TinyModels.Model(g)));
        CliRun run = Guarded("inspect", model);
        Assert.AreNotEqual(3, run.ExitCode, run.Output);
        Assert.IsFalse(run.Errors("CMPR0501").Any(), run.Output);
        Assert.AreEqual(2, run.ExitCode, run.Output);
    }

    [TestMethod]
    public void AModelPointingAtASparseTebibyteOfWeightsIsRefusedBeforeStreaming()
    {
        // 624 bytes of model, [2^19, 2^19] floats in a sparse 1 TiB file: it passes every offset/length check, and
        // streaming it would read a terabyte of holes and write 256 GiB.
        var g = new GraphProto { Name = "g" };
        g.Input.Add(TinyModels.FloatValue("x", 1, 1 << 19));
        g.Output.Add(TinyModels.FloatValue("y", 1, 1 << 19));
        var w = new TensorProto { Name = "w", DataType = (int)TensorProto.Types.DataType.Float, DataLocation = TensorProto.Types.DataLocation.External };
        w.Dims.Add(1 << 19);
        w.Dims.Add(1 << 19);
        w.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = "w.data" });
        w.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = "0" });
        w.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = (1L << 40).ToString(System.Globalization.CultureInfo.InvariantCulture) });
        g.Initializer.Add(w);
        g.Node.Add(TinyModels.Node("MatMul", ["x", "w"], ["y"], "mm"));
        string model = P("sparse.onnx");
        File.WriteAllBytes(model, Google.Protobuf.MessageExtensions.ToByteArray(TinyModels.Model(g)));
        try
        {
            using (var fs = new FileStream(P("w.data"), FileMode.CreateNew))
            {
                fs.SetLength(1L << 40);
            }
        }
        catch (IOException e)
        {
            Assert.Inconclusive("this file system cannot hold a sparse 1 TiB file: " + e.Message);
        }
        CliRun run = Guarded("compress", model, "--output", P("out/sparse.onnx"), "--quantization", "Int8Dynamic");
        AssertCoded(run, "CMPR0105", "sparse 1 TiB external data");
        StringAssert.Contains(run.Output, "sparse");
        AssertCoded(Guarded("inspect", model), "CMPR0105", "inspect on the sparse model");
    }

    [TestMethod]
    [DataRow("truncate-all")]
    [DataRow("empty-manifest-flipped-model")]
    [DataRow("delete-manifest")]
    [DataRow("garbage-outcome")]
    public void ADamagedCacheEntryIsDiscardedAndRecomputedNeverServedOrFatal(string damage)
    {
        string cache = P("cache");
        string[] args = ["compress", Model(), "--output", P("out/m.onnx"), "--validation-data", GoodNpy(), "--min-cosine", "0.5", "--cache-dir", cache];
        CliRun first = Guarded(args);
        Assert.AreEqual(0, first.ExitCode, first.Output);
        byte[] good = File.ReadAllBytes(P("out/m.onnx"));
        string entry = Path.GetDirectoryName(Directory.GetFiles(cache, "manifest.sha256", SearchOption.AllDirectories).Single())!;
        switch (damage)
        {
            case "truncate-all":
                foreach (string f in Directory.GetFiles(entry))
                {
                    File.WriteAllBytes(f, []);
                }
                break;
            case "empty-manifest-flipped-model":
                File.WriteAllBytes(Path.Combine(entry, "manifest.sha256"), []);
                byte[] m = File.ReadAllBytes(Path.Combine(entry, "model.onnx"));
                m[m.Length / 2] ^= 0x10;
                File.WriteAllBytes(Path.Combine(entry, "model.onnx"), m);
                break;
            case "delete-manifest":
                File.Delete(Path.Combine(entry, "manifest.sha256"));
                break;
            default:
                // Damage the hashes cannot show: a consistent manifest over an outcome that is not JSON.
                File.WriteAllText(Path.Combine(entry, "outcome.json"), "{not json");
                File.WriteAllLines(Path.Combine(entry, "manifest.sha256"), Directory.GetFiles(entry).Where(f => !f.EndsWith("manifest.sha256", StringComparison.Ordinal))
                    .Order(StringComparer.Ordinal).Select(f => Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(f))) + " " + Path.GetFileName(f)));
                break;
        }
        File.Delete(P("out/m.onnx"));
        CliRun second = Guarded(args);
        Assert.AreEqual(0, second.ExitCode, second.Output);
        Assert.IsFalse(second.Output.Contains("(cached)", StringComparison.Ordinal), "a damaged entry must not be served: " + second.Output);
        Assert.IsTrue(second.Lines.Any(l => l.Contains("warning CMPR0502", StringComparison.Ordinal)), second.Output);
        CollectionAssert.AreEqual(good, File.ReadAllBytes(P("out/m.onnx")), "recomputed, the same model");
        CliRun third = Guarded(args);
        StringAssert.Contains(third.Output, "(cached)", "the entry was stored again (a deleted manifest is repaired)");
    }

    [TestMethod]
    public void AWorkerRunLeavesNothingInHomeOrTmpdir()
    {
        // ONNX Runtime 1.31 writes ~/.cache/Microsoft/DeveloperTools/.onnxruntime/{deviceid,onnxruntime.db} and
        // $TMPDIR/.ses unless ORT_DISABLE_TELEMETRY is in the process environment before it starts.
        string home = P("home");
        string tmp = P("tmp");
        Directory.CreateDirectory(home);
        Directory.CreateDirectory(tmp);
        string packages = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = _dir };
        psi.Environment["HOME"] = home;
        psi.Environment["TMPDIR"] = tmp;
        psi.Environment["NUGET_PACKAGES"] = packages;
        psi.Environment.Remove("ORT_DISABLE_TELEMETRY");
        psi.Environment["DOTNET_EnableDiagnostics"] = "0"; // what the MSBuild task sets for the worker
        foreach (string a in new[] { "exec", CliHarness.CliDll(), "compress", Model(), "--output", P("out/m.onnx"), "--validation-data", GoodNpy(), "--min-cosine", "0.5" })
        {
            psi.ArgumentList.Add(a);
        }
        using Process p = Process.Start(psi)!;
        Task<string> err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        Assert.IsTrue(p.WaitForExit(TimeSpan.FromSeconds(120)), "hang");
        Assert.AreEqual(0, p.ExitCode, output + err.Result);
        string[] left = [.. Directory.EnumerateFileSystemEntries(home, "*", SearchOption.AllDirectories), .. Directory.EnumerateFileSystemEntries(tmp, "*", SearchOption.AllDirectories)];
        Assert.AreEqual(0, left.Length, "left behind: " + string.Join(", ", left));
    }
}
