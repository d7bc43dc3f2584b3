"""Synthetic breast phantom: FFDM and DBT with ground truth, written as real DICOM."""
