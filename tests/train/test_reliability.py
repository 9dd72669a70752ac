"""Surviving preemption, NaNs, bad data, full disks and hung ranks without losing an update."""

from __future__ import annotations

import copy
import errno
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from wav2vec2 import files
from wav2vec2.files import atomic_write, load_checkpoint, serialize
from wav2vec2.train import checkpoint as ckpt
from wav2vec2.train.faults import NonFiniteTrainingError
from wav2vec2.train.trainer import Trainer

from helpers import REPO, assert_same_weights, free_port, make_trainer, records, script_env

FAST = ["optim.max_update=4", "train.validate_every=0", "data.valid_subset=", "checkpoint.save_every=100"]


# ------------------------------------------------------------------ preemption
@pytest.mark.slow
def test_sigterm_exits_75_and_the_rerun_ends_on_the_uninterrupted_weights(tiny_corpus: Path, tmp_path: Path) -> None:
    common = [str(REPO / "scripts" / "train.py"), f"data.manifest_dir={tiny_corpus}", "optim.max_update=20",
              "checkpoint.save_every=100", "logging.tensorboard=false", "train.validate_every=0",
              "data.valid_subset=", "data.num_workers=1"]
    reference, preempted = tmp_path / "reference", tmp_path / "preempted"
    done = subprocess.run([sys.executable, *common, f"run_dir={reference}"], env=script_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen([sys.executable, *common, f"run_dir={preempted}"], env=script_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = preempted / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not metrics.exists() or metrics.read_text().count('"split": "train"') < 2:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-3000:]
    assert "Traceback" not in out
    assert "rerun the same command to resume" in out.strip().splitlines()[-1]
    stopped_at = load_checkpoint(preempted / ckpt.LAST)["num_updates"]
    assert 2 <= stopped_at < 20

    rerun = subprocess.run([sys.executable, *common, f"run_dir={preempted}"], env=script_env(), cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    a, b = load_checkpoint(reference / ckpt.LAST), load_checkpoint(preempted / ckpt.LAST)
    assert a["num_updates"] == b["num_updates"] == 20
    assert_same_weights(a["model"], b["model"])


def test_time_limit_stops_as_preempted_and_a_finished_run_is_not(make_tiny_cfg, tmp_path: Path) -> None:
    run = tmp_path / "run"
    limited = make_trainer(make_tiny_cfg(*FAST, "train.time_limit_minutes=1e-9", run_dir=run))
    limited.fit()
    assert limited.stop_reason == "preempted" and limited.num_updates == 1
    assert load_checkpoint(run / ckpt.LAST)["num_updates"] == 1
    finished = make_trainer(make_tiny_cfg(*FAST, run_dir=run))
    finished.fit()
    assert finished.stop_reason is None and finished.num_updates == 4


# ------------------------------------------------------------------ non-finite updates
def _poison(trainer: Trainer, attempts: set[int] | None, how: str) -> list[int]:
    """Make the trainer's update attempts (counted from 1) in `attempts` (None: all)
    non-finite: "source" feeds NaN audio, "loss" adds inf to the loss (gradients stay finite)."""
    real_loss = trainer.task.loss
    seen: list[int] = []  # attempt of each micro-batch
    calls = {"attempt": 0}
    real_step = trainer.train_step

    def step(micro, **kw):
        calls["attempt"] += 1
        return real_step(micro, **kw)

    def loss(model, batch, **kw):
        seen.append(calls["attempt"])
        bad = attempts is None or calls["attempt"] in attempts
        if bad and how == "source":
            batch = {**batch, "source": batch["source"] * math.nan}
        out = real_loss(model, batch, **kw)
        if bad and how == "loss":
            out.loss = out.loss + math.inf
        return out

    trainer.train_step = step
    trainer.task.loss = loss
    return seen


def _optimizer_state(trainer: Trainer) -> list[dict]:
    return [copy.deepcopy({k: v.clone() for k, v in s.items()}) for s in trainer.optimizer.state.values()]


@pytest.mark.parametrize(("task", "how"), [("pretrain", "source"), ("pretrain", "loss"), ("ctc", "source")])
def test_a_non_finite_update_is_skipped_counted_and_training_goes_on(
    task, how, make_tiny_cfg, make_ctc_cfg, tmp_path: Path, caplog
) -> None:
    """Update attempt 3 is poisoned: it changes nothing (weights, Adam state, update count,
    lr, temperature), is logged with its files and counted; attempt 4 makes update 3."""
    make = make_tiny_cfg if task == "pretrain" else make_ctc_cfg
    clean_run, run = tmp_path / "clean", tmp_path / "poisoned"
    make_trainer(make(*FAST, run_dir=clean_run)).fit()
    trainer = make_trainer(make(*FAST, "checkpoint.save_every=2", run_dir=run))
    _poison(trainer, {3}, how)
    real_step = trainer.train_step
    around_skip = {}
    positions = []  # (epoch, position) of each attempt's batch

    def step(micro, **kw):
        positions.append([m[:2] for m in micro])
        if trainer.num_updates == 2 and not around_skip:
            around_skip["before"] = (_optimizer_state(trainer), copy.deepcopy(trainer.model.state_dict()))
            out = real_step(micro, **kw)
            around_skip["after"] = (_optimizer_state(trainer), copy.deepcopy(trainer.model.state_dict()),
                                    trainer.num_updates, out)
            return out
        return real_step(micro, **kw)

    trainer.train_step = step
    with caplog.at_level(logging.WARNING, logger="wav2vec2"):
        trainer.fit()
    assert trainer.num_updates == 4 and trainer.nonfinite.total == 1 and trainer.stop_reason is None

    opt_before, model_before = around_skip["before"]
    opt_after, model_after, updates_after, out = around_skip["after"]
    assert out is None and updates_after == 2
    assert len(positions) == 5 and positions[3] != positions[2]  # the data stream did advance
    for a, b in zip(opt_before, opt_after):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(model_before[k], model_after[k]) for k in model_before)

    clean, poisoned = records(clean_run), records(run)
    assert [r["num_updates"] for r in poisoned] == [1, 2, 3, 4]
    assert [r["lr"] for r in clean] == [r["lr"] for r in poisoned]
    if task == "pretrain":
        assert [r["temperature"] for r in clean] == [r["temperature"] for r in poisoned]
    assert [r.get("nonfinite_skips") for r in poisoned] == [None, None, 1, 1]
    assert all(math.isfinite(r["loss"]) for r in poisoned)
    assert load_checkpoint(run / ckpt.LAST)["nonfinite_skips"] == 1
    warning = next(r.getMessage() for r in caplog.records if "non-finite" in r.getMessage())
    assert "update 3" in warning and "train.tsv:" in warning and "utt000" in warning
    assert "non-finite loss" in warning and ("grad norm nan" in warning) == (how == "source")


@pytest.mark.parametrize("task", ["pretrain", "ctc"])
def test_a_diverged_model_stops_with_the_causes_and_keeps_the_last_good_checkpoint(
    task, make_tiny_cfg, make_ctc_cfg, tmp_path: Path
) -> None:
    make = make_tiny_cfg if task == "pretrain" else make_ctc_cfg
    run = tmp_path / "run"
    trainer = make_trainer(make("optim.max_update=20", "train.validate_every=0", "data.valid_subset=",
                            "checkpoint.save_every=2", "train.max_consecutive_nonfinite=2", run_dir=run))
    _poison(trainer, set(range(5, 100)), "source")  # updates 1-4 are fine, then every attempt is NaN
    good = None

    real_save = trainer.save

    def save(**kw):
        nonlocal good
        real_save(**kw)
        good = (run / ckpt.LAST).read_bytes()

    trainer.save = save
    with pytest.raises(NonFiniteTrainingError) as err:
        trainer.fit()
    message = str(err.value)
    assert "3 updates in a row" in message and "train.max_consecutive_nonfinite=2" in message
    for cause in ("optim.lr", "warmup", "bf16", "feature_grad_mult", "data.normalize"):
        assert cause in message
    assert trainer.num_updates == 4 and trainer.nonfinite.total == 3
    assert (run / ckpt.LAST).read_bytes() == good and load_checkpoint(run / ckpt.LAST)["num_updates"] == 4


def test_zero_tolerance_stops_at_the_first_non_finite_update(make_tiny_cfg, tmp_path: Path) -> None:
    trainer = make_trainer(make_tiny_cfg(*FAST, "train.max_consecutive_nonfinite=0"))
    _poison(trainer, {2}, "loss")
    with pytest.raises(NonFiniteTrainingError, match="1 updates in a row"):
        trainer.fit()
    assert trainer.num_updates == 1


_NAN_DRIVER = textwrap.dedent("""
    import math, sys
    from wav2vec2.tasks.pretrain import PretrainTask
    real = PretrainTask.loss

    def loss(self, model, batch, *, num_updates, generator):
        if num_updates >= 2:
            batch = {**batch, "source": batch["source"] * math.nan}
        return real(self, model, batch, num_updates=num_updates, generator=generator)

    PretrainTask.loss = loss
    from wav2vec2.train.cli import main
    sys.argv = ["train.py", *sys.argv[1:]]
    main()
""")


def test_a_diverged_run_exits_non_zero_through_the_cli(tiny_corpus: Path, tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(_NAN_DRIVER)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(driver), f"data.manifest_dir={tiny_corpus}", f"run_dir={run}",
                           "optim.max_update=10", "checkpoint.save_every=2", "train.validate_every=0",
                           "data.valid_subset=", "logging.tensorboard=false", "train.max_consecutive_nonfinite=1"],
                          env=script_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "2 updates in a row had a non-finite loss or gradient norm" in proc.stderr
    assert load_checkpoint(run / ckpt.LAST)["num_updates"] == 2


# ------------------------------------------------------------------ bad files from the data pipeline
def test_bad_files_of_a_batch_are_listed_warned_counted_and_kept_from_the_task(
    make_tiny_cfg, tmp_path: Path, caplog
) -> None:
    run = tmp_path / "run"
    trainer = make_trainer(make_tiny_cfg(*FAST, "optim.update_freq=2", run_dir=run))
    reports = {2: ["/a/x.wav (train.tsv:3): cannot read audio"],
               5: ["/a/y.wav (train.tsv:7): silent", "/a/x.wav (train.tsv:3): cannot read audio"]}
    real_next, real_loss = trainer.stream.next, trainer.task.loss
    taken = {"n": 0}

    def next_batch():
        epoch, position, batch = real_next()
        taken["n"] += 1
        if taken["n"] in reports:
            batch = {**batch, "bad_files": list(reports[taken["n"]])}
        return epoch, position, batch

    def loss(model, batch, **kw):
        assert "bad_files" not in batch
        return real_loss(model, batch, **kw)

    trainer.stream.next, trainer.task.loss = next_batch, loss
    with caplog.at_level(logging.WARNING, logger="wav2vec2"):
        trainer.fit()
    listed = (run / "bad_files.rank0.txt").read_text().splitlines()
    assert listed == ["/a/x.wav (train.tsv:3): cannot read audio", "/a/y.wav (train.tsv:7): silent"]
    warned = [r.getMessage() for r in caplog.records if "bad file" in r.getMessage()]
    assert len(warned) == 2 and "update 1" in warned[0] and "update 3" in warned[1]
    assert [r.get("bad_files") for r in records(run)] == [1, 1, 3, 3]  # files replaced so far
    assert load_checkpoint(run / ckpt.LAST)["bad_files"] == 3


def test_batches_without_bad_files_leave_no_trace(make_tiny_cfg, tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_trainer(make_tiny_cfg("optim.max_update=2", "train.validate_every=0", run_dir=run)).fit()
    assert not list(run.glob("bad_files*"))
    assert all("bad_files" not in r and "nonfinite_skips" not in r for r in records(run))


# ------------------------------------------------------------------ disk failures
def _fail_fsync(monkeypatch, *, after: int = 0) -> None:
    """os.fsync of checkpoint files raises ENOSPC after `after` successful calls."""
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        if not isinstance(fd, int) or not os.path.isdir(f"/proc/self/fd/{fd}"):
            calls["n"] += 1
            if calls["n"] > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    ckpt.save(tmp_path, {"num_updates": 2}, snapshot=True, best=False, keep_last=1)
    _fail_fsync(monkeypatch)
    with pytest.raises(ckpt.CheckpointWriteError) as err:
        ckpt.save(tmp_path, {"num_updates": 4}, snapshot=True, best=False, keep_last=1)
    assert str(tmp_path / ckpt.LAST) in str(err.value) and "errno 28, ENOSPC" in str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_00000002.pt", "checkpoint_last.pt"]
    assert load_checkpoint(tmp_path / ckpt.LAST)["num_updates"] == 2


def test_a_run_that_cannot_checkpoint_stops_with_an_error(make_tiny_cfg, tmp_path: Path, monkeypatch, caplog) -> None:
    run = tmp_path / "run"
    trainer = make_trainer(make_tiny_cfg("optim.max_update=6", "train.validate_every=0", "data.valid_subset=",
                                     "checkpoint.save_every=2", run_dir=run))
    _fail_fsync(monkeypatch, after=2)  # the save at update 2 (last + snapshot) works, the next fails
    with caplog.at_level(logging.ERROR, logger="wav2vec2"), pytest.raises(ckpt.CheckpointWriteError):
        trainer.fit()
    assert trainer.num_updates == 4
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and str(run / ckpt.LAST) in errors[0] and "ENOSPC" in errors[0]
    assert not list(run.glob("*.tmp"))
    assert load_checkpoint(run / ckpt.LAST)["num_updates"] == 2


def test_pruning_never_deletes_the_only_loadable_snapshot(tmp_path: Path) -> None:
    for u in (2, 4):
        ckpt.save(tmp_path, {"num_updates": u}, snapshot=True, best=False, keep_last=0)
    (tmp_path / "checkpoint_00000004.pt").write_bytes(b"torn")
    ckpt.prune_snapshots(tmp_path, keep_last=1)
    assert [p.name for p in ckpt.snapshots(tmp_path)] == ["checkpoint_00000002.pt", "checkpoint_00000004.pt"]
    ckpt.save(tmp_path, {"num_updates": 6}, snapshot=True, best=False, keep_last=1)  # a good one again
    assert [p.name for p in ckpt.snapshots(tmp_path)] == ["checkpoint_00000006.pt"]


# ------------------------------------------------------------------ hung ranks
def _hang_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    from wav2vec2.train import distributed as dist_utils

    dist_utils.init_distributed(backend="gloo", device="cpu", timeout_minutes=2 / 60)
    if rank == 1:
        time.sleep(6)  # never joins the collective (a rank stuck in I/O)
        os._exit(0)
    t0 = time.monotonic()
    try:
        dist_utils.all_reduce_sum(torch.ones(1))
        result = "no error"
    except dist_utils.CollectiveTimeoutError as err:
        result = f"{time.monotonic() - t0:.1f} {err}"
    Path(out).write_text(result)
    # Leave without tearing down a process group whose collective failed: gloo's destructor
    # may std::terminate then (what a trainer that stops on the error does not care about).
    os._exit(0)


@pytest.mark.slow  # ~10 s: two processes importing torch
def test_a_rank_that_never_joins_a_collective_times_out_with_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    mp.spawn(_hang_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    waited, message = out.read_text().split(" ", 1)
    assert float(waited) < 10
    assert message.startswith("rank 0 of 2: collective all_reduce timed out")
    assert "distributed.timeout_minutes" in message and "crashed" in message


def _ddp_nan_worker(rank: int, port: int, cfg, out: str) -> None:
    """Rank 1's loss of the 2nd update attempt is inf (its gradients stay finite, so
    only the all-reduced loss tells rank 0 to skip too); rank 0's is fine."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    from wav2vec2.train import distributed as dist_utils

    trainer = make_trainer(cfg)
    _poison(trainer, {2} if rank == 1 else set(), "loss")
    trainer.fit()
    Path(f"{out}.{rank}").write_text(json.dumps([trainer.num_updates, trainer.nonfinite.total]))
    dist_utils.destroy()


@pytest.mark.slow  # ~15 s: two processes
def test_every_rank_skips_when_one_rank_has_a_non_finite_loss(make_tiny_cfg, tmp_path: Path) -> None:
    cfg = make_tiny_cfg("optim.max_update=3", "train.validate_every=0", "data.valid_subset=",
                        "checkpoint.save_every=100", "data.max_tokens=16000", "model.transformer.layerdrop=0",
                        "distributed.timeout_minutes=0.5")  # ranks that disagree fail fast, not hang
    out = str(tmp_path / "result")
    mp.spawn(_ddp_nan_worker, args=(free_port(), cfg, out), nprocs=2, join=True)
    assert [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)] == [[3, 1], [3, 1]]
    state = load_checkpoint(tmp_path / "run" / ckpt.LAST)
    assert state["num_updates"] == 3 and state["nonfinite_skips"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


# ------------------------------------------------------------------ checkpoint config
@pytest.mark.parametrize(("edit", "key"), [(("optim", "lrr", 1e-3), "optim.lrr"),
                                           (("model", "final_dim", "wide"), "model.final_dim")])
def test_a_checkpoint_whose_config_does_not_fit_the_schema_is_refused_naming_the_key(
        make_tiny_cfg, tmp_path: Path, edit, key) -> None:
    run = tmp_path / "run"
    make_trainer(make_tiny_cfg(*FAST, "train.stop_at_update=1", run_dir=run)).fit()
    state = load_checkpoint(run / ckpt.LAST)
    section, name, value = edit
    state["config"][section][name] = value  # a key of another version, or a hand edit
    atomic_write(run / ckpt.LAST, serialize(state))
    with pytest.raises(ValueError, match=rf"checkpoint_last\.pt: its config does not fit .*{re.escape(key)}"):
        make_trainer(make_tiny_cfg(*FAST, run_dir=run))
