"""The health warnings replayed on recorded runs of the demo: a healthy run (it sits at chance
for a while before it learns) must not raise a single warning; a stuck run must be told
it is not learning. The same for continued pretraining: a healthy continued run (its loss
rises a little after the warm-up and its codebook narrows for a while, then both recover)
stays silent, one at ten times the lr is told it unlearns. Traces: tests/golden/traces/*.jsonl,
the logged records of real runs (see tests/golden/traces/README.md for the commands that
made them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wav2vec2.tasks import build_task

TRACES = Path(__file__).resolve().parents[1] / "golden" / "traces"


def _replay(task, records: list[dict]) -> list[tuple[int, str]]:
    """Every warning `health` gives as the records arrive one by one, as in a run."""
    warnings = []
    for i, record in enumerate(records):
        warnings += [(record["num_updates"], w) for w in task.health(records[: i + 1])]
    return warnings


def _trace(name: str) -> tuple[dict, list[dict]]:
    lines = (TRACES / f"{name}.jsonl").read_text().splitlines()
    header, records = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    return header, records


@pytest.fixture
def demo_task(compose_preset):
    def make(overrides: list[str]):
        return build_task(compose_preset("demo", ["data.manifest_dir=/data", "run_dir=/runs/x", *overrides]))

    return make


def test_a_healthy_demo_run_raises_no_warning(demo_task) -> None:
    header, records = _trace("demo_healthy")
    task = demo_task(header["overrides"])
    train = [r for r in records if r["split"] == "train"]
    # It did sit at chance first: the case the old alarm cried wolf on.
    at_chance = [r for r in train if abs(r["contrastive"] - task.chance_bits) < task.task_cfg.chance_margin]
    assert len(at_chance) >= 5
    assert _replay(task, records) == []
    lines, healthy = task.verdict(records)
    assert healthy, lines


def test_a_stuck_run_is_told_it_is_not_learning(demo_task) -> None:
    header, records = _trace("demo_stuck")
    task = demo_task(header["overrides"])
    warnings = _replay(task, records)
    assert warnings and all("not learning" in w for _, w in warnings)
    first = warnings[0][0]
    assert first >= task.task_cfg.not_learning_after * task.cfg.optim.max_update
    lines, healthy = task.verdict(records)
    assert not healthy, lines


@pytest.fixture
def continue_task(compose_preset):
    def make(overrides: list[str]):
        # The source's path is only a marker here: health() judges a run continued by task.init.
        overrides = [o.replace("SOURCE_HF", "/models/source_hf") for o in overrides]
        return build_task(compose_preset("continue_demo", ["data.manifest_dir=/data", "run_dir=/runs/x", *overrides]))

    return make


def test_a_healthy_continued_run_raises_no_warning(continue_task) -> None:
    header, records = _trace("continue_healthy")
    task = continue_task(header["overrides"])
    valid = [r for r in records if r["split"] == "valid"]
    # What a healthy continuation goes through: its loss above its start after the warm-up,
    # its diversity loss at 1.5x its start for three validations in a row.
    assert valid[1]["contrastive"] > valid[0]["contrastive"] + task.task_cfg.continue_loss_rise
    assert min(r["diversity"] for r in valid[3:6]) > 1.5 * valid[0]["diversity"]
    assert valid[-1]["contrastive"] < valid[0]["contrastive"] - 0.2  # and it learned the new language
    assert _replay(task, records) == []


def test_a_continued_run_at_ten_times_the_lr_is_told_it_unlearns(continue_task) -> None:
    header, records = _trace("continue_unlearning")
    task = continue_task(header["overrides"])
    warnings = _replay(task, records)
    assert any("unlearning" in w for _, w in warnings), warnings
    assert any("diversity loss climbing" in w for _, w in warnings), warnings
    assert warnings[0][0] <= 150  # within three validations of the damage (every 50 updates)
