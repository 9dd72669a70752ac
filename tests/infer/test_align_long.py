"""Long recordings in lanes (`align_long.py`): lanes that run side by side and check each
other give exactly the path of one band run over the whole file, whether their guessed
starts were right or had to be rerun; and on emissions that read their text, that band path
is the exact search's. Synthetic peaky emissions: a spike per token, blanks between, noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wav2vec2.infer.align_long import LaneOptions, best_path_in_lanes
from wav2vec2.infer.viterbi import backtrack, best_ends, ctc_graph, viterbi_forward, with_wildcard

V = 30  # blank, 3 unused specials, 26 tokens; the wildcard is column V, padding V + 1
SMALL = dict(band=128, shift_frames=25, lane_frames=1000, overlap_frames=300, lanes_per_group=3)


def peaky(num_tokens: int, gen: torch.Generator, *, lead: int = 0, tail: int = 40):
    """Emissions (T, V + 2) of `num_tokens` random tokens, a spike each 2-7 frames apart, after
    `lead` frames of other speech (spikes of random tokens the text does not have)."""
    tokens = torch.randint(4, V, (num_tokens,), generator=gen)
    at = lead + torch.cumsum(torch.randint(2, 8, (num_tokens,), generator=gen), 0)
    T = int(at[-1]) + tail
    log_probs = torch.full((T, V), -9.0)
    log_probs[:, 0] = -0.02
    log_probs[at, 0], log_probs[at, tokens] = -6.0, -0.1
    other = torch.arange(5, max(lead, 5), 4)
    log_probs[other, 0], log_probs[other, torch.randint(4, V, (len(other),), generator=gen)] = -6.0, -0.1
    log_probs = (log_probs + torch.randn(T, V, generator=gen)).log_softmax(-1)
    return with_wildcard(log_probs, -1.0), tokens.tolist()


def assert_same_alignment(emissions: torch.Tensor, graph, path: np.ndarray, exact: np.ndarray, *,
                          num_tokens: int) -> None:
    """The same score, and every token at the same frames. (A wildcard reads a blank frame at
    the blank's score minus its penalty, wherever it takes it: paths may tie there.)"""
    def score(p):
        return float(emissions.gather(1, graph.labels[0][torch.from_numpy(p)][:, None]).sum())

    assert score(path) == pytest.approx(score(exact), abs=1e-3)
    on_tokens = (exact % 2 == 1) & (graph.labels[0][torch.from_numpy(exact)] != V).numpy()
    assert (path[on_tokens] == exact[on_tokens]).all()
    assert len(np.unique(exact[on_tokens])) == num_tokens


def exact_path(emissions: torch.Tensor, graph) -> np.ndarray:
    T = len(emissions)
    forward = viterbi_forward(emissions[None], torch.tensor([T]), graph)
    return backtrack(forward, graph, torch.tensor([T]), best_ends(forward.alpha, forward.lo, graph)[0])[0]


@pytest.mark.parametrize("lead", [0, 800])
def test_lanes_are_one_band_run(lead: int) -> None:
    """Seven lanes (in groups of three) against one lane over everything: the same path. With
    800 frames of speech the text lacks at the start, under a wildcard, the guesses start off
    and lanes get rerun, still to the same path; and the band's path is the exact one."""
    emissions, tokens = peaky(1200, torch.Generator().manual_seed(lead), lead=lead)
    graph = ctc_graph([[V] + tokens + [V]], blank=0, pad_column=V + 1)
    stats: dict = {}
    lanes = best_path_in_lanes(emissions, graph, LaneOptions(**SMALL), stats)
    one = best_path_in_lanes(emissions, graph, LaneOptions(**{**SMALL, "lane_frames": 10_000}), {})
    assert stats["lanes"] == -(-len(emissions) // 1000) >= 6
    assert (lanes == one).all()
    assert_same_alignment(emissions, graph, lanes, exact_path(emissions, graph), num_tokens=1200)
    if lead:
        assert stats["reruns"] >= 1  # the guess from the greedy count was off: lanes were rerun


def test_a_line_the_audio_lacks_is_jumped_in_lanes() -> None:
    """Three lines; the audio says the first and last only. In lanes, as in the exact search,
    the path jumps from the first wildcard past the middle line."""
    gen = torch.Generator().manual_seed(5)
    first, missing, last = (torch.randint(4, V, (n,), generator=gen).tolist() for n in (500, 60, 500))
    emissions, said = peaky(1000, gen)
    tokens = [V] + said[:500] + [V] + missing + [V] + said[500:] + [V]
    graph = ctc_graph([tokens], blank=0, pad_column=V + 1, jumps=[[(501, 562)]], jump_score=-20.0)
    lanes = best_path_in_lanes(emissions, graph, LaneOptions(**SMALL), {})
    assert lanes is not None
    assert not np.isin(np.arange(2 * 502 + 1, 2 * 562, 2), lanes).any()  # no state of the middle line
    assert_same_alignment(emissions, graph, lanes, exact_path(emissions, graph), num_tokens=1000)
    del first, last


def test_no_path_when_the_text_is_longer_than_the_audio_allows() -> None:
    emissions, tokens = peaky(300, torch.Generator().manual_seed(2))
    graph = ctc_graph([tokens * 6], blank=0, pad_column=V + 1)
    assert best_path_in_lanes(emissions, graph, LaneOptions(**SMALL), {}) is None


def test_a_band_too_narrow_for_the_path_is_widened() -> None:
    """A band of 8 states cannot hold the path around the guess: it touches an edge, and the
    search is run again with wider bands until it does not; the result is the exact path."""
    emissions, tokens = peaky(600, torch.Generator().manual_seed(7), lead=300)
    graph = ctc_graph([[V] + tokens + [V]], blank=0, pad_column=V + 1)
    stats: dict = {}
    lanes = best_path_in_lanes(emissions, graph, LaneOptions(**{**SMALL, "band": 8}), stats)
    assert stats["band"] > 8
    assert_same_alignment(emissions, graph, lanes, exact_path(emissions, graph), num_tokens=600)
