"""Probe curves: is pretraining done, and is it any good? Every saved snapshot of a pretraining
run (or any model the loader reads) is probed with the same small, fixed budget, and the probe
metric is drawn against the pretraining update, next to the run's own curves.

    python scripts/probe.py runs/demo --preset probe_ctc_demo data.manifest_dir=DIR
    python scripts/probe.py runs/demo --every 2 --seeds 1,2 --preset classify_demo data.manifest_dir=DIR
    python scripts/probe.py wav2vec_small.pt hf_dir/ random --preset probe_ctc data.manifest_dir=DIR

Each probe is an ordinary training run of the preset (a frozen upstream read through a learned
layer-weighted sum: `configs/probe_ctc_*.yaml`, `configs/classify_*.yaml`) with `task.init` set
to the snapshot, in `OUT/{snapshot}/seed{s}`; the path `random` probes the preset's model with
random weights (`task.init=''`), the baseline a pretrained model must beat. Rerunning resumes
an unfinished probe and reuses a finished one as it is (delete its directory to redo it with
other settings). The
probe metric is the best validation value of its task's `best_metric` (CER for the CTC probe,
accuracy for classification), and beside it the lowest validation value of the task's headline
loss (bits per letter, bits per utterance), which still separates upstreams where an error
rate sits near 100%. Written: `OUT/probe.tsv` (one row per probe, then the mean per
model), `OUT/probe.md` (the same as a Markdown table) and `OUT/probe.png` (metric against
pretraining update, with the run's own validation loss beside it). OUT defaults to
`RUN_DIR/probe/` for a run, `./probe/` for models.

A pretraining run keeps only its newest `checkpoint.keep_last` snapshots: to probe its history,
train it with `checkpoint.keep_last=0` (keep every snapshot) and `checkpoint.save_every=N`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wav2vec2.files import atomic_write
from wav2vec2.interop.load import load_model
from wav2vec2.train import checkpoint as ckpt
from wav2vec2.train.metrics import read_history
from wav2vec2.train.plots import load_run


RANDOM = "random"
"""The path that stands for random weights of the preset's model."""


@dataclass
class Target:
    """One model to probe."""

    name: str
    """Its directory name under OUT: the snapshot's file stem, or the model's directory and name."""
    path: Path | None
    """None: random weights of the preset's model."""
    update: int | None
    """The pretraining update it holds, when the file says."""


@dataclass
class Result:
    target: Target
    seed: int
    metric: str
    value: float
    """The best validation value of `metric` over the probe run."""
    higher_is_better: bool
    seconds: float
    loss_name: str = ""
    """The task's headline loss (the first metric of its progress line: bits per letter for
    CTC, bits per utterance for classification)."""
    loss: float = float("nan")
    """Its lowest validation value: where an error rate is stuck near 100% (a small model, a
    small budget), the loss still tells the upstreams apart."""


def targets(paths: list[Path], *, every: int = 1) -> tuple[list[Target], Path | None]:
    """What to probe, and the pretraining run when one path is a run directory: its snapshots
    (every `every`-th, the newest always), else each path as one model."""
    if len(paths) == 1 and paths[0].is_dir() and (paths[0] / "config.yaml").is_file():
        run = paths[0]
        found = ckpt.snapshots(run)
        if not found:
            raise FileNotFoundError(
                f"{run} holds no snapshots (checkpoint_NNNNNNNN.pt): a run keeps only its newest "
                "`checkpoint.keep_last`; pretrain with checkpoint.keep_last=0 checkpoint.save_every=N to keep "
                "every N-th update's, or give a checkpoint file to probe that one model")
        chosen = found[::-1][::every][::-1]  # counted from the newest, which is always probed
        return [Target(p.stem, p, int(p.stem.split("_")[1])) for p in chosen], run
    out = []
    for path in paths:
        if str(path) == RANDOM:
            out.append(Target("random-init", None, 0))
            continue
        loaded = load_model(path)  # any format; an error names what the path is not
        # runs/ft/checkpoint_best.pt -> "ft_checkpoint_best": two runs' best checkpoints stay apart.
        name = f"{path.parent.name}_{path.stem}" if path.is_file() else path.name
        out.append(Target(name, path, loaded.num_updates))
    return out, None


def probe_command(target: Target, *, preset: str, seed: int, run_dir: Path, overrides: list[str]) -> list[str]:
    """The training command of one probe (printed, so any probe can be rerun by hand)."""
    init = "" if target.path is None else target.path
    return [sys.executable, "-m", "wav2vec2.train.cli", "--config-name", preset, f"task.init={init}",
            f"run_dir={run_dir}", f"seed={seed}", *overrides]


def finished(run_dir: Path) -> bool:
    """Whether a probe run reached the `optim.max_update` of its own config.yaml."""
    if not (run_dir / "config.yaml").is_file():
        return False
    task, history = load_run(run_dir)
    return bool(history) and history[-1]["num_updates"] >= task.cfg.optim.max_update


def best_value(run_dir: Path) -> tuple[str, float, bool]:
    """(metric, its best validation value, higher is better) of a finished probe run."""
    task, history = load_run(run_dir)
    valid = [r[task.best_metric] for r in history if r["split"] == "valid" and task.best_metric in r]
    if not valid:
        raise ValueError(f"{run_dir} never validated: the probe preset needs a validation subset")
    return task.best_metric, (max if task.higher_is_better else min)(valid), task.higher_is_better


def lowest_loss(run_dir: Path) -> tuple[str, float]:
    """(label, lowest validation value) of the task's headline loss, its progress line's first metric."""
    task, history = load_run(run_dir)
    key, label, _ = task.console[0]
    return label, min(r[key] for r in history if r["split"] == "valid" and key in r)


def run_probes(found: list[Target], *, preset: str, seeds: list[int], out: Path, overrides: list[str],
               log=lambda line: print(line, flush=True)) -> list[Result]:
    """Train every probe (sequentially; a finished one is reused) and collect its best value."""
    results = []
    for target in found:
        for seed in seeds:
            run_dir = out / target.name / f"seed{seed}"
            timing = out / target.name / f"seed{seed}.seconds"
            if finished(run_dir) and timing.is_file():
                metric, value, higher = best_value(run_dir)
                log(f"== probe {target.name}, seed {seed}: done before, {metric} {value:.4g} (delete {run_dir} to redo it)")
                results.append(Result(target, seed, metric, value, higher, float(timing.read_text()),
                                      *lowest_loss(run_dir)))
                continue
            command = probe_command(target, preset=preset, seed=seed, run_dir=run_dir, overrides=overrides)
            log(f"== probe {target.name} (update {target.update}), seed {seed}: {' '.join(command[1:])}")
            start = time.monotonic()
            proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            # To the tenth, as the timing file keeps it: a reused probe then shows the same seconds.
            seconds = round(time.monotonic() - start, 1)
            (out / target.name).mkdir(parents=True, exist_ok=True)  # a run that failed early made none
            atomic_write(out / target.name / f"seed{seed}.log", proc.stdout)
            if proc.returncode == 0:
                atomic_write(timing, f"{seconds:.1f}\n")
            if proc.returncode != 0:
                tail = "\n".join(proc.stdout.splitlines()[-8:])
                raise RuntimeError(f"the probe of {target.path or 'random weights'} (seed {seed}) failed with status {proc.returncode}; "
                                   f"its output is in {out / target.name}/seed{seed}.log:\n{tail}")
            metric, value, higher = best_value(run_dir)
            log(f"   {metric} {value:.4g} ({seconds:.0f} s)")
            results.append(Result(target, seed, metric, value, higher, seconds, *lowest_loss(run_dir)))
    return results


def _rows(results: list[Result]) -> list[list[str]]:
    header = ["model", "update", "seed", "metric", "best valid", "loss", "lowest valid", "seconds"]
    rows = [header]
    for r in results:
        rows.append([r.target.name, str(r.target.update if r.target.update is not None else ""), str(r.seed), r.metric,
                     f"{r.value:.4g}", r.loss_name, f"{r.loss:.4g}", f"{r.seconds:.0f}"])

    def mean_sd(values: list[float]) -> str:
        return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"

    for name in dict.fromkeys(r.target.name for r in results):
        mine = [r for r in results if r.target.name == name]
        if len(mine) > 1:
            rows.append([name, rows[1 + results.index(mine[0])][1], "mean ± sd", mine[0].metric,
                         mean_sd([r.value for r in mine]), mine[0].loss_name, mean_sd([r.loss for r in mine]),
                         f"{sum(r.seconds for r in mine):.0f}"])
    return rows


def write_table(results: list[Result], out: Path) -> tuple[Path, Path]:
    """`probe.tsv` and `probe.md` in `out`."""
    rows = _rows(results)
    tsv = out / "probe.tsv"
    md = out / "probe.md"
    atomic_write(tsv, "".join("\t".join(row) + "\n" for row in rows))
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    atomic_write(md, "\n".join(lines) + "\n")
    return tsv, md


def plot(results: list[Result], out: Path, *, run: Path | None, title: str = "") -> Path:
    """`probe.png`: the probe's best metric and lowest loss against pretraining update (each
    seed, and their mean), beside the pretraining run's own validation loss when there is a run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history: list[dict[str, Any]] = read_history(run / "metrics.jsonl") if run is not None else []
    valid = [r for r in history if r["split"] == "valid" and "loss" in r]
    fig, axes = plt.subplots(1, 3 if valid else 2, figsize=(15 if valid else 10, 4), squeeze=False,
                             layout="constrained")
    placed = [r for r in results if r.target.update is not None]
    by_seed: dict[int, list[Result]] = {}
    for r in sorted(placed, key=lambda r: r.target.update):
        by_seed.setdefault(r.seed, []).append(r)
    updates = sorted({r.target.update for r in placed})
    first = results[0] if results else None
    better = "higher" if first and first.higher_is_better else "lower"
    panels = ((lambda r: r.value, f"probe {first.metric if first else ''} ({better} is better)", "best valid"),
              (lambda r: r.loss, f"probe {first.loss_name if first else ''} (lower is better)", "lowest valid"))
    for ax, (value, ylabel, what) in zip(axes[0], panels):
        for seed, rs in by_seed.items():
            ax.plot([r.target.update for r in rs], [value(r) for r in rs], "o:", alpha=0.6, label=f"seed {seed}")
        if len(by_seed) > 1:
            means = [statistics.mean(value(r) for r in placed if r.target.update == u) for u in updates]
            ax.plot(updates, means, "o-", color="black", label="mean")
        ax.set(xlabel="pretraining update", ylabel=ylabel, title=f"probe: {what} {ylabel.split(' (')[0][6:]}")
        ax.legend(fontsize=8)
    if valid:
        ax = axes[0, 2]
        ax.plot([r["num_updates"] for r in valid], [r["loss"] for r in valid], "o-", color="tab:red")
        ax.set(xlabel="pretraining update", ylabel="valid loss", title="the pretraining run's own validation loss")
    if title:
        fig.suptitle(title)
    png = out / "probe.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers (1,2), got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="+", metavar="PATH | key=value",
                        help="a pretraining run directory, or model paths; then Hydra overrides of the preset "
                             "(data.manifest_dir=DIR, optim.max_update=N, ...)")
    parser.add_argument("--preset", required=True, help="the probe's preset (configs/probe_ctc_*, classify_*)")
    parser.add_argument("--every", type=int, default=1, help="probe every k-th snapshot, counted from the newest")
    parser.add_argument("--seeds", type=_seeds, default=[1], help="one probe per seed, comma-separated: 1,2 (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="default RUN_DIR/probe, or ./probe for models")
    args = parser.parse_intermixed_args(argv)  # paths, options and overrides in any order
    paths = [Path(item) for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    if not paths:
        parser.error("give a run directory or model paths")
    if args.every < 1:
        parser.error("--every must be >= 1")
    try:
        found, run = targets(paths, every=args.every)
        out = args.out or (run / "probe" if run is not None else Path("probe"))
        out.mkdir(parents=True, exist_ok=True)
        results = run_probes(found, preset=args.preset, seeds=args.seeds, out=out, overrides=overrides)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tsv, md = write_table(results, out)
    png = plot(results, out, run=run, title=f"{run or 'models'}: probe {args.preset}")
    print(Path(md).read_text(), end="")
    print(f"table: {tsv} (and {md.name}); curve: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
