"""Curves come from the panels a task declares, with legends that cover no curve; the
end-of-run summary says which update checkpoint_best.pt holds."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from wav2vec2.files import load_checkpoint
from wav2vec2.tasks import Panel, build_task
from wav2vec2.tasks.pretrain import PretrainTask
from wav2vec2.train import checkpoint as ckpt
from wav2vec2.train import plots

from helpers import make_trainer

matplotlib = pytest.importorskip("matplotlib")


def _history(panels: list[Panel], num_updates: int = 1200) -> list[dict]:
    """Train rows every 10 updates and validation rows every 100 with every metric the panels
    draw: curves that rise and fall across the whole width, as a long run's do."""
    train_keys = {key for p in panels for key, _ in p.train} | {"lr"}
    valid_keys = {key for p in panels for key, _ in p.valid}
    rows = []
    for u in range(10, num_updates + 1, 10):
        wave = 1.0 + math.sin(u / 150)
        rows.append({"split": "train", "num_updates": u, **{k: wave + i for i, k in enumerate(sorted(train_keys))}})
        if u % 100 == 0:
            rows.append({"split": "valid", "num_updates": u, **{k: wave for k in valid_keys}})
    return rows


def _drawn(fig) -> tuple[list, list]:
    """The axes that show data (twin lr axes included) and every legend of the figure."""
    data_axes = [ax for ax in fig.axes if ax.axison]
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return data_axes, legends


class _Custom(PretrainTask):
    """A task the plotting code has never heard of: three panels of its own metrics."""

    name = "custom"

    def panels(self) -> list[Panel]:
        return [Panel("alpha", train=(("a", "train a"),), valid=(("a", "valid a"),), references=((1.0, "one"),)),
                Panel("beta", train=(("b", "b"), ("c", "c")), ylim=(0.0, 5.0)),
                Panel("gamma", valid=(("g", "valid g"),), lr=True)]


@pytest.mark.parametrize("task", ["pretrain", "ctc", "custom"])
def test_each_declared_panel_is_drawn_and_no_legend_covers_a_curve(task: str, make_tiny_cfg, make_ctc_cfg) -> None:
    t = {"pretrain": lambda: build_task(make_tiny_cfg()), "ctc": lambda: build_task(make_ctc_cfg()),
         "custom": lambda: _Custom(make_tiny_cfg())}[task]()
    panels = t.panels()
    fig = plots.draw_curves(t, _history(panels))
    fig.canvas.draw()
    data_axes, legends = _drawn(fig)
    titled = [ax for ax in data_axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == [p.title for p in panels]
    for ax, panel in zip(titled, panels):
        declared = [label for _, label in (*panel.train, *panel.valid)] + [label for _, label in panel.references]
        drawn = [line.get_label() for line in ax.get_lines()]
        assert drawn == declared, panel.title
        if panel.ylim is not None:
            assert ax.get_ylim() == panel.ylim
    assert sum(p.lr for p in panels) == sum(ax.get_ylabel() == "lr" for ax in data_axes)  # twin axes
    legend_labels = [[t.get_text() for t in legend.get_texts()] for legend in legends]
    assert legend_labels == [[line.get_label() for line in ax.get_lines()] + ["lr"] * p.lr
                             for ax, p in zip(titled, panels)]
    for legend in legends:
        box = legend.get_window_extent()
        for ax in data_axes:
            assert not box.overlaps(ax.get_window_extent()), (legend_labels, ax.get_title())


def test_the_summary_says_which_update_the_best_checkpoint_holds(make_tiny_cfg, tmp_path: Path, caplog, capsys) -> None:
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="wav2vec2"):
        make_trainer(make_tiny_cfg("optim.max_update=3", "train.validate_every=1", run_dir=run)).fit()
    best = load_checkpoint(run / ckpt.BEST)
    valid = [r for r in plots.load_run(run)[1] if r["split"] == "valid"]
    lowest = min(valid, key=lambda r: r["loss"])
    assert best["num_updates"] == lowest["num_updates"]
    line = f"checkpoint_best.pt holds update {lowest['num_updates']}: valid loss {lowest['loss']:.4g}"
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("summary of"))
    assert line in summary.splitlines()
    plots.main([str(run)])
    assert line in capsys.readouterr().out.splitlines()


def test_a_run_that_never_validated_says_so(make_tiny_cfg, tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_trainer(make_tiny_cfg("optim.max_update=2", "data.valid_subset=", run_dir=run)).fit()
    lines, _ = plots.verdict(run)
    assert lines[-1] == "no checkpoint_best.pt: the run has not validated"
