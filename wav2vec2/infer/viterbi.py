"""Viterbi over the CTC topology: the best path of each row of a batch of emission matrices
through its transcript's states, vectorised over states and rows, on any device.

The topology (Graves et al. 2006): a transcript of L tokens becomes S = 2L + 1 states,
`blank t1 blank t2 ... blank tL blank`. From one frame to the next a path stays in its state,
moves to the next, or skips the blank between two *different* tokens; between two equal
tokens the blank is obligatory (else "L L" would read as one "L"). It starts in the first
blank or the first token and ends in the last token or the last blank. Its score is the sum
over frames of the log-probability of its state's column; the best path is found by a
forward pass (one step per frame, all states and rows at once) that keeps, per frame and
state, which of the moves won (a byte), then a walk back from the best end state.

Two additions, for transcripts that do not match the audio exactly (`transcript.py` uses
them between lines):
- a wildcard column (torchaudio's `<star>`), which the caller appends to the emissions
  (`with_wildcard`): at each frame the best of the frame's columns plus a penalty, so a
  wildcard state reads any audio at a fixed cost per frame;
- jumps: a state may also be entered from a state further back (`Graph.jump_from`) at a
  cost (`Graph.jump_scores`), e.g. from one wildcard to the next, past a line of text that
  the audio lacks.

Bands, for long audio (`align_long.py`): instead of all S states, each row may keep a window
of `width` consecutive states, `[lo, lo + width)`, which moves every `shift_every` frames to
centre on a guide (`band_centres`, a guess of the path's state at each frame); scores are
renormalised to a best of 0 at the same frames. Not on the best state so far: with a model
that is unsure of its letters, the best prefix is one that has read too little of the text
(blanks are cheap, letters dear), and lags the final path by more than any band. Without
`width` every state is kept: the exact search, which the tests check against enumerating
every path.

Ties go to the first move in the order stay, step, skip, jump.

Shapes: B rows, N frames, C emission columns, S states, W states kept (the band).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

STAY, STEP, SKIP, JUMP = 0, 1, 2, 3
"""A backpointer: the state at the frame before is s, s-1, s-2, or `jump_from[s]`."""
_BLOCK = 64
"""Frames whose emissions are gathered into band order at once."""


@dataclass
class Graph:
    """The states of a batch of transcripts, padded to the longest (S states)."""

    labels: Tensor
    """(B, S) long: the emission column each state reads (padding states read a column of -inf)."""
    skip_ok: Tensor
    """(B, S) bool: the state may be entered from two states back (a token unlike the one before)."""
    jump_from: Tensor
    """(B, S) long: the state a jump into this one comes from, -1 for none."""
    num_states: Tensor
    """(B,) long: 2L + 1 per row."""
    pad_column: int
    """The emission column of -inf that states past a row's end read."""
    jump_scores: Tensor
    """(B, S) float: added to a path's score when it jumps into the state (<= 0)."""

    @property
    def device(self) -> torch.device:
        return self.labels.device


def ctc_graph(targets: list[list[int]], *, blank: int, pad_column: int, jumps: list[list[tuple]] | None = None,
              jump_score: float = 0.0, device: torch.device | str = "cpu") -> Graph:
    """The CTC states of each row's tokens (emission column ids). `jumps[b]` holds (i, j) or
    (i, j, score) of token positions i < j - 1: token j may be entered straight from token i,
    at `score` (default `jump_score`). `pad_column` is a column of -inf that the padding
    states read."""
    if not targets:
        raise ValueError("ctc_graph: no transcripts")
    S = 2 * max(len(t) for t in targets) + 1
    labels = torch.full((len(targets), S), pad_column, dtype=torch.long)
    skip_ok = torch.zeros(len(targets), S, dtype=torch.bool)
    jump_from = torch.full((len(targets), S), -1, dtype=torch.long)
    jump_scores = torch.zeros(len(targets), S)
    for b, tokens in enumerate(targets):
        tokens_b = torch.tensor(tokens, dtype=torch.long)
        n = 2 * len(tokens) + 1
        labels[b, :n] = blank
        labels[b, 1:n:2] = tokens_b  # odd states are tokens
        if len(tokens) > 1:  # token k (state 2k+1) may skip the blank before it if token k-1 differs
            skip_ok[b, 3:n:2] = tokens_b[1:] != tokens_b[:-1]
        for i, j, *score in (jumps[b] if jumps else ()):
            if not 0 <= i < j - 1 < len(tokens) - 1:  # j = i + 1 would be a skip
                raise ValueError(f"ctc_graph: jump ({i}, {j}) of row {b} does not pass over a token of its "
                                 f"{len(tokens)}")
            jump_from[b, 2 * j + 1] = 2 * i + 1
            jump_scores[b, 2 * j + 1] = score[0] if score else jump_score
    num_states = torch.tensor([2 * len(t) + 1 for t in targets], dtype=torch.long)
    return Graph(labels.to(device), skip_ok.to(device), jump_from.to(device), num_states.to(device), pad_column,
                 jump_scores.to(device))


def with_wildcard(log_probs: Tensor, penalty: float) -> Tensor:
    """The emissions with two columns appended: the wildcard (column C, the best column of
    each frame plus `penalty`) and a column of -inf for padding states (column C + 1).

    Shape: log_probs (..., C) -> (..., C + 2)."""
    wildcard = log_probs.max(dim=-1, keepdim=True).values + penalty  # (..., 1)
    return torch.cat([log_probs, wildcard, torch.full_like(wildcard, -math.inf)], dim=-1)


@dataclass
class Forward:
    """What a forward pass leaves for the walk back and for the next pass."""

    alpha: Tensor
    """(B, W) scores of the band's states at each row's last frame (renormalised if banded)."""
    lo: Tensor
    """(B,) long: the band's first state at that frame."""
    backpointers: Tensor | None
    """(B, N, W) int8: the move into each band state at each frame (STAY...JUMP)."""
    band_starts: Tensor | None
    """(B, N) long: the band's first state at each frame (all 0 without a band)."""
    snapshot: tuple[Tensor, Tensor] | None = None
    """(alpha (B, W), lo (B,)) after frame `snapshot_step` of each row, if asked for."""


def viterbi_forward(emissions: Tensor, lengths: Tensor, graph: Graph, *, width: int | None = None,
                    lo: Tensor | None = None, alpha: Tensor | None = None, first_frame: Tensor | None = None,
                    shift_every: int | None = None, band_centres: Tensor | None = None,
                    keep_backpointers: bool = True, snapshot_step: Tensor | None = None) -> Forward:
    """The forward pass over each row's first `lengths[b]` frames.

    Without `alpha`, each path starts at frame 0 in state 0 or 1. With `alpha` (B, W) the
    rows continue from scores at the frame before their first one, for the band starting at
    `lo` (zeros everywhere: a path may start in any state). Without `width` the band is every
    state. With `shift_every`, the band moves at the frames whose index `first_frame[b] + t`
    is a multiple of it, to centre on `band_centres[b, t]` (B, N): rows that cover the same
    frames with the same centres move alike. `snapshot_step[b]` asks for a copy of row b's
    band scores after that step.

    Shape: emissions (B, N, C) log-probabilities, with the graph's columns; lengths (B,).
    """
    B, N, _ = emissions.shape
    device = emissions.device
    S = graph.labels.shape[1]
    W = S if width is None else min(width, S)
    lo = torch.zeros(B, dtype=torch.long, device=device) if lo is None else lo.to(device)
    first_frame = torch.zeros(B, dtype=torch.long, device=device) if first_frame is None else first_frame.to(device)
    lengths = lengths.to(device)
    band = _Band(graph, W)
    band.move(lo)

    # `scores` holds two columns of -inf, then the band: the states s-1 and s-2 of every band
    # state are views of it, without a copy per frame. A path from the start is a path from a
    # score of 0 in state 0 "before frame 0": at frame 0 it can only be in state 0 or 1.
    scores = torch.full((B, W + 2), -math.inf, device=device)
    if alpha is None:
        scores[:, 2] = torch.where(lo == 0, 0.0, -math.inf)
    else:
        scores[:, 2:] = alpha
    backpointers = torch.zeros(B, N, W, dtype=torch.int8, device=device) if keep_backpointers else None
    band_starts = lo[:, None].repeat(1, N) if keep_backpointers else None  # (B, N)
    # What happens at which step, decided here once rather than with a device sync per frame.
    firsts = first_frame.tolist()
    shifts = {} if shift_every is None else {
        t: torch.tensor([(f + t) % shift_every == 0 for f in firsts], device=device)
        for t in range(N) if any((f + t) % shift_every == 0 for f in firsts)}
    snapshots: dict[int, list[int]] = {}
    for row, step_ in enumerate([] if snapshot_step is None else snapshot_step.tolist()):
        if 0 <= step_ < N:
            snapshots.setdefault(step_, []).append(row)
    snapshot = None if snapshot_step is None else (torch.full((B, W), -math.inf, device=device),
                                                   lo.clone())
    ragged = bool((lengths < N).any())
    bounds = sorted({0, N, *shifts, *range(0, N, _BLOCK)})  # emissions are gathered a block at a time
    for t0, t1 in zip(bounds, bounds[1:]):
        if t0 in shifts:
            scores[:, 2:] = band.shift(scores[:, 2:], shifts[t0], band_centres[:, t0])
            if keep_backpointers:
                band_starts[:, t0:] = band.lo[:, None]
        # (B, N, C) -> (B, t1 - t0, W): each band state's emission over the block
        block = emissions[:, t0:t1].gather(2, band.labels[:, None, :].expand(B, t1 - t0, W))
        for t in range(t0, t1):
            prev = scores[:, 2:]  # (B, W) the band at frame t-1; its states s-1, s-2 are views too
            step, skip = scores[:, 1:-1], scores[:, :-2] + band.skip_penalty  # (B, W) each
            move = backpointers[:, t] if keep_backpointers else torch.empty(B, W, dtype=torch.int8, device=device)
            best = torch.maximum(prev, step)
            move.copy_(step > prev)  # STEP (1) where it beats STAY (0)
            better = skip > best
            best = torch.maximum(best, skip)
            move.masked_fill_(better, SKIP)
            if band.has_jumps:
                jump = prev.gather(1, band.jump_index) + band.jump_penalty  # (B, W)
                better = jump > best
                best = torch.maximum(best, jump)
                move.masked_fill_(better, JUMP)
            if ragged:  # rows past their length keep their scores (and "stay")
                done = (t >= lengths)[:, None]  # (B, 1)
                scores[:, 2:] = torch.where(done, prev, best + block[:, t - t0])
                move.masked_fill_(done, STAY)
            else:
                torch.add(best, block[:, t - t0], out=scores[:, 2:])
            if t in snapshots:
                rows = snapshots[t]
                snapshot[0][rows] = scores[rows, 2:]
                snapshot[1][rows] = band.lo[rows]
    return Forward(scores[:, 2:].clone(), band.lo.clone(), backpointers, band_starts, snapshot)


class _Band:
    """The graph's tables for the states of each row's band, recomputed when it moves."""

    def __init__(self, graph: Graph, width: int) -> None:
        self.graph, self.width = graph, width
        self.columns = torch.arange(width, device=graph.device)  # (W,)
        self.has_jumps = bool((graph.jump_from >= 0).any())
        self.last_lo = (graph.num_states - width).clamp(min=0)  # (B,) the band's highest start

    def move(self, lo: Tensor) -> None:
        g, S = self.graph, self.graph.labels.shape[1]
        self.lo = lo
        states = lo[:, None] + self.columns  # (B, W) absolute states
        inside = states < g.num_states[:, None]
        states = states.clamp(max=S - 1)
        self.labels = torch.where(inside, g.labels.gather(1, states), g.pad_column)  # (B, W)
        self.skip_penalty = torch.where(inside & g.skip_ok.gather(1, states), 0.0, -math.inf)  # (B, W)
        if self.has_jumps:
            source = g.jump_from.gather(1, states) - lo[:, None]  # (B, W) band index of the jump's origin
            ok = inside & (g.jump_from.gather(1, states) >= 0) & (source >= 0) & (source < self.width)
            self.jump_index = source.clamp(0, self.width - 1)
            self.jump_penalty = torch.where(ok, g.jump_scores.gather(1, states), -math.inf)

    def shift(self, prev: Tensor, moving: Tensor, centres: Tensor) -> Tensor:
        """Renormalise the `moving` rows' scores (B, W) to a best of 0 and move their bands to
        centre on `centres` (B,)."""
        top = prev.max(dim=1, keepdim=True).values  # (B, 1)
        normal = prev - torch.where(torch.isfinite(top), top, 0.0)
        new_lo = torch.minimum(band_start(centres, self.width), self.last_lo)
        new_lo = torch.where(moving, new_lo, self.lo)
        offset = (new_lo - self.lo)[:, None] + self.columns  # (B, W) old band index of each new one
        inside = (offset >= 0) & (offset < self.width)
        moved = torch.where(inside, normal.gather(1, offset.clamp(0, self.width - 1)), -math.inf)
        out = torch.where(moving[:, None], moved, prev)
        self.move(new_lo)
        return out


def band_start(centres: Tensor, width: int) -> Tensor:
    """The first state of bands of `width` centred on `centres` (not below 0; the caller caps
    it at S - width)."""
    return (centres - width // 2).clamp(min=0)


def best_ends(alpha: Tensor, lo: Tensor, graph: Graph) -> tuple[Tensor, Tensor]:
    """Each row's best end state (its last token or last blank) and that state's score in the
    band scores `alpha` (B, W) starting at `lo` (B,) (a `Forward`'s); -inf where neither is in
    the band or reachable.

    Shape: returns (B,) long absolute states, (B,) float scores."""
    last = graph.num_states - 1  # (B,) the final blank
    candidates = torch.stack([last, last - 1], dim=1)  # (B, 2); a row of no tokens has one state
    index = candidates - lo[:, None]  # (B, 2) band index
    W = alpha.shape[1]
    inside = (index >= 0) & (index < W) & (candidates >= 0)
    scores = torch.where(inside, alpha.gather(1, index.clamp(0, W - 1)), -math.inf)
    best = scores.argmax(dim=1, keepdim=True)  # (B, 1), ties to the final blank
    return candidates.gather(1, best)[:, 0], scores.gather(1, best)[:, 0]


def backtrack(forward: Forward, graph: Graph, lengths: Tensor, end_states: Tensor) -> np.ndarray:
    """The best path's state at every frame, walking the backpointers back from
    `end_states[b]` at frame `lengths[b] - 1`; -1 past a row's length.

    Shape: returns (B, N) int64."""
    bp = forward.backpointers.cpu().numpy()  # (B, N, W)
    starts = forward.band_starts.cpu().numpy()  # (B, N)
    jump_from = graph.jump_from.cpu().numpy()  # (B, S)
    B, N, _ = bp.shape
    paths = np.full((B, N), -1, dtype=np.int64)
    for b, (length, state) in enumerate(zip(lengths.tolist(), end_states.tolist())):
        paths[b, :length] = walk_back(bp[b], starts[b], jump_from[b], length - 1, state)
    return paths


def walk_back(bp: np.ndarray, starts: np.ndarray, jump_from: np.ndarray, last: int, state: int,
              first: int = 0) -> np.ndarray:
    """One row's states at frames first..last, from `state` at frame `last` back; the move at
    frame `first` is not followed. Shape: bp (N, W), starts (N,) -> (last - first + 1,)."""
    out = np.empty(last - first + 1, dtype=np.int64)
    for t in range(last, first - 1, -1):
        out[t - first] = state
        if t == first:
            break
        move = int(bp[t, state - int(starts[t])])
        if move == JUMP:
            state = int(jump_from[state])
        else:
            state -= move
    return out
