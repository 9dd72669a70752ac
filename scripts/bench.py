#!/usr/bin/env python
"""Benchmarks of a wav2vec 2.0 training update against transformers and fairseq; the code is
`wav2vec2/bench/` (one module per section). Same as `python -m wav2vec2.bench`.

    python scripts/bench.py train   [--quick | --full] [--precision fp32 bf16] [--fairseq-python PY]
    python scripts/bench.py ctc | data | mask | memory | scaling | profile | all  [--json PATH]
    python scripts/bench.py SECTION --help
"""

from __future__ import annotations

from wav2vec2.bench.cli import main

if __name__ == "__main__":
    main()
