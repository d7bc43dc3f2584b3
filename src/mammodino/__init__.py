"""MammoDINO: self-supervised pretraining of vision transformers for mammography."""

__version__ = "0.1.0"
