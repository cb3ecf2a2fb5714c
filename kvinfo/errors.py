"""Exception classes shared by every layer of kvinfo.

Every error that bad input can cause subclasses :class:`KvinfoError`, which is a
:class:`ValueError`. The command line catches :class:`KvinfoError` and prints its
message as one line with exit status 2, so messages must be one line and say what
was expected and what was found.
"""

import re

__all__ = [
    "KvinfoError",
    "DumpFormatError",
    "ModelNotFoundError",
    "CaptureInputError",
    "EvalInputError",
    "UnknownCodecError",
    "CodecConfigError",
    "CorruptStreamError",
    "ModelMismatchError",
    "AnalysisInputError",
    "SelectionError",
    "ResultsSchemaError",
    "OutputPathError",
    "CudaUnavailableError",
    "StorageError",
    "DumpSetError",
]


class KvinfoError(ValueError):
    """Base class of every kvinfo error caused by bad input."""


class DumpFormatError(KvinfoError):
    """A file is missing, is not a kvinfo KV dump, or is damaged or of an unknown version."""


class ModelNotFoundError(KvinfoError):
    """A ``--model`` argument names no local folder, GGUF file or reachable hub model."""


class CaptureInputError(KvinfoError):
    """Prompts or capture options that cannot be used (empty prompt, bad prompts file...)."""


class EvalInputError(CaptureInputError):
    """The text or options given to :func:`kvinfo.evaluate.evaluate` cannot be used.

    A message made by :meth:`about` names ``evaluate``'s parameters (``prefix``,
    ``max_tokens``, ``block``); :meth:`renamed` gives the same error with other names for
    them, which is how the command line reports its flags (``--prefix``, or
    ``--eval-prefix`` for ``kvinfo bench``).
    """

    #: the parameters of ``evaluate`` that a message may name
    PARAMETERS = ("codecs", "text", "prefix", "max_tokens", "block")

    def __init__(self, message: str, *, template: str | None = None, values=None):
        super().__init__(message)
        self.template = template
        self.values = dict(values or {})

    @classmethod
    def about(cls, template: str, **values) -> "EvalInputError":
        """An error whose ``template`` names parameters as ``{prefix}``, ``{max_tokens}``..."""
        return cls(template.format(**{p: p for p in cls.PARAMETERS}, **values),
                   template=template, values=values)

    def renamed(self, names) -> "EvalInputError":
        """This error with each parameter ``p`` called ``names.get(p, p)``."""
        if self.template is None:
            return self
        fields = {p: names.get(p, p) for p in self.PARAMETERS}
        return type(self)(self.template.format(**fields, **self.values))


class UnknownCodecError(KvinfoError):
    """A codec config names an id that is not registered."""


class CodecConfigError(KvinfoError):
    """A codec config has a bad parameter, or a codec got input it cannot encode."""


class CorruptStreamError(KvinfoError):
    """An encoded stream is damaged: truncated, altered, or not a kvinfo stream."""


class ModelMismatchError(KvinfoError):
    """A rematerializing stream (``kvinfo.remat``) was made with other model weights than
    the model given to decode it: its K and V would be silently wrong, so it is refused."""


class AnalysisInputError(KvinfoError):
    """Data given to an analysis function cannot be analysed (NaN, too few vectors...).

    A message that starts with a parameter's name (``knn_k must be ...``, ``layers: 7 is out
    of range``) can be re-worded for another caller by :meth:`renamed`, which is how the
    command line reports its flags (``--knn-k must be ...``).
    """

    def renamed(self, names) -> "AnalysisInputError":
        """This error with its leading parameter name ``p`` called ``names[p]`` (unchanged
        when the message does not start with one of ``names``)."""
        msg = str(self)
        m = re.match(r"[A-Za-z_][A-Za-z0-9_]*\b", msg)
        if m is None or m.group(0) not in names:
            return self
        return type(self)(names[m.group(0)] + msg[m.end():])


class SelectionError(AnalysisInputError):
    """A selection of layers, kinds, heads or sequences does not fit the dump (out of range,
    not present, empty, or not a list of integers and ranges).

    ``parameter`` names the library parameter (``"layers"``, ``"kinds"``, ``"heads"``,
    ``"sequences"``); the command line reports it as the matching ``--`` option.
    """

    def __init__(self, message: str, parameter: str | None = None):
        super().__init__(message if parameter is None else f"{parameter}: {message}")
        self.parameter = parameter
        self.detail = message

    def renamed(self, names) -> "SelectionError":
        """This error with its parameter called ``names[parameter]``."""
        if self.parameter is None or self.parameter not in names:
            return self
        return type(self)(self.detail, names[self.parameter])


class ResultsSchemaError(KvinfoError):
    """A results JSON document does not follow ``docs/results-schema.md``."""


class OutputPathError(KvinfoError):
    """An output path cannot be written: it is a folder where a file is wanted (or the
    reverse), its parent is a file, or its folder cannot be created or written."""


class CudaUnavailableError(KvinfoError):
    """``device="cuda"`` was asked for but no usable CUDA device (or simulator) is present."""


class StorageError(KvinfoError):
    """A zarr store or a conversion cannot be written or read (kvinfo.storage)."""


class DumpSetError(AnalysisInputError):
    """Several dumps cannot be combined (different models or geometries), or one of them
    failed to read; the message names the dump and the first mismatch."""
