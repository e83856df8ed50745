"""Image files opened safely: which formats are read, and how large an image may be, both checked before any
decoder runs. The dataset readers (:func:`read_image_file`, :func:`check_image_file`; every file-backed
``ImageRecord.image()``) and the explorer's uploads (:mod:`liftcam_utils.app.uploads`) open images only here.

**Formats** are recognised from the file's first bytes (magic numbers), never from its name, and Pillow is only
ever handed the plugins of the accepted formats: the parser of any other format never sees the file, so an EPS
file named ``photo.jpg`` is refused without Ghostscript being run. A refused file is named with its real format
(from the signature checks of Pillow's plugins, which only compare bytes).

* uploads: :data:`FORMATS` (PNG, JPEG, GIF, BMP, TIFF, WebP);
* datasets: :data:`DATASET_FORMATS`, the same and PPM/PGM (netpbm: a text header and raw pixels), because the
  ``folder`` reader has always read ``.ppm`` and ``.pgm`` files.

**Sizes** are read from the header, so an image is refused before it is decoded; datasets and uploads share the
limits (:data:`MAX_SIDE` pixels a side, :data:`MAX_PIXELS` in all, aspect ratio :data:`MAX_ASPECT`), since both
feed the same models: they see 224 x 224, and the preprocessing scales the short side to 256, so a 3000 x 1 strip
would become a 768000 x 256 image (+776 MB) for nothing the model could use. A file outside them is refused with
a :class:`ValueError` naming it (crop or downscale it, or remove it), never silently skipped or shrunk. Pillow's own
decompression-bomb guard is an error too. A missing file raises :class:`FileNotFoundError`, as ``open`` does.

**Bit depth.** A 16-bit grey image (Pillow's ``I;16`` modes, or its 32-bit ``I`` mode holding values in 0 .. 65535,
as some 16-bit PNGs open) is scaled to 8 bits (``v / 257``, rounded) before it becomes RGB: Pillow's own conversion
would clip every value above 255, turning almost the whole image white. Grey images of other integer ranges and
floating-point ones (mode ``F``) have no agreed scale and are refused.

Each user words its messages through an :class:`ImageFilePolicy` (what the app or the package reads, and what to do
about a refused file); :data:`DATASETS` is the policy of the dataset readers.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

MAX_SIDE = 8192
MAX_PIXELS = 20_000_000
MAX_ASPECT = 10.0
# Pillow's format names of the accepted files; Pillow reports a JPEG with an embedded preview or depth map as MPO
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
DATASET_FORMATS = (*FORMATS, "PPM")
_PREFIX = 16  # as many first bytes as Pillow's signature checks read


@dataclass(frozen=True)
class ImageFilePolicy:
    """The formats one user of this module reads and the words of its refusals.

    A message reads ``{subject}{name!r} is ...; {advice}``, e.g. ``image file 'a/b.jpg' is an image in EPS format,
    which this package does not read; convert it to ...``."""

    formats: tuple[str, ...]
    accepted: str  # the formats, as a reader names them: "PNG, JPEG, GIF, BMP, TIFF or WebP"
    reader: str  # who reads the files: "this app"
    subject: str  # what goes before the file's name: "" or "image file "
    not_image: str  # advice for a file that is no image of a known format
    other_format: str  # ... for an image of a format not read
    damaged: str  # ... for a damaged (e.g. truncated) file of an accepted format
    downscale: str  # ... for an image too large
    crop: str  # ... for an aspect ratio too wide
    max_side: int = MAX_SIDE
    max_pixels: int = MAX_PIXELS
    max_aspect: float = MAX_ASPECT

    def refusal(self, name: str, problem: str, advice: str, separator: str = "; ") -> ValueError:
        return ValueError(f"{self.subject}{name!r} {problem}{separator}{advice}")


_DATASET_ACCEPTED = "PNG, JPEG, GIF, BMP, TIFF, WebP or PPM/PGM"
DATASETS = ImageFilePolicy(
    formats=DATASET_FORMATS, accepted=_DATASET_ACCEPTED, reader="this package", subject="image file ",
    not_image=f"replace it with a {_DATASET_ACCEPTED} file, or remove it",
    other_format=f"convert it to a {_DATASET_ACCEPTED} file, or remove it",
    damaged=f"replace it with a complete {_DATASET_ACCEPTED} file, or remove it",
    downscale="downscale it, or remove it", crop="crop it, or remove it")
"""The dataset readers' policy: :data:`DATASET_FORMATS`, the shared size limits."""


def size_error(policy: ImageFilePolicy, name: str, width: int, height: int) -> ValueError | None:
    """Why a ``width`` x ``height`` image is refused under ``policy``, or None when it is accepted."""
    size = f"is {width} x {height} pixels"
    if max(width, height) > policy.max_side or width * height > policy.max_pixels:
        return policy.refusal(name, f"{size}; images up to {policy.max_side} pixels a side and "
                              f"{policy.max_pixels / 1e6:.0f} megapixels are accepted (the model sees 224 x 224)",
                              policy.downscale, ": ")
    if min(width, height) < 1 or max(width, height) / min(width, height) > policy.max_aspect:
        return policy.refusal(name, f"{size}; aspect ratios up to {policy.max_aspect:.0f}:1 are accepted (the model "
                              "sees the centre square of the image)", policy.crop, ": ")
    return None


def _signature_matches(format: str, prefix: bytes) -> bool:
    """Whether ``prefix`` (a file's first bytes) starts with the signature of Pillow's ``format``."""
    accept = Image.OPEN[format][1]
    try:
        return bool(accept and accept(prefix))
    except (IndexError, TypeError, struct.error):  # a check that reads past the end of a very short file
        return False


def detected_format(prefix: bytes, formats: tuple[str, ...] = FORMATS) -> str | None:
    """The Pillow format whose signature starts ``prefix`` (one of ``formats`` first), or None. Only the formats'
    signature checks run: no decoder or parser of a refused format ever sees the file."""
    Image.init()
    candidates = [*formats, *(format for format in Image.ID if format not in formats)]
    return next((format for format in candidates if _signature_matches(format, prefix)), None)


_TIFF_SAMPLE_KINDS = {1: "unsigned integer", 2: "signed integer", 3: "floating-point", 6: "complex floating-point"}


def unreadable_tiff_samples(file: BinaryIO, start: int) -> str | None:
    """What the first page of a TIFF holds, e.g. ``"3 channels of 32-bit floating-point samples"``, when tifffile
    reads its header (so the file is a valid TIFF) although Pillow did not; None for a file tifffile cannot read
    either (a damaged one). Only the header and the first page's tags are read, never the pixels."""
    try:
        file.seek(start)
        with tifffile.TiffFile(file) as tiff:
            page = tiff.pages.first
            kind = _TIFF_SAMPLE_KINDS.get(int(page.sampleformat), f"sample format {int(page.sampleformat)}")
            channels = f"{page.samplesperpixel} channel{'s' if page.samplesperpixel != 1 else ''}"
            return f"{channels} of {page.bitspersample}-bit {kind} samples"
    except Exception:  # tifffile raises many kinds on a damaged file: all mean "not a valid TIFF"
        return None
    finally:
        file.seek(start)


def open_checked(file: BinaryIO, name: str, policy: ImageFilePolicy) -> Image.Image:
    """The image in the binary ``file`` (named ``name`` in messages), opened lazily (header only) by the plugin of
    one of ``policy.formats``, its size within the policy's limits; :class:`ValueError` saying why not."""
    start = file.tell()
    prefix = file.read(_PREFIX)
    file.seek(start)
    if not prefix:
        raise policy.refusal(name, "is empty", policy.not_image)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(file, formats=policy.formats)
    except UnidentifiedImageError as error:
        detected = detected_format(prefix, policy.formats)
        if detected == "TIFF":
            samples = unreadable_tiff_samples(file, start)
            if samples is not None:  # a valid TIFF of samples Pillow has no mode for: not damaged
                raise policy.refusal(name, f"is a TIFF of {samples}, which {policy.reader} does not read",
                                     policy.other_format) from error
        if detected in policy.formats:  # its signature, then a header the plugin could not parse
            raise policy.refusal(name, f"is a damaged {detected} file (its header cannot be read)",
                                 policy.damaged) from error
        if detected is not None:
            raise policy.refusal(name, f"is an image in {detected} format, which {policy.reader} does not read",
                                 policy.other_format) from error
        raise policy.refusal(name, f"is not an image {policy.reader} can read", policy.not_image) from error
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise policy.refusal(name, f"is far too large to decode ({error})", policy.downscale) from error
    except (OSError, SyntaxError, ValueError) as error:  # a recognised format with a broken header
        raise policy.refusal(name, f"is a damaged image file ({error})", policy.damaged) from error
    refusal = size_error(policy, name, *image.size)
    if refusal is not None:
        image.close()
        raise refusal
    return image


def load_checked(image: Image.Image, name: str, policy: ImageFilePolicy) -> bool:
    """Decode the first frame of ``image`` (from :func:`open_checked`); whether the file has several frames (an
    animation or pages: at most the second frame's header is read, the frames are never counted).
    :class:`ValueError` for a damaged (e.g. truncated) file."""
    try:
        several = bool(getattr(image, "is_animated", False))
        image.load()
    except (OSError, SyntaxError, ValueError, IndexError, struct.error) as error:  # truncated or corrupt frames
        raise policy.refusal(name, f"is a damaged {image.format} file ({error})", policy.damaged) from error
    return several


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_EIGHT_OR_SIXTEEN_BITS = "save it with 8-bit or 16-bit unsigned samples (grey or RGB), or remove it"


def as_rgb(image: Image.Image, name: str, policy: ImageFilePolicy) -> Image.Image:
    """A decoded image as 8-bit RGB; 16-bit grey scaled to 8 bits first (see the module docstring), other wide grey
    images refused (:class:`ValueError` naming ``name``)."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image)
        if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise policy.refusal(name, f"is a grey image of 32-bit integers from {values.min()} to {values.max()}, "
                                 "which has no 8-bit scale", _EIGHT_OR_SIXTEEN_BITS)
        return Image.fromarray(np.rint(values / 257.0).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "F":
        raise policy.refusal(name, "is a grey image of floating-point values, which has no 8-bit scale",
                             _EIGHT_OR_SIXTEEN_BITS)
    return image.convert("RGB")


def read_image_file(path: str | os.PathLike, policy: ImageFilePolicy = DATASETS) -> Image.Image:
    """The image at ``path`` as RGB (its first frame, fully decoded; :func:`as_rgb`), after the checks of
    ``policy``; a :class:`ValueError` naming the file and the reason when it is refused (see the module docstring)."""
    name = str(path)
    with open(Path(path), "rb") as file, open_checked(file, name, policy) as image:
        load_checked(image, name, policy)
        return as_rgb(image, name, policy)


def check_image_file(path: str | os.PathLike, policy: ImageFilePolicy = DATASETS) -> None:
    """Check the image at ``path`` without decoding it: its format (from its first bytes) and its size (from its
    header); a :class:`ValueError` naming the file and the reason when it is refused."""
    with open(Path(path), "rb") as file, open_checked(file, str(path), policy):
        pass


__all__ = ["DATASETS", "DATASET_FORMATS", "FORMATS", "MAX_ASPECT", "MAX_PIXELS", "MAX_SIDE", "ImageFilePolicy",
           "as_rgb", "check_image_file", "detected_format", "load_checked", "open_checked", "read_image_file",
           "size_error"]
