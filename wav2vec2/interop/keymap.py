"""Renaming state-dict keys through a table of prefixes, shared by the fairseq and
transformers mappings.

A table row is (source prefix, target prefix), where `#` stands for a layer number that is
carried over: ("encoder.layers.#.attn.", "encoder.layer.#.attention.") renames
"encoder.layers.3.attn.k_proj.weight" to "encoder.layer.3.attention.k_proj.weight".
"""

from __future__ import annotations

import re

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
