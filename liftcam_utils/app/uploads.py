"""Images uploaded by a reader (the explorer's upload button): checked and made RGB before any model sees them.

:func:`read_uploaded_image` refuses, with a message that says what was wrong and what is accepted:

* bytes that are not an image, an image in a format other than :data:`FORMATS` (EPS, ICO, PCX, AVIF, ...: named
  from the file's first bytes; Pillow only ever parses the accepted formats, so e.g. Ghostscript is never run
  for an EPS file), or a damaged (e.g. truncated) image file;
* an image larger than :data:`MAX_SIDE` pixels a side or :data:`MAX_PIXELS` pixels in all (the models see
  224 x 224; the size is read from the header, so a huge image is refused before it is decoded);
* an aspect ratio above :data:`MAX_ASPECT` (the preprocessing scales the short side to 256 pixels, so a
  10000 x 2 strip would become a 1.28-million-pixel-wide image);
* a damaged EXIF block (metadata Pillow cannot parse);
* a float image with NaN or infinite pixel values.

It converts, with a note for each change: an EXIF orientation is applied (a value outside 1-8 is ignored);
grayscale, palette and CMYK images become RGB (16-bit and float grayscale mapped from its own range to 0-255);
transparent pixels (RGBA, LA, a palette with transparency) are composited on white. Of a file with several
frames (an animated GIF, PNG or WebP, a multi-page TIFF, a JPEG with an embedded preview) only the first frame
is used: the others are never decoded nor counted, so the number of frames costs nothing.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_SIDE = 8192
MAX_PIXELS = 20_000_000
MAX_ASPECT = 10.0
# Pillow's format names of the accepted files; Pillow reports a JPEG with an embedded preview or depth map as MPO
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
ACCEPTED = "PNG, JPEG, GIF, BMP, TIFF or WebP"
_WHITE = (255, 255, 255, 255)
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSFORMS = range(2, 9)  # the orientations 2-8 flip or rotate; 1 is upright
# what Pillow raises on EXIF data it cannot parse (a bad TIFF header, IFD entries past the end, wrong types)
_EXIF_ERRORS = (SyntaxError, ValueError, OSError, KeyError, IndexError, TypeError, struct.error)


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


def _as_rgb(image: Image.Image, name: str, notes: list[str]) -> Image.Image:
    """``image`` in RGB; transparent pixels composited on white; a note for every change. ``ValueError`` for
    NaN or infinite pixel values (a float image)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        notes.append(f"{mode} image: transparent pixels composited on white, converted to RGB")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;16"):  # wide values: Pillow's RGB conversion would clip at 255
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"{name!r} has NaN or infinite pixel values ({mode} image); upload an image of finite "
                             f"values")
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        notes.append(f"{mode} grayscale image: its range [{low:g}, {high:g}] mapped to [0, 255], converted to RGB")
        return Image.fromarray(np.round(scaled).astype(np.uint8)).convert("RGB")
    kind = "grayscale" if mode in ("1", "L") else mode
    notes.append(f"{kind} image (mode {mode}) converted to RGB")
    return image.convert("RGB")


def _signature_matches(format: str, prefix: bytes) -> bool:
    """Whether ``prefix`` (a file's first bytes) starts with the signature of Pillow's ``format``."""
    accept = Image.OPEN[format][1]
    try:
        return bool(accept and accept(prefix))
    except (IndexError, TypeError, struct.error):  # a check that reads past the end of a very short file
        return False


def _detected_format(prefix: bytes) -> str | None:
    """The Pillow format whose signature starts ``prefix`` (an accepted format first), or None. Only the formats'
    signature checks run: no decoder or parser of a refused format ever sees the file."""
    Image.init()
    candidates = [*FORMATS, *(format for format in Image.ID if format not in FORMATS)]
    return next((format for format in candidates if _signature_matches(format, prefix)), None)


def _open(content: bytes, name: str) -> Image.Image:
    """The image in ``content``, opened lazily (header only) by the plugin of an accepted format; ``ValueError``
    when it is none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(content), formats=FORMATS)
    except UnidentifiedImageError as error:
        detected = _detected_format(content[:16])
        if detected in FORMATS:  # its signature, then a header the plugin could not parse
            raise ValueError(f"{name!r} is a damaged {detected} file (its header cannot be read); upload a complete "
                             f"{ACCEPTED} file") from error
        if detected is not None:
            raise ValueError(f"{name!r} is an image in {detected} format, which this app does not read; upload a "
                             f"{ACCEPTED} file (convert it first)") from error
        raise ValueError(f"{name!r} is not an image this app can read; upload a {ACCEPTED} file") from error
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ValueError(f"{name!r} is far too large to decode ({error}); downscale it first") from error
    except (OSError, SyntaxError, ValueError) as error:  # a recognised format with a broken header
        raise ValueError(f"{name!r} is a damaged image file ({error}); upload a complete {ACCEPTED} file") from error


def _upright(image: Image.Image, name: str, notes: list[str]) -> Image.Image:
    """``image`` flipped or rotated as its EXIF orientation says; ``ValueError`` for a damaged EXIF block."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in _EXIF_TRANSFORMS:
            image = ImageOps.exif_transpose(image)
            notes.append("rotated as its EXIF orientation says")
        elif orientation != 1:
            notes.append(f"EXIF orientation {orientation!r} is not one of 1-8: ignored")
    except _EXIF_ERRORS as error:
        raise ValueError(f"{name!r} has a damaged EXIF block ({type(error).__name__}: {error}); save the image "
                         f"again without its metadata (EXIF), or upload another {ACCEPTED} file") from error
    return image


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
    try:
        if getattr(image, "is_animated", False):  # reads at most the second frame's header, never counts them all
            notes.append("image with several frames (an animation or pages): only its first frame is used")
        image.load()
    except (OSError, SyntaxError, ValueError, IndexError, struct.error) as error:  # truncated or corrupt frames
        raise ValueError(f"{name!r} is a damaged {image.format} file ({error}); upload a complete {ACCEPTED} "
                         f"file") from error
    image = _upright(image, name, notes)
    return _as_rgb(image, name, notes), notes


__all__ = ["ACCEPTED", "FORMATS", "MAX_ASPECT", "MAX_PIXELS", "MAX_SIDE", "read_uploaded_image"]
