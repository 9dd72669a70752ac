"""Real-speech corpora this project prepares from Debian packages (no hub downloads)."""
