"""DINO, iBOT, KoLeo and cross-slice contrastive losses, and centering strategies."""
