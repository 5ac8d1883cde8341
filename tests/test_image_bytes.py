"""An image's bytes are bounded before they are read (the size from stat or HEAD):
by input.max_bytes when set, else by 16 bytes a pixel + 16 MiB of metadata, of
input.max_pixels and of the image's own pixels. A small image with junk after it,
or a file too large for the pixel cap, is exit 3 naming the size and the limit."""

from __future__ import annotations

import io
import os

import numpy as np
from conftest import assert_one_error_line, photo, save_photo, tiny_spec, write_spec
from PIL import Image
from test_hostile import run_bounded

from imgfit_batch.data import BYTES_PER_PIXEL, METADATA_BYTES, max_image_bytes

FAST = {"epochs": 1}


def jpeg_bytes(width: int = 32, height: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo(width, height)).save(buf, format="JPEG")
    return buf.getvalue()


def test_the_limit_is_16_bytes_a_pixel_and_16_mib_of_metadata():
    assert (BYTES_PER_PIXEL, METADATA_BYTES) == (16, 16 << 20)
    assert max_image_bytes(32 * 32) == 32 * 32 * 16 + (16 << 20)


def test_a_small_jpeg_followed_by_junk_is_exit_3_naming_size_and_limit(cli, tmp_path):
    image = tmp_path / "junk.jpg"
    data = jpeg_bytes()
    image.write_bytes(data)
    with open(image, "r+b") as fh:  # sparse: 17 MiB of zero bytes after the image, no disk spent
        fh.truncate(len(data) + (17 << 20))
    size = os.path.getsize(image)
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(image), str(tmp_path / "out"), train=FAST))
    result = cli("run", spec)
    assert result.exit_code == 3, result.stderr
    assert_one_error_line(result.stderr, str(image), f"{size} bytes", "32x32 JPEG", str(max_image_bytes(32 * 32)))
    assert not (tmp_path / "out" / "summary.json").exists()
    # the user says it is intended: input.max_bytes is then the only bound, and it trains
    result = cli("run", spec, "--set", f"input.max_bytes={size}")
    assert result.exit_code == 0, result.stderr


def test_a_file_over_the_pixel_caps_bound_is_refused_before_a_byte_is_read(tmp_path):
    """A sparse 100 GB file: reading it would take minutes and gigabytes (the process runs
    under a 3 GiB address-space limit); stat alone refuses it."""
    image = tmp_path / "huge.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    with open(image, "r+b") as fh:
        fh.truncate(100 << 30)
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(image), str(tmp_path / "out"), train=FAST))
    proc = run_bounded("run", spec, timeout=60)
    assert proc.returncode == 3, proc.stderr
    from imgfit_batch.memory import MAX_PIXELS  # input.max_pixels unset: the most a node may hold

    limit = max_image_bytes(MAX_PIXELS)
    assert_one_error_line(proc.stderr, f"{100 << 30} bytes is over the limit of {limit} bytes", "input.max_pixels")


def test_input_max_bytes_is_its_own_bound(cli, tmp_path):
    image = tmp_path / "photo.png"
    save_photo(image, 12, 9)
    size = os.path.getsize(image)
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(image), str(tmp_path / "out"), train=FAST))
    result = cli("run", spec, "--set", f"input.max_bytes={size - 1}")
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, f"{size} bytes is over the limit of {size - 1} bytes (input.max_bytes)")
    assert cli("run", spec, "--set", f"input.max_bytes={size}").exit_code == 0


def test_an_object_store_image_with_junk_is_refused_from_its_head(cli, s3, tmp_path):
    data = jpeg_bytes()
    s3.put("in/junk.jpg", data + bytes(17 << 20))
    s3.put("in/ok.jpg", data)
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(s3.uri("in/junk.jpg"), str(tmp_path / "out"), train=FAST))
    result = cli("run", spec)
    assert result.exit_code == 3, result.stderr
    assert_one_error_line(result.stderr, s3.uri("in/junk.jpg"), f"{len(data) + (17 << 20)} bytes", "32x32 JPEG")
    result = cli("run", spec, "--set", f"input.max_bytes={len(data) - 1}", "--set", f"image={s3.uri('in/ok.jpg')}")
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, f"{len(data)} bytes is over the limit of {len(data) - 1} bytes")
    result = cli("run", spec, "--set", f"image={s3.uri('in/ok.jpg')}")
    assert result.exit_code == 0, result.stderr
    pixels = np.asarray(Image.open(tmp_path / "out" / "final.png"))
    assert pixels.shape == (32, 32, 3)
