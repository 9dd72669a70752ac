"""The health warnings replayed on recorded runs of the demo: a healthy run (it sits at chance
for a while before it learns) must not raise a single warning; a stuck run must be told
it is not learning. Traces: tests/golden/traces/*.jsonl, the logged records of real demo
runs (see tests/golden/traces/README.md for the commands that made them)."""

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
