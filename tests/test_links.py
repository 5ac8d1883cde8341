"""Symlinks inside a location that `report`, `status`, `render` and `compare` read: a
link that resolves inside the location is followed; one that resolves outside it is
not (report shows its task as `unknown` with a warning and neither reads nor links any
of its files; the others refuse with exit 3 naming the link). The location itself may
be a link, and a file named on the command line is read wherever it points."""

from __future__ import annotations

import csv
import io
import os
import shutil

import pytest
from conftest import assert_one_error_line

pytestmark = pytest.mark.slow


@pytest.fixture
def elsewhere(reference, tmp_path):
    """A completed job outside every location the tests hand to a command."""
    folder = tmp_path / "elsewhere"
    shutil.copytree(reference.output, folder)
    return folder


def rows_of(study) -> dict[str, dict]:
    return {r["folder"]: r for r in csv.DictReader(io.StringIO((study / "results.csv").read_text()))}


def test_report_shows_a_task_with_a_link_out_of_output_as_unknown_and_embeds_nothing_of_it(
    cli, reference, elsewhere, tmp_path
):
    study = tmp_path / "study"
    for name in ("plain", "thumb", "summary", "ckpt", "inside"):
        shutil.copytree(reference.output, study / name)
    outside_png = tmp_path / "secret.png"
    shutil.copy(elsewhere / "final.png", outside_png)
    (study / "thumb" / "final.png").unlink()
    os.symlink(outside_png, study / "thumb" / "final.png")  # a picture from elsewhere
    (study / "summary" / "summary.json").unlink()
    os.symlink(elsewhere / "summary.json", study / "summary" / "summary.json")  # another job's result
    (study / "ckpt" / "summary.json").unlink()
    shutil.rmtree(study / "ckpt" / "checkpoints")
    os.symlink(elsewhere / "checkpoints", study / "ckpt" / "checkpoints")  # a folder of it
    (study / "inside" / "final.png").unlink()
    os.symlink("../plain/final.png", study / "inside" / "final.png")  # inside OUTPUT: followed
    os.symlink(elsewhere, study / "linked")  # a task folder that is a link

    result = cli("report", str(study))
    assert result.exit_code == 0, result.stderr
    rows = rows_of(study)
    assert set(rows) == {"plain", "thumb", "summary", "ckpt", "inside"}, "a linked folder is not followed"
    assert rows["plain"]["status"] == rows["inside"]["status"] == "completed"
    for name in ("thumb", "summary", "ckpt"):
        assert rows[name]["status"] == "unknown", name
        assert rows[name]["psnr_db"] == rows[name]["steps"] == "", "nothing of it is read"
        assert f"{study / name}" in result.stderr and "outside" in result.stderr, name
    assert result.stderr.count("warning: ") == 3, result.stderr
    page = (study / "index.html").read_text()
    assert page.count("<img") == 2, "thumbnails of plain and inside only"
    for name in ("thumb", "summary", "ckpt"):
        assert f'href="{name}/' not in page, f"the page links none of {name}'s files"
    assert str(elsewhere) not in page and str(outside_png) not in page


def test_status_refuses_a_link_out_of_output_with_exit_3(cli, reference, elsewhere, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference.output, out)
    (out / "summary.json").unlink()
    os.symlink(elsewhere / "summary.json", out / "summary.json")
    result = cli("status", str(out))
    assert result.exit_code == 3
    assert_one_error_line(
        result.stderr, str(out / "summary.json"), f"a link to {elsewhere / 'summary.json'}", f"outside {out}"
    )
    assert "completed" not in result.stdout
    # the location itself may be a link: what it holds is inside it
    os.unlink(out / "summary.json")
    shutil.copy(elsewhere / "summary.json", out / "summary.json")
    os.symlink(out, tmp_path / "alias")
    result = cli("status", str(tmp_path / "alias"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("completed")


def test_status_refuses_a_checkpoints_folder_linked_out_of_output(cli, reference, elsewhere, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.makedirs(elsewhere / "checkpoints", exist_ok=True)  # a completed job keeps none: plant a marker
    (elsewhere / "checkpoints" / "ckpt-0000000004.json").write_text('{"step": 4, "total_steps": 120}')
    os.symlink(elsewhere / "checkpoints", out / "checkpoints")
    shutil.copy(elsewhere / "spec.json", out / "spec.json")
    result = cli("status", str(out))
    assert result.exit_code == 3, result.stdout
    assert_one_error_line(result.stderr, str(out / "checkpoints"), "outside")


def test_render_refuses_a_model_linked_out_of_output_but_reads_a_model_named_directly(
    cli, reference, elsewhere, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(reference.output, out)
    (out / "model.pt").unlink()
    os.symlink(elsewhere / "model.pt", out / "model.pt")
    result = cli("render", str(out), "-o", str(tmp_path / "a.png"))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, str(out / "model.pt"), "outside")
    assert not (tmp_path / "a.png").exists()
    # naming the file itself is the user's choice of what to read
    result = cli("render", str(out / "model.pt"), "-o", str(tmp_path / "b.png"))
    assert result.exit_code == 0, result.stderr


def test_compare_refuses_an_input_whose_video_links_out_of_it(cli, reference, elsewhere, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(reference.output, one)
    shutil.copytree(reference.output, two)
    (two / "video.mp4").unlink()
    os.symlink(elsewhere / "video.mp4", two / "video.mp4")
    result = cli("compare", str(one), str(two), "-o", str(tmp_path / "c.mp4"))
    assert result.exit_code == 3
    assert_one_error_line(result.stderr, str(two / "video.mp4"), "outside")
    assert not (tmp_path / "c.mp4").exists()
    (two / "video.mp4").unlink()
    os.symlink(one / "video.mp4", two / "video.mp4")  # into another input: outside `two` all the same
    result = cli("compare", str(one), str(two), "-o", str(tmp_path / "c.mp4"))
    assert result.exit_code == 3
