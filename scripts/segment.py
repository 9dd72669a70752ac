"""Long recordings into a segment manifest, by length, energy VAD or an alignment (see wav2vec2-segment)."""

import sys

from wav2vec2.data.segments import main

if __name__ == "__main__":
    sys.exit(main())
