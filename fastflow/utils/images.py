"""Images in [−1, 1]: their PSNR, and PNG output (image grids, 2-D scatter plots, figures)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fastflow.errors import ShapeError
from fastflow.utils.io import atomic_write

#: the value range of fastflow's images, [−1, 1]
DATA_RANGE = 2.0


def psnr_db(mse: Any) -> Any:
    """PSNR in dB of images in [−1, 1] from their mean squared error (a float or a tensor; 0 → inf)."""
    if isinstance(mse, torch.Tensor):
        return 10 * torch.log10(DATA_RANGE**2 / mse)
    return 10 * math.log10(DATA_RANGE**2 / mse) if mse > 0 else math.inf


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` in [−1, 1] → ``[B, H, W, C]`` uint8."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None, pad: int = 1,
              upscale: int = 1, caption: str = "", row_labels: list[str] | None = None) -> Path:
    """Tile a batch of images into one PNG (``upscale`` enlarges small images, nearest; ``caption``: a
    line of text in a white band above the grid; ``row_labels``: one name per row, in a white column
    to its left)."""
    imgs = to_uint8(x)
    b, h, w, c = imgs.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, im in enumerate(imgs):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = im
    img = Image.fromarray(grid[:, :, 0] if c == 1 else grid)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.Resampling.NEAREST)
    if row_labels:
        if len(row_labels) != ncol:
            raise ShapeError(f"{len(row_labels)} row labels for a grid of {ncol} rows")
        img = _labelled(img, row_labels, [(pad + r * (h + pad)) * upscale + h * upscale // 2 for r in range(ncol)])
    if caption:
        img = _captioned(img, caption)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return Path(path)


def _labelled(img: Image.Image, labels: list[str], centres: list[int]) -> Image.Image:
    """``img`` right of a white column holding ``labels[i]`` centred at height ``centres[i]``."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    width = max(int(ImageDraw.Draw(img).textlength(t, font=font)) for t in labels) + 8
    out = Image.new(img.mode, (img.width + width, img.height), 255 if img.mode == "L" else (255, 255, 255))
    out.paste(img, (width, 0))
    draw = ImageDraw.Draw(out)
    for text, y in zip(labels, centres, strict=True):
        draw.text((4, y - 5), text, fill=0 if img.mode == "L" else (0, 0, 0), font=font)
    return out


def _captioned(img: Image.Image, caption: str) -> Image.Image:
    """``img`` below a white band holding ``caption`` (PIL's built-in font: nothing to install)."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    width = max(img.width, int(ImageDraw.Draw(img).textlength(caption, font=font)) + 8)
    out = Image.new(img.mode, (width, img.height + 16), 255 if img.mode == "L" else (255, 255, 255))
    out.paste(img, (0, 16))
    ImageDraw.Draw(out).text((4, 2), caption, fill=0 if img.mode == "L" else (0, 0, 0), font=font)
    return out


def save_image(x: torch.Tensor, path: str | Path) -> Path:
    """One image ``[C, H, W]`` in [−1, 1] as a PNG at its own resolution (no border, no enlarging)."""
    im = to_uint8(x[None])[0]
    img = Image.fromarray(im[:, :, 0] if im.shape[-1] == 1 else im)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return Path(path)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend (no display needed): every figure's entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_scatter(points: torch.Tensor, path: str | Path, reference: torch.Tensor | None = None,
                 title: str = "") -> Path:
    """Scatter plot of 2-D samples (optionally over reference data) as PNG."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        r = reference.cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="0.75", label="data")
    p_ = points.detach().float().cpu().numpy()
    ax.scatter(p_[:, 0], p_[:, 1], s=2, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7)
    return save_figure(fig, path, bbox_inches="tight")


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """Write a matplotlib figure as PNG (atomically: never a half-written image) and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", **kwargs))
    pyplot().close(fig)
    return Path(path)


def display_upscale(width: int, target: int = 64) -> int:
    """How much a grid of ``width``-pixel images is enlarged (nearest) to be seen: to about ``target``
    pixels (``fastflow-run --png`` enlarges the same way)."""
    return max(1, target // width)


def save_samples(x: torch.Tensor, path: str | Path, reference: torch.Tensor | None = None,
                 title: str = "") -> Path:
    """Images ``[B, C, H, W]`` → grid PNG; points ``[B, 2]`` → scatter PNG."""
    if x.dim() == 4:
        return save_grid(x, path, upscale=display_upscale(x.shape[-1]), caption=title)
    if x.dim() == 2 and x.shape[1] == 2:
        return save_scatter(x, path, reference, title)
    raise ShapeError(f"cannot draw samples of shape {tuple(x.shape)}")
