"""Curves and the health verdict of a run, from its `metrics.jsonl` and `config.yaml`.

    python -m wav2vec2.train.plots RUN_DIR      # writes RUN_DIR/curves.png, prints the verdict

The verdict is the run's task's (`Task.verdict`: pretraining's "it learned" checks, CTC's
"it emits letters" ones), the same the trainer prints at the end of a run. Exit status 1
when the run is not healthy.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from wav2vec2.tasks import Task, build_task, config_from_dict
from wav2vec2.train.metrics import read_history


def load_run(run_dir: Path) -> tuple[Task, list[dict[str, Any]]]:
    """The task a run trained (for judging: nothing but the config is read) and its history."""
    from omegaconf import OmegaConf

    cfg = config_from_dict(OmegaConf.to_container(OmegaConf.load(Path(run_dir) / "config.yaml")))
    return build_task(cfg), read_history(Path(run_dir) / "metrics.jsonl")


def verdict(run_dir: Path) -> tuple[list[str], bool]:
    task, history = load_run(run_dir)
    if not history:
        raise ValueError(f"{run_dir}/metrics.jsonl holds no record yet")
    return task.verdict(history)


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["num_updates"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [u for u, _ in pairs], [v for _, v in pairs]


def _pretrain_panels(axes, task, train, valid) -> None:
    chance = math.log2(task.cfg.model.num_negatives + 1)
    ax = axes[0, 0]
    ax.plot(*_series(train, "contrastive"), label="train contrastive")
    ax.plot(*_series(train, "loss"), label="train total", alpha=0.5)
    ax.plot(*_series(valid, "contrastive"), "o-", label="valid contrastive")
    ax.axhline(chance, color="gray", ls="--", label=f"chance log2(K+1) = {chance:.2f}")
    # The total starts far above chance; keep the contrastive part readable.
    ax.set_ylim(0, 1.5 * chance)
    ax.set_ylabel("bits per masked frame")
    ax.set_title("loss")

    ax = axes[0, 1]
    ax.plot(*_series(train, "accuracy"), label="train")
    ax.plot(*_series(valid, "accuracy"), "o-", label="valid")
    ax.axhline(1 / (task.cfg.model.num_negatives + 1), color="gray", ls="--", label="chance 1/(K+1)")
    ax.set_title("accuracy")

    G = task.cfg.model.quantizer.num_codebooks
    ax = axes[1, 0]
    ax.plot(*_series(train, "code_perplexity"), label="code perplexity")
    ax.plot(*_series(train, "prob_perplexity"), label="prob perplexity")
    ax.axhline(G, color="red", ls="--", label=f"collapse (G = {G})")
    ax.set_title("codebook perplexity")

    ax = axes[1, 1]
    ax.plot(*_series(train, "temperature"), label="Gumbel temperature")
    ax.set_ylabel("temperature")
    ax.set_title("temperature and learning rate")


def _ctc_panels(axes, task, train, valid) -> None:
    ax = axes[0, 0]
    ax.plot(*_series(train, "loss_per_token"), label="train")
    ax.plot(*_series(valid, "loss_per_token"), "o-", label="valid")
    ax.set_ylabel("bits per letter")
    ax.set_title("CTC loss")

    ax = axes[0, 1]
    ax.plot(*_series(valid, "wer"), "o-", label="valid WER")
    ax.plot(*_series(valid, "cer"), "o-", label="valid CER")
    ax.set_ylabel("%")
    ax.set_title("error rates (greedy decoding)")

    ax = axes[1, 0]
    ax.plot(*_series(train, "blank_frac"), label="train")
    ax.plot(*_series(valid, "blank_frac"), "o-", label="valid")
    ax.set_ylim(0, 1.02)
    ax.set_title("frames whose best symbol is the blank")

    ax = axes[1, 1]
    ax.plot(*_series(train, "encoder_frozen"), label="encoder frozen (1)")
    ax.set_title("freeze and learning rate")


PANELS = {"pretrain": _pretrain_panels, "ctc": _ctc_panels}


def plot_curves(run_dir: Path, out: Path | None = None) -> Path:
    """The task's four panels of curves against updates, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = out or run_dir / "curves.png"
    task, history = load_run(run_dir)
    train = [r for r in history if r["split"] == "train"]
    valid = [r for r in history if r["split"] == "valid"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    PANELS[task.name](axes, task, train, valid)
    lr_ax = axes[1, 1].twinx()
    lr_ax.plot(*_series(train, "lr"), color="tab:orange", label="lr")
    lr_ax.set_ylabel("lr")
    lr_ax.legend(loc="center right", fontsize=8)
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
    for ax in axes[1]:
        ax.set_xlabel("updates")
    last = history[-1]["num_updates"] if history else 0
    fig.suptitle(f"{run_dir.name} ({task.name}): {last} updates")
    fig.tight_layout()
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
