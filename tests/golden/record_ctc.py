"""Record (or re-check) the fixed-seed CTC fine-tuning trace that refactors must reproduce.

    python tests/golden/record_ctc.py            # rewrite tests/golden/ctc_tiny.json

The run: the tiny pretraining of `record_pretrain.py` (8 updates), then the `ctc_tiny`
preset fine-tuning its `checkpoint_last.pt` through `task.init` on the same synthetic
audio with fixed transcripts, both through `scripts/train.py` as users run them, one
thread. The fine-tuning crosses the encoder freeze, an epoch boundary and two validations
(WER/CER); the trace is every logged train and valid metric that is not a timing, and a
SHA-256 of the final weights. Recorded before the one-loader refactor (issue #18), so that
the loading path (`task.init`), the task and the loop are proved unchanged by it;
re-recorded when updates stopped spanning epoch boundaries (issue #20: update 5 is epoch
1's 9th batch alone, and the pretrained model it starts from changed with it).
`tests/tasks/test_golden.py` reruns it. Only re-record when a change is *meant* to
alter the math, and say so in the commit.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("ctc_tiny.json")

OVERRIDES = [
    "optim.max_update=8", "optim.update_freq=2", "task.freeze_finetune_updates=3",
    "data.num_workers=0", "checkpoint.save_every=100", "logging.tensorboard=false",
    "train.validate_every=4", "train.max_valid_batches=0", "train.num_threads=1",
]
# Fixed phrases (no RNG): the audio is synthetic, so the model can only memorise them.
_PHRASES = ["HI THE CAT", "DOG SAYS NO", "IT'S THE DOG", "NO CAT", "THE CAT SAYS HI", "HI"]


def _pretrain_recorder():
    spec = importlib.util.spec_from_file_location("record_pretrain", Path(__file__).with_name("record_pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _letters(phrase: str) -> str:
    return " ".join(" ".join(w) + " |" for w in phrase.split())


def write_transcripts(root: Path) -> None:
    """train.ltr (20 lines) and valid.ltr (4) for the corpus of `make_corpus`, and dict.ltr.txt."""
    lines = [_letters(_PHRASES[i % len(_PHRASES)]) for i in range(24)]
    (root / "train.ltr").write_text("".join(line + "\n" for line in lines[:20]))
    (root / "valid.ltr").write_text("".join(line + "\n" for line in lines[20:]))
    counts = collections.Counter(t for line in lines for t in line.split())
    (root / "dict.ltr.txt").write_text("".join(f"{k} {v}\n" for k, v in sorted(counts.items(),
                                                                             key=lambda kv: (-kv[1], kv[0]))))


def run_trace(workdir: Path) -> dict:
    """Pretrain, then fine-tune, in `workdir`; return the fine-tuning trace."""
    pre = _pretrain_recorder()
    corpus = pre.make_corpus(workdir / "corpus")
    write_transcripts(corpus)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    pretrained = workdir / "pretrain"
    steps = [
        ["--config-name", "tiny", f"data.manifest_dir={corpus}", f"run_dir={pretrained}", *pre.OVERRIDES],
        ["--config-name", "ctc_tiny", f"data.manifest_dir={corpus}", f"run_dir={workdir / 'ctc'}",
         f"task.init={pretrained / 'checkpoint_last.pt'}", *OVERRIDES],
    ]
    for args in steps:
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    import torch

    records = []
    for line in (workdir / "ctc" / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        records.append({k: v for k, v in r.items() if not any(k.endswith(t) for t in pre.TIMING)})
    state = torch.load(workdir / "ctc" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    return {
        "overrides": OVERRIDES,
        "machine": pre.machine(),
        "records": records,
        "weights_sha256": pre.weights_digest(state["model"]),
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        trace = run_trace(Path(tmp))
    GOLDEN.write_text(json.dumps(trace, indent=1) + "\n")
    print(f"wrote {GOLDEN}: {len(trace['records'])} records, weights {trace['weights_sha256'][:16]}")
