"""Curves and the end-of-run summary of a run, from its `metrics.jsonl`, `config.yaml` and
`checkpoint_best.pt`.

    python -m wav2vec2.train.plots RUN_DIR      # writes RUN_DIR/curves.png, prints the summary

The curves are the panels the run's task declares (`Task.panels`). The summary is the task's
verdict (`Task.verdict`: pretraining's "it learned" checks, CTC's "it emits letters" ones)
and which update `checkpoint_best.pt` holds, as the trainer prints it at the end of a run.
Exit status 1 when the run is not healthy, 2 when it cannot be read.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wav2vec2.tasks import Task, build_task, config_from_dict
from wav2vec2.train import checkpoint as ckpt
from wav2vec2.train.metrics import read_history

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def load_run(run_dir: Path) -> tuple[Task, list[dict[str, Any]]]:
    """The task a run trained (for judging: nothing but the config is read) and its history."""
    from omegaconf import OmegaConf

    cfg = config_from_dict(OmegaConf.to_container(OmegaConf.load(Path(run_dir) / "config.yaml")))
    return build_task(cfg), read_history(Path(run_dir) / "metrics.jsonl")


def verdict(run_dir: Path) -> tuple[list[str], bool]:
    """The run's `summary` lines and whether it is healthy."""
    task, history = load_run(run_dir)
    if not history:
        raise ValueError(f"{run_dir}/metrics.jsonl holds no record yet")
    return summary(run_dir, task, history)


def summary(run_dir: Path, task: Task, history: list[dict[str, Any]]) -> tuple[list[str], bool]:
    """The end-of-run summary: the task's verdict (`Task.verdict`) and what `checkpoint_best.pt`
    holds. The trainer prints it at the end of a run, `main` again on demand."""
    lines, healthy = task.verdict(history)
    return [*lines, ckpt.describe_best(run_dir)], healthy


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["num_updates"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [u for u, _ in pairs], [v for _, v in pairs]


def draw_curves(task: Task, history: list[dict[str, Any]], title: str = "") -> Figure:
    """The task's panels (`Task.panels`) in two columns, each with its legend in a strip of its
    own below it, where it cannot cover a curve."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    panels = task.panels()
    train = [r for r in history if r["split"] == "train"]
    valid = [r for r in history if r["split"] == "valid"]
    rows = math.ceil(len(panels) / 2)
    fig, axes = plt.subplots(2 * rows, 2, figsize=(11, 4 * rows), height_ratios=[5, 1] * rows, layout="constrained",
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, panel in enumerate(panels):
        ax, legend_ax = axes[2 * (i // 2), i % 2], axes[2 * (i // 2) + 1, i % 2]
        ax.axis("on")
        for key, label in panel.train:
            ax.plot(*_series(train, key), label=label)
        for key, label in panel.valid:
            ax.plot(*_series(valid, key), "o-", label=label)
        for value, label in panel.references:
            ax.axhline(value, color="gray", ls="--", label=label)
        if panel.ylim is not None:
            ax.set_ylim(*panel.ylim)
        ax.set(title=panel.title, ylabel=panel.ylabel, xlabel="updates")
        handles, labels = ax.get_legend_handles_labels()
        if panel.lr:
            lr_ax = ax.twinx()
            lr_ax.plot(*_series(train, "lr"), color="black", alpha=0.6, label="lr")
            lr_ax.set_ylabel("lr")
            more_handles, more_labels = lr_ax.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        if handles:
            legend_ax.legend(handles, labels, loc="upper center", ncol=min(len(handles), 3), fontsize=8,
                             frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(run_dir: Path, out: Path | None = None) -> Path:
    """The run's curves (`draw_curves`) as a PNG, by default `run_dir/curves.png`."""
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = out or run_dir / "curves.png"
    task, history = load_run(run_dir)
    last = history[-1]["num_updates"] if history else 0
    fig = draw_curves(task, history, title=f"{run_dir.name} ({task.name}): {last} updates")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default RUN_DIR/curves.png)")
    parser.add_argument("--curves-only", action="store_true",
                        help="do not print the verdict again (the run printed it); the exit status still tells")
    args = parser.parse_args(argv)
    try:
        lines, healthy = verdict(args.run_dir)
        png = plot_curves(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.curves_only:
        print("\n".join(lines))
    print(f"curves: {png}   TensorBoard: .venv/bin/tensorboard --logdir {args.run_dir / 'tb'}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
