"""KV dumps: the HDF5 format (``docs/dump-format.md``), its reader, writer and capture.

Public API: :func:`open_dump`, :class:`Dump`, :class:`DumpWriter`,
:func:`write_synthetic_dump`, ``FORMAT_VERSION``, :func:`parse_index_list` and
:func:`check_index_list` (index lists such as ``"0-3,7"``), :func:`default_prompts` (the
built-in prompt set), :class:`Selection` (layers, kinds, heads and sequences, validated
once against a dump). Capture from a model lives in
:mod:`kvinfo.dumps.capture` (it imports torch, so it is not imported here).
"""

from ._dumpset import DumpSet, expand_dump_paths, open_dumps
from ._format import FORMAT, FORMAT_VERSION, KINDS
from ._prompts import default_prompts
from ._reader import Dump, open_dump
from ._select import ResolvedSelection, Selection, check_index_list, parse_index_list
from ._synthetic import write_synthetic_dump
from ._writer import DumpWriter
from ._zarr import ZarrDump, store_bytes

__all__ = [
    "open_dump",
    "Dump",
    "ZarrDump",
    "store_bytes",
    "DumpSet",
    "open_dumps",
    "expand_dump_paths",
    "DumpWriter",
    "write_synthetic_dump",
    "FORMAT",
    "FORMAT_VERSION",
    "KINDS",
    "parse_index_list",
    "check_index_list",
    "default_prompts",
    "Selection",
    "ResolvedSelection",
]
