"""Twenty SIGKILLs at random moments of one run lose nothing: the weights equal an
uninterrupted run's bit for bit.

Stronger than tests/train/test_checkpoint.py's two kills: each of the 20 kills hits one of
- an update in progress (a random delay after an update was logged),
- a checkpoint write (as soon as a `.tmp` file appears; checkpoints are written every update),
- start-up (importing, building, restoring, DataLoader workers starting),
and kills the whole process group, so the two DataLoader workers die with the trainer.
The kill moments come from a seeded RNG (seed 0, or `FAULT_SEED=N`), printed with the
figures (`-s` shows them). Moments are wall-clock, so a seed replays the same kinds of
kill at about the same points, not to the instruction.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wav2vec2.files import load_checkpoint
from wav2vec2.train import checkpoint as ckpt

from helpers import REPO, assert_same_weights, logged_updates, losses_by_update, processes, script_env

NUM_KILLS = 20
NUM_UPDATES = 60  # 20 kills, each at most a few updates past the last checkpoint


def _group_members(pgid: int) -> list[int]:
    return [pid for pid, fields in processes() if int(fields[2]) == pgid and fields[0] != "Z"]  # zombies are gone


def _tmp_files(run: Path) -> set[tuple[str, int]]:
    if not run.exists():
        return set()
    return {(p.name, p.stat().st_mtime_ns) for p in run.iterdir() if p.name.endswith(".tmp")}


def _restored_update(run: Path) -> int:
    found = ckpt.load_latest(run)
    return 0 if found is None else found[1]["num_updates"]


@pytest.mark.slow
def test_twenty_sigkills_at_random_moments_lose_nothing(tiny_corpus: Path, tmp_path: Path, train_script) -> None:
    seed = int(os.environ.get("FAULT_SEED", 0))
    print(f"\nFAULT_SEED={seed}")
    rng = random.Random(seed)
    common = [f"data.manifest_dir={tiny_corpus}", f"optim.max_update={NUM_UPDATES}", "checkpoint.save_every=1",
              "checkpoint.keep_last=1", "logging.tensorboard=false", "train.validate_every=0",
              "data.num_workers=2"]
    reference, run = tmp_path / "reference", tmp_path / "killed"
    train_script(*common, f"run_dir={reference}")

    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), *common, f"run_dir={run}"]
    kinds: dict[str, int] = {"update": 0, "write": 0, "startup": 0}
    redone = resumed = torn = 0
    for kill in range(NUM_KILLS):
        start = _restored_update(run)
        resumed += kill > 0 and start > 0
        tmp_before = _tmp_files(run)
        kind = rng.choice(list(kinds))
        proc = subprocess.Popen(cmd, env=script_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # its own process group, DataLoader workers included
        try:
            deadline = time.monotonic() + 60
            # Each kill lands within a few updates of where the run resumed, however fast the
            # machine, so the run never reaches its end before its kills are done.
            if kind == "startup":  # before the first new update is logged
                until = time.monotonic() + rng.uniform(0.2, 4.0)
                while time.monotonic() < until and max(logged_updates(run), default=0) <= start:
                    time.sleep(0.01)
            elif kind == "update":
                wanted = start + rng.randint(1, 2)
                while max(logged_updates(run), default=0) < wanted and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.1))
            else:  # the first checkpoint write after a random number of updates
                wanted = start + rng.randint(0, 1)
                while max(logged_updates(run), default=0) < wanted and time.monotonic() < deadline:
                    time.sleep(0.01)
                # Busy polling: a tiny checkpoint is written in milliseconds. Leftovers of
                # earlier kills do not count.
                stale = {name for name, _ in tmp_before}
                while time.monotonic() < deadline and not any(
                        n.endswith(".tmp") and n not in stale for n in (os.listdir(run) if run.exists() else ())):
                    pass
            assert proc.poll() is None, f"kill {kill}: the run ended (rc {proc.returncode}) before its kill"
            assert time.monotonic() < deadline, f"kill {kill} ({kind}): no progress in 60 s"
        finally:
            with contextlib.suppress(ProcessLookupError):  # only if the run already ended (then failing above)
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kinds[kind] += 1
        torn += bool(_tmp_files(run) - tmp_before)  # killed mid-write
        logged = max(logged_updates(run), default=0)
        redone += max(0, logged - _restored_update(run))  # logged past the checkpoint it will resume from
        for _ in range(100):  # SIGKILL is delivered at once; reaping the workers can lag a little
            if not _group_members(proc.pid):
                break
            time.sleep(0.05)
        assert not _group_members(proc.pid), f"kill {kill}: processes of the group survived"
    resumed += _restored_update(run) > 0
    train_script(*common, f"run_dir={run}")

    print(f"faults injected: {NUM_KILLS} ({kinds}), {torn} of them mid-write; "
          f"runs recovered: {NUM_KILLS}/{NUM_KILLS} relaunches, {resumed} from a checkpoint (the others were "
          f"killed before their first); logged updates redone: {redone}")
    a, b = load_checkpoint(reference / ckpt.LAST), load_checkpoint(run / ckpt.LAST)
    assert a["num_updates"] == b["num_updates"] == NUM_UPDATES
    assert_same_weights(a["model"], b["model"])
    la, lb = losses_by_update(reference), losses_by_update(run)
    assert list(lb) == list(range(1, NUM_UPDATES + 1)) and la == lb
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # torn writes cleaned up


@pytest.mark.slow
def test_a_torn_snapshot_write_leaves_no_temp_file(tiny_corpus: Path, tmp_path: Path, train_script) -> None:
    """save() writes checkpoint_last, then the snapshot; a kill during the snapshot's write
    resumes from last at the same update, so the snapshot's .tmp is never rewritten."""
    common = [f"data.manifest_dir={tiny_corpus}", "checkpoint.save_every=1", "checkpoint.keep_last=1",
              "logging.tensorboard=false", "train.validate_every=0", f"run_dir={tmp_path}"]
    train_script(*common, "optim.max_update=2")
    (tmp_path / (ckpt.snapshot_name(2) + ".tmp")).write_bytes(b"half a checkpoint")  # the torn write
    train_script(*common, "optim.max_update=3")
    assert load_checkpoint(tmp_path / ckpt.LAST)["num_updates"] == 3
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
