using System.Diagnostics;
using System.Globalization;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;
using CompressOnBuild.Tests;
using Google.Protobuf;

namespace CompressOnBuild.Core.Tests.Fuzz;

/// <summary>
/// Seeded property tests for the model reader: every mutated model must give a CompressException with an expected
/// code, or load and pass ModelChecker (and then save, reload and lazily load the same), within a time and managed
/// allocation bound, without writing anywhere but the case's output folder. Fixed seed and case count in CI;
/// COMPRESSONBUILD_FUZZ_ITERATIONS=N (cases per class) and COMPRESSONBUILD_FUZZ_SEED=S for longer runs by hand.
/// </summary>
[TestClass]
public sealed class ModelReaderFuzzTests
{
    private const int DefaultCasesPerClass = 250;
    private static readonly TimeSpan PerCaseTime = TimeSpan.FromSeconds(5);
    private const long PerCaseAllocationCap = 64L << 20;

    private static readonly string[] ReaderCodes =
        [DiagnosticCodes.ModelNotOnnx, DiagnosticCodes.ModelInvalid, DiagnosticCodes.ExternalDataPath, DiagnosticCodes.ExternalDataUnreadable];

    private string _root = "";

    public TestContext TestContext { get; set; } = null!;

    private static int CasesPerClass =>
        int.TryParse(Environment.GetEnvironmentVariable("COMPRESSONBUILD_FUZZ_ITERATIONS"), NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n > 0 ? n : DefaultCasesPerClass;

    private static int Seed =>
        int.TryParse(Environment.GetEnvironmentVariable("COMPRESSONBUILD_FUZZ_SEED"), NumberStyles.Integer, CultureInfo.InvariantCulture, out int s) ? s : 20261123;

    [TestInitialize]
    public void Init()
    {
        _root = Path.Combine(Path.GetTempPath(), "cob-fuzz-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(_root);
    }

    [TestCleanup]
    public void Cleanup()
    {
        try
        {
            Directory.Delete(_root, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>A seed model: the .onnx bytes plus external data files next to it.</summary>
    private sealed record SeedModel(string Name, byte[] Onnx, IReadOnlyDictionary<string, byte[]> Files);

    private static SeedModel[] Seeds(string scratch)
    {
        var seeds = new List<SeedModel> { new("mlp", TinyModels.Mlp(inF: 8, hidden: 6, classes: 3).ToByteArray(), new Dictionary<string, byte[]>()) };

        string extPath = Path.Combine(scratch, "ext.onnx");
        ModelIO.Save(TinyModels.Mlp(inF: 16, hidden: 8, classes: 4, seed: 3), extPath, new ModelSaveOptions { ForceExternalData = true, ExternalTensorMinBytes = 32 });
        seeds.Add(new("external", File.ReadAllBytes(extPath), new Dictionary<string, byte[]> { ["ext.onnx.data"] = File.ReadAllBytes(extPath + ".data") }));

        seeds.Add(new("if-subgraph", IfModel().ToByteArray(), new Dictionary<string, byte[]>()));
        seeds.Add(new("typed-int4", TypedModel().ToByteArray(), new Dictionary<string, byte[]>()));
        return [.. seeds];
    }

    /// <summary>y = If(c) then (x + w_then) else (x * w_else), the branch weights inside the subgraphs.</summary>
    private static ModelProto IfModel()
    {
        GraphProto Branch(string name, string op, int seed)
        {
            var b = new GraphProto { Name = name };
            b.Initializer.Add(TensorUtil.FromFloats("w_" + name, TinyModels.RandomFloats(4, seed), 4));
            b.Node.Add(TinyModels.Node(op, ["x", "w_" + name], ["out_" + name]));
            b.Output.Add(TinyModels.FloatValue("out_" + name, 4));
            return b;
        }
        var g = new GraphProto { Name = "if" };
        g.Input.Add(new ValueInfoProto { Name = "c", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Bool, Shape = new TensorShapeProto() } } });
        g.Input.Add(TinyModels.FloatValue("x", 4));
        g.Output.Add(TinyModels.FloatValue("y", 4));
        NodeProto n = TinyModels.Node("If", ["c"], ["y"], "branch");
        n.Attribute.Add(new AttributeProto { Name = "then_branch", Type = AttributeProto.Types.AttributeType.Graph, G = Branch("then", "Add", 1) });
        n.Attribute.Add(new AttributeProto { Name = "else_branch", Type = AttributeProto.Types.AttributeType.Graph, G = Branch("else", "Mul", 2) });
        g.Node.Add(n);
        return TinyModels.Model(g);
    }

    /// <summary>Typed float_data, an int64 shape in int64_data, an INT4 raw tensor and a Constant attribute tensor.</summary>
    private static ModelProto TypedModel()
    {
        var g = new GraphProto { Name = "typed" };
        g.Input.Add(TinyModels.FloatValue("x", 2, 3));
        g.Output.Add(TinyModels.FloatValue("y", 3, 2));
        var w = new TensorProto { Name = "w", DataType = (int)TensorProto.Types.DataType.Float };
        w.Dims.Add(2);
        w.Dims.Add(3);
        w.FloatData.AddRange(TinyModels.RandomFloats(6, 9));
        var shape = new TensorProto { Name = "shape", DataType = (int)TensorProto.Types.DataType.Int64 };
        shape.Dims.Add(2);
        shape.Int64Data.AddRange([3, 2]);
        var i4 = new TensorProto { Name = "packed", DataType = (int)TensorProto.Types.DataType.Int4, RawData = ByteString.CopyFrom(0x21, 0x43, 0x05) };
        i4.Dims.Add(5);
        g.Initializer.Add(w);
        g.Initializer.Add(shape);
        g.Initializer.Add(i4);
        var constant = TinyModels.Node("Constant", [], ["k"], "k");
        constant.Attribute.Add(new AttributeProto { Name = "value", Type = AttributeProto.Types.AttributeType.Tensor, T = TensorUtil.FromFloats("kv", [0.5f], 1) });
        g.Node.Add(constant);
        g.Node.Add(TinyModels.Node("Add", ["x", "w"], ["s"]));
        g.Node.Add(TinyModels.Node("Mul", ["s", "k"], ["m"]));
        g.Node.Add(TinyModels.Node("Reshape", ["m", "shape"], ["y"]));
        return TinyModels.Model(g, opset: 21, irVersion: 10);
    }

    /// <summary>Outcome counts for one class, for the report and docs/reliability.md.</summary>
    private sealed class Tally
    {
        public int Cases;
        public int Passed;
        public readonly SortedDictionary<string, int> Codes = new(StringComparer.Ordinal);
        public TimeSpan Slowest;
        public long MostAllocated;

        public override string ToString() =>
            $"{Cases} cases: {Passed} valid, " + string.Join(", ", Codes.Select(kv => $"{kv.Value} {kv.Key}")) +
            $"; slowest {Slowest.TotalMilliseconds:F0} ms, most allocated {MostAllocated / 1024} KiB";
    }

    /// <summary>
    /// Writes the case (model + files) into a fresh folder with hostile neighbours (a secret outside, links out),
    /// runs the reader and checks the properties. <paramref name="allowed"/> lists the acceptable codes.
    /// </summary>
    private void RunCase(string cls, int index, byte[] onnx, IReadOnlyDictionary<string, byte[]> files, Tally tally, string[]? allowed = null, string? exactCode = null)
    {
        allowed ??= ReaderCodes;
        string caseDir = Path.Combine(_root, "case");
        if (Directory.Exists(caseDir))
        {
            Directory.Delete(caseDir, recursive: true);
        }
        string input = Path.Combine(caseDir, "in");
        string output = Path.Combine(caseDir, "out");
        string secretDir = Path.Combine(caseDir, "secret");
        Directory.CreateDirectory(input);
        Directory.CreateDirectory(output);
        Directory.CreateDirectory(secretDir);
        Directory.CreateDirectory(Path.Combine(input, "sub"));
        File.WriteAllBytes(Path.Combine(secretDir, "secret.data"), new byte[4096]);
        File.CreateSymbolicLink(Path.Combine(input, "link-out.data"), Path.Combine(secretDir, "secret.data"));
        Directory.CreateSymbolicLink(Path.Combine(input, "linkdir"), secretDir);
        Directory.CreateSymbolicLink(Path.Combine(input, "sub", "up"), caseDir);
        File.CreateSymbolicLink(Path.Combine(input, "loop-a"), Path.Combine(input, "loop-b"));
        File.CreateSymbolicLink(Path.Combine(input, "loop-b"), Path.Combine(input, "loop-a"));
        foreach ((string name, byte[] bytes) in files)
        {
            File.WriteAllBytes(Path.Combine(input, name), bytes);
        }
        string modelPath = Path.Combine(input, "model.onnx");
        File.WriteAllBytes(modelPath, onnx);
        Dictionary<string, (long, DateTime)> before = Snapshot(caseDir, output);

        string label = $"{cls} #{index}";
        tally.Cases++;
        string outcome;
        var watch = Stopwatch.StartNew();
        long allocated0 = GC.GetAllocatedBytesForCurrentThread();
        try
        {
            ModelProto model = ModelIO.Load(modelPath);
            ModelChecker.Validate(model, modelPath);
            // A valid model must also read lazily, convert its float tensors and survive a save/reload.
            LazyModel lazy = ModelIO.LoadLazy(modelPath);
            ModelChecker.Validate(lazy.Model, modelPath);
            foreach (TensorProto t in ModelWalker.Tensors(model))
            {
                if (t.DataType is (int)TensorProto.Types.DataType.Float or (int)TensorProto.Types.DataType.Float16 or (int)TensorProto.Types.DataType.Double)
                {
                    _ = TensorUtil.ToFloatArray(t);
                }
            }
            string saved = Path.Combine(output, "saved.onnx");
            ModelIO.Save(model, saved);
            Assert.AreEqual(model, ModelIO.Load(saved), $"{label}: save -> load changed the model");
            outcome = "valid";
            tally.Passed++;
        }
        catch (CompressException e)
        {
            outcome = e.Code;
            Assert.IsTrue(allowed.Contains(e.Code), $"{label}: unexpected code {e.Code}: {e.Message}");
            if (exactCode != null)
            {
                Assert.AreEqual(exactCode, e.Code, $"{label}: {e.Message}");
            }
            tally.Codes[e.Code] = tally.Codes.GetValueOrDefault(e.Code) + 1;
        }
        catch (Exception e) when (e is not AssertFailedException)
        {
            Assert.Fail($"{label}: uncoded {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
            return;
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - allocated0;
        TimeSpan elapsed = watch.Elapsed;
        if (exactCode != null && outcome == "valid")
        {
            Assert.Fail($"{label}: expected {exactCode} but the model was accepted");
        }
        Assert.IsTrue(elapsed < PerCaseTime, $"{label}: took {elapsed.TotalMilliseconds:F0} ms ({outcome})");
        Assert.IsTrue(allocated < PerCaseAllocationCap, $"{label}: allocated {allocated} bytes ({outcome})");
        tally.Slowest = elapsed > tally.Slowest ? elapsed : tally.Slowest;
        tally.MostAllocated = Math.Max(tally.MostAllocated, allocated);

        Dictionary<string, (long, DateTime)> after = Snapshot(caseDir, output);
        CollectionAssert.AreEquivalent(before.Keys.ToList(), after.Keys.ToList(), $"{label}: files appeared or vanished outside the output folder");
        foreach ((string path, (long, DateTime) stamp) in before)
        {
            Assert.AreEqual(stamp, after[path], $"{label}: {path} was modified");
        }
        foreach (string f in Directory.GetFiles(output))
        {
            Assert.IsTrue(Path.GetFileName(f) is "saved.onnx" or "saved.onnx.data", $"{label}: unexpected output file {f}");
        }
    }

    /// <summary>Every file under <paramref name="dir"/> (links not followed) except <paramref name="excluded"/>, with length and write time.</summary>
    private static Dictionary<string, (long, DateTime)> Snapshot(string dir, string excluded)
    {
        var result = new Dictionary<string, (long, DateTime)>(StringComparer.Ordinal);
        var pending = new Stack<string>();
        pending.Push(dir);
        while (pending.Count > 0)
        {
            string d = pending.Pop();
            if (d == excluded)
            {
                continue;
            }
            foreach (FileSystemInfo e in new DirectoryInfo(d).EnumerateFileSystemInfos())
            {
                if (e is DirectoryInfo di && e.LinkTarget == null)
                {
                    pending.Push(di.FullName);
                }
                else
                {
                    result[e.FullName] = e.LinkTarget != null ? (-1, DateTime.MinValue) : (((FileInfo)e).Length, e.LastWriteTimeUtc);
                }
            }
        }
        // The parent temp folder must not gain files either (e.g. a path that climbed out and got written).
        foreach (string f in Directory.GetFiles(Path.GetDirectoryName(dir)!))
        {
            result[f] = (new FileInfo(f).Length, File.GetLastWriteTimeUtc(f));
        }
        return result;
    }

    // ---------------------------------------------------------------- protobuf wire helpers

    private sealed record Field(int TagPos, int TagLen, int FieldNumber, int Wire, int LenPos, int LenLen, int PayloadStart, int PayloadEnd);

    private static bool TryVarint(byte[] b, ref int pos, int end, out ulong value)
    {
        value = 0;
        for (int shift = 0; shift < 70; shift += 7)
        {
            if (pos >= end)
            {
                return false;
            }
            byte x = b[pos++];
            value |= (ulong)(x & 0x7F) << shift;
            if ((x & 0x80) == 0)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>All fields of a well-formed message, recursing into length-delimited payloads that parse as messages.</summary>
    private static bool Scan(byte[] b, int start, int end, List<Field> acc, int depth)
    {
        int pos = start;
        while (pos < end)
        {
            int tagPos = pos;
            if (!TryVarint(b, ref pos, end, out ulong tag) || (tag >> 3) == 0)
            {
                return false;
            }
            int wire = (int)(tag & 7);
            int tagLen = pos - tagPos;
            switch (wire)
            {
                case 0:
                    if (!TryVarint(b, ref pos, end, out _))
                    {
                        return false;
                    }
                    acc.Add(new Field(tagPos, tagLen, (int)(tag >> 3), wire, -1, 0, tagPos + tagLen, pos));
                    break;
                case 1:
                case 5:
                    pos += wire == 1 ? 8 : 4;
                    if (pos > end)
                    {
                        return false;
                    }
                    acc.Add(new Field(tagPos, tagLen, (int)(tag >> 3), wire, -1, 0, tagPos + tagLen, pos));
                    break;
                case 2:
                    int lenPos = pos;
                    if (!TryVarint(b, ref pos, end, out ulong len) || len > (ulong)(end - pos))
                    {
                        return false;
                    }
                    acc.Add(new Field(tagPos, tagLen, (int)(tag >> 3), wire, lenPos, pos - lenPos, pos, pos + (int)len));
                    if (depth < 12 && len > 0)
                    {
                        var inner = new List<Field>();
                        if (Scan(b, pos, pos + (int)len, inner, depth + 1))
                        {
                            acc.AddRange(inner);
                        }
                    }
                    pos += (int)len;
                    break;
                default:
                    return false;
            }
        }
        return pos == end;
    }

    private static byte[] Varint(ulong v)
    {
        var r = new List<byte>();
        while (v >= 0x80)
        {
            r.Add((byte)(v | 0x80));
            v >>= 7;
        }
        r.Add((byte)v);
        return [.. r];
    }

    private static byte[] Splice(byte[] b, int start, int length, byte[] replacement) =>
        [.. b.AsSpan(0, start), .. replacement, .. b.AsSpan(start + length)];

    private static List<Field> Fields(byte[] onnx)
    {
        var fields = new List<Field>();
        Assert.IsTrue(Scan(onnx, 0, onnx.Length, fields, 0), "seed must scan");
        return fields;
    }

    private static readonly ulong[] HugeLengths =
    [
        0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, ulong.MaxValue,
        0x7FFF_FFF0, 1UL << 62,
    ];

    // ---------------------------------------------------------------- classes

    private void RunClass(string cls, Func<Random, SeedModel, (byte[] Onnx, IReadOnlyDictionary<string, byte[]> Files)> mutate, string[]? allowed = null)
    {
        var tally = new Tally();
        SeedModel[] seeds = Seeds(Path.Combine(_root, "seeds-" + cls));
        // Not HashCode.Combine: it is randomized per process, and a failing case must replay with the same seed.
        var rng = new Random(Seed ^ cls.Aggregate(17, (h, c) => unchecked((h * 31) + c)));
        int n = CasesPerClass;
        for (int i = 0; i < n; i++)
        {
            SeedModel seed = seeds[i % seeds.Length];
            (byte[] onnx, IReadOnlyDictionary<string, byte[]> files) = mutate(rng, seed);
            RunCase(cls, i, onnx, files, tally, allowed);
        }
        TestContext.WriteLine($"FUZZ {cls}: {tally}");
        Assert.AreEqual(n, tally.Cases);
    }

    [TestMethod]
    public void Truncations() => RunClass("truncation", (rng, s) =>
    {
        // Cut the model (or, for the external seed, sometimes its data file) at a random length.
        if (s.Files.Count > 0 && rng.Next(3) == 0)
        {
            (string name, byte[] data) = s.Files.First();
            return (s.Onnx, new Dictionary<string, byte[]> { [name] = data.AsSpan(0, rng.Next(data.Length)).ToArray() });
        }
        return (s.Onnx.AsSpan(0, rng.Next(s.Onnx.Length)).ToArray(), s.Files);
    });

    [TestMethod]
    public void ByteFlips() => RunClass("byte flips", (rng, s) =>
    {
        byte[] b = (byte[])s.Onnx.Clone();
        int flips = 1 + rng.Next(8);
        for (int f = 0; f < flips; f++)
        {
            b[rng.Next(b.Length)] = (byte)rng.Next(256);
        }
        return (b, s.Files);
    });

    [TestMethod]
    public void WrongWireTypes() => RunClass("wrong wire types", (rng, s) =>
    {
        List<Field> fields = Fields(s.Onnx);
        Field f = fields[rng.Next(fields.Count)];
        int wire;
        do
        {
            wire = rng.Next(8);
        }
        while (wire == f.Wire);
        byte[] tag = Varint(((ulong)f.FieldNumber << 3) | (uint)wire);
        return (Splice(s.Onnx, f.TagPos, f.TagLen, tag), s.Files);
    });

    [TestMethod]
    public void HugeDeclaredLengths() => RunClass("huge declared lengths", (rng, s) =>
    {
        List<Field> fields = Fields(s.Onnx).Where(f => f.Wire == 2).ToList();
        Field f = fields[rng.Next(fields.Count)];
        ulong len = rng.Next(4) == 0 ? (ulong)(f.PayloadEnd - f.PayloadStart) + (ulong)rng.Next(1, 100_000) : HugeLengths[rng.Next(HugeLengths.Length)];
        byte[] b = Splice(s.Onnx, f.LenPos, f.LenLen, Varint(len));
        if (rng.Next(2) == 0)
        {
            // Also make every enclosing length claim the same huge size, so the outer limit cannot catch it first.
            foreach (Field outer in Fields(s.Onnx).Where(o => o.Wire == 2 && o.PayloadStart <= f.TagPos && f.PayloadEnd <= o.PayloadEnd && o != f).OrderByDescending(o => o.LenPos))
            {
                b = Splice(b, outer.LenPos, outer.LenLen, Varint(len));
            }
        }
        return (b, s.Files);
    }, [DiagnosticCodes.ModelNotOnnx, DiagnosticCodes.ModelInvalid]);

    [TestMethod]
    public void DimsThatDisagreeWithData() => RunClass("dims vs data (raw, typed, int4)", (rng, s) =>
    {
        ModelProto m = ModelProto.Parser.ParseFrom(s.Onnx);
        List<TensorProto> tensors = ModelWalker.Tensors(m).ToList();
        TensorProto t = tensors[rng.Next(tensors.Count)];
        long[] odd = [-1, 0, 1, 3, 1L << 31, 1L << 40, 1L << 61, 1L << 62, long.MaxValue, long.MinValue];
        switch (rng.Next(6))
        {
            case 0:
                if (t.Dims.Count == 0)
                {
                    t.Dims.Add(odd[rng.Next(odd.Length)]);
                }
                else
                {
                    t.Dims[rng.Next(t.Dims.Count)] = odd[rng.Next(odd.Length)];
                }
                break;
            case 1:
                t.Dims.Add(odd[rng.Next(odd.Length)]);
                t.Dims.Add(odd[rng.Next(odd.Length)]);
                break;
            case 2:
                int[] types = [0, 1, 2, 3, 5, 7, 8, 10, 11, 14, 15, 16, 21, 22, 25, 26, 99, -3];
                t.DataType = types[rng.Next(types.Length)];
                break;
            case 3:
                // Raw -> typed with a count that may or may not match.
                long count = TensorUtil.ElementCount(t) + rng.Next(-1, 2);
                t.ClearRawData();
                t.FloatData.Clear();
                for (long i = 0; i < Math.Max(0, count); i++)
                {
                    t.FloatData.Add(i);
                }
                t.DataType = (int)TensorProto.Types.DataType.Float;
                break;
            case 4:
                // 4-bit: packed raw length around (n + 1) / 2, or typed int32_data of n or (n + 1) / 2 values.
                int n = rng.Next(0, 9);
                t.DataType = (int)(rng.Next(2) == 0 ? TensorProto.Types.DataType.Int4 : TensorProto.Types.DataType.Uint4);
                t.Dims.Clear();
                t.Dims.Add(n);
                t.FloatData.Clear();
                t.Int32Data.Clear();
                if (rng.Next(2) == 0)
                {
                    t.RawData = ByteString.CopyFrom(new byte[Math.Max(0, (n + 1) / 2 + rng.Next(-1, 2))]);
                }
                else
                {
                    t.ClearRawData();
                    int values = rng.Next(2) == 0 ? n : (n + 1) / 2 + rng.Next(-1, 2);
                    for (int i = 0; i < values; i++)
                    {
                        t.Int32Data.Add(i & 7);
                    }
                }
                break;
            default:
                // Raw data a few bytes off.
                if (!TensorUtil.IsExternal(t))
                {
                    byte[] raw = t.HasRawData ? t.RawData.ToByteArray() : [];
                    int len = Math.Max(0, raw.Length + rng.Next(-5, 6));
                    Array.Resize(ref raw, len);
                    t.RawData = ByteString.CopyFrom(raw);
                }
                break;
        }
        return (m.ToByteArray(), s.Files);
    }, [DiagnosticCodes.ModelInvalid, DiagnosticCodes.ExternalDataUnreadable]);

    private static readonly string[] HostileOffsets =
        ["-1", "0", "1", "4095", "4096", "4097", "1048576", "9223372036854775807", "9223372036854775808", "18446744073709551615",
         "-9223372036854775808", "abc", "", " 5", "1e3", "0x10", "+4", "٣"];

    [TestMethod]
    public void ExternalOffsetsAndLengths() => RunClass("external offsets/lengths", (rng, s) =>
    {
        ModelProto m = ModelProto.Parser.ParseFrom(s.Onnx);
        List<TensorProto> ext = ModelWalker.Tensors(m).Where(TensorUtil.IsExternal).ToList();
        Dictionary<string, byte[]> files = new(s.Files);
        if (ext.Count == 0)
        {
            // Make an inline tensor external, pointing at a small file.
            TensorProto t0 = ModelWalker.Tensors(m).First();
            t0.ClearRawData();
            t0.FloatData.Clear();
            t0.Int64Data.Clear();
            t0.DataLocation = TensorProto.Types.DataLocation.External;
            t0.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = "w.data" });
            files["w.data"] = new byte[rng.Next(0, 600)];
            ext.Add(t0);
        }
        TensorProto t = ext[rng.Next(ext.Count)];
        long fileLength = files.Values.First().Length;
        string Pick() => rng.Next(3) switch
        {
            0 => HostileOffsets[rng.Next(HostileOffsets.Length)],
            1 => (fileLength + rng.Next(-64, 65)).ToString(CultureInfo.InvariantCulture),
            _ => rng.NextInt64(-10, long.MaxValue).ToString(CultureInfo.InvariantCulture),
        };
        string key = rng.Next(3) switch { 0 => "offset", 1 => "length", _ => "both" };
        void Set(string k, string v)
        {
            StringStringEntryProto? e = t.ExternalData.FirstOrDefault(x => x.Key == k);
            if (e == null)
            {
                t.ExternalData.Add(new StringStringEntryProto { Key = k, Value = v });
            }
            else
            {
                e.Value = v;
            }
        }
        if (key is "offset" or "both")
        {
            Set("offset", Pick());
        }
        if (key is "length" or "both")
        {
            Set("length", Pick());
        }
        if (rng.Next(8) == 0)
        {
            // Duplicate keys, empty location, or data_location EXTERNAL without any entries.
            switch (rng.Next(3))
            {
                case 0: t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = Pick() }); break;
                case 1: Set("location", ""); break;
                default: t.ExternalData.Clear(); break;
            }
        }
        return (m.ToByteArray(), files);
    }, [DiagnosticCodes.ExternalDataUnreadable, DiagnosticCodes.ModelInvalid, DiagnosticCodes.ExternalDataPath]);

    /// <summary>Locations that leave the model folder (or cannot be shown to stay in it): each must give CMPR0104.</summary>
    private static readonly string[] EscapingLocations =
    [
        "/etc/passwd", "/dev/zero", "../secret/secret.data", "..\\secret\\secret.data", "sub/../../secret/secret.data", "./../secret/secret.data",
        "sub/./../../secret/secret.data", "C:\\Windows\\win.ini", "C:/Windows/win.ini", "C:relative.data", "c:", "\\\\server\\share\\w.data",
        "//server/share/w.data", "\\\\?\\C:\\w.data", "\\\\.\\pipe\\w", "\\\\.\\PhysicalDrive0", "link-out.data", "linkdir/secret.data",
        "sub/up/secret/secret.data", "loop-a", "a\0b", " ", "\t", "sub/..", "..", "../", "..\\", "sub\\..\\..\\secret\\secret.data",
    ];

    /// <summary>Odd but confined locations: never CMPR0104; they read (or fail as unreadable) inside the folder.</summary>
    private static readonly string[] ConfinedLocations =
        ["", "~", "%2e%2e/secret.data", "file:/etc/passwd", "sub", ".", "model.onnx", "...", "..data", "sub//x.data", "CON", "NUL", "a:b", "ä.data"];

    [TestMethod]
    public void HostileExternalPathsAreRejectedWithCMPR0104()
    {
        var tally = new Tally();
        var confined = new Tally();
        SeedModel ext = Seeds(Path.Combine(_root, "seeds-paths"))[1];
        int i = 0;
        foreach (string location in EscapingLocations)
        {
            ModelProto m = ModelProto.Parser.ParseFrom(ext.Onnx);
            ModelWalker.Tensors(m).First(TensorUtil.IsExternal).ExternalData.First(e => e.Key == "location").Value = location;
            RunCase("escaping path", i++, m.ToByteArray(), ext.Files, tally, exactCode: DiagnosticCodes.ExternalDataPath);
        }
        string longName = new('a', 5000);
        foreach (string location in ConfinedLocations.Append(longName).Append(string.Join('/', Enumerable.Repeat("d", 2000))))
        {
            ModelProto m = ModelProto.Parser.ParseFrom(ext.Onnx);
            ModelWalker.Tensors(m).First(TensorUtil.IsExternal).ExternalData.First(e => e.Key == "location").Value = location;
            RunCase("confined path", i++, m.ToByteArray(), ext.Files, confined, allowed: [DiagnosticCodes.ExternalDataUnreadable, DiagnosticCodes.ExternalDataPath]);
        }
        TestContext.WriteLine($"FUZZ escaping paths: {tally}");
        TestContext.WriteLine($"FUZZ confined odd paths: {confined}");
        Assert.AreEqual(EscapingLocations.Length, tally.Codes.GetValueOrDefault(DiagnosticCodes.ExternalDataPath));
    }

    [TestMethod]
    public void RandomHostilePathsNeverEscape() => RunClass("random hostile paths", (rng, s) =>
    {
        ModelProto m = ModelProto.Parser.ParseFrom(s.Onnx);
        List<TensorProto> ext = ModelWalker.Tensors(m).Where(TensorUtil.IsExternal).ToList();
        TensorProto t = ext.Count > 0 ? ext[rng.Next(ext.Count)] : ModelWalker.Tensors(m).First();
        if (ext.Count == 0)
        {
            t.ClearRawData();
            t.FloatData.Clear();
            t.Int64Data.Clear();
            t.DataLocation = TensorProto.Types.DataLocation.External;
        }
        string[] parts = ["..", ".", "sub", "up", "linkdir", "link-out.data", "secret", "secret.data", "ext.onnx.data", "C:", "\\\\srv", "", "loop-a", "~", "%2e"];
        int count = 1 + rng.Next(5);
        string location = string.Join(rng.Next(2) == 0 ? "/" : "\\", Enumerable.Range(0, count).Select(_ => parts[rng.Next(parts.Length)]));
        if (rng.Next(4) == 0)
        {
            location = (rng.Next(2) == 0 ? "/" : "\\\\") + location;
        }
        t.ExternalData.Clear();
        t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = location });
        return (m.ToByteArray(), s.Files);
    });

    [TestMethod]
    public void RecursionBombs()
    {
        var tally = new Tally();
        int i = 0;
        // Nested If subgraphs, nested unknown groups, nested repeated message fields: never a stack overflow.
        // (The nested-message builders copy the whole payload per level, so they stop at 3000 levels; groups are linear.)
        foreach (int depth in new[] { 40, 99, 100, 101, 150, 1_000, 3_000 })
        {
            RunCase("nested subgraphs", i++, NestedIf(depth), new Dictionary<string, byte[]>(), tally, [DiagnosticCodes.ModelNotOnnx, DiagnosticCodes.ModelInvalid]);
            RunCase("nested type protos", i++, NestedSequenceTypes(depth), new Dictionary<string, byte[]>(), tally, [DiagnosticCodes.ModelNotOnnx, DiagnosticCodes.ModelInvalid]);
        }
        foreach (int depth in new[] { 40, 99, 100, 101, 1_000, 100_000, 1_000_000 })
        {
            RunCase("nested unknown groups", i++, NestedGroups(depth), new Dictionary<string, byte[]>(), tally, [DiagnosticCodes.ModelNotOnnx, DiagnosticCodes.ModelInvalid]);
        }
        TestContext.WriteLine($"FUZZ recursion bombs: {tally}");
        // Everything nested past the limit of 100 is refused while parsing.
        Assert.IsTrue(tally.Codes.GetValueOrDefault(DiagnosticCodes.ModelNotOnnx) >= 2 * 5 + 4, tally.ToString());
    }

    private static byte[] LengthDelimited(int field, byte[] payload) => [.. Varint(((ulong)field << 3) | 2), .. Varint((ulong)payload.Length), .. payload];

    /// <summary>Graph { node { attribute { g: Graph { ... } } } } nested <paramref name="depth"/> times, in a valid ModelProto.</summary>
    private static byte[] NestedIf(int depth)
    {
        byte[] graph = LengthDelimited(2, "g"u8.ToArray()); // GraphProto.name
        byte[] attrName = LengthDelimited(1, "then_branch"u8.ToArray());
        byte[] attrType = [.. Varint((20 << 3) | 0), .. Varint(5)]; // AttributeProto.type = GRAPH
        byte[] opType = LengthDelimited(4, "If"u8.ToArray());
        byte[] input = LengthDelimited(1, "c"u8.ToArray());
        for (int d = 0; d < depth; d++)
        {
            byte[] attribute = [.. attrName, .. attrType, .. LengthDelimited(6, graph)]; // AttributeProto.g = 6
            byte[] node = [.. input, .. opType, .. LengthDelimited(5, attribute)]; // NodeProto.attribute = 5
            graph = LengthDelimited(1, node); // GraphProto.node = 1
        }
        return [.. Varint((1 << 3) | 0), .. Varint(7), .. LengthDelimited(7, graph), .. LengthDelimited(8, [.. Varint((2 << 3) | 0), .. Varint(13)])];
    }

    /// <summary>An unknown field number holding groups nested <paramref name="depth"/> deep (wire types 3/4).</summary>
    private static byte[] NestedGroups(int depth)
    {
        byte[] start = Varint((900UL << 3) | 3);
        byte[] end = Varint((900UL << 3) | 4);
        var b = new List<byte>();
        b.AddRange(Varint((1 << 3) | 0));
        b.AddRange(Varint(7));
        for (int d = 0; d < depth; d++)
        {
            b.AddRange(start);
        }
        for (int d = 0; d < depth; d++)
        {
            b.AddRange(end);
        }
        b.AddRange(LengthDelimited(7, LengthDelimited(2, "g"u8.ToArray())));
        return [.. b];
    }

    /// <summary>A graph input whose TypeProto is sequence(sequence(...(tensor))) nested <paramref name="depth"/> deep.</summary>
    private static byte[] NestedSequenceTypes(int depth)
    {
        byte[] type = LengthDelimited(1, [.. Varint((1 << 3) | 0), .. Varint(1)]); // TypeProto.tensor_type { elem_type = FLOAT }
        for (int d = 0; d < depth; d++)
        {
            type = LengthDelimited(4, LengthDelimited(1, type)); // TypeProto.sequence_type { elem_type = type }
        }
        byte[] valueInfo = [.. LengthDelimited(1, "x"u8.ToArray()), .. LengthDelimited(2, type)];
        byte[] graph = [.. LengthDelimited(2, "g"u8.ToArray()), .. LengthDelimited(11, valueInfo)]; // GraphProto.input = 11
        return [.. Varint((1 << 3) | 0), .. Varint(7), .. LengthDelimited(7, graph), .. LengthDelimited(8, [.. Varint((2 << 3) | 0), .. Varint(13)])];
    }

    /// <summary>Regressions for what the fuzz classes cover (each threw an uncoded exception before the fix).</summary>
    [TestMethod]
    public void OverflowingDimsAndLinkLoopsGiveCodes()
    {
        // dims [2^61] of FLOAT: the element count fits in a long, count * 32 bits does not (OverflowException from ModelChecker).
        var t = new TensorProto { Name = "w", DataType = (int)TensorProto.Types.DataType.Float, RawData = ByteString.CopyFrom(new byte[16]) };
        t.Dims.Add(1L << 61);
        Assert.IsNotNull(TensorUtil.CheckDataConsistency(t));
        // ToFloatArray used to allocate count elements before checking the data length (OutOfMemory / overflow).
        var typed = new TensorProto { Name = "w", DataType = (int)TensorProto.Types.DataType.Float };
        typed.Dims.Add(1L << 40);
        typed.FloatData.Add(1f);
        long before = GC.GetAllocatedBytesForCurrentThread();
        Assert.ThrowsExactly<InvalidDataException>(() => TensorUtil.ToFloatArray(typed));
        Assert.ThrowsExactly<InvalidDataException>(() => TensorUtil.ToInt64Array(new TensorProto { DataType = (int)TensorProto.Types.DataType.Int64, Dims = { 1L << 40 } }));
        Assert.IsTrue(GC.GetAllocatedBytesForCurrentThread() - before < 1 << 20);
        // A symbolic link loop inside the model folder: SafePath.RealPath threw IOException out of ModelIO.Load.
        var tally = new Tally();
        SeedModel ext = Seeds(Path.Combine(_root, "seeds-loop"))[1];
        ModelProto m = ModelProto.Parser.ParseFrom(ext.Onnx);
        ModelWalker.Tensors(m).First(TensorUtil.IsExternal).ExternalData.First(e => e.Key == "location").Value = "loop-a";
        RunCase("link loop", 0, m.ToByteArray(), ext.Files, tally, exactCode: DiagnosticCodes.ExternalDataPath);
    }

    /// <summary>A FIFO inside the model folder: opening it for reading would block until a writer appears.</summary>
    [TestMethod]
    public void FifoInsideTheFolderIsRefusedWithoutBlocking()
    {
        string dir = Path.Combine(_root, "fifo");
        Directory.CreateDirectory(dir);
        string fifo = Path.Combine(dir, "fifo.data");
        try
        {
            using Process p = Process.Start(new ProcessStartInfo("mkfifo", [fifo]) { UseShellExecute = false })!;
            p.WaitForExit();
        }
        catch (System.ComponentModel.Win32Exception)
        {
            Assert.Inconclusive("mkfifo is not available here");
        }
        Assert.IsTrue(File.Exists(fifo), "mkfifo must have made the FIFO");
        foreach ((long elements, string? expected) in new (long, string?)[] { (4, DiagnosticCodes.ExternalDataUnreadable), (0, null) })
        {
            var g = new GraphProto { Name = "g" };
            var t = new TensorProto { Name = "w", DataType = (int)TensorProto.Types.DataType.Float, DataLocation = TensorProto.Types.DataLocation.External };
            t.Dims.Add(elements);
            t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = "fifo.data" });
            g.Initializer.Add(t);
            g.Node.Add(TinyModels.Node("Identity", ["w"], ["y"]));
            g.Output.Add(TinyModels.FloatValue("y", elements));
            string path = Path.Combine(dir, $"m{elements}.onnx");
            File.WriteAllBytes(path, TinyModels.Model(g).ToByteArray());
            Task<ModelProto> load = Task.Run(() => ModelIO.Load(path));
            Assert.IsTrue(Task.WhenAny(load, Task.Delay(TimeSpan.FromSeconds(10))).GetAwaiter().GetResult() == load, "ModelIO.Load blocked on a FIFO");
            if (expected == null)
            {
                Assert.AreEqual(0, load.GetAwaiter().GetResult().Graph.Initializer[0].RawData.Length, "an empty tensor needs no bytes and must not open the FIFO");
            }
            else
            {
                Assert.AreEqual(expected, Assert.ThrowsExactly<CompressException>(() => load.GetAwaiter().GetResult()).Code);
            }
        }
    }

    [TestMethod]
    public void SeedsAreValidAndRoundTrip()
    {
        var tally = new Tally();
        SeedModel[] seeds = Seeds(Path.Combine(_root, "seeds-valid"));
        for (int i = 0; i < seeds.Length; i++)
        {
            RunCase("seed " + seeds[i].Name, i, seeds[i].Onnx, seeds[i].Files, tally);
        }
        Assert.AreEqual(seeds.Length, tally.Passed, "every seed model must be valid, or the mutations test nothing");
    }
}
