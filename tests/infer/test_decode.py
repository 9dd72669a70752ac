"""Greedy CTC decoding and error counting against slow, loop-by-loop references written here.

greedy_ctc is checked against a per-frame Python loop (argmax, collapse, drop blank) on random
logits; error_counts against a textbook Levenshtein DP over words and over characters.
"""

from __future__ import annotations

import random

import pytest
import torch

from wav2vec2.infer.decode import error_counts, greedy_ctc, wer_cer


def reference_greedy(logits: torch.Tensor, lengths: list[int], blank: int) -> list[list[int]]:
    out = []
    for b, length in enumerate(lengths):
        path = []
        for t in range(length):
            scores = logits[b, t].tolist()
            path.append(max(range(len(scores)), key=scores.__getitem__))
        labels = []
        prev = None
        for label in path:
            if label != prev and label != blank:
                labels.append(label)
            prev = label
        out.append(labels)
    return out


def levenshtein(ref: list, hyp: list) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i]
        for j, h in enumerate(hyp, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def ids(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


# --- greedy_ctc ---------------------------------------------------------------------------


@pytest.mark.parametrize("B,T,V", [(1, 1, 2), (3, 17, 3), (5, 40, 4), (2, 64, 30)])
@pytest.mark.parametrize("blank", [0, 1])
def test_greedy_matches_reference_loop(B, T, V, blank):
    g = torch.Generator().manual_seed(B * 1000 + T * 10 + V + blank)
    # Small V makes repeats and blanks frequent; float64 makes argmax ties improbable.
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0] = T  # always one full-length row
    expected = reference_greedy(logits, lengths.tolist(), blank)
    assert greedy_ctc(logits, lengths, blank=blank) == expected
    # Already-argmaxed ids decode the same way.
    assert greedy_ctc(logits.argmax(-1), lengths, blank=blank) == expected
    # No lengths means every frame counts.
    assert greedy_ctc(logits, blank=blank) == reference_greedy(logits, [T] * B, blank)


def test_greedy_collapses_repeats_before_dropping_blanks():
    # [1, 1, 0, 1] -> collapse -> [1, 0, 1] -> drop blank -> [1, 1]
    assert greedy_ctc(ids([1, 1, 0, 1])) == [[1, 1]]
    assert greedy_ctc(ids([1, 1, 2, 2, 2, 1])) == [[1, 2, 1]]
    assert greedy_ctc(ids([0, 3, 3, 0, 0, 3, 0, 4, 4])) == [[3, 3, 4]]


def test_greedy_all_blank_is_empty():
    assert greedy_ctc(ids([0, 0, 0], [0, 0, 0])) == [[], []]
    logits = torch.zeros(2, 5, 4)
    logits[..., 0] = 1.0
    assert greedy_ctc(logits) == [[], []]


def test_greedy_blank_index_is_configurable():
    assert greedy_ctc(ids([0, 2, 0, 0, 1]), blank=2) == [[0, 0, 1]]


def test_greedy_respects_lengths():
    batch = ids([1, 2, 3, 4], [5, 0, 6, 7], [8, 8, 8, 9])
    lengths = torch.tensor([2, 3, 0])
    assert greedy_ctc(batch, lengths) == [[1, 2], [5, 6], []]
    # A label continuing past the end is not emitted again, nor is padding.
    assert greedy_ctc(ids([2, 2, 3, 3]), torch.tensor([3])) == [[2, 3]]


def test_greedy_accepts_logits_and_rejects_float_ids():
    logits = torch.full((1, 3, 3), -1.0)
    logits[0, 0, 2] = logits[0, 1, 2] = logits[0, 2, 1] = 1.0
    assert greedy_ctc(logits) == [[2, 1]]
    with pytest.raises(ValueError, match="logits"):
        greedy_ctc(torch.zeros(2, 3))


def test_greedy_moves_the_batch_to_host_once(monkeypatch):
    calls = []
    cpu = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        calls.append(tuple(self.shape))
        return cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    logits = torch.randn(4, 9, 5, generator=torch.Generator().manual_seed(0))
    greedy_ctc(logits, torch.tensor([9, 3, 5, 1]))
    assert calls == [(4, 9)]


# --- error_counts ---------------------------------------------------------------------------


def reference_counts(refs: list[str], hyps: list[str]) -> dict[str, int]:
    counts = {"word_errors": 0, "words": 0, "char_errors": 0, "chars": 0}
    for ref, hyp in zip(refs, hyps):
        ref_text, hyp_text = " ".join(ref.split()), " ".join(hyp.split())
        counts["word_errors"] += levenshtein(ref.split(), hyp.split())
        counts["words"] += len(ref.split())
        counts["char_errors"] += levenshtein(list(ref_text), list(hyp_text))
        counts["chars"] += len(ref_text)
    return counts


def random_sentence(rng: random.Random, vocab: list[str], num_words: int) -> str:
    # Irregular whitespace on purpose: counts are defined over single-spaced words.
    seps = [" ", " ", " ", "  ", "\t"]
    text = "".join(rng.choice(seps) + rng.choice(vocab) for _ in range(num_words))
    return text + rng.choice(["", " ", "\n"])


@pytest.mark.parametrize("seed", range(5))
def test_error_counts_match_reference_levenshtein(seed):
    rng = random.Random(seed)
    # A tiny vocabulary of similar words, so alignments mix hits, substitutions,
    # insertions and deletions at both word and character level.
    vocab = ["a", "an", "the", "then", "cat", "cart", "at", "hat"]
    refs = [random_sentence(rng, vocab, rng.randint(1, 8)) for _ in range(12)]
    hyps = [random_sentence(rng, vocab, rng.randint(0, 8)) for _ in range(12)]
    counts = error_counts(refs, hyps)
    assert counts == reference_counts(refs, hyps)
    assert all(isinstance(v, int) for v in counts.values())
    # Counts add across batches (and ranks).
    first, second = error_counts(refs[:5], hyps[:5]), error_counts(refs[5:], hyps[5:])
    assert {k: first[k] + second[k] for k in counts} == counts


@pytest.mark.parametrize(
    "ref,hyp,expected",
    [
        ("the cat sat", "the cat sat", (0, 3, 0, 11)),
        ("the cat sat", "the bat sat", (1, 3, 1, 11)),  # one substitution
        ("the cat", "the fat cat", (1, 2, 4, 7)),  # one inserted word: "fat "
        ("the cat sat", "the sat", (1, 3, 4, 11)),  # one deleted word: "cat "
        ("the cat", "", (2, 2, 7, 7)),  # empty hypothesis: all deletions
        ("the cat", "  \t ", (2, 2, 7, 7)),
        ("  the\tcat  sat ", "the cat sat", (0, 3, 0, 11)),  # whitespace normalized
    ],
)
def test_error_counts_hand_cases(ref, hyp, expected):
    counts = error_counts([ref], [hyp])
    got = (counts["word_errors"], counts["words"], counts["char_errors"], counts["chars"])
    assert got == expected


def test_error_counts_mixed_and_all_empty_hypotheses():
    assert error_counts(["a b", "c d e"], ["a b", ""]) == {
        "word_errors": 3, "words": 5, "char_errors": 5, "chars": 8,
    }
    assert error_counts(["a b", "c"], ["", ""]) == {
        "word_errors": 3, "words": 3, "char_errors": 4, "chars": 4,
    }


def test_error_counts_rejects_empty_reference_and_unpaired_lists():
    with pytest.raises(ValueError, match=r"references\[1\]"):
        error_counts(["a", "  "], ["a", "b"])
    with pytest.raises(ValueError, match="pair up"):
        error_counts(["a", "b"], ["a"])


# --- wer_cer --------------------------------------------------------------------------------


def test_wer_cer_is_percent_of_summed_counts():
    assert wer_cer({"word_errors": 1, "words": 4, "char_errors": 3, "chars": 20}) == (25.0, 15.0)
    # Float counts, as after an all-reduce.
    wer, cer = wer_cer({"word_errors": 3.0, "words": 8.0, "char_errors": 0.0, "chars": 31.0})
    assert wer == pytest.approx(37.5) and cer == 0.0
    # Insertions can push WER past 100.
    assert wer_cer(error_counts(["a"], ["b c d"])) == (300.0, 500.0)


@pytest.mark.parametrize("key", ["words", "chars"])
def test_wer_cer_rejects_empty_denominators(key):
    counts = {"word_errors": 0, "words": 3, "char_errors": 0, "chars": 5}
    counts[key] = 0
    with pytest.raises(ValueError, match=key):
        wer_cer(counts)
