"""Curves and a health summary of a run, from its `metrics.jsonl`.

    python -m wav2vec2.train.plots RUN_DIR      # writes RUN_DIR/curves.png, prints a summary

The summary's verdict is the demo's definition of "it learned" (README, "What a healthy
run looks like"): contrastive loss clearly under chance, accuracy clearly above chance,
code perplexity well above the collapse floor G.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train records, valid records) of `run_dir/metrics.jsonl`, in update order."""
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    train = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "valid"]
    return train, valid


@dataclass
class Health:
    contrastive: float
    """Final validation contrastive loss, bits per masked frame."""
    accuracy: float
    code_perplexity: float
    chance_bits: float
    """log2(K+1): the loss of a model that cannot tell the positive from K negatives."""
    chance_accuracy: float
    num_codebooks: int
    num_updates: int

    @property
    def checks(self) -> dict[str, bool]:
        return {
            # "clearly": a 15% margin is ~0.65 bits at K=20, far beyond run-to-run noise.
            "contrastive loss under chance": self.contrastive < 0.85 * self.chance_bits,
            "accuracy above chance": self.accuracy > 3 * self.chance_accuracy,
            "codebook not collapsed": self.code_perplexity > 2 * self.num_codebooks,
        }

    @property
    def healthy(self) -> bool:
        return all(self.checks.values())


def health(run_dir: Path) -> Health:
    """Judge the run by its last validation (or, without validation, its last train log)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(run_dir) / "config.yaml")
    train, valid = read_metrics(run_dir)
    last = valid[-1] if valid else train[-1]
    p = "valid_" if valid else ""
    k = cfg.model.num_negatives
    return Health(
        contrastive=last[p + "contrastive"],
        accuracy=last[p + "accuracy"],
        code_perplexity=last[p + "code_perplexity"],
        chance_bits=math.log2(k + 1),
        chance_accuracy=1 / (k + 1),
        num_codebooks=cfg.model.quantizer.num_codebooks,
        num_updates=last["num_updates"],
    )


def plot_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Loss, accuracy, perplexities and temperature against updates, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = out or run_dir / "curves.png"
    train, valid = read_metrics(run_dir)
    h = health(run_dir)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    u = [r["num_updates"] for r in train]
    vu = [r["num_updates"] for r in valid]

    ax = axes[0, 0]
    ax.plot(u, [r["contrastive"] for r in train], label="train contrastive")
    ax.plot(u, [r["loss"] for r in train], label="train total", alpha=0.5)
    if valid:
        ax.plot(vu, [r["valid_contrastive"] for r in valid], "o-", label="valid contrastive")
    ax.axhline(h.chance_bits, color="gray", ls="--", label=f"chance log2(K+1) = {h.chance_bits:.2f}")
    ax.set_ylabel("bits per masked frame")
    ax.set_title("loss")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    ax.plot(u, [r["accuracy"] for r in train], label="train")
    if valid:
        ax.plot(vu, [r["valid_accuracy"] for r in valid], "o-", label="valid")
    ax.axhline(h.chance_accuracy, color="gray", ls="--", label=f"chance 1/(K+1) = {h.chance_accuracy:.3f}")
    ax.set_title("accuracy")
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    ax.plot(u, [r["code_perplexity"] for r in train], label="code perplexity")
    ax.plot(u, [r["prob_perplexity"] for r in train], label="prob perplexity")
    ax.axhline(h.num_codebooks, color="red", ls="--", label=f"collapse (G = {h.num_codebooks})")
    ax.set_title("codebook perplexity")
    ax.set_xlabel("updates")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    ax.plot(u, [r["temperature"] for r in train], label="Gumbel temperature")
    ax.set_xlabel("updates")
    ax.set_title("temperature and learning rate")
    lr_ax = ax.twinx()
    lr_ax.plot(u, [r["lr"] for r in train], color="tab:orange", label="lr")
    lr_ax.set_ylabel("lr")
    ax.legend(loc="upper right", fontsize=8)
    lr_ax.legend(loc="center right", fontsize=8)

    fig.suptitle(f"{run_dir.name}: {h.num_updates} updates")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def summary(run_dir: Path) -> str:
    h = health(run_dir)
    lines = [
        f"after {h.num_updates} updates (validation):",
        f"  contrastive loss {h.contrastive:.3f} bits   (chance {h.chance_bits:.3f})",
        f"  accuracy         {h.accuracy:.3f}        (chance {h.chance_accuracy:.3f})",
        f"  code perplexity  {h.code_perplexity:.1f}         (collapse at G = {h.num_codebooks})",
    ]
    lines += [f"  [{'ok' if ok else 'FAIL'}] {name}" for name, ok in h.checks.items()]
    lines.append("healthy: the model learned" if h.healthy else "NOT healthy: see the README's troubleshooting")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default RUN_DIR/curves.png)")
    args = parser.parse_args(argv)
    png = plot_curves(args.run_dir, args.out)
    print(summary(args.run_dir))
    print(f"curves: {png}   TensorBoard: tensorboard --logdir {args.run_dir / 'tb'}")
    return 0 if health(args.run_dir).healthy else 1


if __name__ == "__main__":
    sys.exit(main())
