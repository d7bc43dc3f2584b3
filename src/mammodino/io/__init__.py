"""Reading mammograms (DICOM, PNG, PGM, TIFF, NumPy), manifests and PHI-safe ids."""
