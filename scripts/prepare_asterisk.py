"""Prepare the Asterisk prompts speech corpus (see wav2vec2-prepare-asterisk / wav2vec2.data.corpora.asterisk)."""

import sys

from wav2vec2.data.corpora.asterisk import main

if __name__ == "__main__":
    sys.exit(main())
