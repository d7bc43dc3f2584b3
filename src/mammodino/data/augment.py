"""Grayscale intensity augmentations for mammogram crops (METHOD.md section 5).

Every function takes and returns a float32 2-D array in [0, 1] (the crop before it becomes a tensor;
numpy and OpenCV keep the per-crop cost low). Each probability `*_p` is the probability that the
transform is applied (unlike DINOv2's GaussianBlur, which passes 1 - p to RandomApply).
Order per crop: brightness, contrast, gamma, window/level, blur, noise, solarize (second global crop
only). The vertical flip is geometric and is drawn with the crop box (`draw_vflip`), so patch
tissue fractions and masks flip with the pixels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from mammodino.settings import AugmentSettings

CROP_KINDS = ("global", "local")
# DINOv2's RandomSolarize threshold 128 of 255.
SOLARIZE_THRESHOLD = 0.5


def adjust_brightness(x: np.ndarray, factor: float) -> np.ndarray:
    """x * factor (background stays black), clipped to [0, 1]."""
    return np.clip(x * np.float32(factor), 0.0, 1.0)


def adjust_contrast(x: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the crop's mean as ColorJitter does: mean + factor * (x - mean), clipped."""
    mean = float(x.mean())
    return np.clip(mean + factor * (x - mean), 0.0, 1.0)


def adjust_gamma(x: np.ndarray, gamma: float) -> np.ndarray:
    """x ** gamma (stays in [0, 1])."""
    return np.power(x, gamma, dtype=np.float32)


def window_level(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map the window [low, high] linearly to [0, 1] and clip: a display window/level change."""
    return np.clip((x - low) / max(high - low, 1e-6), 0.0, 1.0)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a kernel of about 3 sigma each side."""
    ksize = 2 * max(1, math.ceil(3.0 * sigma)) + 1
    return cv2.GaussianBlur(x, (ksize, ksize), sigmaX=sigma, sigmaY=sigma)


def add_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, clipped to [0, 1]."""
    noise = rng.standard_normal(x.shape, dtype=np.float32) * np.float32(std)
    return np.clip(x + noise, 0.0, 1.0)


def solarize(x: np.ndarray, threshold: float = SOLARIZE_THRESHOLD) -> np.ndarray:
    """Invert the pixels at or above the threshold."""
    return np.where(x >= threshold, 1.0 - x, x).astype(np.float32)


def draw_vflip(rng: np.random.Generator, p: float) -> bool:
    """Whether a crop is flipped upside down (probability p; the chest wall stays on the left)."""
    return bool(rng.random() < p)


def vflip(x: np.ndarray) -> np.ndarray:
    """The array upside down (rows reversed), contiguous."""
    return np.ascontiguousarray(x[::-1])


def augment_intensity(
    x: np.ndarray, rng: np.random.Generator, config: AugmentSettings, kind: str, crop_index: int
) -> np.ndarray:
    """Apply the intensity augmentations of one crop (kind 'global' or 'local', its index)."""
    if kind not in CROP_KINDS:
        raise ValueError(f"crop kind must be one of {CROP_KINDS}, got {kind!r}")
    x = x.astype(np.float32, copy=False)
    if rng.random() < config.brightness_p:
        x = adjust_brightness(x, rng.uniform(1 - config.brightness, 1 + config.brightness))
    if rng.random() < config.contrast_p:
        x = adjust_contrast(x, rng.uniform(1 - config.contrast, 1 + config.contrast))
    if rng.random() < config.gamma_p:
        log_gamma = rng.uniform(math.log(config.gamma[0]), math.log(config.gamma[1]))
        x = adjust_gamma(x, math.exp(log_gamma))
    if rng.random() < config.window_p:
        jitter = config.window_jitter
        x = window_level(x, rng.uniform(-jitter, jitter), 1.0 + rng.uniform(-jitter, jitter))
    if rng.random() < config.blur_p(kind, crop_index):
        x = gaussian_blur(x, rng.uniform(*config.blur_sigma))
    if rng.random() < config.noise_p:
        x = add_noise(x, config.noise_std, rng)
    if kind == "global" and crop_index == 1 and rng.random() < config.solarize_p:
        x = solarize(x)
    return x.astype(np.float32, copy=False)
