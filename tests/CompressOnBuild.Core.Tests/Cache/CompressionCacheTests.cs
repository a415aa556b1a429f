using CompressOnBuild.Core.Cache;

namespace CompressOnBuild.Core.Tests.Cache;

[TestClass]
public sealed class CompressionCacheTests
{
    private string _dir = "";

    [TestInitialize]
    public void Init() => _dir = Path.Combine(Path.GetTempPath(), "cob-cache-" + Guid.NewGuid().ToString("N")[..8]);

    [TestCleanup]
    public void Cleanup()
    {
        if (Directory.Exists(_dir))
        {
            Directory.Delete(_dir, recursive: true);
        }
    }

    private static string Key(string s) => CompressionCache.HashKey([s]);

    private static void Fill(string dir, int bytes) => File.WriteAllBytes(Path.Combine(dir, "model.onnx"), new byte[bytes]);

    [TestMethod]
    public void StoredEntriesAreFoundAndVerified()
    {
        var cache = new CompressionCache(_dir);
        Assert.IsNull(cache.TryGet(Key("a")));
        cache.Put(Key("a"), d => Fill(d, 100));
        string? entry = cache.TryGet(Key("a"));
        Assert.IsNotNull(entry);
        Assert.AreEqual(100, new FileInfo(Path.Combine(entry, "model.onnx")).Length);
        Assert.IsNull(cache.LastCorruptEntry);
    }

    [TestMethod]
    public void ATamperedOrTruncatedEntryIsDroppedNotUsed()
    {
        var cache = new CompressionCache(_dir);
        cache.Put(Key("a"), d => Fill(d, 100));
        string entry = cache.TryGet(Key("a"))!;
        File.WriteAllBytes(Path.Combine(entry, "model.onnx"), new byte[99]);
        Assert.IsNull(cache.TryGet(Key("a")));
        Assert.AreEqual(entry, cache.LastCorruptEntry);
        Assert.IsFalse(Directory.Exists(entry));

        cache.Put(Key("b"), d => Fill(d, 10));
        string b = cache.TryGet(Key("b"))!;
        File.WriteAllText(Path.Combine(b, "manifest.sha256"), "not a manifest");
        Assert.IsNull(cache.TryGet(Key("b")));
    }

    [TestMethod]
    public void EveryFileTruncatedToZeroBytesAsPowerLossLeavesItIsDroppedAndStoredAgain()
    {
        var cache = new CompressionCache(_dir);
        cache.Put(Key("a"), d => { Fill(d, 100); File.WriteAllText(Path.Combine(d, "outcome.json"), "{}"); });
        string entry = cache.TryGet(Key("a"))!;
        foreach (string f in Directory.GetFiles(entry))
        {
            File.WriteAllBytes(f, []);
        }
        Assert.IsNull(cache.TryGet(Key("a")), "an empty manifest verifies nothing");
        Assert.AreEqual(entry, cache.LastCorruptEntry);
        Assert.IsFalse(Directory.Exists(entry));
        cache.Put(Key("a"), d => Fill(d, 100));
        Assert.IsNotNull(cache.TryGet(Key("a")), "the entry is stored again");
    }

    [TestMethod]
    public void AnEmptyManifestWithAFlippedModelByteIsNeverServed()
    {
        var cache = new CompressionCache(_dir);
        cache.Put(Key("a"), d => Fill(d, 100));
        string entry = cache.TryGet(Key("a"))!;
        File.WriteAllBytes(Path.Combine(entry, "manifest.sha256"), []);
        byte[] model = File.ReadAllBytes(Path.Combine(entry, "model.onnx"));
        model[7] ^= 0x40;
        File.WriteAllBytes(Path.Combine(entry, "model.onnx"), model);
        Assert.IsNull(cache.TryGet(Key("a")));
        Assert.AreEqual(entry, cache.LastCorruptEntry);
    }

    [TestMethod]
    public void AFileTheManifestDoesNotListMakesTheEntryCorrupt()
    {
        var cache = new CompressionCache(_dir);
        cache.Put(Key("a"), d => Fill(d, 100));
        string entry = cache.TryGet(Key("a"))!;
        File.WriteAllBytes(Path.Combine(entry, "model.onnx.data"), [1, 2, 3]);
        Assert.IsNull(cache.TryGet(Key("a")));
    }

    [TestMethod]
    public void ADeletedManifestIsRepairedByTheNextStore()
    {
        var cache = new CompressionCache(_dir);
        cache.Put(Key("a"), d => Fill(d, 100));
        string entry = cache.TryGet(Key("a"))!;
        File.Delete(Path.Combine(entry, "manifest.sha256"));
        Assert.IsNull(cache.TryGet(Key("a")));
        Assert.AreEqual(entry, cache.LastCorruptEntry, "an entry folder without a manifest is damage, not a write in progress");
        cache.Put(Key("a"), d => Fill(d, 100));
        Assert.IsNotNull(cache.TryGet(Key("a")));
        Assert.IsTrue(File.Exists(Path.Combine(entry, "manifest.sha256")));
    }

    [TestMethod]
    public void AManifestNamingAPathOutsideTheEntryIsTreatedAsCorrupt()
    {
        var cache = new CompressionCache(_dir);
        cache.Put(Key("a"), d => Fill(d, 10));
        string entry = cache.TryGet(Key("a"))!;
        File.WriteAllText(Path.Combine(entry, "manifest.sha256"), new string('0', 64) + " ../../outside\n");
        Assert.IsNull(cache.TryGet(Key("a")));
    }

    [TestMethod]
    public void TrimDeletesLeastRecentlyUsedEntriesFirst()
    {
        var cache = new CompressionCache(_dir);
        foreach (string k in new[] { "old", "mid", "new" })
        {
            cache.Put(Key(k), d => Fill(d, 1000));
        }
        string root = cache.Root;
        // Ages: "old" used longest ago, then "mid"; a hit on "old" makes it the most recent.
        Directory.SetLastWriteTimeUtc(cache.TryGet(Key("old"))!, DateTime.UtcNow.AddHours(-3));
        Directory.SetLastWriteTimeUtc(cache.TryGet(Key("mid"))!, DateTime.UtcNow.AddHours(-2));
        Directory.SetLastWriteTimeUtc(Path.Combine(root, Key("new")[..2], Key("new")), DateTime.UtcNow.AddHours(-1));
        Directory.SetLastWriteTimeUtc(Path.Combine(root, Key("old")[..2], Key("old")), DateTime.UtcNow.AddHours(-3));
        Directory.SetLastWriteTimeUtc(Path.Combine(root, Key("mid")[..2], Key("mid")), DateTime.UtcNow.AddHours(-2));

        long one = cache.SizeBytes() / 3;
        Assert.AreEqual(1, cache.Trim(2 * one));
        Assert.IsNull(cache.TryGet(Key("old")), "the least recently used entry goes first");
        Assert.IsNotNull(cache.TryGet(Key("mid")));
        Assert.IsNotNull(cache.TryGet(Key("new")));
        Assert.AreEqual(2, cache.Clear());
        Assert.AreEqual(0, cache.SizeBytes());
    }

    [TestMethod]
    public void ConcurrentWritersOfOneKeyLeaveOneCompleteEntry()
    {
        var cache = new CompressionCache(_dir);
        Parallel.For(0, 8, i => cache.Put(Key("same"), d => Fill(d, 50_000)));
        Assert.IsNotNull(cache.TryGet(Key("same")));
        string shard = Path.Combine(cache.Root, Key("same")[..2]);
        Assert.AreEqual(1, Directory.GetDirectories(shard).Length, "no temporary folders may be left behind");
    }
}
