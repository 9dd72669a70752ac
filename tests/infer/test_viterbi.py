"""The CTC Viterbi against brute force: on small random emission matrices, every alignment of
every transcript is enumerated, and the forward pass must find the best one's score and the
walk back its path; with repeated tokens (the obligatory blank), batch padding in frames and
in tokens, the wildcard column and jumps between wildcards. Then the band: with a band as
wide as the graph it is the exact search; narrower, on well-separated emissions, the same path.
"""

from __future__ import annotations

import math

import pytest
import torch

from wav2vec2.infer.viterbi import JUMP, best_ends, backtrack, ctc_graph, viterbi_forward, with_wildcard

BLANK, NUM_COLUMNS = 0, 5  # blank + 4 tokens; the wildcard is column 5, padding column 6
WILDCARD, PAD = NUM_COLUMNS, NUM_COLUMNS + 1


def all_paths(num_frames: int, tokens: list[int], jumps: list[tuple[int, int]]):
    """Every state sequence the CTC topology allows (jumps included), by depth-first search."""
    labels = [BLANK]
    for t in tokens:
        labels += [t, BLANK]
    S = len(labels)
    jump_into = {2 * j + 1: 2 * i + 1 for i, j in jumps}

    def moves(s: int):
        yield s, False
        if s + 1 < S:
            yield s + 1, False
        if s + 2 < S and labels[s + 2] != BLANK and labels[s + 2] != labels[s]:
            yield s + 2, False
        for into, origin in jump_into.items():
            if origin == s:
                yield into, True

    def extend(path, jumps_taken):
        if len(path) == num_frames:
            if path[-1] >= S - 2:
                yield path, jumps_taken
            return
        for nxt, is_jump in moves(path[-1]):
            yield from extend(path + [nxt], jumps_taken + is_jump)

    for first in (0, 1)[:S]:
        yield from extend([first], 0)


def brute_force(emissions: torch.Tensor, tokens: list[int], jumps, jump_score: float):
    """(best score, every path that has it) over every alignment; (-inf, []) when there is none.
    Random scores tie only where two states read the same column at the same cost: two
    wildcards, between which a jump may be taken at any frame."""
    labels = [BLANK]
    for t in tokens:
        labels += [t, BLANK]
    scored = [(sum(float(emissions[t, labels[s]]) for t, s in enumerate(path)) + num_jumps * jump_score, path)
              for path, num_jumps in all_paths(len(emissions), tokens, jumps)]
    best = max((score for score, _ in scored), default=-math.inf)
    return best, [path for score, path in scored if score > best - 1e-5]


def random_case(gen: torch.Generator, batch: int, *, wildcard: bool):
    """Emissions (B, T, 7) with ragged frame counts, transcripts with repeats, maybe wildcards
    with jumps between them."""
    lengths = torch.randint(1, 7, (batch,), generator=gen)
    log_probs = torch.randn(batch, int(lengths.max()), NUM_COLUMNS, generator=gen).mul(2).log_softmax(-1)
    emissions = with_wildcard(log_probs, penalty=-0.5)
    targets, jumps = [], []
    for b in range(batch):
        n = int(torch.randint(0, 4, (), generator=gen))
        tokens = torch.randint(1, 3, (n,), generator=gen).tolist()  # 2 symbols: many repeats
        if wildcard:
            tokens = [WILDCARD] + tokens + [WILDCARD]
            jumps.append([(0, len(tokens) - 1)] if len(tokens) > 2 else [])
        else:
            jumps.append([])
        targets.append(tokens or [1])
    return emissions, lengths, targets, jumps


@pytest.mark.parametrize("wildcard", [False, True])
def test_forward_and_walk_back_equal_brute_force(wildcard: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    checked = impossible = ties = 0
    for trial in range(40):
        emissions, lengths, targets, jumps = random_case(gen, batch=3, wildcard=wildcard)
        graph = ctc_graph(targets, blank=BLANK, pad_column=PAD, jumps=jumps, jump_score=-1.5)
        forward = viterbi_forward(emissions, lengths, graph)
        ends, scores = best_ends(forward.alpha, forward.lo, graph)
        paths = backtrack(forward, graph, lengths, ends)
        for b in range(3):
            T = int(lengths[b])
            best, optimal = brute_force(emissions[b, :T], targets[b], jumps[b], -1.5)
            if not optimal:  # too few frames for the transcript
                assert scores[b] == -math.inf
                impossible += 1
                continue
            assert float(scores[b]) == pytest.approx(best, abs=1e-4), (trial, b)
            assert paths[b, :T].tolist() in optimal, (trial, b)
            if targets[b].count(WILDCARD) < 2:
                assert len(optimal) == 1  # no ties: the path itself is pinned down
            ties += len(optimal) > 1
            assert (paths[b, T:] == -1).all()
            checked += 1
    assert checked > 60 and impossible > 0  # both kinds of case were met
    assert wildcard == (ties > 0)


def test_repeated_tokens_need_a_blank_between_them() -> None:
    """"A A" in two frames is impossible, in three it is A blank A; "A B" in two is A B."""
    emissions = torch.zeros(1, 3, NUM_COLUMNS + 2)
    emissions[..., PAD] = -math.inf
    for tokens, frames, expected in (([1, 1], 2, None), ([1, 1], 3, [1, 2, 3]), ([1, 2], 2, [1, 3])):
        graph = ctc_graph([tokens], blank=BLANK, pad_column=PAD)
        forward = viterbi_forward(emissions[:, :frames], torch.tensor([frames]), graph)
        ends, scores = best_ends(forward.alpha, forward.lo, graph)
        if expected is None:
            assert scores[0] == -math.inf
        else:
            assert backtrack(forward, graph, torch.tensor([frames]), ends)[0].tolist() == expected


def test_a_jump_passes_over_a_line_the_audio_lacks() -> None:
    """Wildcard, line "1 2", wildcard, line "3": audio that only says 3. With a jump from the
    first wildcard to the second the path skips "1 2" and reads 3 where it is said; the jump's
    cost is in the score."""
    T = 8
    log_probs = torch.full((1, T, NUM_COLUMNS), -6.0)
    log_probs[0, :, BLANK] = -0.01
    log_probs[0, 5, 3] = -0.01  # "3" at frame 5
    emissions = with_wildcard(log_probs, penalty=-0.2)
    tokens = [WILDCARD, 1, 2, WILDCARD, 3]
    graph = ctc_graph([tokens], blank=BLANK, pad_column=PAD, jumps=[[(0, 3)]], jump_score=-1.0)
    forward = viterbi_forward(emissions, torch.tensor([T]), graph)
    ends, scores = best_ends(forward.alpha, forward.lo, graph)
    path = backtrack(forward, graph, torch.tensor([T]), ends)[0].tolist()
    assert 3 not in path and 5 not in path  # never in the states of "1" or "2"
    assert path[5] == 9  # token 4 ("3", state 9) at frame 5
    assert int(forward.backpointers[0, path.index(7), 7]) == JUMP
    best, optimal = brute_force(emissions[0], tokens, [(0, 3)], -1.0)
    assert float(scores[0]) == pytest.approx(best, abs=1e-4) and path in optimal


def test_a_wide_band_is_the_exact_search_and_a_narrow_one_finds_the_same_path() -> None:
    """Peaky emissions of a 60-token transcript over 400 frames: bands of every state, and of
    40 states moving every 8 frames along a straight guide, give the exact path."""
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, NUM_COLUMNS, (60,), generator=gen).tolist()
    T = 400
    log_probs = torch.full((T, NUM_COLUMNS), -8.0)
    log_probs[:, BLANK] = -0.05
    where = 10 + 6 * torch.arange(60) + torch.randint(0, 3, (60,), generator=gen)  # a spike per token
    log_probs[where, BLANK] = -8.0
    log_probs[where, torch.tensor(tokens)] = -0.05
    log_probs = (log_probs + 0.3 * torch.randn(T, NUM_COLUMNS, generator=gen)).log_softmax(-1)
    emissions = with_wildcard(log_probs, penalty=-1.0)[None]  # (1, T, C)
    graph = ctc_graph([tokens], blank=BLANK, pad_column=PAD)
    lengths = torch.tensor([T])
    exact = viterbi_forward(emissions, lengths, graph)
    path = backtrack(exact, graph, lengths, best_ends(exact.alpha, exact.lo, graph)[0])
    guide = torch.linspace(0, graph.labels.shape[1] - 1, T).long()[None]  # (1, T) a straight line
    wide = viterbi_forward(emissions, lengths, graph, width=10_000, shift_every=8, band_centres=guide)
    assert wide.alpha.shape[1] == graph.labels.shape[1]
    narrow = viterbi_forward(emissions, lengths, graph, width=40, shift_every=8, band_centres=guide)
    assert narrow.alpha.shape[1] == 40
    for forward in (wide, narrow):
        assert (backtrack(forward, graph, lengths, best_ends(forward.alpha, forward.lo, graph)[0]) == path).all()
    entered = [t for t in range(1, T) if path[0, t] % 2 == 1 and path[0, t - 1] != path[0, t]]
    assert entered == where.tolist()  # each token where its spike is
