"""Gigapixel photos: an image is refused from its header when it cannot fit this node;
final.png and its metrics come in bands of rows; the epoch's order is int32; and a
generated 250 MP photo trains and publishes within a host-memory bound computed from
its pixels (imgfit_batch/memory.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import assert_one_error_line, run_cli, save_photo, write_spec
from PIL import Image
from test_bad_input import job, png_header_only  # noqa: F401, F811  (job: the fixture)

from imgfit_batch import memory
from imgfit_batch.errors import NodeLocalError, UnavailableError

GB = 2**30
MAKE_GRADIENT = """
import sys, numpy as np
from PIL import Image
path, width, height = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
x = np.linspace(40, 200, width, dtype=np.float32)
y = np.linspace(0, 50, height, dtype=np.float32)[:, None]
pixels = (x + y).astype(np.uint8)
pixels[height // 3 : height // 2, width // 4 : width // 2] = 230
Image.fromarray(pixels, "L").save(path, quality=90)
"""


def test_an_image_bigger_than_the_node_is_3_and_bigger_than_what_is_free_now_is_69():
    channels, width, height = 3, 40000, 25000  # 1 GP RGB: 13 bytes a pixel on the host, 7 on the GPU
    need = memory.host_bytes(width * height, channels, 0, 0)
    assert need == width * height * 13
    memory.check_host("big.jpg", width, height, channels, 0, 0, memory=(need + 1, need + 1))  # fits: no error
    with pytest.raises(UnavailableError, match="more than this node has"):
        memory.check_host("big.jpg", width, height, channels, 0, 0, memory=(need - 1, need - 1))
    with pytest.raises(NodeLocalError, match="more than is free on this node now"):
        memory.check_host("big.jpg", width, height, channels, 0, 0, memory=(2 * need, need - 1))
    # a GPU's memory, as torch.cuda.mem_get_info would give it (free, total): numbers fed, no GPU here
    on_gpu = memory.device_bytes(width * height, channels, 0, 1 << 24)
    assert on_gpu == width * height * 7 + 3 * (1 << 24)
    memory.check_device("big.jpg", torch.device("cuda"), width, height, channels, 0, 1 << 24, memory=(80 * GB, 80 * GB))
    with pytest.raises(UnavailableError, match="more than this GPU has"):
        memory.check_device(
            "big.jpg", torch.device("cuda"), width, height, channels, 0, 1 << 24, memory=(4 * GB, 4 * GB)
        )
    with pytest.raises(NodeLocalError, match="free on this GPU now"):
        memory.check_device(
            "big.jpg", torch.device("cuda"), width, height, channels, 0, 1 << 24, memory=(4 * GB, 80 * GB)
        )


def test_an_image_that_cannot_fit_this_host_is_refused_from_its_header_exit_3(cli, job, tmp_path):  # noqa: F811
    total, _ = memory.host_memory()
    side = math.ceil(math.sqrt(1.05 * total / 13))  # RGB: 13 bytes a pixel
    if side * side > memory.MAX_PIXELS:
        pytest.skip(f"this host's {total / GB:.0f} GB hold any image an int32 index addresses")
    image = tmp_path / "huge.png"
    image.write_bytes(png_header_only(side, side))  # a header claiming it; nothing behind it to decode
    result = cli("run", job(str(image), train={"color": "rgb"}))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, str(image), "host memory", "more than this node has")


def test_final_in_bands_is_the_final_in_one_piece():
    from imgfit_batch.final import render_final
    from imgfit_batch.specfile import parse_spec

    torch.manual_seed(0)
    model = parse_spec(
        {
            "image": "a.png",
            "output": "o",
            "model": {
                "kind": "hashgrid",
                "num_levels": 3,
                "finest_resolution": 64,
                "log2_hashmap_size": 10,
                "init_scale": 0.3,
            },
        }
    ).model.build(3, 97, 61)
    target = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (61, 97, 3), dtype=np.uint8))
    whole, psnr, ssim = render_final(model, target, torch.device("cpu"))
    banded, psnr_b, ssim_b = render_final(model, target, torch.device("cpu"), band_pixels=97 * 13)  # 5 bands
    assert np.array_equal(banded, whole)
    assert psnr_b == pytest.approx(psnr, rel=1e-9)
    assert ssim_b == pytest.approx(ssim, abs=1e-6), "every window counted once, the straddling ones too"


def test_the_epochs_order_is_int32_and_the_same_permutation_as_int64():
    from imgfit_batch.train import PixelSampler

    sampler = PixelSampler(num_pixels=1000, batch_size=1000, seed=3, device=torch.device("cpu"))
    order = sampler.next_batch()
    assert order.dtype == torch.int32, "4 bytes a pixel, not 8"
    g = torch.Generator()
    g.manual_seed(3)
    assert torch.equal(order.long(), torch.randperm(1000, generator=g)), "checkpoints of either resume alike"


@pytest.mark.slow
def test_a_250_megapixel_photo_trains_and_publishes_within_a_host_memory_bound(tmp_path):
    width, height = 20000, 12500  # 250 MP, gray: a smooth gradient with an edge, cheap to make and to encode
    image = tmp_path / "big.jpg"
    # made in a process of its own: a job's ru_maxrss starts at its parent's (Linux keeps the
    # high-water mark across fork and exec), so this test process must stay small
    subprocess.run([sys.executable, "-c", MAKE_GRADIENT, str(image), str(width), str(height)], check=True, timeout=300)
    small = tmp_path / "small.jpg"
    save_photo(tmp_path / "small.png", 64, 48)
    Image.open(tmp_path / "small.png").convert("L").save(small)

    def run(img, out) -> dict:
        spec = {
            "image": str(img),
            "output": str(tmp_path / out),
            "model": {"kind": "hashgrid", "num_levels": 2, "finest_resolution": 64, "log2_hashmap_size": 12},
            "train": {"color": "gray", "max_seconds": 2, "device": "cpu"},
            "video": {"fps": 4, "max_side": 64},
            "checkpoint": {"every_n_steps": 1000},
        }
        proc = run_cli("run", write_spec(tmp_path / f"{out}.yaml", spec), timeout=900)
        assert proc.returncode == 0, proc.stderr
        return json.loads((tmp_path / out / "summary.json").read_text())

    floor = run(small, "small")["peak_memory_mb"]["host"]  # interpreter, torch, a job's fixed costs
    summary = run(image, "big")
    assert summary["width"] == width and summary["height"] == height and summary["steps"] > 0
    assert summary["psnr_db"] is not None and summary["ssim"] > 0
    assert memory.header_size((tmp_path / "big" / "final.png").read_bytes()) == (width, height)
    print(summary["peak_memory_mb"], floor, summary["wall_seconds"])
    # memory.py's bound: 3 x C + 4 bytes a pixel (C = 1) and the file, over what any job costs;
    # the int64 order of before (8 bytes a pixel) or a full-size float copy (4) would not fit it
    bound_mb = floor + (memory.host_bytes(width * height, 1, image.stat().st_size, 0)) / 2**20
    assert summary["peak_memory_mb"]["host"] <= bound_mb, (summary["peak_memory_mb"], floor, bound_mb)
