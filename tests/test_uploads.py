"""Uploaded images (liftcam_utils.app.uploads): refused with a message naming the problem, or converted to RGB
with a note, checked pixel by pixel."""

import io
import struct

import numpy as np
import pytest
import tifffile
from PIL import EpsImagePlugin, GifImagePlugin, Image, TiffImagePlugin

from liftcam_utils.app.uploads import ACCEPTED, MAX_PIXELS, MAX_SIDE, read_uploaded_image

# the header of an Encapsulated PostScript file: Pillow would render it with Ghostscript when decoded
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n0 0 moveto 16 16 lineto stroke\n%%EOF\n"


def encoded(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def bmp_claiming(width: int, height: int) -> bytes:
    """A 1 x 1 BMP whose header claims ``width`` x ``height`` (its pixel data is far too short for that)."""
    data = bytearray(encoded(Image.new("RGB", (1, 1)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def test_rgb_passes_unchanged():
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image, notes = read_uploaded_image(encoded(Image.fromarray(pixels)), "photo.png")
    assert notes == [] and image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), pixels)


@pytest.mark.parametrize("content, message", [
    (b"", "'f' is empty"),
    (b"just some text, no image", "'f' is not an image this app can read; upload a PNG, JPEG"),
    (encoded(Image.new("RGB", (64, 64)), "JPEG")[:300], "'f' is a damaged"),
])
def test_not_an_image(content, message):
    with pytest.raises(ValueError, match=message):
        read_uploaded_image(content, "f")


def test_size_limits():
    with pytest.raises(ValueError, match=f"'big.png' is {MAX_SIDE + 1} x 10 pixels; images up to {MAX_SIDE}"):
        read_uploaded_image(encoded(Image.new("L", (MAX_SIDE + 1, 10))), "big.png")
    side = int(MAX_PIXELS ** 0.5) + 1  # under MAX_SIDE, over MAX_PIXELS in all
    with pytest.raises(ValueError, match="20 megapixels"):
        read_uploaded_image(encoded(Image.new("L", (side, side))), "big.png")
    image, _ = read_uploaded_image(encoded(Image.new("L", (MAX_SIDE, 1000))), "edge.png")  # at the limit: accepted
    assert image.size == (MAX_SIDE, 1000)
    with pytest.raises(ValueError, match="'strip.png' is 2000 x 100 pixels; aspect ratios up to 10:1"):
        read_uploaded_image(encoded(Image.new("RGB", (2000, 100))), "strip.png")


def test_size_is_checked_before_decoding():
    # the header alone decides: decoding these would fail as damaged files, so a size message proves the order
    with pytest.raises(ValueError, match="'claims.bmp' is 9000 x 9000 pixels"):
        read_uploaded_image(bmp_claiming(9000, 9000), "claims.bmp")
    with pytest.raises(ValueError, match="'bomb.bmp' is far too large to decode"):  # Pillow's bomb guard
        read_uploaded_image(bmp_claiming(40000, 40000), "bomb.bmp")
    with pytest.raises(ValueError, match="'short.bmp' is a damaged BMP file"):
        read_uploaded_image(bmp_claiming(50, 40), "short.bmp")


def test_grayscale_becomes_rgb_with_the_same_values():
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (8, 1))
    image, notes = read_uploaded_image(encoded(Image.fromarray(gray)), "gray.png")
    assert notes == ["grayscale image (mode L) converted to RGB"]
    rgb = np.asarray(image)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_transparency_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red: white
    rgba[0, 1] = (0, 0, 255, 255)  # opaque blue: blue
    rgba[1, 0] = (255, 0, 0, 128)  # half transparent red: 255 * (1 - 128/255) = 127 in green and blue
    rgba[1, 1] = (10, 20, 30, 255)
    image, notes = read_uploaded_image(encoded(Image.fromarray(rgba)), "icon.png")
    assert notes == ["RGBA image: transparent pixels composited on white, converted to RGB"]
    rgb = np.asarray(image).astype(int)
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 1].tolist() == [0, 0, 255]
    assert rgb[1, 1].tolist() == [10, 20, 30]
    assert rgb[1, 0, 0] == 255 and np.abs(rgb[1, 0, 1:] - 127).max() <= 1
    _, notes = read_uploaded_image(encoded(Image.fromarray(rgba[..., [0, 3]], mode="LA")), "la.png")
    assert notes[0].startswith("LA image: transparent pixels composited on white")


def test_other_modes():
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # 0 .. 63000 in a 16-bit PNG
    image, notes = read_uploaded_image(encoded(Image.fromarray(wide)), "depth.png")
    assert notes == ["I;16 grayscale image: its range [0, 63000] mapped to [0, 255], converted to RGB"]
    red = np.asarray(image)[..., 0].astype(int)
    assert red.min() == 0 and red.max() == 255 and (np.diff(red.reshape(-1)) >= 0).all()
    _, notes = read_uploaded_image(encoded(Image.new("CMYK", (8, 8)), "JPEG"), "print.jpg")
    assert notes == ["CMYK image (mode CMYK) converted to RGB"]


def never_counted(*_args):
    raise AssertionError("the frames of an upload were counted")


@pytest.mark.parametrize("format, options", [
    ("GIF", {"duration": 100}),
    ("PNG", {"duration": 100}),  # APNG
    ("WEBP", {"duration": 100, "lossless": True}),
    ("TIFF", {}),  # pages
    ("MPO", {}),  # a camera's JPEG with an embedded preview
])
def test_only_the_first_frame_is_used(format, options, monkeypatch):
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    content = encoded(frames[0], format, save_all=True, append_images=frames[1:], **options)
    for plugin in (GifImagePlugin.GifImageFile, TiffImagePlugin.TiffImageFile):  # the two that walk the file
        monkeypatch.setattr(plugin, "n_frames", property(never_counted))
    image, notes = read_uploaded_image(content, "frames")
    assert notes[0] == "image with several frames (an animation or pages): only its first frame is used"
    red = np.asarray(image)[8, 8].astype(int)
    assert red[0] >= 250 and red[1:].max() <= 5  # MPO frames are lossy JPEG


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning", "ignore:Truncated File Read:UserWarning")
@pytest.mark.parametrize("format", ["GIF", "PNG", "WEBP", "TIFF"])
def test_a_file_cut_anywhere_is_read_or_refused(format):
    """A truncated file, even one cut inside the second frame that the frame check reads, is either read or refused
    with a ValueError: never another exception (e.g. Pillow's IndexError on a GIF cut there)."""
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    content = encoded(frames[0], format, save_all=True, append_images=frames[1:])
    refused = 0
    for end in range(1, len(content)):
        try:
            read_uploaded_image(content[:end], "cut")
        except ValueError:
            refused += 1
    assert refused > 0


def test_formats_not_listed_are_refused_by_name():
    picture = Image.new("RGB", (16, 16), (10, 20, 30))
    for format in ("ICO", "PCX", "PPM", "JPEG2000"):
        content = encoded(picture, format)
        assert Image.open(io.BytesIO(content)).format == format  # Pillow itself reads it
        with pytest.raises(ValueError, match=f"'f' is an image in {format} format, which this app does not read; "
                                             f"upload a {ACCEPTED} file"):
            read_uploaded_image(content, "f")


def test_eps_is_refused_without_running_its_parser_or_ghostscript(monkeypatch):
    assert Image.open(io.BytesIO(EPS)).format == "EPS"  # a file Pillow would parse, then render with Ghostscript

    def forbidden(*_args, **_kwargs):
        raise AssertionError("Pillow's EPS support ran on an upload")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", forbidden)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", forbidden)
    with pytest.raises(ValueError, match="'figure.eps' is an image in EPS format, which this app does not read"):
        read_uploaded_image(EPS, "figure.eps")


def test_damaged_header_of_an_accepted_format():
    content = encoded(Image.new("RGB", (16, 16)))
    damaged = content[:16] + b"\x00" * 20  # the PNG signature, then no valid header chunk
    with pytest.raises(ValueError, match=r"'f' is a damaged PNG file \(its header cannot be read\)"):
        read_uploaded_image(damaged, "f")


@pytest.mark.parametrize("dtype, shape, samples", [
    (np.float32, (8, 8, 3), "3 channels of 32-bit floating-point samples"),
    (np.float64, (8, 8), "1 channel of 64-bit floating-point samples"),
    (np.float16, (8, 8), "1 channel of 16-bit floating-point samples"),
])
def test_a_valid_tiff_pillow_cannot_read_is_named_by_its_samples_not_called_damaged(dtype, shape, samples):
    """Float TIFFs that Pillow has no mode for (float RGB, float64, float16) are valid files of another kind of
    samples: the reason says which; a TIFF cut inside its header is still damaged."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.linspace(0, 1, int(np.prod(shape))).reshape(shape).astype(dtype))
    with pytest.raises(ValueError, match=f"'x.tif' is a TIFF of {samples}, which this app does not read"):
        read_uploaded_image(buffer.getvalue(), "x.tif")
    with pytest.raises(ValueError, match=r"'x.tif' is a damaged TIFF file \(its header cannot be read\)"):
        read_uploaded_image(buffer.getvalue()[:40], "x.tif")


def test_damaged_exif_is_refused():
    content = encoded(Image.new("RGB", (16, 16)), "PNG", exif=b"not a TIFF block")
    with pytest.raises(ValueError, match=r"'f' has a damaged EXIF block \(SyntaxError: not a TIFF file"):
        read_uploaded_image(content, "f")


def test_unknown_exif_orientation_is_ignored_with_a_note():
    exif = Image.Exif()
    exif[0x0112] = 9
    image, notes = read_uploaded_image(encoded(Image.new("RGB", (40, 20)), "JPEG", exif=exif), "f")
    assert image.size == (40, 20) and notes == ["EXIF orientation 9 is not one of 1-8: ignored"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_images_with_non_finite_values_are_refused(bad):
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    image, notes = read_uploaded_image(encoded(Image.fromarray(values), "TIFF"), "depth.tif")
    assert notes == ["F grayscale image: its range [0, 1] mapped to [0, 255], converted to RGB"]
    values[3, 4] = bad
    with pytest.raises(ValueError, match="'depth.tif' has NaN or infinite pixel values"):
        read_uploaded_image(encoded(Image.fromarray(values), "TIFF"), "depth.tif")


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to display
    picture = Image.new("RGB", (40, 20), (200, 200, 200))
    image, notes = read_uploaded_image(encoded(picture, "JPEG", exif=exif), "phone.jpg")
    assert image.size == (20, 40) and notes == ["rotated as its EXIF orientation says"]
