"""Breast mask, orientation, pectoral muscle and the prepared cache."""
