"""Record (or re-check) the fixed-seed pretraining trace that refactors must reproduce.

    python tests/golden/record_pretrain.py            # rewrite tests/golden/pretrain_tiny.json

The trace is the tiny preset on a synthetic corpus, run through `scripts/train.py` exactly
as users run it, one thread: every logged train and valid metric that is not a timing, and
a SHA-256 of the final weights. It was first recorded on the code as it stood before the
task-interface refactor (issue #8), re-recorded when CPU attention dropout changed how it
draws its mask (issue #11), and when updates stopped spanning epoch boundaries (issue #20:
the epoch's 7th batch is now update 4 on its own); `tests/tasks/test_golden.py` reruns it. Only
re-record when a change is *meant* to alter the math, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("pretrain_tiny.json")

# update_freq 2 and 7 batches per epoch cross an epoch boundary with a partial update (one
# batch, as fairseq cuts an epoch's last update); a fast temperature decay
# makes the Gumbel schedule matter; dropout and layerdrop (tiny's defaults) draw from the RNG.
OVERRIDES = [
    "optim.max_update=8", "optim.update_freq=2", "model.quantizer.temp_decay=0.9",
    "data.num_workers=0", "checkpoint.save_every=100", "logging.tensorboard=false",
    "train.validate_every=4", "train.num_threads=1",
]
TIMING = ("time", "audio_sec_per_sec", "data_wait_sec")


def make_corpus(root: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from wav2vec2.data import write_manifest, write_synthetic_corpus

    entries = write_synthetic_corpus(root / "audio", num_files=24, min_seconds=0.5, max_seconds=1.5)
    write_manifest(root / "train.tsv", str(root / "audio"), entries[:20])
    write_manifest(root / "valid.tsv", str(root / "audio"), entries[20:])
    return root


def machine() -> str:
    """What decides the last bits of CPU floats: torch's build and kernel ISA, and the CPU
    itself (model and feature flags: oneDNN picks its kernels and blocking by them). Two
    machines of one cloud "kind" can differ here and then legitimately differ by ~1e-7."""
    cpu = ""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        lines = info.read_text().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        cpu = model + " " + hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:12]
    return f"torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()} {cpu}"


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_trace(workdir: Path) -> dict:
    """Train the tiny preset in `workdir` and return the trace (records and weight digest)."""
    corpus = make_corpus(workdir / "corpus")
    run = workdir / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--config-name", "tiny",
           f"data.manifest_dir={corpus}", f"run_dir={run}", *OVERRIDES]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    records = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        records.append({k: v for k, v in r.items() if not any(k.endswith(t) for t in TIMING)})
    state = torch.load(run / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    return {
        "overrides": OVERRIDES,
        "machine": machine(),
        "records": records,
        "weights_sha256": weights_digest(state["model"]),
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        trace = run_trace(Path(tmp))
    GOLDEN.write_text(json.dumps(trace, indent=1) + "\n")
    print(f"wrote {GOLDEN}: {len(trace['records'])} records, weights {trace['weights_sha256'][:16]}")
