"""One storage contract, every store: the same tests on a local folder, S3 (moto),
GCS (gcp-storage-emulator) and Azure Blob Storage (Azurite), each a real server on
loopback reached over its own wire protocol (the `bucket` fixture). What one store
does, every store does: callers (job, checkpoints, report, ...) never ask which."""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import CONTRACT_FILES, assert_same_result, events, read_outputs, run_cli, signal_when, write_spec

from imgfit_batch import storage
from imgfit_batch.errors import UnavailableError


def test_written_bytes_read_back_and_an_overwrite_replaces_them_whole(bucket):
    uri = bucket.uri("a/b/object.bin")
    storage.write_bytes(uri, b"first version, longer than the second")
    assert storage.read_bytes(uri) == b"first version, longer than the second"
    storage.write_bytes(uri, b"second")
    assert storage.read_bytes(uri) == b"second"
    assert bucket.get("a/b/object.bin") == b"second", "the store's own client sees the same bytes"
    assert storage.size(uri) == 6 and storage.exists(uri)


def test_a_reader_never_sees_a_write_half_done(bucket):
    uri = bucket.uri("big.bin")
    versions = [bytes([65 + i]) * (1 << 20) for i in range(2)]  # 1 MiB of A, 1 MiB of B
    storage.write_bytes(uri, versions[0])
    seen, done = [], threading.Event()

    def read_while_written() -> None:
        while not done.is_set():
            seen.append(storage.read_bytes(uri))

    reader = threading.Thread(target=read_while_written)
    reader.start()
    try:
        for i in range(6):
            storage.write_bytes(uri, versions[i % 2])
    finally:
        done.set()
        reader.join()
    assert seen, "the reader read"
    torn = [len(data) for data in seen if data not in versions]
    assert not torn, f"reads saw partial objects of {torn[:5]} bytes"


def test_a_byte_cap_reads_at_most_one_byte_past_it(bucket):
    uri = bucket.uri("capped.bin")
    storage.write_bytes(uri, bytes(range(200)))
    assert storage.read_bytes(uri, max_bytes=10) == bytes(range(11)), "cap + 1: the caller sees it is over"
    assert storage.read_bytes(uri, max_bytes=500) == bytes(range(200))
    assert storage.read_head(uri, 4) == bytes(range(4))
    assert storage.read_head(uri, 1000) == bytes(range(200))
    storage.write_bytes(bucket.uri("empty"), b"")
    assert storage.read_bytes(bucket.uri("empty"), max_bytes=5) == b""


def test_listing_sees_every_one_of_many_keys_and_only_those_asked_for(bucket):
    names = [f"f-{i:04d}.txt" for i in range(1100)]  # past S3's 1000-key page
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: storage.write_bytes(bucket.uri(f"many/{n}"), b"x"), names))
    storage.write_bytes(bucket.uri("many/sub/deep/leaf.txt"), b"y")
    storage.write_bytes(bucket.uri("many-sibling.txt"), b"z")
    assert storage.list_names(bucket.uri("many")) == names, "direct children only, sorted, no sibling prefix"
    assert storage.list_files(bucket.uri("many/"), 0) == names
    assert storage.list_files(bucket.uri("many"), 1) == names
    assert storage.list_files(bucket.uri("many"), 2) == names + ["sub/deep/leaf.txt"]
    assert storage.list_names(bucket.uri("nothing-here")) == []
    assert storage.list_files(bucket.uri("nothing-here"), 3) == []


def test_delete_removes_one_object_and_a_missing_one_is_no_error(bucket):
    storage.write_bytes(bucket.uri("d/keep.txt"), b"k")
    storage.write_bytes(bucket.uri("d/gone.txt"), b"g")
    storage.delete(bucket.uri("d/gone.txt"))
    storage.delete(bucket.uri("d/gone.txt"))
    storage.delete(bucket.uri("d/never-was.txt"))
    assert bucket.keys("d/") == ["d/keep.txt"]
    assert not storage.exists(bucket.uri("d/gone.txt"))


def test_delete_matching_deletes_what_the_job_made_and_nothing_else(bucket):
    for key in ("c/ckpt-1.pt", "c/ckpt-1.json", "c/video/seg-000001.mp4", "c/users-weights.pth"):
        storage.write_bytes(bucket.uri(key), b"x")
    storage.delete_matching(bucket.uri("c"), lambda rel: rel.startswith(("ckpt-", "video/")))
    assert bucket.keys("c/") == ["c/users-weights.pth"]


def test_a_file_uploads_and_downloads_unchanged(bucket, tmp_path):
    payload = bytes(range(256)) * 4096  # 1 MiB
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    storage.upload_file(str(src), bucket.uri("up/file.bin"))
    assert bucket.get("up/file.bin") == payload
    dest = tmp_path / "sub" / "dest.bin"
    storage.download_file(bucket.uri("up/file.bin"), str(dest))
    assert dest.read_bytes() == payload
    assert [p.name for p in dest.parent.iterdir()] == ["dest.bin"], "no temp file left beside the download"


@pytest.mark.parametrize("call", ["read_bytes", "size", "read_head", "download_file"])
def test_a_missing_object_is_permanently_unavailable_exit_3(bucket, tmp_path, call):
    uri = bucket.uri("no/such/object.png")
    args = {
        "read_bytes": (uri,),
        "size": (uri,),
        "read_head": (uri, 10),
        "download_file": (uri, str(tmp_path / "x.png")),
    }[call]
    with pytest.raises(UnavailableError) as caught:
        getattr(storage, call)(*args)
    assert caught.value.exit_code == 3
    assert uri in str(caught.value) and "\n" not in str(caught.value)
    assert not storage.exists(uri)


def test_the_output_check_writes_and_removes_its_probe(bucket):
    storage.check_writable(bucket.uri("out/job"))
    assert [k for k in bucket.keys() if "probe" in k] == []


def test_every_store_is_remote_but_a_folder(bucket):
    assert storage.is_remote(bucket.uri("x")) == (bucket.name != "local")
    assert storage.contains(bucket.uri("out"), bucket.uri("out/a/b"))
    assert not storage.contains(bucket.uri("out"), bucket.uri("out-other/a"))


# ---------------------------------------------------------------- a real job on each remote store


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
@pytest.mark.parametrize("bucket", ["gcs", "azure"], indirect=True)  # s3: tests/test_resume.py
def test_a_job_on_the_store_resumes_after_a_stop_or_a_kill_bit_identical(bucket, sig, reference, tmp_path):
    prefix = "jobs/photo"
    spec = write_spec(tmp_path / "spec.yaml", reference.spec_for(bucket.uri(prefix)))
    code, _, stderr = signal_when(spec, sig, lambda e: e["event"] == "checkpoint" and e["step"] >= 80)
    assert code == (75 if sig == signal.SIGTERM else -signal.SIGKILL), stderr
    keys = bucket.keys(prefix + "/")
    assert any(k.startswith(f"{prefix}/checkpoints/ckpt-") and k.endswith(".json") for k in keys), keys
    assert f"{prefix}/checkpoints/video/seg-000000.mp4" in keys, (
        "closed segments live with the checkpoints, on the store"
    )
    assert f"{prefix}/summary.json" not in keys

    proc = run_cli("run", spec)  # a fresh process, nothing local left: all it has is the store
    assert proc.returncode == 0, proc.stderr
    assert any(e["event"] == "resumed" for e in events(proc.stdout))
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    for name in CONTRACT_FILES:
        (fetched / name).write_bytes(bucket.get(f"{prefix}/{name}"))
    result = read_outputs(str(fetched))
    assert_same_result(result, reference.result)
    assert result["summary"]["resumes"] == 1

    status = run_cli("status", bucket.uri(prefix), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("bucket", ["gcs", "azure"], indirect=True)
def test_a_study_runs_end_to_end_on_the_store(bucket, cli):
    """Everything on the store: the image, the spec, every task's output, the report, the
    comparison video and a render; plan, run --index, report, compare, render, status."""
    import io

    import yaml
    from conftest import photo, png_bytes, tiny_spec
    from PIL import Image

    bucket.put("in/photo.png", png_bytes(photo(9, 7, seed=2)))
    spec = tiny_spec(
        bucket.uri("in/photo.png"), bucket.uri("study"), train={"epochs": 1}, sweep={"train.lr": [0.001, 0.004]}
    )
    bucket.put("specs/study.yaml", yaml.safe_dump(spec).encode())
    spec_uri = bucket.uri("specs/study.yaml")

    planned = cli("plan", spec_uri, "--json")
    assert planned.exit_code == 0, planned.stderr
    outputs = [task["output"] for task in json.loads(planned.stdout)["tasks"]]
    assert outputs == [bucket.uri("study/photo/lr=0.001"), bucket.uri("study/photo/lr=0.004")]
    for index in ("0", "1"):
        result = cli("run", spec_uri, "--index", index)
        assert result.exit_code == 0, result.stderr

    assert cli("report", bucket.uri("study")).exit_code == 0
    rows = bucket.get("study/results.csv").decode().splitlines()
    assert len(rows) == 3, rows
    assert b"<html" in bucket.get("study/index.html").lower()

    compared = cli("compare", *outputs, "-o", bucket.uri("study/compare.mp4"))
    assert compared.exit_code == 0, compared.stderr
    assert bucket.get("study/compare.mp4")[4:8] == b"ftyp"

    rendered = cli("render", outputs[0], "--scale", "2", "-o", bucket.uri("study/big.png"))
    assert rendered.exit_code == 0, rendered.stderr
    assert Image.open(io.BytesIO(bucket.get("study/big.png"))).size == (18, 14)

    status = cli("status", outputs[1], "--json")
    assert status.exit_code == 0 and json.loads(status.stdout)["state"] == "completed"
