"""Inference helpers: greedy CTC decoding and error-rate counting for CTC fine-tuning."""
