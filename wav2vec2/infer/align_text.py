"""The text to align, as the model's tokens: lines of words, normalised through its dictionary.

    text = prepare_text(["Hello world.", "Second line"], rec.dictionary, unknown="skip")
    text.tokens      # emission columns: <star> H E L L O | W O R L D | <star> S E C ... | <star>
    text.unknown     # [UnknownChar(line=1, column=12, char=".")], skipped and reported

Each line is NFC-normalised, put in the dictionary's case (when its letters are all upper or
all lower case), passed through `replace` (explicit character mappings: `{"’": "'", "-": " "}`)
and split into words at whitespace. A word is read as the longest dictionary symbols that
match, left to right, and followed by the word boundary `|` when the dictionary has one (as
fairseq's .ltr labels are: "H E L L O | W O R L D |"). A character that is in no symbol is
never dropped silently: `unknown="error"` (the default) raises a ValueError that lists every
one by line and column; "skip" leaves it out and "star" reads it as the wildcard, both
reporting it in `unknown`.

The wildcard (`<star>`, emission column `len(dictionary)`: see `viterbi.with_wildcard`)
goes before the first line, between lines and after the last, so audio the text does not
cover is read by it rather than by the neighbouring words; with `jumps` a path may also go
from one of these wildcards straight to the next, past a line the audio lacks.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from wav2vec2.data.labels import SPECIALS, WORD_BOUNDARY, Dictionary

WILDCARD = "<star>"
UNKNOWN_POLICIES = ("error", "skip", "star")


@dataclass(frozen=True)
class UnknownChar:
    line: int
    """1-based line number in the input."""
    column: int
    """1-based position in that line, as given (before `replace`)."""
    char: str
    """As written there."""


@dataclass
class TextWord:
    text: str
    """The word as written in the input (NFC; `replace`d characters as they were)."""
    line: int
    """Index into `AlignmentText.lines`."""
    tokens: list[int] = field(default_factory=list)
    """Positions in `AlignmentText.tokens` of its symbols (not the boundary after it)."""


@dataclass
class AlignmentText:
    lines: list[str]
    """The non-empty input lines, stripped."""
    line_numbers: list[int]
    """1-based input line number of each."""
    words: list[TextWord]
    tokens: list[int]
    """Emission columns to align, wildcards included."""
    symbols: list[str]
    """The symbol of each token (`<star>` for the wildcard)."""
    token_word: list[int]
    """Word index of each token; -1 for boundaries and the wildcards between lines."""
    line_wildcards: list[int]
    """Token positions of the wildcards before, between and after the lines (empty without)."""
    unknown: list[UnknownChar]
    """Characters no symbol matched (skipped or read as the wildcard)."""
    wildcard_column: int

    def jumps(self, per_token: float) -> list[tuple[int, int, float]]:
        """From each line's wildcard to the next, past the line between them, at `per_token`
        times its number of tokens (a long line costs more to leave out than a short one)."""
        return [(i, j, per_token * (j - i - 1)) for i, j in zip(self.line_wildcards, self.line_wildcards[1:])
                if j > i + 1]

    def normalized_line(self, index: int) -> list[str]:
        """Line `index`'s words as the dictionary spells them (for .wrd labels); a word with
        no symbol (all skipped or wildcards) is left out."""
        words = ["".join(self.symbols[k] for k in w.tokens if self.tokens[k] != self.wildcard_column)
                 for w in self.words if w.line == index]
        return [w for w in words if w]


def dictionary_case(dictionary: Dictionary):
    """str.upper or str.lower when the dictionary's letters are all one case, else None."""
    letters = [s for s in dictionary.symbols[len(SPECIALS):] if s.isalpha()]
    if letters and all(s == s.upper() for s in letters) and any(s != s.lower() for s in letters):
        return str.upper
    if letters and all(s == s.lower() for s in letters) and any(s != s.upper() for s in letters):
        return str.lower
    return None


def prepare_text(lines: Sequence[str], dictionary: Dictionary, *, unknown: str = "error",
                 replace: Mapping[str, str] | None = None, wildcard: bool = True) -> AlignmentText:
    """The tokens of `lines` (one utterance each; blank lines are skipped). See the module's
    docstring; raises ValueError for unknown characters under "error", or for a text with no
    symbol at all."""
    if unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
    replace = dict(replace or {})
    case = dictionary_case(dictionary)
    vocabulary = {s: i for i, s in enumerate(dictionary.symbols) if i >= len(SPECIALS) and s != WORD_BOUNDARY}
    longest = max(map(len, vocabulary))
    boundary = dictionary.index(WORD_BOUNDARY) if WORD_BOUNDARY in dictionary.symbols else None
    star = len(dictionary)
    out = AlignmentText([], [], [], [], [], [], [], [], star)

    def add(column: int, symbol: str, word: int) -> None:
        if column == star and out.tokens and out.tokens[-1] == star:
            return  # one wildcard reads a run of them
        out.tokens.append(column)
        out.symbols.append(symbol)
        out.token_word.append(word)
        if word >= 0:
            out.words[word].tokens.append(len(out.tokens) - 1)

    def add_line_wildcard() -> None:
        if wildcard:
            add(star, WILDCARD, -1)
            out.line_wildcards.append(len(out.tokens) - 1)

    add_line_wildcard()
    for number, raw in enumerate(lines, start=1):
        raw = unicodedata.normalize("NFC", raw)
        # (character, its 1-based column in the raw line) after case and `replace`
        chars = [(c2, col) for col, c in enumerate(raw, start=1) for c2 in replace.get(c, c)]
        if case is not None:  # "ß".upper() is "SS": one column, two characters
            chars = [(c2, col) for c, col in chars for c2 in case(c)]
        words: list[list[tuple[str, int]]] = [[]]
        for c, col in chars:
            if c.isspace():
                words.append([])
            else:
                words[-1].append((c, col))
        words = [w for w in words if w]
        if not words:
            continue
        if out.lines:
            add_line_wildcard()
        out.lines.append(raw.strip())
        out.line_numbers.append(number)
        for w in words:
            out.words.append(TextWord(raw[w[0][1] - 1:w[-1][1]], len(out.lines) - 1))
            index, at = len(out.words) - 1, 0
            while at < len(w):
                for size in range(min(longest, len(w) - at), 0, -1):
                    symbol = "".join(c for c, _ in w[at:at + size])
                    if symbol in vocabulary:
                        add(vocabulary[symbol], symbol, index)
                        at += size
                        break
                else:
                    out.unknown.append(UnknownChar(number, w[at][1], raw[w[at][1] - 1]))
                    if unknown == "star":
                        add(star, WILDCARD, index)
                    at += 1
            if boundary is not None and out.words[index].tokens:
                add(boundary, WORD_BOUNDARY, -1)
    add_line_wildcard()
    if out.unknown and unknown == "error":
        raise ValueError(describe_unknown(out.unknown, total=True) + "; choose what to do with them: "
                         "--unknown skip (leave them out) or --unknown star (read them as the wildcard), "
                         "or map them with --replace (e.g. --replace \"’='\" --replace \"-= \")")
    if not any(c != star for c in out.tokens):
        raise ValueError("the text has no symbol of the model's dictionary to align")
    return out


def describe_unknown(unknown: Sequence[UnknownChar], *, total: bool = False, limit: int = 12) -> str:
    """"3 characters not in the dictionary: '.' (1:12), ',' (2:5), ..." (line:column)."""
    shown = ", ".join(f"{u.char!r} ({u.line}:{u.column})" for u in unknown[:limit])
    more = f" and {len(unknown) - limit} more" if len(unknown) > limit else ""
    kinds = sorted({u.char for u in unknown})
    head = f"{len(unknown)} character(s) not in the model's dictionary"
    return f"{head} ({' '.join(map(repr, kinds))}): {shown}{more}" if total else f"{head}: {shown}{more}"


def parse_replace(pairs: Sequence[str]) -> dict[str, str]:
    """`--replace` values, each `FROM=TO`: FROM one character, TO any string (empty: delete
    it, an explicit choice; a space: split words there)."""
    out: dict[str, str] = {}
    for item in pairs:
        if len(item) < 2 or item[1] != "=":
            raise ValueError(f"--replace takes FROM=TO with FROM one character, got {item!r}")
        out[item[0]] = item[2:]
    return out
