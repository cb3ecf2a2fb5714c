"""What the analyze, bench and demo commands share: the selection and kNN options.

One place adds the options to a parser (:func:`add_selection_arguments`,
:func:`add_knn_arguments`), one place turns them into library arguments
(:func:`selection_of`). A library error that names a parameter (``layers: 7 is out of
range``, ``knn_k must be ...``) is reported with the option's name (``--layers: ...``,
``--knn-k must be ...``) by :func:`kvinfo.cli.main`, the one place that maps them.
"""

from __future__ import annotations

__all__ = [
    "add_selection_arguments",
    "add_knn_arguments",
    "selection_of",
    "check_knn_args",
    "add_scale_arguments",
    "scale_options",
]


def add_selection_arguments(p, verb: str) -> None:
    """``--layers``, ``--kinds``, ``--heads`` and ``--sequences``."""
    p.add_argument("--layers", help=f"layers to {verb}, e.g. '0,3,10-12' (default: all)")
    p.add_argument(
        "--kinds", help="comma-separated kinds among keys,values,queries,keys_pre_rope "
        "(default: keys,values)"
    )
    p.add_argument(
        "--heads", help=f"heads to {verb}, e.g. '0-1' (query heads for queries; default: all)"
    )
    p.add_argument(
        "--sequences", help=f"sequences (prompts) to {verb}, e.g. '0,2' (default: all)"
    )


def selection_of(args):
    """The :class:`~kvinfo.dumps.Selection` of the parsed selection options (checked against
    the dump by the engine, once)."""
    from ..dumps import Selection

    return Selection(layers=args.layers, kinds=args.kinds, heads=args.heads,
                     sequences=args.sequences)


def add_knn_arguments(p, knn_samples: int = 2000, knn_help: str = "") -> None:
    """``--knn-samples``, ``--knn-k``, ``--seed`` and ``--pervector-snr-db``."""
    p.add_argument(
        "--knn-samples", type=int, default=knn_samples,
        help=f"vectors subsampled per slab for the kNN entropy estimate{knn_help} "
        f"(default {knn_samples})",
    )
    p.add_argument("--knn-k", type=int, default=4, help="kNN neighbour order (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kNN subsample and dither")
    p.add_argument(
        "--pervector-snr-db", type=float, default=20.0,
        help="SNR (dB) at which per-vector code lengths are computed (default 20)",
    )


def check_knn_args(args) -> None:
    """The library's check of the kNN options, its errors naming the options."""
    from ..analysis import check_knn_options

    check_knn_options(args.knn_samples, args.knn_k, args.pervector_snr_db)


def add_scale_arguments(p) -> None:
    """``--workers``, ``--scheduler`` and ``--skip-failed`` (several dumps, Dask)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run the slabs on a local Dask cluster of N single-threaded worker "
                   "processes (needs kvinfo[dask]; default: in this process)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the slabs on the Dask cluster at ADDRESS (tcp://host:8786); its "
                   "workers must see the dump paths")
    p.add_argument("--skip-failed", action="store_true",
                   help="with several dumps: drop a dump that cannot be read (warned) and "
                   "finish with the others; default: stop, writing nothing")


def scale_options(args) -> dict:
    """The dumps (globs expanded) and where to run: ``inputs``, ``dumps``, ``workers``,
    ``scheduler``, ``skip_failed`` and ``multi`` (several dumps, workers or a scheduler)."""
    from ..dumps import expand_dump_paths
    from ..errors import AnalysisInputError, DumpSetError

    if args.workers is not None and args.workers < 1:
        raise AnalysisInputError(f"--workers must be at least 1; got {args.workers}")
    raw = args.dump if isinstance(args.dump, list) else [args.dump]
    try:
        inputs = [str(p) for p in expand_dump_paths(raw)]
    except DumpSetError as exc:
        raise DumpSetError(f"dump: {exc}") from None
    multi = len(inputs) > 1 or args.workers is not None or args.scheduler is not None
    return {"inputs": inputs, "dumps": inputs, "workers": args.workers,
            "scheduler": args.scheduler, "skip_failed": bool(args.skip_failed),
            "multi": multi}


def family_from_args(args):
    """The codec family of ``--family`` with ``--family-config`` (JSON) as its base config."""
    import json

    from ..allocation import get_family
    from ..errors import AllocationError

    base = None
    if args.family_config:
        try:
            base = json.loads(args.family_config)
        except json.JSONDecodeError as exc:
            raise AllocationError(f"--family-config is not valid JSON: {exc.msg}") from None
    return get_family(args.family, base)
