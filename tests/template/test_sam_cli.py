"""The tools a platform engineer runs: `sam validate --lint`, `sam build`, and checkov on the template.

They live in venvs of their own (mk/sam.mk: SAM CLI pins boto3 and click, checkov an older boto3),
found through SAM_VENV and CHECKOV_VENV; `make template-test` sets both. Every run is offline:
no telemetry, a fixed region, fake credentials, no profile.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from devkit import layer_report
from devkit.moto_env import MotoServer, aws_session, fake_aws_env
from tests.template.conftest import ROOT, TEMPLATE

SAM_VENV = os.environ.get("SAM_VENV", "")
CHECKOV_VENV = os.environ.get("CHECKOV_VENV", "")
RUNTIME = "python3.13"  # template.yaml Runtime

needs_sam = pytest.mark.skipif(
    not SAM_VENV, reason="SAM_VENV is not set: `make template-test` builds the SAM CLI venv (mk/sam.mk) and sets it"
)
needs_checkov = pytest.mark.skipif(
    not CHECKOV_VENV, reason="CHECKOV_VENV is not set: `make template-test` builds the checkov venv (mk/sam.mk)"
)


def _offline_environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    environment.update(fake_aws_env())
    environment.update(
        SAM_CLI_TELEMETRY="0",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        CKV_SKIP_PACKAGE_UPDATE_CHECK="true",
        BC_SKIP_MAPPING="TRUE",
    )
    return environment


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, env=_offline_environment(), capture_output=True, text=True, check=False, timeout=timeout
    )


def _tool(venv: str, name: str) -> str:
    path = Path(venv) / "bin" / name
    assert path.exists(), f"{path} is missing: run `make sam-venv`"
    return str(path)


@pytest.fixture(scope="module")
def sam_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`sam build` of the shipped template (samconfig.toml's defaults apply), in a fresh directory."""
    runtime = shutil.which(RUNTIME)
    works = runtime is not None and _run([runtime, "-c", "import sys; print(sys.version)"], timeout=60)
    if not works or works.returncode != 0 or not works.stdout.startswith("3.13."):
        pytest.fail(f"sam build needs {RUNTIME} on PATH (the function's runtime; `make template-test` puts it there)")
    work = tmp_path_factory.mktemp("sam")
    build_dir = work / "build"
    command = [_tool(SAM_VENV, "sam"), "build", "--template-file", str(TEMPLATE)]
    result = _run([*command, "--build-dir", str(build_dir), "--cache-dir", str(work / "cache")], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return build_dir


@needs_sam
def test_sam_validate_lint_reports_nothing() -> None:
    result = _run([_tool(SAM_VENV, "sam"), "validate", "--lint", "--template-file", str(TEMPLATE)], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_sam
def test_sam_build_writes_the_function_and_the_layer(sam_build: Path) -> None:
    assert (sam_build / "ForwarderFunction" / "app.py").is_file()
    assert (sam_build / "ForwarderFunction" / "dataset_forwarder" / "settings.py").is_file()
    assert (sam_build / layer_report.LAYER / "python" / "aws_lambda_powertools").is_dir()
    assert (sam_build / layer_report.LAYER / "python" / "urllib3").is_dir()
    assert not (sam_build / layer_report.LAYER / "python" / "requests").exists()  # the forwarder speaks urllib3
    built = (sam_build / "template.yaml").read_text(encoding="utf-8")
    assert f"ContentUri: {layer_report.LAYER}" in built


@needs_sam
def test_built_layer_holds_bytecode_and_nothing_the_runtime_ships(sam_build: Path) -> None:
    report = layer_report.inspect(sam_build)
    print(report.summary())
    assert report.problems == ()
    assert report.compiled == report.modules > 0


@needs_sam
def test_built_layer_stays_far_below_lambdas_size_limit(sam_build: Path) -> None:
    report = layer_report.inspect(sam_build)
    assert report.unzipped_bytes < 25 * 2**20, report.summary()  # Lambda allows 250 MB for all layers
    assert report.zipped_bytes < 8 * 2**20, report.summary()


@needs_checkov
def test_checkov_fails_no_check_and_every_skip_is_commented() -> None:
    checkov = _tool(CHECKOV_VENV, "checkov")
    command = [checkov, "-f", str(TEMPLATE), "--framework", "cloudformation", "--skip-download", "-o", "json"]
    result = _run(command, timeout=300)
    report: Any = json.loads(result.stdout)
    results = report["results"]
    failed = [f"{check['check_id']} {check['resource']}" for check in results["failed_checks"]]
    assert failed == []
    assert result.returncode == 0, result.stderr
    assert results["passed_checks"]
    for check in results["skipped_checks"]:
        assert check["check_result"].get("suppress_comment"), check["check_id"]


@needs_sam
def test_release_template_and_zips_publish_with_sam_package(sam_build: Path, tmp_path: Path) -> None:
    """`make dist-sam`'s last step (mk/sam_dist.py) on a `sam build`, then `sam package` into moto's S3.

    The release directory must be what a platform engineer publishes as it is: SAM uploads each zip unchanged and
    the packaged template points at exactly those objects.
    """
    release = tmp_path / "release"
    made = _run([str(Path(SAM_VENV) / "bin" / "python"), "mk/sam_dist.py", str(sam_build), str(release)], timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    zips = {path.name: path.read_bytes() for path in release.glob("*.zip")}
    assert set(zips) == {"ForwarderFunction.zip", f"{layer_report.LAYER}.zip"}
    with zipfile.ZipFile(release / "ForwarderFunction.zip") as function:
        assert function.read("dataset_forwarder/VERSION") == (ROOT / "VERSION").read_bytes()  # a copy, not a link
        assert "app.py" in function.namelist()
    with zipfile.ZipFile(release / f"{layer_report.LAYER}.zip") as layer:
        names = layer.namelist()
        assert any(name.endswith(f".{layer_report.BYTECODE_TAG}.pyc") for name in names)
        assert all(name.startswith("python/") for name in names)
    again = tmp_path / "again"
    _run([str(Path(SAM_VENV) / "bin" / "python"), "mk/sam_dist.py", str(sam_build), str(again)], timeout=300)
    assert {path.name: path.read_bytes() for path in again.glob("*.zip")} == zips  # reproducible

    with MotoServer() as server:
        endpoint = server.endpoint
        s3 = aws_session().client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="releases")
        packaged = tmp_path / "packaged.yaml"
        command = [_tool(SAM_VENV, "sam"), "package", "--template-file", str(release / "template.yaml")]
        command += ["--s3-bucket", "releases", "--output-template-file", str(packaged)]
        done = subprocess.run(
            command,
            cwd=release,
            env={**_offline_environment(), "AWS_ENDPOINT_URL": endpoint},
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        uploaded = {
            item["Key"]: s3.get_object(Bucket="releases", Key=item["Key"])["Body"].read()
            for item in s3.list_objects_v2(Bucket="releases")["Contents"]
        }
    text = packaged.read_text(encoding="utf-8")
    for name, content in zips.items():
        [key] = [key for key, body in uploaded.items() if body == content]
        assert f"s3://releases/{key}" in text, name
    assert "Runtime: python3.13" in text
