"""The table machinery the fairseq and transformers mappings share: state-dict keys renamed
through a table of prefixes, and config fields read and written by dotted name. Each format
writes its tables once and uses them in both directions.

A table row is (source prefix, target prefix), where `#` stands for a layer number that is
carried over: ("encoder.layers.#.attn.", "encoder.layer.#.attention.") renames
"encoder.layers.3.attn.k_proj.weight" to "encoder.layer.3.attention.k_proj.weight".
"""

from __future__ import annotations

import re
from typing import Any

Table = list[tuple[re.Pattern[str], str]]


def compile_table(rows: list[tuple[str, str]]) -> Table:
    """Rows (source prefix, target prefix) as matchers, in order: the first match wins."""
    return [(re.compile("^" + re.escape(source).replace(r"\#", r"(\d+)")), target) for source, target in rows]


def rename(key: str, table: Table, *, where: str) -> str:
    """`key` through the first row of `table` whose prefix it starts with; a key no row
    matches is an error pointing at the table (`where`)."""
    for pattern, target in table:
        m = pattern.match(key)
        if m:
            for index in m.groups():
                target = target.replace("#", index, 1)
            return target + key[m.end():]
    raise ValueError(f"no mapping for parameter {key!r} (see {where})")


def get_field(cfg: Any, dotted: str) -> Any:
    """`cfg.a.b` for dotted "a.b" (config field tables of the format mappings)."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def set_field(cfg: Any, dotted: str, value: Any) -> None:
    """`cfg.a.b = value` for dotted "a.b"."""
    *path, leaf = dotted.split(".")
    for part in path:
        cfg = getattr(cfg, part)
    setattr(cfg, leaf, value)
