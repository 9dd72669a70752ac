"""Greedy CTC decoding and WER/CER counting for validating CTC fine-tuning.

Follows fairseq's `Wav2VecCtc` validation: the CTC blank is vocabulary index 0, targets are
letters with `|` as the word boundary, the best path is argmax per frame with repeats
collapsed and blanks dropped, and WER/CER are logged in percent. Mapping ids to letters and
`|` to spaces is the caller's job (it owns the dictionary); this file only sees ids and
word strings.

Error counts are plain sums (edits and reference lengths), never rates, so counts from many
batches and ranks can be added (e.g. all-reduced) before `wer_cer` divides once.

Shapes: B batch, T frames, V vocabulary entries (blank included).
"""

from __future__ import annotations

import jiwer
import torch
from torch import Tensor


def greedy_ctc(logits: Tensor, lengths: Tensor | None = None, *, blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, collapse repeats, then drop blanks.

    The order matters: a blank between two equal labels keeps both ([1, 1, 0, 1] -> [1, 1]).
    Everything runs on the logits' device and the batch crosses to the host in one `.cpu()`.

    Shape: logits (B, T, V) float, or already-argmaxed ids (B, T) integer.
    Shape: lengths (B,) valid frames per utterance; None means all T.
    Shape: returns B lists of label ids (no blanks), of varying length.
    """
    if logits.dim() == 3:
        ids = logits.argmax(dim=-1)  # (B, T, V) -> (B, T)
    elif logits.dim() == 2 and not logits.is_floating_point():
        ids = logits  # (B, T)
    else:
        raise ValueError(
            f"logits must be (B, T, V) scores or (B, T) integer ids, "
            f"got shape {tuple(logits.shape)} dtype {logits.dtype}"
        )
    T = ids.shape[1]

    # A frame is emitted when it differs from the previous frame (repeat collapse) and is not
    # blank. Frame 0 has no predecessor, so it always passes the collapse test.
    differs = torch.ones_like(ids, dtype=torch.bool)  # (B, T)
    differs[:, 1:] = ids[:, 1:] != ids[:, :-1]
    keep = differs & (ids != blank)  # (B, T)
    if lengths is not None:
        # Frames past an utterance's end are padding. Dropping them after the collapse test
        # is safe: a frame's decision depends only on itself and the frame before it.
        frames = torch.arange(T, device=ids.device)  # (T,)
        keep &= frames[None, :] < lengths.to(ids.device)[:, None]  # (B, T)

    # -1 is never a vocabulary index, so it marks dropped frames; one transfer for the batch
    # instead of a device sync per utterance.
    marked = ids.masked_fill(~keep, -1).cpu().tolist()  # B lists of T ints
    return [[i for i in row if i >= 0] for row in marked]


def _words(text: str) -> list[str]:
    # Split on any whitespace run. jiwer's default transforms split on " " only (a tab
    # stays inside a word) and, for characters, keep doubled spaces, so we normalize first.
    return text.split()


def error_counts(references: list[str], hypotheses: list[str]) -> dict[str, int]:
    """Word and character edit distances (Levenshtein, via jiwer), summed over the pairs.

    Returns {"word_errors", "words", "char_errors", "chars"}: errors are substitutions +
    deletions + insertions, words/chars the reference lengths. They add across batches and
    ranks; `wer_cer` turns the sums into percentages.

    Text is first normalized to its words joined by single spaces (leading, trailing and
    repeated whitespace dropped). Characters are counted over that string, so the single
    space between two words is a character (it plays the role of fairseq's `|`), but there is
    no trailing boundary. fairseq counts CER over target token ids including the final `|`,
    so its CER can differ slightly from ours.

    An empty (or whitespace-only) hypothesis is allowed: every reference word and character
    is a deletion. An empty reference raises ValueError (its error rate is undefined).
    """
    if len(references) != len(hypotheses):
        raise ValueError(
            f"references and hypotheses must pair up, got {len(references)} references "
            f"and {len(hypotheses)} hypotheses"
        )
    counts = {"word_errors": 0, "words": 0, "char_errors": 0, "chars": 0}
    pair_refs: list[str] = []
    pair_hyps: list[str] = []
    for i, (ref, hyp) in enumerate(zip(references, hypotheses)):
        ref_words, hyp_words = _words(ref), _words(hyp)
        if not ref_words:
            # jiwer 3.x raised here but 4.0 accepts an empty reference silently (scoring
            # only insertions), so we check ourselves: its rate has no denominator.
            raise ValueError(f"references[{i}] is empty: {ref!r}")
        ref_text = " ".join(ref_words)
        counts["words"] += len(ref_words)
        counts["chars"] += len(ref_text)
        if not hyp_words:
            # Handled here rather than in jiwer, whose treatment of empty strings has changed
            # between releases; no alignment is needed: everything is deleted.
            counts["word_errors"] += len(ref_words)
            counts["char_errors"] += len(ref_text)
            continue
        pair_refs.append(ref_text)
        pair_hyps.append(" ".join(hyp_words))

    if pair_refs:
        # One call per level over all pairs: jiwer aligns each pair separately and sums the
        # edit operations, which is exactly the per-pair sum we want.
        words = jiwer.process_words(pair_refs, pair_hyps)
        chars = jiwer.process_characters(pair_refs, pair_hyps)
        counts["word_errors"] += words.substitutions + words.deletions + words.insertions
        counts["char_errors"] += chars.substitutions + chars.deletions + chars.insertions
        # hits + S + D is the reference length jiwer aligned against. It must equal ours,
        # i.e. jiwer's default transforms left our normalized text alone.
        assert words.hits + words.substitutions + words.deletions == sum(
            len(r.split()) for r in pair_refs
        )
        assert chars.hits + chars.substitutions + chars.deletions == sum(map(len, pair_refs))
    return counts


def wer_cer(counts: dict[str, float]) -> tuple[float, float]:
    """(WER, CER) in percent, as fairseq logs them, from summed `error_counts`.

    Counts may be floats (e.g. after an all-reduce of a float tensor).
    """
    if counts["words"] <= 0 or counts["chars"] <= 0:
        raise ValueError(
            f"counts need words > 0 and chars > 0, got words={counts['words']} "
            f"chars={counts['chars']}"
        )
    wer = 100.0 * counts["word_errors"] / counts["words"]
    cer = 100.0 * counts["char_errors"] / counts["chars"]
    return wer, cer
