"""Long recordings in bounded memory: the best CTC path through a moving band of states,
computed in parallel lanes of time that check each other.

Why: the exact search (`viterbi.py`) keeps a byte per frame and state. An hour is 180,000
frames and its transcript some 50,000 tokens (S = 100,000 states): 18 GB. A band of W states
(`viterbi_forward(width=W)`) that follows the best state needs W bytes a frame, but one
Python step per frame (~50 us of small tensor operations) is 9 s an hour.

Lanes: the file's frames are cut into lanes of `lane_seconds`; lane k runs from
`overlap_seconds` before its first frame f_k to its last, and the lanes of a group advance
together as the rows of one batch, one step per frame of a lane rather than of the file.

Where lane k starts in the text: lane 0 at the text's start. For k >= 1, the greedy reading's
count of tokens up to its first frame, as a fraction of the whole, gives a first guess; a
search with a free start over `locate_tokens` tokens either side of it, over the first
`locate_seconds` of the lane, finds where the text is; the band starts there, around the best
state, and runs the rest of the overlap before f_k, so that its scores settle.

Checked, not assumed: lane k's band scores after frame f_k - 1 are compared with lane k-1's
final ones, after the same frame: the same band, and the same values up to a constant, once
both are floored at `beam` below their best. Equal: from f_k on lane k takes exactly the
decisions lane k-1 would have taken had it gone on (the band moves, renormalises and prunes
at the same frames, on the same scores), so the lanes' paths join into the path of one band
run over the whole file. Not equal (the guess was too far off, or the scores had not settled):
lane k is run again from lane k-1's final scores, a continuation that is exact by
construction, and lane k+1 is checked against that. In the worst case every lane is rerun in
turn: the sequential band search, slower but the same result.

Memory: a group's backpointers (`lanes_per_group` x lane frames x W bytes, 29 MB with the
defaults) go to a temporary file when the group is done, and come back one lane at a time for
the walk back. What grows with the file is 4 bytes a frame of band starts and the path.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from wav2vec2.data.labels import BLANK
from wav2vec2.infer.viterbi import JUMP, Graph, best_ends, viterbi_forward, walk_back


_AFTER_JUMP = 256
"""States a path may advance after a jump before it becomes the best and the band follows."""


@dataclass
class LaneOptions:
    band: int = 512
    """States kept per frame (256 tokens, some 15 s of speech); widened when a line may be
    passed over, to hold the longest such jump and `_AFTER_JUMP` states after it within three
    quarters of the band."""
    shift_frames: int = 25
    """The band moves (and scores are renormalised) every this many frames."""
    beam: float = 200.0
    """States more than this below the best (in log-probability) are dropped."""
    lane_frames: int = 3000
    """Frames per lane (60 s of 20 ms frames); a multiple of `shift_frames`."""
    overlap_frames: int = 750
    """Frames a lane runs before its first one (the locate, then the burn-in)."""
    locate_frames: int = 250
    """Frames of the free-start search that finds a lane's place in the text."""
    locate_tokens: int = 1500
    """Tokens either side of the guess that the locate searches."""
    lanes_per_group: int = 16
    """Lanes run together as one batch."""


@dataclass
class _Lane:
    first: int
    """The lane's first own frame (f_k)."""
    end: int
    """One past its last."""
    start: int = 0
    """The first frame of its backpointers (before `first`: its burn-in)."""
    alpha: Tensor | None = None
    """Its band scores after frame end - 1, and..."""
    lo: int = 0
    """...the band's first state there."""
    snapshot: tuple[Tensor, int] | None = None
    """Its band scores and first state after frame `first - 1` (the previous lane's last)."""
    settled: bool = False
    """Its path is that of one band run from the file's start (checked, or rerun)."""
    backpointers: np.ndarray | None = None
    """(frames, W) int8 from `start` on, until they go to the spill file..."""
    spill: tuple[int, int, int] | None = None
    """...at (offset, frames, width)."""
    starts: np.ndarray | None = None
    """(frames,) int32: the band's first state at each of them."""


def best_path_in_lanes(emissions: Tensor, graph: Graph, options: LaneOptions | None = None,
                       stats: dict | None = None) -> np.ndarray | None:
    """The best path's state at every frame, or None when no path ends in the text's end.

    Shape: emissions (T, C) with the graph's columns; graph of one row; returns (T,) int64.
    `stats`, if given, receives the number of lanes and of reruns."""
    o = options or LaneOptions()
    if any(x % o.shift_frames for x in (o.lane_frames, o.overlap_frames, o.locate_frames)):
        raise ValueError("lane, overlap and locate frames must be multiples of shift_frames")
    if not 0 < o.locate_frames < o.overlap_frames < o.lane_frames:
        raise ValueError("need 0 < locate_frames < overlap_frames < lane_frames")
    jumps = graph.jump_from[0] >= 0
    if bool(jumps.any()):  # a jump, and the path after it until it is the best, must fit in the
        # three quarters of the band above the best state
        span = int((torch.arange(len(jumps), device=jumps.device) - graph.jump_from[0])[jumps].max())
        o = dataclasses.replace(o, band=max(o.band, -(-(span + _AFTER_JUMP) * 4 // 3)))
    T = emissions.shape[0]
    guess = _token_guess(emissions, graph)
    lanes = [_Lane(f, min(f + o.lane_frames, T)) for f in range(0, T, o.lane_frames)]
    reruns = 0
    with tempfile.TemporaryFile(prefix="wav2vec2-align-") as spill:
        for g in range(0, len(lanes), o.lanes_per_group):
            group = lanes[g:g + o.lanes_per_group]
            _run(emissions, graph, group, o, guess)
            while not all(lane.settled for lane in group):
                # Lanes whose predecessor is settled: settled if their scores match its final
                # ones, else rerun from those (all such lanes at once).
                before = [lanes[g + k - 1] if g + k else None for k in range(len(group))]
                ready = [k for k, lane in enumerate(group) if not lane.settled
                         and (before[k] is None or before[k].settled)]
                rerun = []
                for k in ready:
                    lane, b = group[k], before[k]
                    lane.settled = b is None or _same_scores(*lane.snapshot, b.alpha, b.lo, o.beam)
                    if not lane.settled:
                        rerun.append(k)
                if rerun:
                    reruns += len(rerun)
                    _rerun(emissions, graph, [group[k] for k in rerun], [before[k] for k in rerun], o)
            for lane in group:  # out of memory until the walk back
                spill.seek(0, 2)
                lane.spill = (spill.tell(), *lane.backpointers.shape)
                spill.write(lane.backpointers.tobytes())
                lane.backpointers = None
        if stats is not None:
            stats.update(lanes=len(lanes), reruns=reruns)
        return _walk_lanes(lanes, graph, spill)


def _token_guess(emissions: Tensor, graph: Graph) -> np.ndarray:
    """A guess of the state at every frame: the greedy reading's count of tokens so far, as
    a fraction of its total, of the text's tokens (wildcards aside). Shape: (T,) int64."""
    ids = emissions[:, :-2].argmax(dim=1)  # (T,) the best real column
    onsets = (ids != BLANK) & torch.cat([ids.new_ones(1, dtype=torch.bool), ids[1:] != ids[:-1]])
    counts = onsets.cumsum(0).double().cpu()  # (T,)
    total = float(counts[-1]) if len(counts) else 0.0
    fraction = counts / total if total > 0 else torch.arange(1, len(counts) + 1).double() / len(counts)
    labels = graph.labels[0, :int(graph.num_states[0])].cpu()
    wildcard = emissions.shape[1] - 2
    real_states = torch.nonzero((labels != BLANK) & (labels != wildcard))[:, 0]  # (L_real,)
    index = (fraction * (len(real_states) - 1)).round().long().clamp(0, len(real_states) - 1)
    return real_states[index].numpy()


def _stack(emissions: Tensor, spans: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Frames [a, b) of each span as rows of a batch, padded at the end.
    Shape: -> (B, N, C), lengths (B,)."""
    N = max(b - a for a, b in spans)
    rows = emissions.new_full((len(spans), N, emissions.shape[1]), 0.0)
    for r, (a, b) in enumerate(spans):
        rows[r, :b - a] = emissions[a:b]
    return rows, torch.tensor([b - a for a, b in spans], device=emissions.device)


def _rows(graph: Graph, n: int) -> Graph:
    """The one-row graph repeated for n rows (views, no copies)."""
    return Graph(graph.labels.expand(n, -1), graph.skip_ok.expand(n, -1), graph.jump_from.expand(n, -1),
                 graph.num_states.expand(n), graph.pad_column, graph.jump_score)


def _run(emissions: Tensor, graph: Graph, group: list[_Lane], o: LaneOptions, guess: np.ndarray) -> None:
    """Run a group's lanes together: locate those that need it, then the band over the burn-in
    and the lane, keeping each lane's backpointers and its scores just before its first frame."""
    device = emissions.device
    S = int(graph.num_states[0])
    W = min(o.band, S)
    alpha = torch.full((len(group), W), -math.inf, device=device)  # (B, W) scores before each lane's start
    alpha[:, 0] = 0.0  # lane 0: from the text's start, state 0 "before frame 0" (lo = 0)
    lo = torch.zeros(len(group), dtype=torch.long, device=device)
    located = [k for k, lane in enumerate(group) if lane.first > 0]
    if located:  # a free-start search around the guess; the band starts around its best state
        half = min(2 * o.locate_tokens, S // 2)  # states either side of the guess
        spans = [(group[k].first - o.overlap_frames, group[k].first - o.overlap_frames + o.locate_frames)
                 for k in located]
        centre = torch.tensor([int(guess[b - 1]) for _, b in spans], device=device)
        window_lo = (centre - half).clamp(0, S - 2 * half)
        rows, lengths = _stack(emissions, spans)
        found = viterbi_forward(rows, lengths, _rows(graph, len(located)), width=2 * half, lo=window_lo,
                                alpha=torch.zeros(len(located), 2 * half, device=device), keep_backpointers=False)
        band_lo = (window_lo + found.alpha.argmax(dim=1) - W // 4).clamp(0, S - W)
        index = (band_lo - window_lo)[:, None] + torch.arange(W, device=device)  # (B, W) window index
        inside = (index >= 0) & (index < 2 * half)
        alpha[located] = torch.where(inside, found.alpha.gather(1, index.clamp(0, 2 * half - 1)), -math.inf)
        lo[located] = band_lo
        for k, (_, b) in zip(located, spans):
            group[k].start = b
    spans = [(lane.start, lane.end) for lane in group]
    rows, lengths = _stack(emissions, spans)
    forward = viterbi_forward(
        rows, lengths, _rows(graph, len(group)), width=W, lo=lo, alpha=alpha,
        first_frame=torch.tensor([a for a, _ in spans], device=device), shift_every=o.shift_frames, beam=o.beam,
        snapshot_step=torch.tensor([lane.first - 1 - lane.start for lane in group], device=device))
    _keep(group, forward, lengths)
    for k, lane in enumerate(group):
        lane.snapshot = (forward.snapshot[0][k], int(forward.snapshot[1][k]))


def _keep(lanes: list[_Lane], forward, lengths: Tensor) -> None:
    for k, lane in enumerate(lanes):
        n = int(lengths[k])
        lane.alpha, lane.lo = forward.alpha[k].clone(), int(forward.lo[k])
        lane.backpointers = forward.backpointers[k, :n].cpu().numpy()
        lane.starts = forward.band_starts[k, :n].cpu().numpy().astype(np.int32)


def _same_scores(alpha: Tensor, lo: int, reference: Tensor, reference_lo: int, beam: float) -> bool:
    """Whether two bands' scores are the same up to a constant, once floored at `beam` below
    their best: what decides every later move is then the same."""
    if lo != reference_lo or not torch.isfinite(alpha.max()) or not torch.isfinite(reference.max()):
        return False
    a = (alpha - alpha.max()).clamp(min=-beam)
    b = (reference - reference.max()).clamp(min=-beam)
    return bool(((a - b).abs() <= 1e-3).all())


def _rerun(emissions: Tensor, graph: Graph, lanes: list[_Lane], before: list[_Lane], o: LaneOptions) -> None:
    """Run lanes again from their predecessors' final scores: exact continuations."""
    device = emissions.device
    for lane in lanes:
        lane.start = lane.first
    spans = [(lane.first, lane.end) for lane in lanes]
    rows, lengths = _stack(emissions, spans)
    forward = viterbi_forward(rows, lengths, _rows(graph, len(lanes)), width=before[0].alpha.shape[0],
                              lo=torch.tensor([b.lo for b in before], device=device),
                              alpha=torch.stack([b.alpha for b in before]),
                              first_frame=torch.tensor([a for a, _ in spans], device=device),
                              shift_every=o.shift_frames, beam=o.beam)
    _keep(lanes, forward, lengths)
    for lane in lanes:
        lane.settled = True


def _walk_lanes(lanes: list[_Lane], graph: Graph, spill) -> np.ndarray | None:
    """Walk back from the text's end through the lanes, last to first."""
    last = lanes[-1]
    end, score = best_ends(last.alpha[None], torch.tensor([last.lo], device=last.alpha.device), _rows(graph, 1))
    if not math.isfinite(float(score[0])):
        return None
    jump_from = graph.jump_from[0].cpu().numpy()
    path = np.empty(last.end, dtype=np.int64)
    state = int(end[0])
    for lane in reversed(lanes):
        offset, frames, width = lane.spill
        spill.seek(offset)
        bp = np.frombuffer(spill.read(frames * width), dtype=np.int8).reshape(frames, width)
        first, end_local = lane.first - lane.start, lane.end - 1 - lane.start
        states = walk_back(bp, lane.starts, jump_from, end_local, state, first)
        path[lane.first:lane.end] = states
        if lane.first > 0:  # the move at its first frame leads into the lane before
            move = int(bp[first, states[0] - int(lane.starts[first])])
            state = int(jump_from[states[0]]) if move == JUMP else int(states[0]) - move
    return path
