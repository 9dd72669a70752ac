"""Prepare the Dutch Fish Fillets NG speech corpus (see wav2vec2-prepare-fillets / wav2vec2.data.corpora.fillets)."""

import sys

from wav2vec2.data.corpora.fillets import main

if __name__ == "__main__":
    sys.exit(main())
