"""Describe a KV dump: model, shapes, dtype, token and sequence counts, sizes."""

from __future__ import annotations

import json


def add_arguments(p) -> None:
    p.add_argument("dump", help="a kvdump (.h5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def run(args) -> int:
    from ..dumps import open_dump

    with open_dump(args.dump) as d:
        info = d.describe()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(
        f"file            {info['path']}  ({_size(info['file_bytes'])}, "
        f"format v{info['format_version']})"
    )
    print(f"model           {info['model']}")
    print(f"weights         {info['weights_checksum']}")
    print(f"dtype           {info['dtype']}")
    print(
        f"geometry        {info['num_layers']} layers, {info['num_heads']} query heads, "
        f"{info['num_kv_heads']} kv heads, head_dim {info['head_dim']}"
    )
    print(f"tokens          {info['num_tokens']} in {info['num_sequences']} sequences")
    for kind in info["kinds"]:
        shape = " x ".join(map(str, info["shapes"][kind]))
        print(f"{kind:<15} ({shape})  {_size(info['tensor_bytes'][kind])}")
    if info.get("rope"):
        print(f"rope            {json.dumps(info['rope'])}")
    print(f"created         {info['created']} by kvinfo {info['kvinfo_version']}")
    return 0
