"""Checkpoint files are atomic: a SIGKILL anywhere never leaves a run that cannot resume."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from wav2vec2.files import NotACheckpointError, UnsafeCheckpointError, load_checkpoint
from wav2vec2.train import checkpoint as ckpt

from helpers import REPO, assert_same_weights, losses_by_update, script_env



def test_save_writes_last_snapshot_best_and_prunes(tmp_path: Path) -> None:
    for u in (2, 4, 6):
        ckpt.save(tmp_path, {"num_updates": u}, snapshot=True, best=u == 4, keep_last=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint_00000004.pt", "checkpoint_00000006.pt", "checkpoint_best.pt",
                     "checkpoint_last.pt"]
    assert load_checkpoint(tmp_path / ckpt.BEST)["num_updates"] == 4
    assert load_checkpoint(tmp_path / ckpt.LAST)["num_updates"] == 6


def test_find_latest_skips_torn_files(tmp_path: Path) -> None:
    assert ckpt.find_latest(tmp_path) is None
    ckpt.save(tmp_path, {"num_updates": 3}, snapshot=True, best=False, keep_last=0)
    (tmp_path / "checkpoint_last.pt.tmp").write_bytes(b"half a pickle")  # killed mid-write
    assert ckpt.find_latest(tmp_path) == tmp_path / ckpt.LAST
    (tmp_path / ckpt.LAST).write_bytes(b"garbage")  # e.g. a disk fault: fall back to a snapshot
    path, state = ckpt.load_latest(tmp_path)
    assert path.name == "checkpoint_00000003.pt" and state["num_updates"] == 3


_WRITER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from wav2vec2.files import atomic_write, serialize
    target = Path(sys.argv[1])
    i = 0
    while True:  # ~8 MB payloads, so a kill often lands mid-write
        i += 1
        atomic_write(target, serialize({"i": i, "x": torch.full((2_000_000,), float(i))}))
        print(i, flush=True)
""")


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_file(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    target = tmp_path / "checkpoint_last.pt"
    rng = random.Random(0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline()  # at least one complete write
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_checkpoint(target)
        assert torch.all(state["x"] == float(state["i"]))


def test_sigkill_during_training_resumes_to_the_same_weights(
    tiny_corpus: Path, tmp_path: Path, train_script
) -> None:
    """Kill a run at a random moment (checkpoints are written every update, so this is
    often mid-write), rerun it, and get the weights of an uninterrupted run."""
    common = [f"data.manifest_dir={tiny_corpus}", "optim.max_update=24", "checkpoint.save_every=1",
              "checkpoint.keep_last=1", "logging.tensorboard=false", "train.validate_every=0"]
    reference = tmp_path / "reference"
    train_script(*common, f"run_dir={reference}")

    killed = tmp_path / "killed"
    rng = random.Random(1)
    for _ in range(2):  # two kills at random updates
        proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *common, f"run_dir={killed}"],
                                env=script_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_after = rng.randint(1, 20)
        metrics = killed / "metrics.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and metrics.read_text().count('"split": "train"') >= kill_after:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert ckpt.find_latest(killed) is not None
    train_script(*common, f"run_dir={killed}")

    a, b = load_checkpoint(reference / ckpt.LAST), load_checkpoint(killed / ckpt.LAST)
    assert a["num_updates"] == b["num_updates"] == 24
    assert_same_weights(a["model"], b["model"])
    # metrics.jsonl lost what the killed runs logged past their checkpoints: no duplicates.
    la, lb = (losses_by_update(run) for run in (reference, killed))
    assert list(lb) == list(range(1, 25)) and la == lb




@pytest.mark.parametrize(("content", "what"), [
    (b"", r"it is empty \(0 bytes\)"),
    (b"hello, I am a README\n", r"it is a text file"),
    ("truncated", r"a zip archive that is truncated or corrupt \([\d,]+ bytes; a copy cut off\?\)"),
    (b"\x00\xff" * 64, r"its 128 bytes are neither a zip archive nor a pickle( \(\w+: .*\))?"),
])
def test_a_file_that_is_not_a_checkpoint_is_one_line_naming_it(tmp_path: Path, content, what) -> None:
    """#19: a text file or a copy cut off as `--model`/`task.init` was a 20-29 line traceback."""
    path = tmp_path / "model.pt"
    if content == "truncated":
        whole = tmp_path / "whole.pt"
        torch.save({"model": {"w": torch.zeros(1000)}}, whole)
        content = whole.read_bytes()[: whole.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(NotACheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path} is not a PyTorch checkpoint: ")
    assert re.fullmatch(what, message.removeprefix(f"{path} is not a PyTorch checkpoint: ")), message


class _RunsCode:
    """Unpickling this calls a function of the file's choosing (here a harmless one)."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_checkpoint_that_would_run_code_is_refused_by_every_loader(tmp_path: Path, capsys, make_ctc_cfg) -> None:
    from wav2vec2.infer.features import load_extractor
    from wav2vec2.infer.recognizer import load_recognizer
    from wav2vec2.tasks import build_task

    evil = tmp_path / "checkpoint_last.pt"
    torch.save({"model": {}, "config": {}, "num_updates": 1, "payload": _RunsCode()}, evil)
    with pytest.raises(UnsafeCheckpointError, match="builtins.print"):
        load_checkpoint(evil)
    with pytest.raises(UnsafeCheckpointError):
        load_recognizer(evil)  # transcribing or scoring with it
    with pytest.raises(UnsafeCheckpointError):
        build_task(make_ctc_cfg(f"task.init={evil}")).prepare()  # fine-tuning from it
    with pytest.raises(UnsafeCheckpointError):
        load_extractor(evil, normalize=False)  # extracting features with it
    assert ckpt.load_latest(tmp_path) is None  # resuming: skipped, with a warning
    assert "this ran while loading" not in capsys.readouterr().out


def test_checkpoints_hold_only_tensors_and_plain_containers(tmp_path: Path) -> None:
    """RNG states included: plain torch.load(weights_only=True), no allow-list, reads them,
    and restoring them gives the same next draws."""
    import numpy as np

    from wav2vec2.train import rng as state

    path = tmp_path / "c.pt"
    torch.save({"rng": state.rng_state()}, path)
    want = (np.random.rand(), torch.rand(()).item())
    loaded = torch.load(path, weights_only=True)
    state.set_rng_state(loaded["rng"])
    assert (np.random.rand(), torch.rand(()).item()) == want
    # A checkpoint written before (NumPy's state as a tuple with an array) still loads and restores.
    old = {**state.rng_state(), "numpy": np.random.get_state()}
    torch.save({"rng": old}, path)
    want = np.random.rand()
    state.set_rng_state(load_checkpoint(path)["rng"])
    assert np.random.rand() == want
