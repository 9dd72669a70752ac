"""Pack a manifest into tar shards for data.train_shards (see wav2vec2-shards)."""

import sys

from wav2vec2.data.shards import main

if __name__ == "__main__":
    sys.exit(main())
