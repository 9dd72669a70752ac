"""wav2vec 2.0 self-supervised speech pretraining in plain PyTorch."""
