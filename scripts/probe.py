#!/usr/bin/env python
"""Probe every saved snapshot of a pretraining run (or any models the loader reads) with a
small fixed budget; write a table and a PNG of the probe metric against pretraining update.
See `wav2vec2/train/probe.py` for usage.

    python scripts/probe.py runs/demo --preset probe_ctc_demo data.manifest_dir=DIR
    python scripts/probe.py wav2vec_small.pt --preset probe_ctc_base data.manifest_dir=DIR
"""

from __future__ import annotations

import sys

from wav2vec2.train.probe import main

if __name__ == "__main__":
    sys.exit(main())
