"""Embeddings, probes, fine-tuning, localization, metrics, splits and baselines."""
