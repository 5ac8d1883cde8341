"""The Kubernetes manifests in k8s/: valid for the API server users run (1.31, strict
schema, offline), and wired to what the CLI actually does: its exit codes, its spec,
its need for a writable /tmp only, one GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import import_or_skip

from imgfit_batch.errors import EXIT_INTERRUPTED, EXIT_RETRYABLE, EXIT_UNAVAILABLE, EXIT_USAGE


@pytest.fixture(scope="module")
def kubernetes_validate():
    """The offline schema validator; only the schema tests need it (skipped without it,
    failed under CI=true)."""
    return import_or_skip("kubernetes_validate", "kubernetes-validate is not installed (pip install -e '.[test]')")


K8S = Path(__file__).resolve().parent.parent / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
KUBERNETES_VERSION = "1.31"


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def jobs() -> list[tuple[str, dict, list[dict]]]:
    """(file name, Job, every document of that file) for each Job in k8s/."""
    found = []
    for path in MANIFESTS:
        docs = documents(path)
        found += [(path.name, doc, docs) for doc in docs if doc["kind"] == "Job"]
    return found


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def the_container(job: dict) -> dict:
    (container,) = pod_spec(job)["containers"]
    return container


ALL_JOBS = jobs()
ALL_IDS = [name for name, _, _ in ALL_JOBS]
# the training Jobs (one GPU each); the report Job is the study's fan-in
JOBS = [j for j in ALL_JOBS if the_container(j[1])["name"] == "train"]
JOB_IDS = [name for name, _, _ in JOBS]
((REPORT_NAME, REPORT, REPORT_DOCS),) = [j for j in ALL_JOBS if the_container(j[1])["name"] == "report"]
train_container = the_container


def configmap_spec(job: dict, docs: list[dict]) -> tuple[str, str]:
    """(spec text from the ConfigMap the Job mounts, path the container reads it at)."""
    container = train_container(job)
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    for mount in container["volumeMounts"]:
        configmap = volumes[mount["name"]].get("configMap")
        if configmap is None:
            continue
        (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == configmap["name"]]
        for key, text in cm["data"].items():
            if f"{mount['mountPath']}/{key}" in container["args"]:
                return text, f"{mount['mountPath']}/{key}"
    raise AssertionError("the container's args name no file of a mounted ConfigMap")


def test_k8s_folder_has_a_job_and_an_indexed_job():
    modes = sorted(job["spec"].get("completionMode", "NonIndexed") for _, job, _ in JOBS)
    assert modes == ["Indexed", "NonIndexed"]


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_is_valid_against_kubernetes_1_31_schema_in_strict_mode(path, kubernetes_validate):
    for doc in documents(path):
        # raises ValidationError naming the field on an unknown or mistyped property
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_field(kubernetes_validate):
    # guards the test above: strict mode must really be strict in this version
    _, job, _ = JOBS[0]
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name, job, docs", JOBS, ids=JOB_IDS)
def test_pod_failure_policy_follows_the_cli_exit_codes(name, job, docs):
    rules = job["spec"]["podFailurePolicy"]["rules"]
    container = train_container(job)["name"]

    def action_for_exit(code: int) -> str | None:
        for rule in rules:
            on = rule.get("onExitCodes")
            if on and on.get("containerName", container) == container:
                matches = code in on["values"]
                if matches == (on["operator"] == "In"):
                    return rule["action"]
        return None  # counts against the retry budget

    disruption = [r for r in rules if any(c["type"] == "DisruptionTarget" for c in r.get("onPodConditions", []))]
    assert [r["action"] for r in disruption] == ["Ignore"], "preemption must not use up retries"
    assert action_for_exit(EXIT_INTERRUPTED) == "Ignore", "exit 75 saved a checkpoint: start a new pod"
    assert action_for_exit(EXIT_USAGE) == "FailJob", "a bad spec fails every retry"
    expected_unavailable = "FailIndex" if "backoffLimitPerIndex" in job["spec"] else "FailJob"
    assert action_for_exit(EXIT_UNAVAILABLE) == expected_unavailable
    assert action_for_exit(1) is None, "unexpected failures are retried"
    assert action_for_exit(EXIT_RETRYABLE) in (None, "Count"), "a transient fault is retried, within the budget"
    # podFailurePolicy is only allowed with restartPolicy Never
    assert pod_spec(job)["restartPolicy"] == "Never"


@pytest.mark.parametrize("name, job, docs", ALL_JOBS, ids=ALL_IDS)
def test_retries_are_bounded_and_finished_jobs_are_cleaned_up(name, job, docs):
    spec = job["spec"]
    budget = spec.get("backoffLimitPerIndex", spec.get("backoffLimit"))
    assert budget is not None and 0 < budget <= 5
    assert spec["ttlSecondsAfterFinished"] > 0


@pytest.mark.parametrize("name, job, docs", JOBS, ids=JOB_IDS)
def test_grace_period_leaves_time_to_write_a_checkpoint(name, job, docs):
    assert pod_spec(job)["terminationGracePeriodSeconds"] >= 60


@pytest.mark.parametrize("name, job, docs", ALL_JOBS, ids=ALL_IDS)
def test_pod_meets_the_restricted_pod_security_standard(name, job, docs):
    pod = pod_spec(job)
    pod_ctx = pod["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True
    assert pod_ctx["runAsUser"] == 1000, "the Dockerfile's USER"
    assert pod_ctx["seccompProfile"]["type"] == "RuntimeDefault"
    ctx = train_container(job)["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert "add" not in ctx["capabilities"]
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in v for v in pod["volumes"])


@pytest.mark.parametrize("name, job, docs", ALL_JOBS, ids=ALL_IDS)
def test_root_filesystem_is_read_only_with_an_empty_dir_at_tmp(name, job, docs):
    container = train_container(job)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]]


@pytest.mark.parametrize("name, job, docs", JOBS, ids=JOB_IDS)
def test_pod_asks_for_one_gpu_and_takes_s3_credentials_from_an_optional_secret(name, job, docs):
    container = train_container(job)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    secrets = [e["secretRef"] for e in container.get("envFrom", []) if "secretRef" in e]
    assert secrets and all(s["optional"] is True for s in secrets), "IRSA users have no Secret"
    account = pod_spec(job)["serviceAccountName"]
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == account for d in docs)
    assert not any(d["kind"] == "Secret" for d in docs), "credentials never live in the repository"


@pytest.mark.parametrize("name, job, docs", JOBS, ids=JOB_IDS)
def test_spec_in_the_configmap_is_valid_for_the_cli(name, job, docs):
    text, path = configmap_spec(job, docs)
    assert train_container(job)["args"] == ["run", path]
    result = subprocess.run(
        [sys.executable, "-m", "imgfit_batch", "validate", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["train"]["device"] == "cuda", "a GPU pod that silently trains on CPU is a waste"
    # a stopped job gives up on its checkpoint before the kubelet's SIGKILL, with time to exit
    assert pod_spec(job)["terminationGracePeriodSeconds"] >= resolved["checkpoint"]["stop_grace_seconds"] + 15


def test_indexed_job_runs_one_pod_per_task_that_plan_lists():
    ((name, job, docs),) = [j for j in JOBS if j[1]["spec"].get("completionMode") == "Indexed"]
    text, _ = configmap_spec(job, docs)
    result = subprocess.run(
        [sys.executable, "-m", "imgfit_batch", "plan", "-", "--json"],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    spec = yaml.safe_load(text)
    assert spec.get("sweep"), "the Indexed Job shows a study: images x a sweep"
    assert job["spec"]["completions"] == plan["count"] > len(spec["image"])
    outputs = [task["output"] for task in plan["tasks"]]
    assert len(set(outputs)) == len(outputs), "every pod writes to its own folder"


@pytest.mark.parametrize("name, job, docs", JOBS, ids=JOB_IDS)
def test_slurm_asks_for_the_cores_kubernetes_asks_for_and_nodes_are_x86_64(name, job, docs):
    import re

    script = (K8S.parent / "slurm" / "train.sh").read_text()
    (cpus,) = re.findall(r"^#SBATCH --cpus-per-task=(\d+)$", script, re.M)
    assert train_container(job)["resources"]["requests"]["cpu"] == cpus
    assert pod_spec(job)["nodeSelector"]["kubernetes.io/arch"] == "amd64"


def test_report_job_reports_on_the_indexed_jobs_output_with_the_same_image_and_no_gpu():
    ((_, indexed, docs),) = [j for j in JOBS if j[1]["spec"].get("completionMode") == "Indexed"]
    text, _ = configmap_spec(indexed, docs)
    container = the_container(REPORT)
    assert container["args"] == ["report", yaml.safe_load(text)["output"]]
    assert container["image"] == train_container(indexed)["image"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {}), "a page needs no GPU"
    assert pod_spec(REPORT)["serviceAccountName"] == pod_spec(indexed)["serviceAccountName"], "the same S3 access"
    secrets = [e["secretRef"] for e in container.get("envFrom", []) if "secretRef" in e]
    assert secrets and all(s["optional"] is True for s in secrets)
    rules = REPORT["spec"]["podFailurePolicy"]["rules"]
    fail_job = {code for r in rules if r["action"] == "FailJob" for code in r["onExitCodes"]["values"]}
    assert fail_job == {EXIT_USAGE, EXIT_UNAVAILABLE}, "a bad or empty OUTPUT fails the same way in every pod"
    assert [r["action"] for r in rules if "onPodConditions" in r] == ["Ignore"]


@pytest.mark.parametrize("name, job, docs", ALL_JOBS, ids=ALL_IDS)
def test_jobs_name_a_kueue_queue_and_leave_suspension_to_kueue(name, job, docs):
    assert job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name"), "Kueue admits only Jobs that name a LocalQueue"
    # Kueue creates the Job suspended and toggles spec.suspend to admit and to preempt it; a
    # Job that sets it itself would fight Kueue. Pods deleted by a suspension are not
    # failures, and a preempted pod's SIGTERM ends in exit 75 or a DisruptionTarget, both
    # ignored by the podFailurePolicy above.
    assert "suspend" not in job["spec"]
