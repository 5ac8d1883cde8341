"""Bad input: each gives the contract's exit code and exactly one line on stderr,
no traceback; and images in awkward modes are converted correctly."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import assert_one_error_line, run_cli, save_photo, skip_or_fail, tiny_spec, write_spec
from PIL import Image

from imgfit_batch.data import decode_image


@pytest.fixture
def job(tmp_path):
    """Write a tiny spec for IMAGE (and optional overrides) and return its path."""

    def make(image: str, output: str = None, **sections) -> str:
        output = output or str(tmp_path / "out")
        return write_spec(tmp_path / "spec.yaml", tiny_spec(image, output, **sections))

    return make


def test_missing_image_is_exit_3_naming_the_file(cli, job, tmp_path):
    missing = str(tmp_path / "no-such.png")
    result = cli("run", job(missing))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, missing, "not found")


def test_zero_byte_image_is_exit_3(cli, job, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    result = cli("run", job(str(empty)))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, str(empty), "empty")


def test_truncated_image_is_exit_3(cli, job, tmp_path):
    good = tmp_path / "good.png"
    save_photo(good, 64, 48)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    result = cli("run", job(str(truncated)))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, str(truncated), "corrupt or truncated")


def test_corrupt_image_is_exit_3(cli, job, tmp_path):
    good = tmp_path / "good.png"
    save_photo(good, 64, 48)
    data = bytearray(good.read_bytes())
    data[60:200] = bytes(140)  # wipe the compressed pixel data after a valid header
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(bytes(data))
    result = cli("run", job(str(corrupt)))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, str(corrupt))


def test_non_image_file_is_exit_3(cli, job, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("these are not pixels\n" * 20)
    result = cli("run", job(str(text)))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, str(text), "not an image")


def test_image_over_max_pixels_is_exit_3_before_decoding(cli, job, tmp_path):
    image = tmp_path / "photo.png"
    save_photo(image, 31, 23)
    result = cli("run", job(str(image), input={"max_pixels": 31 * 23 - 1}))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, str(image), "input.max_pixels")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but carries almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_by_default(cli, job, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(50000, 50000))  # 2.5 G pixels > the default's 2^31 - 1 (an int32 pixel index)
    result = cli("run", job(str(bomb)))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, str(bomb), "input.max_pixels")


def test_output_under_a_regular_file_is_exit_3(cli, job, tmp_path):
    # Tests run as root, so a chmod-ed folder would still be writable; a path whose
    # parent is a regular file cannot be created by anyone.
    image = tmp_path / "photo.png"
    save_photo(image)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    output = str(blocker / "out")
    result = cli("run", job(str(image), output=output))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, output)


def test_output_on_a_filesystem_that_refuses_writes_is_exit_3(cli, job, tmp_path):
    # sysfs refuses mkdir even to root (EPERM, or EROFS where it is mounted read-only)
    if not os.path.isdir("/sys/kernel"):
        skip_or_fail("no sysfs here to refuse the writes")
    image = tmp_path / "photo.png"
    save_photo(image)
    output = "/sys/imgfit-batch-test-output"
    result = cli("run", job(str(image), output=output))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, output)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_asked_for_but_absent_is_retryable_69_another_node_may_have_one(cli, job, tmp_path):
    image = tmp_path / "photo.png"
    save_photo(image)
    result = cli("run", job(str(image), train={"device": "cuda"}))
    assert result.exit_code == 69
    assert_one_error_line(result.stderr, "train.device", "cuda")


def test_bad_image_through_the_console_script_is_one_line_exit_3(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a jpeg")
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(text), str(tmp_path / "out")))
    proc = run_cli("run", spec)
    assert proc.returncode == 3
    assert_one_error_line(proc.stderr, str(text))


# ---------------------------------------------------------------- image modes


def encode(img: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def test_rgba_is_composited_over_white():
    a = np.zeros((1, 3, 4), np.uint8)
    a[0, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    a[0, 1] = (255, 0, 0, 255)  # opaque red stays red
    a[0, 2] = (0, 0, 255, 128)  # half-transparent blue -> blue over white
    target = decode_image(encode(Image.fromarray(a, "RGBA")), "rgba.png", "rgb", 10**6)
    px = target.pixels
    assert px.shape == (1, 3, 3)
    assert tuple(px[0, 0]) == (255, 255, 255)
    assert tuple(px[0, 1]) == (255, 0, 0)
    r, g, b = (int(v) for v in px[0, 2])
    assert b == 255 and 120 <= r <= 135 and r == g


def test_gray_with_alpha_is_composited_over_white():
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], np.uint8), "LA")
    target = decode_image(encode(la), "la.png", "gray", 10**6)
    assert target.pixels[0, :, 0].tolist() == [255, 0]


def test_palette_with_transparency_is_composited_over_white():
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    target = decode_image(encode(img, transparency=0), "p.png", "rgb", 10**6)
    assert tuple(target.pixels[0, 0]) == (255, 255, 255)  # the transparent red shows the white page
    assert tuple(target.pixels[0, 1]) == (0, 0, 255)


def test_palette_without_transparency_keeps_its_colors():
    img = Image.new("P", (1, 1))
    img.putpalette([10, 200, 30] + [0] * 765)
    target = decode_image(encode(img), "p.png", "rgb", 10**6)
    assert tuple(target.pixels[0, 0]) == (10, 200, 30)


def test_16_bit_grayscale_keeps_its_range():
    values = np.array([[0, 257 * 100, 65535, 32768]], np.uint16)
    img = Image.fromarray(values)  # mode I;16
    assert img.mode.startswith("I;16")
    data = encode(img)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # PNG keeps 16 bits
    gray = decode_image(data, "g16.png", "gray", 10**6).pixels
    assert gray.shape == (1, 4, 1)
    assert gray[0, :, 0].tolist() == [0, 100, 255, 128]
    rgb = decode_image(data, "g16.png", "rgb", 10**6).pixels
    assert rgb.shape == (1, 4, 3) and (rgb == gray).all()


def test_cmyk_is_converted_to_rgb():
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (255, 0, 0, 0))  # pure cyan ink
    cmyk.putpixel((1, 0), (0, 0, 0, 255))  # black ink
    target = decode_image(encode(cmyk, "TIFF"), "c.tif", "rgb", 10**6)
    assert tuple(target.pixels[0, 0]) == (0, 255, 255)
    assert tuple(target.pixels[0, 1]) == (0, 0, 0)


def test_exif_orientation_is_applied():
    # stored landscape 40x20 with a red block at the stored top-left;
    # orientation 6 means "rotate 90 degrees clockwise to display"
    a = np.full((20, 40, 3), 255, np.uint8)
    a[:8, :8] = (255, 0, 0)
    img = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6
    target = decode_image(encode(img, "JPEG", quality=95, exif=exif.tobytes()), "rot.jpg", "rgb", 10**6)
    assert (target.width, target.height) == (20, 40)  # displayed portrait
    px = target.pixels.astype(int)
    top_right = px[:8, -8:].mean(axis=(0, 1))
    top_left = px[:8, :8].mean(axis=(0, 1))
    assert top_right[0] > 200 and top_right[1] < 60, "the red block moves to the top-right"
    assert top_left.min() > 200, "the top-left is white after rotation"


def test_rgb_to_gray_uses_luma():
    a = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    target = decode_image(encode(Image.fromarray(a)), "rgb.png", "gray", 10**6)
    assert target.pixels[0, :, 0].tolist() == [76, 150, 29]  # ITU-R 601, as Pillow's "L"
