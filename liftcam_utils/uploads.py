"""Images uploaded by a reader (the explorer's upload button): checked and made RGB before any model sees them.

:func:`read_uploaded_image` refuses, with a message that says what was wrong and what is accepted:

* bytes that are not an image Pillow can read, or a damaged (e.g. truncated) image file;
* an image larger than :data:`MAX_SIDE` pixels a side or :data:`MAX_PIXELS` pixels in all (the models see
  224 x 224; the size is read from the header, so a huge image is refused before it is decoded);
* an aspect ratio above :data:`MAX_ASPECT` (the preprocessing scales the short side to 256 pixels, so a
  10000 x 2 strip would become a 1.28-million-pixel-wide image).

It converts, with a note for each change: an EXIF orientation is applied; grayscale, palette and CMYK
images become RGB (16-bit and float grayscale mapped from its own range to 0-255); transparent pixels (RGBA,
LA, a palette with transparency) are composited on white; of an animation, the first frame is kept.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_SIDE = 8192
MAX_PIXELS = 20_000_000
MAX_ASPECT = 10.0
ACCEPTED = "PNG, JPEG, GIF, BMP, TIFF or WebP"
_WHITE = (255, 255, 255, 255)
_EXIF_ORIENTATION = 0x0112


def _limits_error(name: str, width: int, height: int) -> ValueError | None:
    """Why a ``width`` x ``height`` image is refused, or None when it is accepted."""
    size = f"{name!r} is {width} x {height} pixels"
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        return ValueError(f"{size}; images up to {MAX_SIDE} pixels a side and {MAX_PIXELS / 1e6:.0f} megapixels "
                          f"are accepted (the model sees 224 x 224): downscale it first")
    if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT:
        return ValueError(f"{size}; aspect ratios up to {MAX_ASPECT:.0f}:1 are accepted (the model sees the "
                          f"centre square of the image): crop it first")
    return None


def _as_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """``image`` in RGB; transparent pixels composited on white; a note for every change."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        notes.append(f"{mode} image: transparent pixels composited on white, converted to RGB")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;16"):  # wide values: Pillow's RGB conversion would clip at 255
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        notes.append(f"{mode} grayscale image: its range [{low:g}, {high:g}] mapped to [0, 255], converted to RGB")
        return Image.fromarray(np.round(scaled).astype(np.uint8)).convert("RGB")
    kind = "grayscale" if mode in ("1", "L") else mode
    notes.append(f"{kind} image (mode {mode}) converted to RGB")
    return image.convert("RGB")


def _open(content: bytes, name: str) -> Image.Image:
    """The image in ``content``, opened lazily (header only); ``ValueError`` when it is none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(content))
    except UnidentifiedImageError as error:
        raise ValueError(f"{name!r} is not an image this app can read; upload a {ACCEPTED} file") from error
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ValueError(f"{name!r} is far too large to decode ({error}); downscale it first") from error
    except (OSError, SyntaxError, ValueError) as error:  # a recognised format with a broken header
        raise ValueError(f"{name!r} is a damaged image file ({error}); upload a complete {ACCEPTED} file") from error


def read_uploaded_image(content: bytes, name: str = "upload") -> tuple[Image.Image, list[str]]:
    """The RGB image in the file ``content`` (named ``name`` in messages) and notes on what was converted.

    Raises ``ValueError`` naming the file, what is wrong with it and what is accepted (see the module docstring).
    """
    content = bytes(content)
    if not content:
        raise ValueError(f"{name!r} is empty; upload an image file ({ACCEPTED})")
    image = _open(content, name)
    refusal = _limits_error(name, *image.size)
    if refusal is not None:
        raise refusal
    notes = []
    if getattr(image, "n_frames", 1) > 1:
        notes.append(f"animated image: the first of its {image.n_frames} frames is used")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt pixel data
        raise ValueError(f"{name!r} is a damaged {image.format} file ({error}); upload a complete {ACCEPTED} "
                         f"file") from error
    if image.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None):
        image = ImageOps.exif_transpose(image)
        notes.append("rotated as its EXIF orientation says")
    return _as_rgb(image, notes), notes


__all__ = ["ACCEPTED", "MAX_ASPECT", "MAX_PIXELS", "MAX_SIDE", "read_uploaded_image"]
