"""torchrun restarts a two-rank run after one worker is SIGKILLed, and nothing is lost.

torchrun's elastic agent sees rank 1 die (exit -9), stops rank 0, and, with
`--max-restarts=1`, starts both again; they resume from the run directory's last
checkpoint. The final weights equal those of an uninterrupted two-rank run bit for bit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wav2vec2.files import load_checkpoint
from wav2vec2.train import checkpoint as ckpt

from helpers import REPO, assert_same_weights, free_port, logged_updates, processes, script_env

NUM_UPDATES = 40  # long enough that the run is still going when rank 1 is killed, on a fast machine too
KILL_AT = 3  # updates the run has logged (and checkpointed) when rank 1 is killed


def _torchrun(corpus: Path, run: Path, log: Path) -> subprocess.Popen:
    # A fixed free port rather than `--standalone`: the agent's c10d store and the
    # workers' gloo group then never collide with another test's.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--monitor-interval=0.1",
           str(REPO / "scripts" / "train.py"), "--config-name", "tiny", f"data.manifest_dir={corpus}",
           f"run_dir={run}", f"optim.max_update={NUM_UPDATES}", "checkpoint.save_every=1",
           "checkpoint.keep_last=1", "logging.tensorboard=false", "train.validate_every=0"]
    # No TORCH_DISABLE_SHARE_RDZV_TCP_STORE: the restart must work as users launch it, which
    # on torch >= 2.5 depends on init_distributed's per-restart store prefix (#135712).
    return subprocess.Popen(cmd, env=script_env(), cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _children(pid: int) -> list[int]:
    return [child for child, fields in processes() if int(fields[1]) == pid]


def _worker_of_rank(agent: int, rank: int) -> int | None:
    for pid in _children(agent):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def _kill_workers(run: Path) -> None:
    """SIGKILL every process training into `run`: torchrun starts its workers in sessions
    of their own, so a failed torchrun can leave them hung on a collective."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"run_dir={run}".encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


def _finish(proc: subprocess.Popen, log: Path, timeout: float, run: Path) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"torchrun timed out:\n{log.read_text()[-4000:]}") from None
    finally:
        _kill_workers(run)  # none left after a clean exit; hung ones after a failure
    assert rc == 0, f"torchrun exited {rc}:\n{log.read_text()[-4000:]}"


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_loses_nothing(tiny_corpus: Path, tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    ref_log, killed_log = tmp_path / "reference.log", tmp_path / "killed.log"
    _finish(_torchrun(tiny_corpus, reference, ref_log), ref_log, timeout=120, run=reference)

    proc = _torchrun(tiny_corpus, killed, killed_log)
    try:
        deadline = time.monotonic() + 90
        while len(logged_updates(killed)) < KILL_AT:
            assert proc.poll() is None, f"finished before the kill:\n{killed_log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
        victim = _worker_of_rank(proc.pid, 1)
        assert victim is not None, "no worker with RANK=1 under torchrun"
        os.kill(victim, signal.SIGKILL)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _kill_workers(killed)
        raise
    _finish(proc, killed_log, timeout=120, run=killed)

    log = killed_log.read_text()
    # torchrun saw a worker fail: rank 1's SIGKILL (-9), or rank 0's exit 1 when its
    # collective lost rank 1, whichever it noticed first; either way it restarted the group.
    assert re.search(r"failed \(exitcode: (-9|1)\) local_rank: [01]", log), log[-4000:]
    restored = [int(u) for u in re.findall(r"restored \S+ at update (\d+)", log)]
    assert restored and restored[0] >= KILL_AT - 1, restored  # the restarted workers resumed
    a, b = load_checkpoint(reference / ckpt.LAST), load_checkpoint(killed / ckpt.LAST)
    assert a["num_updates"] == b["num_updates"] == NUM_UPDATES and b["world_size"] == 2
    assert_same_weights(a["model"], b["model"])
    assert logged_updates(killed) == list(range(1, NUM_UPDATES + 1))  # each update logged once
    assert not [p.name for p in killed.iterdir() if p.name.endswith(".tmp")]
