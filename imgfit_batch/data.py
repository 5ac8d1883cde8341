"""The image: decoding whatever users throw at us into a compact uint8 target,
and the pixel-index -> coordinate mapping the seed used."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from imgfit_batch.errors import UnavailableError


@dataclass
class Target:
    pixels: np.ndarray  # (H, W, C) uint8
    uri: str

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]


def _flatten_alpha(img):
    """Composite any transparency over white (what a viewer shows on a page)."""
    from PIL import Image

    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img


ANIMATED_FORMATS = ("GIF", "PNG", "WEBP", "AVIF", "FLI")  # PNG: APNG
MAX_TIFF_PAGES = 64  # a pyramid has a dozen levels; reading a hostile TIFF's IFD chain costs quadratic time


def _refuse_more_than_one_image(img, uri: str) -> None:
    """The job trains on one still image. An animation's frames or a TIFF's full-size
    pages are refused (which one to train on is the user's choice); a TIFF whose other
    pages are all smaller than the first (a thumbnail, pyramid levels) is its first page.
    Other multi-image formats (MPO's previews, PSD's layers) show their primary image."""
    if img.format in ANIMATED_FORMATS and getattr(img, "is_animated", False):
        raise UnavailableError(
            f"{uri}: an animated {img.format} of {img.n_frames} frames; the job trains on one still image: "
            "extract the frame you want (e.g. ffmpeg -i IN -frames:v 1 frame.png)"
        )
    if img.format != "TIFF":
        return
    width, height = img.size
    sizes: list[tuple[int, int]] = []  # of pages 2, 3, ...
    try:
        while len(sizes) < MAX_TIFF_PAGES:
            try:
                img.seek(len(sizes) + 1)
            except EOFError:
                break
            sizes.append(img.size)
    finally:
        img.seek(0)
    full = [
        (n, size)
        for n, size in enumerate(sizes, 2)
        if not (size[0] <= width and size[1] <= height and size != (width, height))
    ]
    if full or len(sizes) >= MAX_TIFF_PAGES:
        count = f"over {MAX_TIFF_PAGES}" if len(sizes) >= MAX_TIFF_PAGES else str(len(sizes) + 1)
        which = (
            f" (page {full[0][0]}, {full[0][1][0]}x{full[0][1][1]}, is not smaller than the first, {width}x{height})"
            if full
            else ""
        )
        raise UnavailableError(
            f"{uri}: a TIFF of {count} pages{which}; the job trains on one image: save the page you want "
            "as its own file (e.g. with tiffsplit)"
        )


def _refuse_non_finite(img, uri: str) -> None:
    """A float image with NaN or infinite pixels has no meaning to fit (and would train on garbage)."""
    rows = max(1, (1 << 22) // max(img.width, 1))  # in bands: no full-size copy
    bad = 0
    for top in range(0, img.height, rows):
        band = np.asarray(img.crop((0, top, img.width, min(top + rows, img.height))), dtype=np.float32)
        bad += int(band.size - np.count_nonzero(np.isfinite(band)))
    if bad:
        raise UnavailableError(
            f"{uri}: {bad} pixels are NaN or infinite; the job needs finite values: "
            "replace them (e.g. with 0) and save the image again"
        )


def _to_float_array(img, peak: float) -> np.ndarray:
    """(H, W, C) float32 in [0, 1] for any Pillow mode, 16-bit depth kept until the end.
    `peak`: the whole image's largest value (single-band modes; a band of rows must
    scale like the whole image)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float32)
        scale = 65535.0 if mode.startswith("I;16") or peak > 255 else 255.0
        return np.clip(a / scale, 0, 1)[..., None]
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        return np.clip(a / (peak if peak > 1 else 1.0), 0, 1)[..., None]
    if mode == "1":
        img = img.convert("L")
    elif mode not in ("L", "RGB"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    a = np.asarray(img, dtype=np.float32) / 255.0
    return a[..., None] if a.ndim == 2 else a


# The bytes an image may take, known before they are read (its size from stat or HEAD):
# at most BYTES_PER_PIXEL for each pixel, the most any format Pillow reads stores
# (16-bit RGBA uncompressed takes 8; compressed formats take less, noise at JPEG
# quality 100 a little over 3), plus METADATA_BYTES for EXIF, ICC profiles, XMP and
# thumbnails. A file larger than that for its own pixels holds something else (junk
# after the image, a payload inside it); one larger than that for input.max_pixels is
# refused before its header is read.
BYTES_PER_PIXEL = 16
METADATA_BYTES = 16 << 20
HEADER_BYTES = 1 << 20  # read first, for the image's own size; a larger header skips that check


def max_image_bytes(pixels: int) -> int:
    return pixels * BYTES_PER_PIXEL + METADATA_BYTES


def _header_size(head: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from the start of an image file, or None when the
    start alone does not tell (an unknown format, a header past HEADER_BYTES)."""
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # only the header is read here: no decompression to guard
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(head)) as img:
                return str(img.format), img.width, img.height
    except Exception:  # noqa: BLE001 - anything Pillow raises on a partial or foreign header: decode_image explains
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def read_image(uri: str, color: str, max_pixels: int, max_bytes: int | None = None) -> Target:
    """The image at `uri`, read by read_image_bytes and decoded."""
    return decode_image(read_image_bytes(uri, max_pixels, max_bytes), uri, color, max_pixels)


def read_image_bytes(uri: str, max_pixels: int, max_bytes: int | None = None) -> bytes:
    """The image file at `uri`, its bytes bounded before they are read: by `max_bytes`
    (input.max_bytes) when set, else by max_image_bytes of input.max_pixels and then of
    the image's own pixels (from its header). Raises UnavailableError naming the size
    and the limit."""
    from imgfit_batch import storage

    limit = max_bytes if max_bytes is not None else max_image_bytes(max_pixels)
    size = storage.size(uri, what="image")
    if size > limit:
        why = (
            "input.max_bytes"
            if max_bytes is not None
            else f"{BYTES_PER_PIXEL} bytes a pixel of input.max_pixels ({max_pixels}) + {METADATA_BYTES} of metadata"
        )
        raise UnavailableError(
            f"{uri}: {size} bytes is over the limit of {limit} bytes ({why}); "
            "raise input.max_bytes if this file is intended"
        )
    if size == 0:
        raise UnavailableError(f"{uri}: the image file is empty (0 bytes)")
    head = storage.read_head(uri, min(size, HEADER_BYTES), what="image")
    known = _header_size(head) if max_bytes is None else None
    if known is not None:
        fmt, width, height = known
        own = max_image_bytes(width * height)
        if size > own:
            raise UnavailableError(
                f"{uri}: {size} bytes for a {width}x{height} {fmt}, over the {own} bytes an image that size can take "
                f"({BYTES_PER_PIXEL} a pixel + {METADATA_BYTES} of metadata): the file holds something besides the "
                "image (re-save it), or set input.max_bytes if it is intended"
            )
    data = head if len(head) >= size else storage.read_bytes(uri, what="image", max_bytes=limit)
    if len(data) > limit:  # it grew after the stat
        raise UnavailableError(f"{uri}: over {limit} bytes (it grew while being read); the limit is input.max_bytes")
    return data


def decode_image(data: bytes, uri: str, color: str, max_pixels: int) -> Target:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise UnavailableError(f"{uri}: the image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, before decoding
            try:
                img: Image.Image = Image.open(io.BytesIO(data))  # exif_transpose makes a plain Image
                w, h = img.size
                if w * h > max_pixels:
                    raise UnavailableError(
                        f"{uri}: {w}x{h} = {w * h} pixels is over input.max_pixels ({max_pixels}); "
                        "raise input.max_pixels if this image is intended"
                    )
                _refuse_more_than_one_image(img, uri)
                img.load()
            finally:
                Image.MAX_IMAGE_PIXELS = previous
            img = ImageOps.exif_transpose(img)
    except UnavailableError:
        raise
    except UnidentifiedImageError:
        raise UnavailableError(f"{uri}: not an image Pillow can read (PNG, JPEG, TIFF, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnavailableError(f"{uri}: the image is corrupt or truncated ({exc})") from None
    img = _flatten_alpha(img)
    if img.mode == "F":
        _refuse_non_finite(img, uri)
    channels = 1 if color == "gray" else 3
    if (img.mode, channels) in (("L", 1), ("RGB", 3)):  # 8 bits already in the wanted layout: no float copy
        pixels = np.array(img, dtype=np.uint8).reshape(img.height, img.width, channels)  # writable, for torch
        return Target(pixels, uri)
    # anything else converts through float32 in bands of rows, so a 50 MP photo needs
    # no full-size float copy (12 bytes a pixel) next to its uint8 target
    pixels = np.empty((img.height, img.width, channels), np.uint8)
    extrema = img.getextrema()
    single = img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # one band: extrema is (min, max)
    peak = float(cast("tuple[float, float]", extrema)[1]) if single else 255.0
    rows = max(1, (1 << 22) // max(img.width, 1))
    for top in range(0, img.height, rows):
        a = _to_float_array(img.crop((0, top, img.width, min(top + rows, img.height))), peak)  # (h, W, 1 or 3)
        if channels == 1 and a.shape[2] == 3:
            a = (a @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]  # ITU-R 601 luma, as Pillow's "L"
        elif channels == 3 and a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        pixels[top : top + a.shape[0]] = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    return Target(pixels, uri)


def coords(index: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pixel indices (row-major) -> (N, 2) float32 (x, y), as the seed mapped them:
    x = c/(W/2) - 1, y = (H - r)/(H/2) - 1."""
    r = torch.div(index, width, rounding_mode="floor")
    c = index - r * width
    x = c.to(torch.float32) / (width / 2) - 1
    y = (height - r).to(torch.float32) / (height / 2) - 1
    return torch.stack((x, y), dim=1)


class Pixels:
    """The target image on the device: (N, C) uint8, row-major, and the seed's coordinates."""

    def __init__(self, pixels: torch.Tensor, width: int, height: int):
        self.pixels, self.width, self.height = pixels, width, height
        self.num_pixels, self.channels = pixels.shape

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return coords(idx, self.width, self.height), self.pixels[idx].to(torch.float32) / 255.0  # (B, 2), (B, C)

    def image(self) -> torch.Tensor:
        return self.pixels.view(self.height, self.width, self.channels)


def image_size(uri: str) -> tuple[int, int] | None:
    """(width, height) of a local image from its header (EXIF rotation applied); None
    when it is remote or unreadable (the job reports that properly)."""
    from imgfit_batch import storage

    if storage.is_remote(uri):
        return None
    try:
        from PIL import Image

        with storage.open_local(uri, what="image") as fh, Image.open(fh) as img:  # a FIFO would block
            width, height = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees
                width, height = height, width
            return width, height
    except Exception:
        return None
