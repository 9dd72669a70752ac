"""Write fairseq train/valid TSV manifests for a directory of audio (see wav2vec2-manifest)."""

import sys

from wav2vec2.data.manifest_cli import main

if __name__ == "__main__":
    sys.exit(main())
