"""Long recordings in bounded memory: the best CTC path through a moving band of states,
computed in parallel lanes of time that check each other.

Why: the exact search (`viterbi.py`) keeps a byte per frame and state. An hour is 180,000
frames and its transcript some 50,000 tokens (S = 100,000 states): 18 GB. A band of W states
(`viterbi_forward(width=W)`) needs W bytes a frame, but one Python step per frame (~50 us of
small tensor operations) is 9 s an hour.

The band: at each frame it is centred on a guess of the path's state, the greedy reading's
count of tokens so far as a fraction of its total, applied to the text's tokens. (On 1 minute
of real speech with a model at 72% CER the guess stayed within 48 states of the exact path.)
Where the path comes within `EDGE` states of an edge the band was not wide enough there: the
search is run again with a band twice as wide, up to `max_band`.

Lanes: the file's frames are cut into lanes of `lane_frames`; lane k runs from
`overlap_frames` before its first frame f_k to its last, and the lanes of a group advance
together as the rows of one batch, one step per frame of a lane rather than of the file.
Lane 0 starts at the text's start; the others anywhere in their band (every state scored 0),
and their burn-in before f_k lets the scores settle.

Checked, not assumed: lane k's band scores after frame f_k - 1 are compared with lane k-1's
final ones, after the same frame (the same band, as both follow the same guide): equal up to a
constant, every later decision of lane k is the one lane k-1 would have taken had it gone on,
so the lanes' paths join into the path of one band run over the whole file. Not equal (the
scores had not settled in the burn-in): lane k is run again from lane k-1's final scores, a
continuation that is exact by construction, and lane k+1 is checked against that. When more
than half of a group's lanes had to be rerun, the lanes after it run one after the other from
the start: the sequential band search, slower but the same result. (That is what happens with
a model unsure of its letters: the best prefix is one that has read too little of the text,
and a lane started in the middle of the file does not rebuild that lag within its burn-in.)

Memory: a group's backpointers (`lanes_per_group` x lane frames x W bytes, 29 MB with the
defaults) go to a temporary file when the group is done and come back one lane at a time for
the walk back. What grows with the file is 8 bytes a frame of band starts and the path.
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
from wav2vec2.infer.viterbi import JUMP, Graph, band_start, best_ends, viterbi_forward, walk_back

EDGE = 4
"""A path this close to an edge of its band (one not at the graph's ends) may have been held in."""
_AFTER_JUMP = 128
"""States after a jump's target that the band holds too."""


@dataclass
class LaneOptions:
    band: int = 512
    """States kept per frame (256 tokens, some 15 s of speech); widened to hold the longest
    jump (a line that may be passed over) and `_AFTER_JUMP` states in half the band."""
    max_band: int = 8192
    """The widest band tried when the path touches an edge."""
    shift_frames: int = 25
    """The band moves (and scores are renormalised) every this many frames."""
    lane_frames: int = 3000
    """Frames per lane (60 s of 20 ms frames); a multiple of `shift_frames`."""
    overlap_frames: int = 750
    """Frames a lane runs before its first one, from a start anywhere in its band."""
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
    """(frames,) int64: the band's first state at each of them."""


def best_path_in_lanes(emissions: Tensor, graph: Graph, options: LaneOptions | None = None,
                       stats: dict | None = None) -> np.ndarray | None:
    """The best path's state at every frame, or None when no path ends in the text's end.

    Shape: emissions (T, C) with the graph's columns; graph of one row; returns (T,) int64.
    `stats`, if given, receives the band used and the numbers of lanes and reruns."""
    o = options or LaneOptions()
    if o.lane_frames % o.shift_frames or o.overlap_frames % o.shift_frames:
        raise ValueError("lane and overlap frames must be multiples of shift_frames")
    S = int(graph.num_states[0])
    jumps = graph.jump_from[0] >= 0
    if bool(jumps.any()):  # a jump and the states after it must fit in half the band
        span = int((torch.arange(len(jumps), device=jumps.device) - graph.jump_from[0])[jumps].max())
        o = dataclasses.replace(o, band=max(o.band, 2 * (span + _AFTER_JUMP)))
    guess = torch.from_numpy(_token_guess(emissions, graph)).to(emissions.device)  # (T,)
    stats = {} if stats is None else stats
    while True:
        path, starts = _lanes(emissions, graph, o, guess, stats)
        width = min(o.band, S)
        if width == S or o.band >= o.max_band:
            break
        if path is not None:  # the path against its band's edges, where they are not the graph's
            low = (path - starts < EDGE) & (starts > 0)
            high = (starts + width - 1 - path < EDGE) & (starts < S - width)
            if not (low | high).any():
                break
        o = dataclasses.replace(o, band=min(2 * o.band, o.max_band))
    stats["band"] = min(o.band, S)
    return path


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


def _lanes(emissions: Tensor, graph: Graph, o: LaneOptions, guess: Tensor, stats: dict):
    """One search with band `o.band`: (path or None, band start at every frame)."""
    T = emissions.shape[0]
    lanes = [_Lane(f, min(f + o.lane_frames, T)) for f in range(0, T, o.lane_frames)]
    reruns, parallel = 0, True
    with tempfile.TemporaryFile(prefix="wav2vec2-align-") as spill:
        for g in range(0, len(lanes), o.lanes_per_group):
            group = lanes[g:g + o.lanes_per_group]
            if not parallel:  # lanes have not been settling: continue one lane after the other
                for k, lane in enumerate(group):
                    _rerun(emissions, graph, [lane], [lanes[g + k - 1]], o, guess)
            else:
                _run(emissions, graph, group, o, guess)
            rerun_here = 0
            while not all(lane.settled for lane in group):
                # Lanes whose predecessor is settled: settled if their scores match its final
                # ones, else rerun from those (all such lanes at once).
                before = [lanes[g + k - 1] if g + k else None for k in range(len(group))]
                ready = [k for k, lane in enumerate(group) if not lane.settled
                         and (before[k] is None or before[k].settled)]
                rerun = []
                for k in ready:
                    lane, b = group[k], before[k]
                    lane.settled = b is None or _same_scores(*lane.snapshot, b.alpha, b.lo)
                    if not lane.settled:
                        rerun.append(k)
                if rerun:
                    rerun_here += len(rerun)
                    _rerun(emissions, graph, [group[k] for k in rerun], [before[k] for k in rerun], o, guess)
            reruns += rerun_here
            parallel = parallel and rerun_here <= len(group) // 2
            for lane in group:  # out of memory until the walk back
                spill.seek(0, 2)
                lane.spill = (spill.tell(), *lane.backpointers.shape)
                spill.write(lane.backpointers.tobytes())
                lane.backpointers = None
        stats.update(lanes=len(lanes), reruns=stats.get("reruns", 0) + reruns, parallel=parallel)
        starts = np.concatenate([lane.starts[lane.first - lane.start:] for lane in lanes])
        return _walk_lanes(lanes, graph, spill), starts


def _stack(emissions: Tensor, guess: Tensor, spans: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Frames [a, b) of each span as rows of a batch, padded at the end, with their guesses
    (the last one repeated over the padding, so a band stays where its row ended).
    Shape: -> (B, N, C), (B, N), lengths (B,)."""
    N = max(b - a for a, b in spans)
    rows = emissions.new_zeros(len(spans), N, emissions.shape[1])
    centres = guess.new_zeros(len(spans), N)
    for r, (a, b) in enumerate(spans):
        rows[r, :b - a], centres[r, :b - a], centres[r, b - a:] = emissions[a:b], guess[a:b], guess[b - 1]
    return rows, centres, torch.tensor([b - a for a, b in spans], device=emissions.device)


def _rows(graph: Graph, n: int) -> Graph:
    """The one-row graph repeated for n rows (views, no copies)."""
    return Graph(graph.labels.expand(n, -1), graph.skip_ok.expand(n, -1), graph.jump_from.expand(n, -1),
                 graph.num_states.expand(n), graph.pad_column, graph.jump_scores.expand(n, -1))


def _run(emissions: Tensor, graph: Graph, group: list[_Lane], o: LaneOptions, guess: Tensor) -> None:
    """Run a group's lanes together, from the text's start (lane 0) or from anywhere in their
    band (the others, over their burn-in), keeping their backpointers and their scores just
    before their first frame."""
    device = emissions.device
    S = int(graph.num_states[0])
    W = min(o.band, S)
    for lane in group:
        lane.start = max(lane.first - o.overlap_frames, 0)
    spans = [(lane.start, lane.end) for lane in group]
    lo = torch.minimum(band_start(guess[[a for a, _ in spans]], W), torch.tensor(S - W, device=device))
    alpha = torch.zeros(len(group), W, device=device)  # (B, W): anywhere in the band...
    if group[0].first == 0:  # ...but lane 0: from state 0 "before frame 0"
        lo[0] = 0
        alpha[0] = -math.inf
        alpha[0, 0] = 0.0
    rows, centres, lengths = _stack(emissions, guess, spans)
    forward = viterbi_forward(rows, lengths, _rows(graph, len(group)), width=W, lo=lo, alpha=alpha,
                              first_frame=torch.tensor([a for a, _ in spans], device=device),
                              shift_every=o.shift_frames, band_centres=centres,
                              snapshot_step=torch.tensor([lane.first - 1 - lane.start for lane in group],
                                                         device=device))
    _keep(group, forward, lengths)
    for k, lane in enumerate(group):
        lane.snapshot = (forward.snapshot[0][k], int(forward.snapshot[1][k]))


def _keep(lanes: list[_Lane], forward, lengths: Tensor) -> None:
    for k, lane in enumerate(lanes):
        n = int(lengths[k])
        lane.alpha, lane.lo = forward.alpha[k].clone(), int(forward.lo[k])
        lane.backpointers = forward.backpointers[k, :n].cpu().numpy()
        lane.starts = forward.band_starts[k, :n].cpu().numpy()


def _same_scores(alpha: Tensor, lo: int, reference: Tensor, reference_lo: int) -> bool:
    """Whether two bands' scores are the same up to a constant: what decides every later move
    is then the same."""
    if lo != reference_lo or not torch.equal(torch.isfinite(alpha), torch.isfinite(reference)):
        return False
    finite = torch.isfinite(alpha)
    if not finite.any():
        return False
    a, b = alpha[finite], reference[finite]
    return bool((((a - a.max()) - (b - b.max())).abs() <= 1e-3).all())


def _rerun(emissions: Tensor, graph: Graph, lanes: list[_Lane], before: list[_Lane], o: LaneOptions,
           guess: Tensor) -> None:
    """Run lanes again from their predecessors' final scores: exact continuations."""
    device = emissions.device
    for lane in lanes:
        lane.start = lane.first
    spans = [(lane.first, lane.end) for lane in lanes]
    rows, centres, lengths = _stack(emissions, guess, spans)
    forward = viterbi_forward(rows, lengths, _rows(graph, len(lanes)), width=before[0].alpha.shape[0],
                              lo=torch.tensor([b.lo for b in before], device=device),
                              alpha=torch.stack([b.alpha for b in before]),
                              first_frame=torch.tensor([a for a, _ in spans], device=device),
                              shift_every=o.shift_frames, band_centres=centres)
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
