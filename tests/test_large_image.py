"""Photos at real size: the derived defaults follow the image, yield to the spec, and a
multi-megapixel job stays within a memory bound."""

from __future__ import annotations

import json

import pytest
from conftest import photo, run_cli, save_photo, write_spec
from PIL import Image

pytestmark = pytest.mark.slow


def validate(tmp_path, image: str, **sections) -> dict:
    import yaml

    spec = {"image": image, "output": str(tmp_path / "out"), "model": {"kind": "hashgrid"}, "train": {"color": "rgb"}}
    for name, values in sections.items():
        spec[name] = {**spec.get(name, {}), **values}
    proc = run_cli("validate", write_spec(tmp_path / "spec.yaml", spec))
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout), proc.stdout


def test_hashgrid_defaults_follow_the_image_size(tmp_path):
    small, big = str(tmp_path / "small.png"), str(tmp_path / "big.png")
    save_photo(small, 300, 200)
    Image.new("RGB", (6000, 4000)).save(big)  # validate reads only the header
    s, text = validate(tmp_path, small)
    b, _ = validate(tmp_path, big)
    assert "# derived from the image (300x200)" in text
    assert s["model"]["finest_resolution"] == 300, "a small image: a cell per pixel (many epochs fit in a budget)"
    assert 0.35 * 6000 <= b["model"]["finest_resolution"] < 6000, "24 MP: coarser than a pixel (few epochs fit)"
    assert s["model"]["num_levels"] < b["model"]["num_levels"]
    assert s["model"]["log2_hashmap_size"] < b["model"]["log2_hashmap_size"]
    assert s["train"]["batch_size"] == 300 * 200, "a small image trains in whole-image batches"
    assert b["video"]["every_n_steps"] > s["video"]["every_n_steps"], "big batches of a big image: frames less often"


def test_values_the_spec_sets_win_over_derived_ones(tmp_path):
    image = str(tmp_path / "p.png")
    save_photo(image, 640, 480)
    tree, text = validate(
        tmp_path,
        image,
        model={"finest_resolution": 100, "log2_hashmap_size": 12},
        train={"batch_size": 999},
        video={"every_n_steps": 7},
    )
    assert tree["model"]["finest_resolution"] == 100 and tree["model"]["log2_hashmap_size"] == 12
    assert tree["train"]["batch_size"] == 999 and tree["video"]["every_n_steps"] == 7
    assert "model.num_levels" in text and "model.finest_resolution" not in text


def test_a_job_records_what_it_derived_in_spec_json_and_summary_json(tmp_path):
    image = str(tmp_path / "p.png")
    save_photo(image, 97, 61)
    out = tmp_path / "out"
    spec = {
        "image": image,
        "output": str(out),
        "model": {"kind": "hashgrid"},
        "train": {"color": "rgb", "epochs": 2, "device": "cpu"},
        "video": {"fps": 4},
    }
    proc = run_cli("run", write_spec(tmp_path / "s.yaml", spec))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    saved = json.loads((out / "spec.json").read_text())
    assert summary["derived"] == saved["derived"]
    assert summary["derived"]["model.finest_resolution"] == 97 == saved["spec"]["model"]["finest_resolution"]
    assert saved["spec"]["train"]["batch_size"] == 97 * 61


def test_a_multi_megapixel_photo_trains_and_publishes_within_a_memory_bound(tmp_path):
    width, height = 2400, 1600  # 3.8 MP
    image = tmp_path / "big.png"
    Image.fromarray(photo(width, height, seed=1)).save(image)
    tiny = tmp_path / "tiny.png"
    save_photo(tiny, 64, 48)

    def run(img, out) -> dict:
        spec = {
            "image": str(img),
            "output": str(tmp_path / out),
            "model": {"kind": "hashgrid"},
            "train": {"color": "rgb", "epochs": 1, "device": "cpu"},
            "video": {"fps": 4, "max_side": 256},
        }
        proc = run_cli("run", write_spec(tmp_path / f"{out}.yaml", spec), timeout=600)
        assert proc.returncode == 0, proc.stderr
        return json.loads((tmp_path / out / "summary.json").read_text())

    floor = run(tiny, "tiny")["peak_memory_mb"]["host"]  # interpreter, torch, ffmpeg: what any job costs
    summary = run(image, "big")
    from imgfit_batch.specfile import parse_spec

    saved = json.loads((tmp_path / "big" / "spec.json").read_text())
    params = sum(p.numel() for p in parse_spec(saved["spec"]).model.build(3, width, height).parameters())
    # weights, gradients, Adam's two moments and the average: 5 copies of fp32 parameters;
    # the target, this epoch's pixel order, final.png and a batch's work: ~100 bytes a pixel
    bound = floor + 5 * 4 * params / 2**20 + 100 * width * height / 2**20
    assert summary["steps"] > 0 and summary["width"] == width
    assert summary["peak_memory_mb"]["host"] <= bound, (summary["peak_memory_mb"], floor, params)
