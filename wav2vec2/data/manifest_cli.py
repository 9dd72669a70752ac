"""`wav2vec2-manifest`: scan directories of audio into train/valid TSV manifests.

One directory gives fairseq's format; several (one corpus over several disks) give a
manifest with one root line each (`wav2vec2/data/manifest.py`). Lengths come from the file
headers, read by --workers processes with a progress bar; what was rejected, and why, is
counted in the summary and listed in DEST/rejected.tsv.

With --merge OUT the arguments are manifests instead, whose rows are written, in order,
as one manifest OUT with their roots pooled (pretraining on more than one corpus)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from wav2vec2.data.manifest import build_manifest, merge_manifests, write_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", nargs="+", help="directory to scan recursively; several for one corpus on several "
                        "disks (with --merge: manifests)")
    parser.add_argument("--merge", metavar="OUT", help="write the rows of the manifests given as arguments to OUT, "
                        "in order, as one manifest (no scanning)")
    parser.add_argument("--dest", default=".", help="output directory for train.tsv / valid.tsv")
    parser.add_argument("--ext", action="append", help="audio extension; repeat for several (default: flac)")
    parser.add_argument("--valid-percent", type=float, default=0.01, help="fraction of files for valid.tsv")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--path-must-contain", default=None, help="keep only paths containing this string")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes reading headers")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.merge:
        try:
            merged = merge_manifests(args.root)
            write_rows(args.merge, merged)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        hours = sum(r.num_samples for r in merged.rows) / 16000 / 3600
        print(f"{args.merge}: {len(merged.rows)} rows under {len(merged.roots)} root(s) ({hours:.2f} h at 16 kHz)")
        return 0
    try:
        summary = build_manifest(
            args.root if len(args.root) > 1 else args.root[0],
            args.dest,
            exts=args.ext or ["flac"],
            valid_percent=args.valid_percent,
            seed=args.seed,
            path_must_contain=args.path_must_contain,
            num_workers=args.workers,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary)
    if summary.rejected:
        print(f"rejected files listed in {os.path.join(args.dest, 'rejected.tsv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
