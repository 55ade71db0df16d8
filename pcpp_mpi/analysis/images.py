"""Image comparison: PSNR, SSIM, maximum absolute difference and a difference heat map.

Images are ``(H, W, 3)`` uint8 arrays (the run file's ``/images``); every figure uses a data
range of 255. SSIM follows Wang et al. (2004) as ``skimage.metrics.structural_similarity``
computes it with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``: an
11 x 11 Gaussian window (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, edges
mirrored, the mean of the SSIM map over the pixels at least 5 from the border, averaged over
the colour channels. Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DATA_RANGE = 255.0
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): an 11-pixel window
SSIM_K1 = 0.01
SSIM_K2 = 0.03


class ImageMismatch(ValueError):
    """Two images cannot be compared (different sizes or not (H, W, 3))."""


def _check_pair(a: np.ndarray, b: np.ndarray, names: tuple[str, str] = ("A", "B")) -> None:
    if a.shape != b.shape:
        raise ImageMismatch(
            f"images differ in size: {names[0]} is {_size(a)}, {names[1]} is {_size(b)}; "
            "only images of the same size can be compared"
        )


def _size(image: np.ndarray) -> str:
    if image.ndim >= 2:
        extra = f"x{image.shape[2]}" if image.ndim == 3 and image.shape[2] != 3 else ""
        return f"{image.shape[0]}x{image.shape[1]}{extra} (H x W)"
    return str(image.shape)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference of any pixel and channel (pixel values)."""
    _check_pair(a, b)
    if a.size == 0:
        return 0.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(range^2 / MSE)``; ``inf`` if identical."""
    _check_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def gaussian_kernel(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
    """A normalised 1-D Gaussian of ``2 * radius + 1`` taps."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(x**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def gaussian_filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 2-D filtering of a 2-D float array, edges mirrored (``d c b a | a b c d``)."""
    radius = len(kernel) // 2
    padded = np.pad(image, radius, mode="symmetric")
    height, width = image.shape
    rows = np.zeros((height, padded.shape[1]), dtype=np.float64)
    for i, weight in enumerate(kernel):
        rows += weight * padded[i : i + height, :]
    out = np.zeros((height, width), dtype=np.float64)
    for i, weight in enumerate(kernel):
        out += weight * rows[:, i : i + width]
    return out


def _ssim_channel(x: np.ndarray, y: np.ndarray, kernel: np.ndarray, data_range: float) -> float:
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ux, uy = gaussian_filter(x, kernel), gaussian_filter(y, kernel)
    vx = gaussian_filter(x * x, kernel) - ux * ux
    vy = gaussian_filter(y * y, kernel) - uy * uy
    vxy = gaussian_filter(x * y, kernel) - ux * uy
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = len(kernel) // 2
    return float(ssim_map[pad:-pad, pad:-pad].mean())


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """Mean structural similarity (1.0 = identical); see the module docstring."""
    _check_pair(a, b)
    kernel = gaussian_kernel()
    if a.shape[0] < len(kernel) or a.shape[1] < len(kernel):
        raise ImageMismatch(
            f"SSIM needs images of at least {len(kernel)}x{len(kernel)} pixels, got {_size(a)}"
        )
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    if x.ndim == 2:
        return _ssim_channel(x, y, kernel, data_range)
    return float(
        np.mean(
            [_ssim_channel(x[..., c], y[..., c], kernel, data_range) for c in range(x.shape[2])]
        )
    )


@dataclass(frozen=True)
class ImageComparison:
    """Figures for one pair of images (pixel values 0..255)."""

    name: str
    height: int
    width: int
    psnr_db: float
    ssim: float
    max_abs_diff: float
    mean_abs_diff: float
    latent_max_abs_diff: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "height": self.height,
            "width": self.width,
            "psnr_db": None if math.isinf(self.psnr_db) else self.psnr_db,
            "identical": math.isinf(self.psnr_db),
            "ssim": self.ssim,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "latent_max_abs_diff": self.latent_max_abs_diff,
        }


def compare_images(
    name: str, a: np.ndarray, b: np.ndarray, names: tuple[str, str] = ("A", "B")
) -> ImageComparison:
    """All figures for one pair; raises :class:`ImageMismatch` naming both sizes."""
    _check_pair(a, b, names)
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return ImageComparison(
        name=name,
        height=int(a.shape[0]),
        width=int(a.shape[1]),
        psnr_db=psnr(a, b),
        ssim=ssim(a, b),
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
    )


def plot_difference(
    a: np.ndarray,
    b: np.ndarray,
    path: str | Path,
    *,
    labels: tuple[str, str] = ("A", "B"),
    title: str = "",
) -> Path:
    """PNG with A, B and the heat map of ``max over channels |A - B|`` (pixel values)."""
    _check_pair(a, b, labels)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1)
    height, width = diff.shape
    panel_in = 4.0
    aspect = height / max(width, 1)
    figure = Figure(
        figsize=(3 * panel_in + 0.8, panel_in * aspect + 0.9), dpi=110, layout="constrained"
    )
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    for ax, image, label in zip(axes[:2], (a, b), labels, strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(label, fontsize=8, wrap=True)
        ax.set_axis_off()
    shown = axes[2].imshow(
        diff, cmap="magma", vmin=0, vmax=max(int(diff.max()), 1), interpolation="nearest"
    )
    axes[2].set_title("|A - B| (max over RGB, pixel values)", fontsize=8)
    axes[2].set_axis_off()
    figure.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)
    if title:
        figure.suptitle(title, fontsize=9)
    path = Path(path)
    figure.savefig(path)
    return path
