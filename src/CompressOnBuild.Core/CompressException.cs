namespace CompressOnBuild.Core;

/// <summary>
/// A failure with a CMPR code: bad input, a broken budget, a failed run. The message is the formatted
/// resx text (it starts with the code); <see cref="File"/> is the file the diagnostic points at.
/// </summary>
public sealed class CompressException : Exception
{
    public CompressException(string code, params object?[] args)
        : base(DiagnosticCodes.Format(code, args))
    {
        Code = code;
        Arguments = args;
    }

    public CompressException(Exception inner, string code, params object?[] args)
        : base(DiagnosticCodes.Format(code, args), inner)
    {
        Code = code;
        Arguments = args;
    }

    public string Code { get; }

    public IReadOnlyList<object?> Arguments { get; }

    /// <summary>The file the diagnostic is about (model, data file), when known.</summary>
    public string? File { get; init; }

    /// <summary>0 ok, 1 budget broken, 2 bad input or usage, 3 internal.</summary>
    public int ExitCode => DiagnosticCodes.ExitCodeFor(Code);
}
