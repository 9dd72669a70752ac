"""Forced alignment from text to spans: the text's tokens through a dictionary (case, unknown
characters, replacements, wildcards and jumps), spans and scores of a path, batches with
padding, the long-audio route equal to the exact one, and the writers (JSON, CTM, TextGrid,
SRT/VTT). Emissions are synthetic: a spike of each token where the test puts it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from wav2vec2.data.labels import Dictionary
from wav2vec2.infer import formats
from wav2vec2.infer.align import AlignOptions, align_batch, align_logits, spans_of_path
from wav2vec2.infer.align_long import LaneOptions
from wav2vec2.infer.align_text import WILDCARD, parse_replace, prepare_text

DICTIONARY = Dictionary.from_symbols(["|", "E", "T", "A", "O", "N", "H", "L", "S", "'"])
FRAME = 0.02


def spiky(text, spikes: list[int], num_frames: int) -> torch.Tensor:
    """Logits (T, V) that read `text`'s real tokens, token k at frame spikes[k], blank elsewhere."""
    real = [c for c in text.tokens if c != text.wildcard_column]
    assert len(real) == len(spikes)
    logits = torch.zeros(num_frames, len(DICTIONARY))
    logits[:, 0] = 8.0
    for column, t in zip(real, spikes):
        logits[t, 0], logits[t, column] = 0.0, 8.0
    return logits


# ---------------------------------------------------------------- text
def test_text_becomes_tokens_with_boundaries_and_wildcards() -> None:
    text = prepare_text(["  the hat", "", "no"], DICTIONARY)
    assert text.lines == ["the hat", "no"] and text.line_numbers == [1, 3]
    assert text.symbols == [WILDCARD, "T", "H", "E", "|", "H", "A", "T", "|", WILDCARD, "N", "O", "|", WILDCARD]
    assert [(w.text, w.line, w.tokens) for w in text.words] == [("the", 0, [1, 2, 3]), ("hat", 0, [5, 6, 7]),
                                                                ("no", 1, [10, 11])]
    assert text.line_wildcards == [0, 9, 13] and text.jumps(-2.0) == [(0, 9, -16.0), (9, 13, -6.0)]
    assert text.normalized_line(0) == ["THE", "HAT"]
    assert prepare_text(["the"], DICTIONARY, wildcard=False).symbols == ["T", "H", "E", "|"]


def test_unknown_characters_are_reported_by_position_never_dropped_silently() -> None:
    with pytest.raises(ValueError, match=r"3 character\(s\).*'!' \(1:4\), 'x' \(2:2\), '!' \(2:4\).*--unknown"):
        prepare_text(["hat!", "ox !"], DICTIONARY)
    skipped = prepare_text(["hat!", "ox !"], DICTIONARY, unknown="skip")
    assert [(u.line, u.column, u.char) for u in skipped.unknown] == [(1, 4, "!"), (2, 2, "x"), (2, 4, "!")]
    assert [w.text for w in skipped.words] == ["hat!", "ox", "!"]
    assert skipped.normalized_line(1) == ["O"]  # "!" has no symbol: not a word of the labels
    starred = prepare_text(["ox"], DICTIONARY, unknown="star")
    assert starred.symbols == [WILDCARD, "O", WILDCARD, "|", WILDCARD]
    with pytest.raises(ValueError, match="no symbol"):
        prepare_text(["!!"], DICTIONARY, unknown="skip")


def test_replacements_apply_first_and_keep_the_written_words() -> None:
    replace = parse_replace(["’='", "-= "])
    text = prepare_text(["that’s hot-tea"], DICTIONARY, replace=replace)
    assert [w.text for w in text.words] == ["that’s", "hot", "tea"]
    assert text.normalized_line(0) == ["THAT'S", "HOT", "TEA"]
    with pytest.raises(ValueError, match="FROM=TO"):
        parse_replace(["ab=c"])


# ---------------------------------------------------------------- spans
def test_spans_times_and_scores_of_a_path() -> None:
    """"the hat": tokens at known frames; a token ends after its last frame; the scores are 1
    where the path reads each frame's best column and lower where it does not."""
    text = prepare_text(["the hat"], DICTIONARY)
    spikes = [3, 4, 5, 7, 10, 11, 12, 14]  # T H E | H A T |
    logits = spiky(text, spikes, 20)
    logits[12, 0] = 9.0  # at "T"'s frame the blank is better: T's score drops
    alignment = align_logits(logits, text, frame_seconds=FRAME)
    (line,) = alignment.lines
    assert [(w.text, w.start, w.end) for w in line.words] == [("the", 0.06, 0.12), ("hat", 0.2, 0.26)]
    assert [(t.text, t.start, t.end) for t in line.words[0].tokens] == [("T", 0.06, 0.08), ("H", 0.08, 0.1),
                                                                       ("E", 0.1, 0.12)]
    t_score = line.words[1].tokens[2].score
    log_softmax = logits.log_softmax(-1)
    assert t_score == pytest.approx(math.exp(float(log_softmax[12, DICTIONARY.index("T")] - log_softmax[12, 0])))
    assert t_score < 0.5 < line.words[0].score == pytest.approx(1.0, abs=1e-3)
    assert (line.start, line.end) == (0.06, 0.26) and not line.flagged


def test_a_line_the_audio_lacks_is_passed_over_and_flagged() -> None:
    """Three lines, the audio says the first and the last: the middle one gets no times and is
    flagged, and the others are where they are said. With --no-skip it is squeezed in."""
    text = prepare_text(["the", "hat one", "no"], DICTIONARY)
    said = [c for c in text.tokens if c != text.wildcard_column]
    middle = set(range(4, 12))  # H A T | O N E |
    logits = torch.zeros(60, len(DICTIONARY))
    logits[:, 0] = 8.0
    for column, t in zip([c for k, c in enumerate(said) if k not in middle], [5, 6, 7, 9, 40, 41, 43]):
        logits[t, 0], logits[t, column] = 0.0, 8.0
    lines = align_logits(logits, text, frame_seconds=FRAME).lines
    assert [(x.start, x.end) for x in lines] == [(0.1, 0.16), (None, None), (0.8, 0.84)]
    assert [x.flagged for x in lines] == [False, True, False]
    assert lines[1].words[0].tokens[0].start is None
    forced = align_logits(logits, text, frame_seconds=FRAME, options=AlignOptions(skip_penalty=None)).lines
    assert forced[1].start is not None and forced[1].score < 0.3 and forced[1].flagged


def test_a_batch_with_padding_aligns_each_row_as_alone() -> None:
    texts = [prepare_text([s], DICTIONARY) for s in ("the hat", "no", "a lot else")]
    spikes = [[2, 3, 5, 6, 9, 11, 12, 13], [1, 3, 4], [2, 3, 6, 7, 8, 10, 14, 16, 17, 19, 22]]
    lengths = [16, 7, 30]
    rows = [spiky(t, s, n) for t, s, n in zip(texts, spikes, lengths)]
    batch = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (3, 30, V), zeros past each length
    together = align_batch(batch, torch.tensor(lengths), texts, frame_seconds=FRAME)
    for row, text, alignment in zip(rows, texts, together):
        alone = align_logits(row, text, frame_seconds=FRAME)
        assert alignment.to_dict() == alone.to_dict()
        firsts = [t.start for w in alignment.lines[0].words for t in w.tokens]
        assert firsts == [round(s * FRAME, 3) for s, c in zip(spikes[texts.index(text)],
                                                                [c for c in text.tokens if c != text.wildcard_column])
                          if c != DICTIONARY.index("|")]


def test_the_long_route_gives_the_exact_alignment() -> None:
    """Forced into lanes (exact_limit 0, lanes of 200 frames), 40 lines give the spans of the
    exact search."""
    rng = np.random.default_rng(0)
    words = ["the", "hat", "a", "lot", "else", "no", "one", "tea", "sea", "hello"]
    lines = [" ".join(rng.choice(words, size=int(rng.integers(1, 4)))) for _ in range(40)]
    text = prepare_text(lines, DICTIONARY)
    real = [c for c in text.tokens if c != text.wildcard_column]
    spikes = np.cumsum(rng.integers(2, 5, size=len(real))) + 10
    logits = spiky(text, spikes.tolist(), int(spikes[-1]) + 20) + 0.5 * torch.randn(int(spikes[-1]) + 20,
                                                                                      len(DICTIONARY))
    exact = align_logits(logits, text, frame_seconds=FRAME)
    lanes = LaneOptions(band=64, lane_frames=200, overlap_frames=100)
    long = align_logits(logits, text, frame_seconds=FRAME, options=AlignOptions(exact_limit=0, lanes=lanes))
    assert [(w.text, w.start, w.end) for x in long.lines for w in x.words] == \
           [(w.text, w.start, w.end) for x in exact.lines for w in x.words]
    assert len(logits) > 4 * 200


def test_spans_of_path_marks_tokens_never_reached() -> None:
    text = prepare_text(["no"], DICTIONARY, wildcard=False)  # N O |
    emissions = torch.zeros(4, len(DICTIONARY) + 2)
    path = np.array([0, 1, 2, 3])  # blank, N, blank, O
    alignment = spans_of_path(path, emissions, text, frame_seconds=FRAME, min_score=0.3)
    assert [(t.text, t.start) for t in alignment.lines[0].words[0].tokens] == [("N", 0.02), ("O", 0.06)]


# ---------------------------------------------------------------- writers
@pytest.fixture
def alignment() -> formats.Alignment:
    text = prepare_text(["the hat", "no"], DICTIONARY)
    spikes = [3, 4, 5, 7, 10, 11, 12, 14, 30, 31, 33]
    return align_logits(spiky(text, spikes, 40), text, frame_seconds=FRAME, file="dir/talk.wav")


def test_json_has_every_level(alignment: formats.Alignment) -> None:
    record = json.loads(formats.render_alignment(alignment, "json"))
    assert record["file"] == "dir/talk.wav" and len(record["lines"]) == 2
    word = record["lines"][0]["words"][1]
    assert (word["word"], word["start"], word["end"]) == ("hat", 0.2, 0.26)
    assert [t["token"] for t in word["tokens"]] == ["H", "A", "T"]
    assert set(record["lines"][1]) == {"text", "start", "end", "score", "line", "flagged", "words"}


def test_ctm_one_row_per_span_at_each_level(alignment: formats.Alignment) -> None:
    words = formats.render_alignment(alignment, "ctm", level="word").splitlines()
    assert words[1].split()[:5] == ["talk", "1", "0.200", "0.060", "hat"] and len(words) == 3
    assert formats.render_alignment(alignment, "ctm", level="line").splitlines()[0].split()[4] == "the<space>hat"
    assert len(formats.render_alignment(alignment, "ctm", level="token").splitlines()) == 8


def test_textgrid_reads_back_with_praatio(alignment: formats.Alignment, tmp_path) -> None:
    textgrid = pytest.importorskip("praatio.textgrid")
    formats.write_alignment(alignment, tmp_path / "a.TextGrid", "textgrid")
    grid = textgrid.openTextgrid(str(tmp_path / "a.TextGrid"), includeEmptyIntervals=False)
    assert list(grid.tierNames) == ["lines", "words", "tokens"]
    assert [(e.start, e.end, e.label) for e in grid.getTier("words").entries] == [
        (0.06, 0.12, "the"), (0.2, 0.26, "hat"), (0.6, 0.64, "no")]
    assert not list(tmp_path.glob("*.tmp"))


def test_subtitles_have_a_cue_per_line(alignment: formats.Alignment) -> None:
    srt = formats.render_alignment(alignment, "srt")
    assert srt.startswith("1\n00:00:00,060 --> 00:00:00,260\nthe hat\n\n2\n00:00:00,600 --> 00:00:00,640\nno\n")
    assert formats.render_alignment(alignment, "vtt").startswith("WEBVTT\n\n00:00:00.060 --> 00:00:00.260\n")
