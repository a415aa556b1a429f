namespace CompressOnBuild.Cli;

internal static class Help
{
    private const string Header = """
        CompressOnBuild worker: prunes, quantizes and validates ONNX models (the same options as the CompressModel item).

        Usage:
          compress <model.onnx> --output <out.onnx> [item options] [<model2.onnx> --output <out2.onnx> ...] [global options]
          cache --cache-dir <dir> [--clean]  print the cache's size, or empty it
          inspect <model.onnx> [--json] [--optimized]   (--optimized: the graph ONNX Runtime runs after its optimizations,
                                                        and any DequantizeLinear still feeding a float Conv/MatMul/Gemm)
          @file.rsp            one argument per line ('#' starts a comment line)


        """;

    /// <summary>The --help text; the option sections are rendered from the option table.</summary>
    public static string Text { get; } = Header + OptionTable.HelpSections() + "\nExit codes: 0 ok, 1 budget broken, 2 bad input or usage, 3 internal error.";
}
