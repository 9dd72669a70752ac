"""What the trainer does with faults it survives: updates skipped for inf/nan, and audio
files the data pipeline replaced. Kept out of the loop so `trainer.py` reads as the loop."""

from __future__ import annotations

import logging
import math
from pathlib import Path

log = logging.getLogger("wav2vec2.train")


class NonFiniteTrainingError(FloatingPointError):
    """Too many updates in a row with an inf/nan loss or gradient norm (the message says
    what usually causes it)."""


def too_many_nonfinite(consecutive: int, *, update: int, limit: int, run_dir: Path) -> NonFiniteTrainingError:
    """The error that stops a run after `consecutive` non-finite updates, with the likely
    causes (the spec's §10) and what to do."""
    return NonFiniteTrainingError(
        f"{consecutive} updates in a row had a non-finite loss or gradient norm (update {update}; "
        f"train.max_consecutive_nonfinite={limit}): training stopped. The checkpoints in {run_dir} are left "
        "as they were (no state after a non-finite update is ever saved). Likely causes: a learning rate too "
        "high or too little warm-up (lower optim.lr, raise optim.warmup_updates, set optim.clip_norm); fp16 "
        "overflow (use precision.dtype=bf16, or fp32); the feature penalty or model.feature_grad_mult blowing "
        "up the feature encoder; a corrupt, empty or silent file (a constant clip with data.normalize=true "
        "divides by zero): the files of each skipped batch are in the warnings above. Fix the cause, then "
        "rerun the same command to resume from that checkpoint.")


class NonFiniteSkips:
    """Updates skipped for an inf/nan loss or gradient norm (fp32/bf16): `total` over the
    whole run, and in a row; more than `limit` in a row stops the run."""

    def __init__(self, *, limit: int, run_dir: Path, rank: int) -> None:
        self.limit, self.run_dir, self.rank = limit, run_dir, rank
        self.total = 0
        self.in_a_row = 0

    def skipped(self, update: int, *, loss_sum: float, grad_norm: float, files: list[str]) -> None:
        """Count and warn about skipped `update`, naming this rank's `files`; raise
        NonFiniteTrainingError past the limit. Every rank calls it for the same update (both
        numbers are all-reduced), and each names its own share of the batch."""
        self.total += 1
        self.in_a_row += 1
        log.warning("non-finite %s at update %d (loss sum %g, grad norm %g): update skipped (%d in a row, %d "
                    "in this run); rank %d's batch: %s", "loss" if not math.isfinite(loss_sum) else "gradient norm",
                    update, loss_sum, grad_norm, self.in_a_row, self.total, self.rank, "; ".join(files))
        if self.in_a_row > self.limit:
            raise too_many_nonfinite(self.in_a_row, update=update, limit=self.limit, run_dir=self.run_dir)


class BadFileLog:
    """This rank's list of replaced audio files, `run_dir/bad_files.rank{R}.txt`: lines
    "path (manifest:line): reason", each once per run (re-read on resume). One file per rank:
    no cross-rank traffic, no two writers on one file."""

    def __init__(self, run_dir: Path, rank: int) -> None:
        self.path = Path(run_dir) / f"bad_files.rank{rank}.txt"
        self.seen = set(self.path.read_text().splitlines()) if self.path.is_file() else set()

    def take(self, batch: dict, *, update: int) -> int:
        """Pop `batch["bad_files"]` (set by `data.bad_files: skip`, absent when no file was
        replaced), list and warn the files not seen before; return how many this batch had."""
        lines = batch.pop("bad_files", None) or []
        new = [line for line in dict.fromkeys(lines) if line not in self.seen]
        if new:
            self.seen.update(new)
            self.path.parent.mkdir(parents=True, exist_ok=True)  # rank > 0 on a node of its own
            with open(self.path, "a") as f:
                f.write("".join(f"{line}\n" for line in new))
            for line in new:
                log.warning("bad file left out of training at update %d: %s (listed in %s)", update, line,
                            self.path.name)
        return len(lines)
