"""Property-based tests of the manifest parser and the collations (hypothesis draws the inputs).

Manifests: any text either parses, with one entry per data line, the paths as written and
sizes that are integers >= 0, or raises a ValueError naming the file and the first bad
line; never another exception. Whatever `write_manifest` accepts reads back unchanged.

Collation: shapes, crop to the shortest (pretraining) or pad to the longest (fine-tuning),
the padding mask is exactly the padded positions, every row is a window of its item, and
targets are padded with the pad index with the right lengths.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wav2vec2.data import crop_to_shortest, pad_to_longest, read_manifest, write_manifest
from wav2vec2.data.labels import PAD, collate_targets

# No deadline: two shared CPU cores make single examples slow at random. No example
# database: nothing is written into the repository. tmp_path is shared by the examples of
# one test, which is fine: each example overwrites the same file.
SETTINGS = settings(deadline=None, max_examples=50, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Characters that make manifests interesting: separators, line breaks of every kind,
# digits (also non-ASCII ones, which int() accepts), signs, spaces, non-ASCII letters.
_TRICKY = "\t\n\r 0123456789-+_.e/aé日\u0663\u00a0\x0b\x0c\x1c\x85\u2028\ufeff"
# Any Unicode scalar value except surrogates, which UTF-8 cannot encode.
_ANY_CHAR = st.characters(blacklist_categories=("Cs",))
_TEXT = st.text(st.one_of(st.sampled_from(_TRICKY), _ANY_CHAR), max_size=80)
# A file name or root as written in a manifest: anything without a tab or line break.
_NAME = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"), min_size=1, max_size=20)


def _universal_lines(text: str) -> list[str]:
    """Lines as Python's universal newlines (and fairseq, which reads with them) split them."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _first_bad_line(lines: list[str]) -> int | None:
    """1-based number of the first malformed line (0 for an empty file), None if all parse.

    The format, stated independently: line 1 a root without tabs, then exactly one tab
    per line between a non-empty path and an integer >= 0; trailing blank lines ignored.
    """
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    if not lines:
        return 0
    if not lines[0].strip() or "\t" in lines[0].strip():
        return 1
    for lineno, line in enumerate(lines[1:], start=2):
        path, tab, size = line.partition("\t")
        if not path or not tab or "\t" in size:
            return lineno
        try:
            if int(size) < 0:
                return lineno
        except ValueError:
            return lineno
    return None


def _check_parse(path, lines: list[str]) -> None:
    expected_bad = _first_bad_line(lines)
    try:
        root, entries = read_manifest(path)
    except ValueError as e:
        msg = str(e)
        assert msg.startswith(f"{path}:"), msg
        if expected_bad == 0:
            assert "empty manifest" in msg
        else:
            assert re.match(re.escape(f"{path}:{expected_bad}:"), msg), (expected_bad, msg)
        return
    assert expected_bad is None, f"line {expected_bad} should have been refused"
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    assert root == lines[0].strip()
    assert len(entries) == len(lines) - 1  # one entry per data line
    for (rel, n), line in zip(entries, lines[1:]):
        assert type(n) is int and n >= 0
        assert line == f"{rel}\t{line.partition(chr(9))[2]}" and int(line.partition("\t")[2]) == n


@SETTINGS
@given(_TEXT)
def test_any_text_parses_or_names_the_first_bad_line(tmp_path, text):
    path = tmp_path / "m.tsv"
    path.write_text(text, encoding="utf-8", newline="")  # byte for byte, no newline translation
    _check_parse(path, _universal_lines(text.removeprefix("\ufeff")))


@SETTINGS
@given(root=_NAME.filter(lambda r: not r.startswith("\ufeff")),
       entries=st.lists(st.tuples(_NAME, st.integers(0, 2**40)), max_size=6),
       eol=st.sampled_from(["\n", "\r\n", "\r"]), trailing=st.sampled_from(["", "\n", "\n\n", " \n\t"]),
       bom=st.booleans(), noise=st.one_of(st.none(), st.tuples(st.integers(0, 6), _TEXT)))
def test_well_formed_manifests_parse_exactly_and_damaged_ones_name_the_line(
        tmp_path, root, entries, eol, trailing, bom, noise):
    """Manifests as tools write them (any line ending, a byte order mark, trailing blank
    lines), sometimes with one line replaced by random text."""
    lines = [root] + [f"{rel}\t{n}" for rel, n in entries]
    if noise is not None:
        lines[min(noise[0], len(lines) - 1)] = noise[1].replace("\r", "").replace("\n", "")
    text = eol.join(lines) + trailing
    path = tmp_path / "m.tsv"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8", newline="")
    _check_parse(path, _universal_lines(text))
    if noise is None and root.strip():
        assert read_manifest(path) == (root.strip(), entries)


@SETTINGS
@given(st.text(_ANY_CHAR, max_size=40), st.binary(max_size=20))
def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path, prefix, suffix):
    path = tmp_path / "m.tsv"
    path.write_bytes(b"/root\n" + prefix.encode() + b"\xff" + suffix)  # 0xff never occurs in UTF-8
    with pytest.raises(ValueError) as info:
        read_manifest(path)
    line = len(_universal_lines("/root\n" + prefix))
    assert str(info.value).startswith(f"{path}:{line}: not UTF-8"), (line, str(info.value))


@SETTINGS
@given(root=st.text(max_size=12), entries=st.lists(st.tuples(st.text(max_size=8), st.integers(-3, 10**6)), max_size=5))
def test_write_manifest_refuses_what_cannot_be_read_back(tmp_path, root, entries):
    path = tmp_path / "w.tsv"
    path.unlink(missing_ok=True)
    try:
        write_manifest(path, root, entries)
    except ValueError as e:
        assert str(e).startswith(f"{path}:")
        assert not path.exists() and not (tmp_path / "w.tsv.tmp").exists()  # nothing half-written
        return
    assert read_manifest(path) == (root, entries)


# --- collation

def _items(lens: list[int], seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    # Distinct values, so a window of an item is found at one offset only.
    return [{"id": i, "source": torch.randperm(n, generator=g).float() + 1000 * i} for i, n in enumerate(lens)]


def _offset_in(window: torch.Tensor, full: torch.Tensor) -> int:
    """Where `window` sits in `full` (values are distinct), asserting it is a contiguous slice."""
    start = int(torch.nonzero(full == window[0])[0])
    assert torch.equal(full[start : start + len(window)], window)
    return start


_LENS = st.lists(st.integers(1, 400), min_size=1, max_size=6)
_CAP = st.one_of(st.none(), st.integers(1, 500))


@SETTINGS
@given(_LENS, _CAP, st.integers(0, 2**32 - 1))
def test_crop_to_shortest_keeps_a_window_of_every_item_as_long_as_the_shortest(lens, cap, seed):
    items = _items(lens, seed)
    out = crop_to_shortest(items, max_sample_size=cap, generator=torch.Generator().manual_seed(seed))
    target = min(lens) if cap is None else min(min(lens), cap)
    assert set(out) == {"id", "source"}
    assert out["source"].shape == (len(lens), target) and out["source"].dtype == torch.float32
    assert out["id"].tolist() == list(range(len(lens))) and out["id"].dtype == torch.long
    for row, it in zip(out["source"], items):
        _offset_in(row, it["source"])
    again = crop_to_shortest(items, max_sample_size=cap, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(out["source"], again["source"])


@SETTINGS
@given(_LENS, _CAP, st.integers(0, 2**32 - 1))
def test_pad_to_longest_pads_exactly_the_missing_samples(lens, cap, seed):
    items = _items(lens, seed)
    out = pad_to_longest(items, max_sample_size=cap, generator=torch.Generator().manual_seed(seed))
    target = max(lens) if cap is None else min(max(lens), cap)
    assert out["source"].shape == (len(lens), target) and out["source"].dtype == torch.float32
    assert out["id"].tolist() == list(range(len(lens)))
    kept = [min(n, target) for n in lens]
    if all(k == target for k in kept):
        assert "padding_mask" not in out  # nothing padded: the model skips its padding path
        padding_mask = torch.zeros(len(lens), target, dtype=torch.bool)
    else:
        padding_mask = out["padding_mask"]
        assert padding_mask.shape == (len(lens), target) and padding_mask.dtype == torch.bool
    for b, (it, k) in enumerate(zip(items, kept)):
        assert torch.equal(padding_mask[b], torch.arange(target) >= k)  # True exactly past the item
        assert (out["source"][b, k:] == 0).all()
        start = _offset_in(out["source"][b, :k], it["source"])
        if lens[b] <= target:
            assert start == 0  # short items are kept whole


@SETTINGS
@given(st.lists(st.lists(st.integers(0, 40), max_size=12), min_size=1, max_size=6), st.integers(0, 5))
def test_collate_targets_pads_with_the_pad_index(targets, pad_index):
    tensors = [torch.tensor(t, dtype=torch.long) for t in targets]
    padded, lengths = collate_targets(tensors, pad_index=pad_index)
    assert padded.dtype == lengths.dtype == torch.long
    assert padded.shape == (len(targets), max(len(t) for t in targets))
    assert lengths.tolist() == [len(t) for t in targets]
    for row, t in zip(padded, targets):
        assert row[: len(t)].tolist() == t
        assert (row[len(t) :] == pad_index).all()


def test_collate_targets_default_pad_is_the_dictionary_pad():
    padded, _ = collate_targets([torch.tensor([5, 6, 7]), torch.tensor([5])])
    assert padded[1, 1:].tolist() == [PAD, PAD]
