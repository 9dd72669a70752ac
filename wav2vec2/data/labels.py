"""Letter labels for CTC fine-tuning, in fairseq's layout and index convention.

Layout (fairseq's wav2vec 2.0 fine-tuning recipe; `wav2vec2/data/corpora/` writes it with
`letters`, `write_label_lines` and `Dictionary.from_label_lines` below):

    {split}.tsv     manifest: root dir, then `relpath<TAB>num_samples` per utterance
    {split}.ltr     one transcript per manifest entry, same order: letters separated by
                    spaces, `|` after every word ("H I | T H E R E |")
    {split}.wrd     optional, the same transcripts as words ("HI THERE")
    dict.ltr.txt    `SYMBOL COUNT` per line, most frequent first ("| 1234", "E 800")

Index convention: 0 `<blank>`, 1 `<pad>`, 2 `</s>`, 3 `<unk>`, then dict.ltr.txt's symbols
in file order from 4. fairseq's Dictionary has the same four specials at the same indices
(it calls index 0 `<s>`, and its CTC criterion uses index 0 as the blank), so the output
layer of a fairseq CTC checkpoint maps row for row onto this vocabulary.

Deliberate differences from fairseq: a transcript symbol missing from the dictionary is an
error, not `<unk>` (a silent `<unk>` target trains the model to emit `<unk>`); an empty
transcript is an error (CTC with an empty target only learns to emit blanks).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable

import torch

from wav2vec2.files import atomic_write

SPECIALS = ("<blank>", "<pad>", "</s>", "<unk>")  # indices 0..3
BLANK, PAD, EOS, UNK = 0, 1, 2, 3
WORD_BOUNDARY = "|"

# fairseq appends this flag to a dict line to allow redefining a symbol. We strip it but
# still reject duplicates: fairseq would give the symbol a second index, which we refuse
# to reproduce silently.
_OVERWRITE_FLAG = "#fairseq:overwrite"
# Skipped by string(): structure, not text. <unk> is kept so unknown output stays visible.
_NOT_TEXT = frozenset({BLANK, PAD, EOS})


class Dictionary:
    """Token vocabulary: the 4 specials, then dict.ltr.txt's symbols in file order.

    `symbols[i]` is the token of index i (specials included); `counts[i]` its count in
    dict.ltr.txt (0 for the specials, 1 when built from a bare symbol list).
    """

    def __init__(self, symbols: list[str], counts: list[int], *, where: str) -> None:
        """`symbols`/`counts` exclude the specials; `where` names the source in errors."""
        if not symbols:
            raise ValueError(f"{where}: the dictionary has no symbols")
        self.symbols: list[str] = list(SPECIALS) + list(symbols)
        self.counts: list[int] = [0] * len(SPECIALS) + list(counts)
        self._indices = {s: i for i, s in enumerate(SPECIALS)}
        for i, symbol in enumerate(symbols, start=len(SPECIALS)):
            _check_symbol(symbol, self._indices, where=f"{where} (symbol {i - len(SPECIALS) + 1})")
            self._indices[symbol] = i

    @classmethod
    def load(cls, path: str | os.PathLike) -> Dictionary:
        """Parse a fairseq dict file (`SYMBOL COUNT` lines; blank lines are skipped)."""
        path = os.fspath(path)
        symbols: list[str] = []
        counts: list[int] = []
        seen = {s: i for i, s in enumerate(SPECIALS)}
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                where = f"{path}:{lineno}"
                fields = line.split()
                if fields and fields[-1] == _OVERWRITE_FLAG:
                    fields.pop()
                if not fields:
                    continue
                if len(fields) != 2:
                    raise ValueError(f"{where}: expected 'SYMBOL COUNT', got {line.rstrip()!r}")
                symbol, count = fields
                try:
                    counts.append(int(count))
                except ValueError:
                    raise ValueError(f"{where}: count must be an integer, got {count!r}") from None
                _check_symbol(symbol, seen, where=where)
                seen[symbol] = len(seen)
                symbols.append(symbol)
        return cls(symbols, counts, where=path)

    @classmethod
    def from_symbols(cls, symbols: list[str]) -> Dictionary:
        """Dictionary over `symbols` (without the specials), each with count 1."""
        return cls(symbols, [1] * len(symbols), where="Dictionary.from_symbols")

    @classmethod
    def from_label_lines(cls, lines: Iterable[str]) -> Dictionary:
        """The dict.ltr.txt of these .ltr lines: every symbol with its count, most frequent
        first, ties in symbol order (so the same lines always give the same file)."""
        counts = collections.Counter(symbol for line in lines for symbol in line.split())
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([s for s, _ in ranked], [n for _, n in ranked], where="Dictionary.from_label_lines")

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dictionary) and (self.symbols, self.counts) == (other.symbols, other.counts)

    def __repr__(self) -> str:
        return f"Dictionary({len(self)} symbols: {' '.join(self.symbols[len(SPECIALS):])})"

    def index(self, symbol: str) -> int:
        """Index of `symbol`; ValueError if it is not in the dictionary."""
        try:
            return self._indices[symbol]
        except KeyError:
            raise ValueError(f"symbol {symbol!r} is not in the dictionary") from None

    def encode(self, line: str, *, where: str) -> list[int]:
        """Indices of a .ltr line's whitespace-separated symbols (no EOS, as fairseq's CTC).

        Raises ValueError naming `where` (e.g. "data/train.ltr:17") for an empty line, a
        symbol missing from the dictionary, or a special symbol (a `<blank>` or `<pad>`
        target would corrupt the CTC loss).
        """
        tokens = line.split()
        if not tokens:
            raise ValueError(f"{where}: empty transcript; every manifest entry needs a non-empty label line")
        missing = sorted({t for t in tokens if t not in self._indices})
        if missing:
            raise ValueError(
                f"{where}: symbol(s) {' '.join(map(repr, missing))} not in the dictionary; add them "
                f"to dict.ltr.txt (the output layer grows with it) or normalise the transcript"
            )
        specials = sorted({t for t in tokens if t in SPECIALS})
        if specials:
            raise ValueError(f"{where}: special symbol(s) {' '.join(specials)} in a transcript; remove them")
        return [self._indices[t] for t in tokens]

    def string(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Ids -> space-separated symbols ("H I | T H E R E |").

        Skips `<blank>`, `<pad>` and `</s>` (so padded targets and raw CTC argmaxes print
        cleanly) but keeps `<unk>`. Repeats are not merged: collapse CTC output first.

        Shape: ids (S,) or any iterable of ints.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if not 0 <= i < len(self.symbols):  # a negative id would index from the end
                raise ValueError(f"id {i} is out of range for a dictionary of {len(self)} symbols")
            if i not in _NOT_TEXT:
                out.append(self.symbols[i])
        return " ".join(out)

    def words(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Ids -> words ("HI THERE"): symbols joined, `|` -> space, whitespace collapsed.

        Without `|` in the dictionary the result is the letters joined into one word.
        Shape: ids (S,) or any iterable of ints.
        """
        text = "".join(self.string(ids).split()).replace(WORD_BOUNDARY, " ")
        return " ".join(text.split())

    def save(self, path: str | os.PathLike) -> None:
        """Write a dict.ltr.txt that `load` reads back equal (atomically: `wav2vec2.files.atomic_write`)."""
        pairs = zip(self.symbols[len(SPECIALS):], self.counts[len(SPECIALS):])
        atomic_write(path, "".join(f"{symbol} {count}\n" for symbol, count in pairs))


def letters(words: list[str]) -> str:
    """The .ltr line of a transcript's words: letters separated by spaces, `|` after every
    word (["HI", "THERE"] -> "H I | T H E R E |"); `Dictionary.words` reads it back."""
    return " ".join(" ".join(w) + f" {WORD_BOUNDARY}" for w in words)


def write_label_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Write a label file (.ltr, .wrd), one line per manifest entry, atomically.

    Raises ValueError, before writing anything, for a line break inside a line: it would
    shift every later label onto the wrong utterance."""
    for i, line in enumerate(lines, start=1):
        if any(c in line for c in "\n\r"):
            raise ValueError(f"{os.fspath(path)}: line {i} {line!r} contains a line break")
    atomic_write(path, "".join(line + "\n" for line in lines))


def _check_symbol(symbol: str, seen: dict[str, int], *, where: str) -> None:
    """Reject what would break the 1:1 index mapping or the whitespace-split format."""
    if symbol in SPECIALS:
        raise ValueError(f"{where}: symbol {symbol!r} collides with a special (indices 0..3 are {SPECIALS})")
    if symbol in seen:
        raise ValueError(f"{where}: duplicate symbol {symbol!r} (already index {seen[symbol]})")
    if not symbol or symbol != "".join(symbol.split()):
        raise ValueError(f"{where}: symbol {symbol!r} is empty or contains whitespace")


def read_label_lines(path: str | os.PathLike, *, num_lines: int) -> list[str]:
    """The lines of a label file (`.ltr`, `.wrd`) that goes with a manifest: the one reader of
    transcripts, for training (`read_label_file`) and for scoring (`read_references`).

    `num_lines` is the manifest's number of entries; line k labels entry k. Trailing blank
    lines beyond `num_lines` are dropped (a stray final newline); a different count is an error.
    """
    path = os.fspath(path)
    # Iterate the file (universal newlines) rather than str.splitlines(), which also splits
    # on \x0b, \x1c, \u2028, ...: fairseq counts label lines the same way we do.
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    while len(lines) > num_lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != num_lines:
        where = (f"{path}:{len(lines) + 1} is the first manifest entry without one" if len(lines) < num_lines
                 else f"{path}:{num_lines + 1} is the first line without a manifest entry")
        raise ValueError(
            f"{path}: {len(lines)} label lines but the manifest has {num_lines} entries; a label "
            f"file needs exactly one line per manifest entry, in manifest order ({where})"
        )
    return lines


def read_class_labels(path: str | os.PathLike, *, num_lines: int) -> list[str]:
    """The class of each manifest entry, from a label file line-aligned with the manifest
    (`{subset}.lbl`: one class name per line, surrounding whitespace ignored). Errors name
    "path:line": a missing line, an empty one, a name with whitespace inside."""
    path = os.fspath(path)
    labels = [line.strip() for line in read_label_lines(path, num_lines=num_lines)]
    for lineno, label in enumerate(labels, start=1):
        if not label:
            raise ValueError(f"{path}:{lineno}: empty label; every manifest entry needs its class on its line")
        if label != "".join(label.split()):
            raise ValueError(f"{path}:{lineno}: class {label!r} contains whitespace; one name per line")
    return labels


def class_indices(labels: list[str], classes: list[str], *, path: str | os.PathLike) -> list[int]:
    """The index in `classes` of each label of `path` (as `read_class_labels` read them); a
    class not in `classes` is an error naming "path:line" and the known classes."""
    index = {name: i for i, name in enumerate(classes)}
    for lineno, label in enumerate(labels, start=1):
        if label not in index:
            raise ValueError(f"{os.fspath(path)}:{lineno}: unknown class {label!r}; the classes are "
                             f"{', '.join(classes)} (task.classes, or those of the training labels)")
    return [index[label] for label in labels]


def read_label_file(path: str | os.PathLike, *, dictionary: Dictionary, num_lines: int) -> list[list[int]]:
    """Encode every line of a label file (e.g. train.ltr) that goes with a manifest. A blank
    line is an empty transcript and an error. Errors name "path:line" (1-based)."""
    lines = read_label_lines(path, num_lines=num_lines)
    return [dictionary.encode(line, where=f"{os.fspath(path)}:{lineno}") for lineno, line in enumerate(lines, start=1)]


def read_references(manifest: str | os.PathLike, *, num_lines: int) -> list[str] | None:
    """The reference transcripts of a manifest `DIR/subset.tsv` as words joined by single
    spaces: from `subset.ltr` beside it (letters, `|` between words), else `subset.wrd`
    (words); None when neither exists."""
    manifest = os.fspath(manifest)
    stem = manifest[:-4] if manifest.endswith(".tsv") else manifest
    for suffix in (".ltr", ".wrd"):
        labels = stem + suffix
        if os.path.isfile(labels):
            lines = read_label_lines(labels, num_lines=num_lines)
            if suffix == ".ltr":
                lines = ["".join(line.split()).replace(WORD_BOUNDARY, " ") for line in lines]
            return [" ".join(line.split()) for line in lines]
    return None


def collate_targets(
    targets: list[torch.Tensor], *, pad_index: int = PAD
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad label sequences into one batch.

    Shape: targets B tensors (S_b,) long -> padded (B, S) long with S = max S_b, filled with
    `pad_index` past each length; lengths (B,) long.
    """
    if not targets:
        raise ValueError("collate_targets: empty batch")
    for t in targets:
        if t.dim() != 1 or t.dtype != torch.long:
            raise ValueError(f"collate_targets: expected 1-D long tensors, got {tuple(t.shape)} {t.dtype}")
    lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    padded = torch.full((len(targets), int(lengths.max())), pad_index, dtype=torch.long)
    for b, t in enumerate(targets):
        padded[b, : len(t)] = t
    return padded, lengths
