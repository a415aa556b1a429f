using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using CompressOnBuild.Core.Onnx;
using CompressOnBuild.Onnx;

namespace CompressOnBuild.Cli;

/// <summary><c>inspect &lt;model.onnx&gt; [--json]</c>: IR and opsets, inputs/outputs, operator histogram, initializer bytes by type, external data.</summary>
internal static class Inspect
{
    public static int Run(List<string> args, TextWriter output)
    {
        bool json = false;
        bool optimized = false;
        string? onnxRuntimeAssets = null;
        string? nugetPackages = null;
        string? path = null;
        foreach (string a in args)
        {
            if (a == "--json")
            {
                json = true;
            }
            else if (a == "--optimized")
            {
                optimized = true;
            }
            else if (a.StartsWith("--onnxruntime-assets=", StringComparison.Ordinal))
            {
                onnxRuntimeAssets = a["--onnxruntime-assets=".Length..];
            }
            else if (a.StartsWith("--nuget-packages=", StringComparison.Ordinal))
            {
                nugetPackages = a["--nuget-packages=".Length..];
            }
            else if (a.StartsWith("--", StringComparison.Ordinal))
            {
                throw CommandLine.Usage($"unknown option '{a}' for inspect");
            }
            else if (path == null)
            {
                path = a;
            }
            else
            {
                throw CommandLine.Usage("inspect takes one model path");
            }
        }
        if (path == null)
        {
            throw CommandLine.Usage("inspect <model.onnx> [--json]");
        }

        // Read once without resolving external data to report where it lives, then load fully (which checks it).
        ModelProto raw = ModelIO.Parse(File.Exists(path) ? File.ReadAllBytes(path) : throw new Core.CompressException(DiagnosticCodes.ModelNotFound, path) { File = path }, path);
        var external = ModelWalker.Tensors(raw).Where(TensorUtil.IsExternal)
            .GroupBy(t => t.ExternalData.FirstOrDefault(kv => kv.Key == "location")?.Value ?? "?")
            .ToDictionary(g => g.Key, g => g.Count(), StringComparer.Ordinal);
        ModelProto model = ModelIO.Load(path);
        // The same checks as compress: a negative or overflowing dimension is CMPR0103 here too, not a crash while counting bytes.
        ModelChecker.Validate(model, path);

        JsonObject info = Describe(model, path, external);
        if (optimized)
        {
            Validation.OrtLoader.Initialize(new Validation.OrtLoaderOptions { AssetsFile = onnxRuntimeAssets, PackagesRoot = nugetPackages });
            info["optimized"] = Optimized.Describe(path);
        }
        if (json)
        {
            output.WriteLine(info.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }
        else
        {
            WriteText(info, output);
        }
        return 0;
    }

    public static JsonObject Describe(ModelProto model, string path, IReadOnlyDictionary<string, int> external)
    {
        var ops = new SortedDictionary<string, int>(StringComparer.Ordinal);
        int subgraphs = 0;
        foreach ((GraphProto g, int depth) in ModelWalker.Graphs(model))
        {
            if (depth > 0)
            {
                subgraphs++;
            }
            foreach (NodeProto n in g.Node)
            {
                string key = string.IsNullOrEmpty(n.Domain) || n.Domain == "ai.onnx" ? n.OpType : n.Domain + ":" + n.OpType;
                ops[key] = ops.GetValueOrDefault(key) + 1;
            }
        }
        var byType = new SortedDictionary<string, (int Count, long Bytes, long Elements)>(StringComparer.Ordinal);
        foreach (TensorProto t in model.Graph.Initializer.Concat(model.Graph.SparseInitializer.Select(s => s.Values)))
        {
            string type = TensorUtil.DataTypeName(t.DataType);
            long bytes = t.HasRawData ? t.RawData.Length : Math.Max(0, TensorUtil.ExpectedRawByteLength(t));
            var cur = byType.GetValueOrDefault(type);
            byType[type] = (cur.Count + 1, cur.Bytes + bytes, cur.Elements + TensorUtil.ElementCount(t));
        }
        static JsonArray Values(IEnumerable<ValueInfoProto> values) => new(values.Select(v => (JsonNode)new JsonObject
        {
            ["name"] = v.Name,
            ["type"] = v.Type?.TensorType is { } tt ? TensorUtil.DataTypeName(tt.ElemType) : "non-tensor",
            ["shape"] = v.Type?.TensorType?.Shape is { } sh
                ? "[" + string.Join(",", sh.Dim.Select(d => d.HasDimValue ? d.DimValue.ToString(CultureInfo.InvariantCulture) : (string.IsNullOrEmpty(d.DimParam) ? "?" : d.DimParam))) + "]"
                : "?",
        }).ToArray());
        var initializerNames = new HashSet<string>(model.Graph.Initializer.Select(t => t.Name), StringComparer.Ordinal);
        return new JsonObject
        {
            ["path"] = path,
            ["fileBytes"] = new FileInfo(path).Length,
            ["irVersion"] = model.IrVersion,
            ["producer"] = (model.ProducerName + " " + model.ProducerVersion).Trim(),
            ["opsets"] = new JsonObject(model.OpsetImport.Select(o => KeyValuePair.Create(o.Domain.Length == 0 ? "ai.onnx" : o.Domain, (JsonNode?)o.Version))),
            ["inputs"] = Values(model.Graph.Input.Where(i => !initializerNames.Contains(i.Name))),
            ["outputs"] = Values(model.Graph.Output),
            ["nodes"] = ops.Values.Sum(),
            ["subgraphs"] = subgraphs,
            ["functions"] = model.Functions.Count,
            ["operators"] = new JsonObject(ops.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
            ["initializers"] = new JsonObject(byType.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)new JsonObject
            {
                ["count"] = kv.Value.Count,
                ["elements"] = kv.Value.Elements,
                ["bytes"] = kv.Value.Bytes,
            }))),
            ["externalData"] = new JsonObject(external.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
            ["metadata"] = new JsonObject(model.MetadataProps.GroupBy(p => p.Key).Select(g => KeyValuePair.Create(g.Key, (JsonNode?)g.Last().Value))),
        };
    }

    private static void WriteText(JsonObject info, TextWriter o)
    {
        var ci = CultureInfo.InvariantCulture;
        o.WriteLine($"{info["path"]}  ({info["fileBytes"]} bytes, IR {info["irVersion"]}, producer '{info["producer"]}')");
        o.WriteLine("opsets:       " + string.Join(", ", info["opsets"]!.AsObject().Select(kv => $"{kv.Key} {kv.Value}")));
        foreach (string section in new[] { "inputs", "outputs" })
        {
            foreach (JsonNode? v in info[section]!.AsArray())
            {
                o.WriteLine($"{section[..^1],-13}{v!["name"]} {v["type"]} {v["shape"]}");
            }
        }
        o.WriteLine($"nodes:        {info["nodes"]} ({info["subgraphs"]} subgraphs, {info["functions"]} functions)");
        foreach ((string op, JsonNode? count) in info["operators"]!.AsObject().OrderByDescending(kv => kv.Value!.GetValue<int>()))
        {
            o.WriteLine(string.Format(ci, "  {0,-32}{1,6}", op, count));
        }
        o.WriteLine("initializers:");
        foreach ((string type, JsonNode? v) in info["initializers"]!.AsObject())
        {
            o.WriteLine(string.Format(ci, "  {0,-12}{1,6} tensors {2,12} elements {3,12} bytes", type, v!["count"], v["elements"], v["bytes"]));
        }
        var ext = info["externalData"]!.AsObject();
        o.WriteLine(ext.Count == 0 ? "external data: none" : "external data: " + string.Join(", ", ext.Select(kv => $"{kv.Key} ({kv.Value} tensors)")));
        foreach ((string k, JsonNode? v) in info["metadata"]!.AsObject())
        {
            o.WriteLine($"metadata:     {k} = {v}");
        }
        if (info["optimized"] is JsonObject opt)
        {
            o.WriteLine($"after ONNX Runtime {opt["onnxRuntime"]} optimizations (level all, CPU): {opt["nodes"]} nodes");
            foreach ((string op, JsonNode? count) in opt["operators"]!.AsObject().OrderByDescending(kv => kv.Value!.GetValue<int>()))
            {
                o.WriteLine(string.Format(ci, "  {0,-32}{1,6}", op, count));
            }
            JsonArray fallbacks = opt["floatFallbacks"]!.AsArray();
            o.WriteLine(fallbacks.Count == 0
                ? "float fallbacks: none (no DequantizeLinear feeds a float Conv/MatMul/Gemm)"
                : "float fallbacks: " + string.Join(", ", fallbacks.Select(f => f!.GetValue<string>())));
        }
    }
}
