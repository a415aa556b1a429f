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

    /// <summary>
    /// The exception for <paramref name="code"/> with <see cref="File"/> set to <paramref name="file"/>: the same
    /// code, message and exit code as the constructor, in one call instead of a constructor plus initialiser.
    /// </summary>
    public static CompressException ForFile(string? file, string code, params object?[] args) =>
        new(code, args) { File = file };

    /// <summary>As <see cref="ForFile(string?, string, object?[])"/>, wrapping the exception that caused it.</summary>
    public static CompressException ForFile(string? file, Exception inner, string code, params object?[] args) =>
        new(inner, code, args) { File = file };

    public string Code { get; }

    public IReadOnlyList<object?> Arguments { get; }

    /// <summary>The file the diagnostic is about (model, data file), when known.</summary>
    public string? File { get; init; }

    /// <summary>0 ok, 1 budget broken, 2 bad input or usage, 3 internal.</summary>
    public int ExitCode => DiagnosticCodes.ExitCodeFor(Code);
}
