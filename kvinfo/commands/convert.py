"""Convert a KV dump into a zarr v3 store compressed with any kvinfo codec.

Keys and values (and queries / pre-RoPE keys when captured) become zarr arrays chunked one
(layer, head) slab per chunk, compressed with the codec given by --codec (an entropy coder
such as rans codes each chunk's bytes exactly; lossless codes the floats exactly, field by
field; a lossy codec stores its reconstruction). kvinfo open_dump, analyze, bench and info
read the store like a dump. Prints the size on disk and the time taken. The input is never
overwritten, and a failed conversion leaves no complete-looking store (docs/storage.md).
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("dump", help="the kvdump to convert (.h5, or a converted .zarr store)")
    p.add_argument("output", help="the zarr store folder to write (OUT.zarr); an existing "
                   "kvinfo store there is replaced, anything else is refused")
    p.add_argument(
        "--codec", default='{"id": "rans"}', metavar="JSON",
        help='kvinfo codec config, e.g. \'{"id": "rans"}\' (default), \'{"id": "lossless"}\' '
        'or \'{"id": "uniform", "bits": 4}\'',
    )
    p.add_argument("--kinds", default=None,
                   help="tensor datasets to convert, comma list (default: all the dump has)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args) -> int:
    from ..storage.convert import check_convert_output, convert_dump, format_summary
    from .eval import parse_codec_args

    (codec,) = parse_codec_args([args.codec])
    check_convert_output(args.output, args.dump, "output")
    kinds = None if args.kinds is None else [k.strip() for k in args.kinds.split(",") if k.strip()]
    info = convert_dump(args.dump, args.output, codec, kinds=kinds,
                        progress=not args.no_progress)
    print(format_summary(info))
    return 0
