"""Power-law (1/f^beta) Gaussian random fields, the texture of fibroglandular tissue."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import fft


@lru_cache(maxsize=8)
def _amplitude_filter(
    shape: tuple[int, ...], spacing_mm: tuple[float, ...], beta: float
) -> np.ndarray:
    """|f|^(-beta/2) on the rfftn grid of `shape`, with the DC term set to zero."""
    axes = [fft.fftfreq(n, d) for n, d in zip(shape[:-1], spacing_mm[:-1], strict=True)]
    axes.append(fft.rfftfreq(shape[-1], spacing_mm[-1]))
    f2 = np.zeros([len(a) for a in axes], dtype=np.float32)
    for i, a in enumerate(axes):
        view = [1] * len(axes)
        view[i] = len(a)
        f2 = f2 + (a.astype(np.float32) ** 2).reshape(view)
    f2.flat[0] = 1.0
    amplitude = f2 ** np.float32(-beta / 4.0)  # power ~ f^-beta, so amplitude ~ f^(-beta/2)
    amplitude.flat[0] = 0.0
    amplitude.setflags(write=False)
    return amplitude


def power_law_noise(
    shape: tuple[int, ...], spacing_mm: tuple[float, ...], beta: float, rng: np.random.Generator
) -> np.ndarray:
    """A zero-mean, unit-variance float32 field whose power spectrum falls as 1/|f|^beta.

    Frequencies are physical (cycles/mm from `spacing_mm`), so anisotropic voxels still give an
    isotropic texture. The field is periodic: generate it larger than needed where that matters.
    """
    white = rng.standard_normal(shape, dtype=np.float32)
    spectrum = fft.rfftn(white, workers=1)
    spectrum *= _amplitude_filter(tuple(shape), tuple(float(s) for s in spacing_mm), float(beta))
    field = fft.irfftn(spectrum, s=shape, workers=1).astype(np.float32, copy=False)
    field -= field.mean()
    field /= max(float(field.std()), 1e-12)
    return field
