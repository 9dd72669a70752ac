#!/usr/bin/env python
"""The label-budget table and plot of scripts/dutch_demo.sh, from its run directory: test CER
and WER per label budget, pretrained vs scratch, mean over seeds with each seed's value.

    python scripts/budget_report.py runs/dutch_demo > results.md    # and writes label_budget.png

Reads RUN/results.json (`python -m wav2vec2.infer.evaluate ... --json`), whose checkpoints
sit in run directories named ARM_BUDGET_sSEED (pretrained_10min_s1/checkpoint_best.pt).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

RUN_NAME = re.compile(r"(?P<arm>pretrained|scratch)_(?P<minutes>\d+)min_s(?P<seed>\d+)$")
ARMS = ("pretrained", "scratch")


def read_results(run: Path) -> dict[tuple[int, str], dict[int, dict]]:
    """{(label minutes, arm): {seed: evaluate's result}} from RUN/results.json."""
    results = json.loads((run / "results.json").read_text())["results"]
    table: dict[tuple[int, str], dict[int, dict]] = {}
    for checkpoint, result in results.items():
        match = RUN_NAME.match(Path(checkpoint).parent.name)
        if match is None:
            raise ValueError(f"{run / 'results.json'}: {checkpoint} is not in a directory named ARM_BUDGET_sSEED")
        table.setdefault((int(match["minutes"]), match["arm"]), {})[int(match["seed"])] = result
    return table


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = f"{statistics.fmean(values):.1f}"
    return mean if len(values) == 1 else f"{mean} ({', '.join(f'{v:.1f}' for v in values)})"


def markdown(table: dict[tuple[int, str], dict[int, dict]]) -> str:
    lines = ["| labels | pretrained CER | scratch CER | gain (CER points) | pretrained WER | scratch WER |",
             "|---|---|---|---|---|---|"]
    for minutes in sorted({m for m, _ in table}):
        runs = {arm: table.get((minutes, arm), {}) for arm in ARMS}
        cer = {arm: [runs[arm][s]["cer"] for s in sorted(runs[arm])] for arm in ARMS}
        wer = {arm: [runs[arm][s]["wer"] for s in sorted(runs[arm])] for arm in ARMS}
        gain = (f"{statistics.fmean(cer['scratch']) - statistics.fmean(cer['pretrained']):+.1f}"
                if cer["scratch"] and cer["pretrained"] else "-")
        lines.append(f"| {minutes} min | {_cell(cer['pretrained'])} | {_cell(cer['scratch'])} | {gain} | "
                     f"{_cell(wer['pretrained'])} | {_cell(wer['scratch'])} |")
    seeds = sorted({s for runs in table.values() for s in runs})
    lines += ["", f"Test levels, greedy decoding, each run's best checkpoint by dev CER; mean over seeds "
              f"{', '.join(map(str, seeds))} with each seed's value in brackets."]
    return "\n".join(lines)


def plot(table: dict[tuple[int, str], dict[int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("cer", "wer")):
        for arm, color in zip(ARMS, ("tab:blue", "tab:gray")):
            minutes = sorted(m for m, a in table if a == arm)
            values = [[r[metric] for r in table[(m, arm)].values()] for m in minutes]
            ax.plot(minutes, [statistics.fmean(v) for v in values], "-o", color=color, label=arm)
            for m, v in zip(minutes, values):
                ax.scatter([m] * len(v), v, color=color, s=10, alpha=0.5)
        ax.set_xscale("log")
        ax.set_xticks(sorted({m for m, _ in table}), [f"{m} min" for m in sorted({m for m, _ in table})])
        ax.minorticks_off()
        ax.set_xlabel("labelled audio")
        ax.set_ylabel(f"test {metric.upper()} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr if len(argv) != 1 else sys.stdout)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    run = Path(argv[0])
    try:
        table = read_results(run)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(table))
    plot(table, run / "label_budget.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
