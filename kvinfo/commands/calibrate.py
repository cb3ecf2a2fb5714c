"""Fit the per-(layer, kind, head) transform bases of a KV dump for the ``klt`` codec.

For every layer, KV head and kind (``keys``, ``values`` and ``keys_pre_rope`` -- the last from
the dump's pre-RoPE keys when it was captured with ``--pre-rope``, else by undoing a plain
RoPE with the dump's ``rope_theta``), the mean, the eigenvectors and the eigenvalues of the
covariance are written to a small ``.npz`` file (format in ``docs/codecs.md``, section klt).
Name the file in a codec config, ``{"id": "klt", "basis": "BASIS", "snr_db": 20}``, to code
other dumps of the same model with it; ``kvinfo bench`` refuses a basis on the dump (the
tokens) it was fitted on. The file is written to a temporary name and renamed on success.
"""

from __future__ import annotations

__all__ = ["add_arguments", "run"]


def add_arguments(p) -> None:
    p.add_argument("dump", help="a kvdump (.h5) to calibrate on")
    p.add_argument("-o", "--output", required=True, metavar="BASIS",
                   help="calibration file to write (.npz)")


def run(args) -> int:
    from .._paths import check_output_file, output_error
    from ..codecs.quant.klt import fit_klt_bases, save_klt_bases
    from ..dumps import open_dump

    out = check_output_file(args.output, "-o")
    with open_dump(args.dump) as d:
        if str(out.resolve()) == str(d.path.resolve()):
            from ..errors import OutputPathError

            raise OutputPathError(f"-o {out}: is the input dump; choose another file name")
        bases = fit_klt_bases(d)
    try:
        save_klt_bases(bases, out)
    except OSError as exc:
        raise output_error(out, exc, "-o") from None
    n = bases.meta["num_tokens"]
    print(
        f"wrote {out}: bases for {', '.join(bases.kinds)}, {bases.eigenvectors['keys'].shape[0]} "
        f"layers x {bases.eigenvectors['keys'].shape[1]} kv heads x "
        f"{bases.eigenvectors['keys'].shape[2]}, fitted on {n} tokens "
        f"(measurement: {bases.nbytes} bytes of arrays)"
    )
    return 0
