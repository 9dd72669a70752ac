"""`python -m wav2vec2.bench SECTION ...`: the same command line as scripts/bench.py."""

from wav2vec2.bench.cli import main

if __name__ == "__main__":
    main()
