"""No-reference quality: how much noise is left, and whether the denoiser removed structure.

Pure numpy (plus OpenCV filters), shared by training evaluation and the service. Inputs are 2-D
arrays in the image's own units; sigmas come back in the same units.

* :func:`immerkaer_sigma`: Immerkaer (1996), "Fast noise variance estimation", CVIU 64(2).
  The 3 x 3 mask [[1,-2,1],[-2,4,-2],[1,-2,1]] (difference of two Laplacians) cancels smooth
  image content; the mean absolute response scaled by sqrt(pi/2) / 6 is the Gaussian sigma.
* :func:`wavelet_mad_sigma`: Donoho & Johnstone (1994): median(|HH|) / 0.6745 on the finest
  diagonal detail band, here of the orthonormal Haar transform. The median makes it robust to
  the few large coefficients that edges produce.
* :func:`noise_reduction_db`: 20 log10(sigma_in / sigma_out).
* :func:`residual_edge_correlation`: Pearson correlation between the local magnitude of the
  removed residual (input - output, 7 x 7 mean of |r|) and the edge strength (Sobel gradient
  magnitude) of the denoised image. A residual that is pure noise is unrelated to where the
  edges are (about 0); a denoiser that blurs edges leaves edge-shaped energy in the residual
  (clearly positive, towards 1).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

_IMMERKAER_MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
_MAD_TO_SIGMA = 0.6744897501960817  # the median of |N(0, 1)|
_RESIDUAL_WINDOW = 7


def _as_2d(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2 or min(array.shape) < 3:
        raise ValueError(f"expected a 2-D image of at least 3 x 3 pixels, got shape {array.shape}")
    return array


def immerkaer_sigma(image: np.ndarray) -> float:
    array = _as_2d(image)
    # "valid" filtering: the 3 x 3 mask over interior pixels only, as in the paper.
    response = cv2.filter2D(array, cv2.CV_64F, _IMMERKAER_MASK, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2.0) * np.abs(response).mean() / 6.0)


def haar_diagonal(image: np.ndarray) -> np.ndarray:
    """Finest diagonal (HH) coefficients of the orthonormal 2-D Haar transform (even crop)."""
    array = _as_2d(image)
    rows, cols = array.shape[0] // 2 * 2, array.shape[1] // 2 * 2
    a = array[0:rows:2, 0:cols:2]
    b = array[0:rows:2, 1:cols:2]
    c = array[1:rows:2, 0:cols:2]
    d = array[1:rows:2, 1:cols:2]
    return (a - b - c + d) / 2.0


def wavelet_mad_sigma(image: np.ndarray) -> float:
    return float(np.median(np.abs(haar_diagonal(image))) / _MAD_TO_SIGMA)


def noise_reduction_db(sigma_in: float, sigma_out: float) -> float | None:
    """20 log10(sigma_in / sigma_out); ``None`` when either is zero (no finite answer)."""
    if sigma_in <= 0 or sigma_out <= 0:
        return None
    return 20.0 * math.log10(sigma_in / sigma_out)


def residual_edge_correlation(noisy: np.ndarray, denoised: np.ndarray) -> float:
    """Correlation in [-1, 1] between residual energy and edges; 0 when either is flat."""
    noisy_2d, denoised_2d = _as_2d(noisy), _as_2d(denoised)
    if noisy_2d.shape != denoised_2d.shape:
        raise ValueError(f"shapes differ: {noisy_2d.shape} vs {denoised_2d.shape}")
    size = (_RESIDUAL_WINDOW, _RESIDUAL_WINDOW)
    residual_energy = cv2.blur(np.abs(noisy_2d - denoised_2d), size, borderType=cv2.BORDER_REFLECT)
    gx = cv2.Sobel(denoised_2d, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(denoised_2d, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    edges = np.hypot(gx, gy)
    x = residual_energy.ravel() - residual_energy.mean()
    y = edges.ravel() - edges.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    if denominator == 0:
        return 0.0
    return float(x @ y) / denominator
