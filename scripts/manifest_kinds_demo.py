#!/usr/bin/env python
"""Train the demo from each kind of corpus description: a fairseq manifest, segment rows of
long recordings, a manifest over two roots, and tar shards.

    python scripts/manifest_kinds_demo.py                        # data/asterisk -> runs/manifest_kinds
    python scripts/manifest_kinds_demo.py --data DIR --out DIR --updates 300 --shard-updates 1200 [KEY=VALUE ...]

From the prepared Asterisk prompts (`scripts/prepare_asterisk.py --out DATA`) it writes, in OUT:
- `segments/`: each language's training prompts joined into one long FLAC (`long/en.flac`, ...)
  and a manifest of `start=S` rows naming each prompt's span, in train.tsv's order;
- `two_roots/`: the same rows, every other file copied to a second directory (`disk2/`) and
  named with `root=1`, the rest left under the original root;
- `shards/`: train.tsv packed into tar shards (`wav2vec2-shards`, 8 MB each).
Each holds valid.tsv as DATA has it. Then `configs/demo.yaml` trains on DATA (fairseq's
format), on `segments/` and on `two_roots/` for `--updates` updates each with the same seed:
these three see the same samples in the same order, so their losses must be equal bit for
bit, and the script says whether they are. Then on the shards for `--shard-updates` updates
(a whole demo: shards batch within a shuffle window, so the order and losses differ) with the
run's health verdict; KEY=VALUE arguments are Hydra overrides for every run. A table of every
run goes to stdout and OUT/results.md; the exit status is 1 if the three runs disagree.
About 9 minutes on 2 CPU cores with the defaults (8 min 53 s measured, docs/training.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from wav2vec2.data.manifest import Manifest, Row, read_rows, write_rows
from wav2vec2.train.metrics import read_history

ROOT = Path(__file__).resolve().parents[1]


def joined_segments(data: Path, dest: Path) -> None:
    """Each language's training files (the first path component) end to end in one PCM_16 FLAC,
    and a manifest of their spans in train.tsv's order: the same samples as the files."""
    manifest = read_rows(data / "train.tsv")
    by_language: dict[str, list[Row]] = {}
    for row in manifest.rows:
        by_language.setdefault(row.path.split("/")[0], []).append(row)
    starts: dict[Row, tuple[str, int]] = {}
    (dest / "long").mkdir(parents=True, exist_ok=True)
    for language, rows in by_language.items():
        name = f"long/{language}.flac"
        offset, parts, rate = 0, [], None
        for row in rows:
            wav, rate = sf.read(manifest.abspath(row), dtype="int16")  # the prompts are 16-bit PCM
            if len(wav) != row.num_samples:
                raise ValueError(f"{data / 'train.tsv'}: {row.path} has {len(wav)} samples, the manifest says "
                                 f"{row.num_samples}")
            starts[row] = (name, offset)
            parts.append(wav)
            offset += len(wav)
        sf.write(dest / name, np.concatenate(parts), rate, subtype="PCM_16")
    rows = [Row(starts[r][0], r.num_samples, start=starts[r][1]) for r in manifest.rows]
    write_rows(dest / "train.tsv", Manifest([str(dest.resolve())], rows))


def two_roots(data: Path, dest: Path) -> None:
    """The manifest's rows over two roots: every other file copied under `dest/disk2` (root 1)."""
    manifest = read_rows(data / "train.tsv")
    disk2 = (dest / "disk2").resolve()
    rows = []
    for i, row in enumerate(manifest.rows):
        if i % 2:
            (disk2 / row.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(manifest.abspath(row), disk2 / row.path)
            row = Row(row.path, row.num_samples, root=1)
        rows.append(row)
    write_rows(dest / "train.tsv", Manifest([manifest.roots[0], str(disk2)], rows))


def train(run: Path, manifest_dir: Path, updates: int, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config-name", "demo",
           f"data.manifest_dir={manifest_dir}", f"run_dir={run}", f"optim.max_update={updates}", *overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    with open(f"{run}.log", "w") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                              env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))


def records(run: Path, split: str) -> list[dict]:
    return [r for r in read_history(run / "metrics.jsonl") if r["split"] == split]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "asterisk",
                        help="prepared Asterisk prompts (scripts/prepare_asterisk.py --out DATA)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "manifest_kinds")
    parser.add_argument("--updates", type=int, default=300, help="updates of the three runs compared bit for bit")
    parser.add_argument("--shard-updates", type=int, default=1200, help="updates of the run on shards (the demo's)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides for every run")
    args = parser.parse_args(argv)
    if not (args.data / "train.tsv").is_file():
        parser.error(f"no {args.data / 'train.tsv'}: run python scripts/prepare_asterisk.py --out {args.data}")
    out = args.out.resolve()
    kinds = {"fairseq": args.data.resolve(), "segments": out / "segments", "two_roots": out / "two_roots"}
    for kind, build in (("segments", joined_segments), ("two_roots", two_roots)):
        if not (kinds[kind] / "train.tsv").is_file():
            print(f"== writing {kinds[kind]}", flush=True)
            build(args.data, kinds[kind])
            shutil.copyfile(args.data / "valid.tsv", kinds[kind] / "valid.tsv")
    shards = out / "shards"
    if not (shards / "index.tsv").is_file():
        print(f"== packing {args.data / 'train.tsv'} into {shards}", flush=True)
        subprocess.run([sys.executable, "-c", "import sys; from wav2vec2.data.shards import main; sys.exit(main())",
                        str(args.data / "train.tsv"), str(shards), "--shard-mb", "8", "--no-progress"], check=True)

    results, failed = [], False
    (out / "runs").mkdir(exist_ok=True)
    for kind, manifest_dir in kinds.items():
        run = out / "runs" / kind
        proc = train(run, manifest_dir, args.updates, "train.validate_every=100", *args.overrides)
        failed |= proc.returncode != 0
        results.append((kind, run, args.updates))
    run = out / "runs" / "shards"
    proc = train(run, args.data.resolve(), args.shard_updates, f"data.train_shards={shards}", *args.overrides)
    failed |= proc.returncode != 0
    results.append(("shards", run, args.shard_updates))
    if failed:
        print(f"a run failed: see the logs in {out / 'runs'}", file=sys.stderr)
        return 1

    reference = [r["loss"] for r in records(out / "runs" / "fairseq", "train")]
    lines = ["| corpus given as | updates | last train loss | valid contrastive (bits) | valid accuracy | verdict | "
             "train losses equal to fairseq's |", "|---|---|---|---|---|---|---|"]
    all_equal = True
    for kind, run, updates in results:
        train_losses = [r["loss"] for r in records(run, "train")]
        valid = records(run, "valid")[-1]
        verdict = "healthy" if "NOT healthy" not in Path(f"{run}.log").read_text() else "not healthy"
        if kind == "shards":
            same = "— (another order)"
        else:
            equal = train_losses == reference
            all_equal &= equal
            same = f"{'yes' if equal else 'NO'} ({len(train_losses)} logged)"
        lines.append(f"| {kind} | {updates} | {train_losses[-1]:.4f} | {valid['contrastive']:.3f} | "
                     f"{valid.get('accuracy', float('nan')):.3f} | {verdict} | {same} |")
    table = "\n".join(lines) + "\n"
    print(table)
    (out / "results.md").write_text(table)
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
