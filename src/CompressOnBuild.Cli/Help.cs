namespace CompressOnBuild.Cli;

internal static class Help
{
    public const string Text = """
        CompressOnBuild worker: prunes, quantizes and validates ONNX models (the same options as the CompressModel item).

        Usage:
          compress <model.onnx> --output <out.onnx> [item options] [<model2.onnx> --output <out2.onnx> ...] [global options]
          cache --cache-dir <dir> [--clean]  print the cache's size, or empty it
          inspect <model.onnx> [--json] [--optimized]   (--optimized: the graph ONNX Runtime runs after its optimizations,
                                                        and any DequantizeLinear still feeding a float Conv/MatMul/Gemm)
          @file.rsp            one argument per line ('#' starts a comment line)

        Item options (metadata name in brackets):
          --output <path>                   [computed by the build] where the compressed model goes (written atomically)
          --report <path>                   report.json with every metric and budget, plus .md and .html beside it
          --quantization <scheme>           [Quantization] None | Int8 (static with calibration data, else dynamic) | Int8Dynamic
                                            | Int8Static | Float16 | Int4Weights[:<block>][:sym|asym][:rtn|gptq]
          --calibration-data <path>         [CalibrationData] representative inputs for static int8 activation ranges
          --calibration-samples <n>         [CalibrationSamples] default 256
          --calibration-method <m>          [CalibrationMethod] MinMax (default) | Percentile[:99.99] | Mse | Entropy
          --activation-type UInt8|Int8      [ActivationType] static int8 activations: UInt8 asymmetric (default) | Int8 symmetric
          --per-channel true|false          [PerChannel] static int8 weight scales per output channel (default true) or per tensor
          --pruning <method>                [Pruning] None | Magnitude:<s> | Global:<s> | Sensitivity:<s> | NofM:<n>:<m>
                                            | Channels:<f>[:norefit]
                                            (before quantization; ranked/refit with --calibration-data when given)
          --validation-data <path>          [ValidationData] test_data_set_* folders / input_*.pb, .npy/.npz, IDX, image folders
          --labels <path>                   [Labels] IDX labels for IDX images
          --preprocessing <spec>            [Preprocessing] "layout=NCHW;scale=0.003921569;mean=..;std=.."
          --tokenizer <vocab.txt|tokenizer.json> [Tokenizer] WordPiece tokenizer for .txt data (one sentence per line)
          --sequence-length <n>             [SequenceLength] tokens per text sample (default: the model's fixed length, else 128)
          --validation-samples <n>          [ValidationSamples] deterministic subset
          --max-accuracy-drop <points>      [MaxAccuracyDrop] top-1 points vs labels
          --min-agreement <0..1>            [MinAgreement] top-1 agreement with the original
          --min-cosine <-1..1>              [MinCosine] mean cosine similarity of outputs
          --max-relative-error <x>          [MaxRelativeError] mean relative L2 error per output
          --max-absolute-error <x>          [MaxAbsoluteError] largest absolute output difference
          --min-compression-ratio <x>       [MinCompressionRatio] original bytes / compressed bytes
          --max-size-kb <n>                 [MaxSizeKB] compressed size in KiB
          --max-latency-ratio <x>           [MaxLatencyRatio] compressed / original median latency, same run
          --nodes-to-exclude <a;b>          [NodesToExclude] nodes that stay float
          --tune true|false                 [Tune] back off layer by layer (most harmful first) until the budgets hold
          --tune-time-budget-seconds <s>    [TuneTimeBudgetSeconds] default 60
          --op-types-to-quantize <a;b>      [OpTypesToQuantize] only these op types are quantized (e.g. Conv;Gemm)

        Global options:
          --cache-dir <dir>                 shared content-addressed result cache
          --cache-max-mb <n>                trim the cache to this size after the run, least recently used first (default 4096)
          --onnxruntime-assets <file>       the app's obj/project.assets.json: validate with the app's ONNX Runtime
          --nuget-packages <dir>            NuGet global packages folder (fallback ONNX Runtime)
          --budget-severity Error|Warning   broken budgets fail (default) or warn
          --max-parallelism <n>             models compressed at once (default 1)
          --summary-markdown <file>         one Markdown table for all models (e.g. for $GITHUB_STEP_SUMMARY)

        Exit codes: 0 ok, 1 budget broken, 2 bad input or usage, 3 internal error.
        """;
}
