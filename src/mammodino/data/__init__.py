"""Tissue-aware crops and masks, augmentations, datasets and collation."""
