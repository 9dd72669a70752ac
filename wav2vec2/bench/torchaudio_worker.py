"""torchaudio's `forced_align` on saved emissions, for `bench.py align`. Run by path under an
interpreter whose environment has torchaudio (which pins its own torch): it imports numpy, torch
and torchaudio only, never this package.

    python torchaudio_worker.py --logits X.logits.npy --targets X.targets.npy --out X.torchaudio.npy

Prints "@@" + {"seconds", "peak_mb", "loaded_mb", "version"} and saves the label of every frame.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch
import torchaudio
import torchaudio.functional as F


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logits", required=True)
    parser.add_argument("--targets", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    log_probs = torch.from_numpy(np.load(args.logits)).float().log_softmax(dim=-1)[None]  # (1, T, V)
    targets = torch.from_numpy(np.load(args.targets))[None]  # (1, L)
    loaded = _rss_mb()
    with open("/proc/self/clear_refs", "w") as f:  # the peak from here on is forced_align's
        f.write("5")
    t0 = time.perf_counter()
    labels, _ = F.forced_align(log_probs, targets, blank=0)  # (1, T)
    seconds = time.perf_counter() - t0
    np.save(args.out, labels[0].numpy().astype(np.int64))
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))
    print("@@" + json.dumps({"seconds": seconds, "peak_mb": peak, "loaded_mb": loaded,
                             "version": f"torchaudio {torchaudio.__version__}, torch {torch.__version__}"}), flush=True)


if __name__ == "__main__":
    main()
