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

The format and size checks are the dataset readers' (:mod:`liftcam_utils.datasets.image_files`), with the
messages worded for an upload (:data:`UPLOADS`).

It converts, with a note for each change: an EXIF orientation is applied (a value outside 1-8 is ignored);
grayscale, palette and CMYK images become RGB (16-bit and float grayscale mapped from its own range to 0-255);
transparent pixels (RGBA, LA, a palette with transparency) are composited on white. Of a file with several
frames (an animated GIF, PNG or WebP, a multi-page TIFF, a JPEG with an embedded preview) only the first frame
is used: the others are never decoded nor counted, so the number of frames costs nothing.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageOps

from ..datasets.image_files import (
    FORMATS,
    MAX_ASPECT,
    MAX_PIXELS,
    MAX_SIDE,
    ImageFilePolicy,
    load_checked,
    open_checked,
)

ACCEPTED = "PNG, JPEG, GIF, BMP, TIFF or WebP"
# the format allow-list and the size limits are the datasets' (liftcam_utils.datasets.image_files); the words are ours
UPLOADS = ImageFilePolicy(
    formats=FORMATS, accepted=ACCEPTED, reader="this app", subject="",
    not_image=f"upload a {ACCEPTED} file", other_format=f"upload a {ACCEPTED} file (convert it first)",
    damaged=f"upload a complete {ACCEPTED} file", downscale="downscale it first", crop="crop it first")
# the file types the upload button offers (its HTML ``accept``): each accepted format's suffixes and media type
_SUFFIXES = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "GIF": (".gif",), "BMP": (".bmp",), "TIFF": (".tif", ".tiff"),
             "WEBP": (".webp",)}
UPLOAD_ACCEPT = ",".join([*(suffix for format in FORMATS for suffix in _SUFFIXES[format]),
                          *(f"image/{format.lower()}" for format in FORMATS)])
_WHITE = (255, 255, 255, 255)
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSFORMS = range(2, 9)  # the orientations 2-8 flip or rotate; 1 is upright
# what Pillow raises on EXIF data it cannot parse (a bad TIFF header, IFD entries past the end, wrong types)
_EXIF_ERRORS = (SyntaxError, ValueError, OSError, KeyError, IndexError, TypeError, struct.error)


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
    image = open_checked(io.BytesIO(content), name, UPLOADS)  # format and size, from the first bytes and header
    notes = []
    if load_checked(image, name, UPLOADS):
        notes.append("image with several frames (an animation or pages): only its first frame is used")
    image = _upright(image, name, notes)
    return _as_rgb(image, name, notes), notes


__all__ = ["ACCEPTED", "FORMATS", "UPLOAD_ACCEPT", "MAX_ASPECT", "MAX_PIXELS", "MAX_SIDE", "read_uploaded_image"]
