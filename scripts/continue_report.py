#!/usr/bin/env python
"""The tables of scripts/continue_demo.sh, from its run directory: validation on the fifth
language over the extra updates, and test CER/WER after fine-tuning, per arm and seed.

    python scripts/continue_report.py runs/continue_demo > results.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ARMS = {"continued": "(a) continued from the released model", "scratch": "(b) from scratch on English only",
        "source": "(c) the released model, no more pretraining"}


def _valid_rows(run: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["num_updates"]: r for r in rows if r["split"] == "valid"}


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.1f} ({', '.join(f'{v:.1f}' for v in values)})"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr if len(argv) != 1 else sys.stdout)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    run = Path(argv[0])
    seeds = sorted({p.name.rsplit("_s", 1)[1] for p in run.glob("continued_s*") if p.is_dir()})
    lines = ["English validation during the extra pretraining (contrastive loss in bits / accuracy; update 0 of (a)",
             "is the released model itself, arm (c)):", ""]
    updates = sorted({u for seed in seeds for arm in ("continued", "scratch")
                      for u in _valid_rows(run / f"{arm}_s{seed}")})
    shown = [u for u in updates if u in (0, updates[-1]) or u % max(1, updates[-1] // 4) == 0]
    lines.append("| run | " + " | ".join(f"update {u}" for u in shown) + " |")
    lines.append("|---|" + "---|" * len(shown))
    for arm in ("continued", "scratch"):
        for seed in seeds:
            rows = _valid_rows(run / f"{arm}_s{seed}")
            cells = [f"{rows[u]['contrastive']:.3f} / {rows[u]['accuracy']:.3f}" if u in rows else "-" for u in shown]
            lines.append(f"| {ARMS[arm][:3]} seed {seed} | " + " | ".join(cells) + " |")
    results = json.loads((run / "results.json").read_text())["results"]
    lines += ["", "Fine-tuned on 10 English minutes, test prompts (greedy, best checkpoint by dev CER); mean (seeds):", "",
              "| arm | test CER % | test WER % |", "|---|---|---|"]
    for arm, label in ARMS.items():
        found = [r for path, r in sorted(results.items()) if f"/ft_{arm}_s" in path]
        lines.append(f"| {label} | {_mean_spread([r['cer'] for r in found])} | {_mean_spread([r['wer'] for r in found])} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
