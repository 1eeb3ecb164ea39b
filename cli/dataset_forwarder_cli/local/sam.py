"""template.yaml as CloudFormation receives it: read, packaged in memory, transformed by aws-sam-translator.

`deploy` then creates it in a CloudFormation (moto's, for the local stack and the template tests), so what
runs locally is what the shipped template really creates. Nothing here is a second copy of the template.
"""

from __future__ import annotations

import copy
import io
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

ARTIFACT_BUCKET = "dataset-forwarder-artifacts"
TEMPLATE_ENV = "DATASET_FORWARDER_TEMPLATE"
TEMPLATE_NAME = "template.yaml"
DEFAULT_REGION = "us-east-1"
INSTALL_HINT = "pip install 'airflow-dataset-forwarder[local]'"
# cli/dataset_forwarder_cli/local/sam.py -> the repository root (editable install or a checkout)
_CHECKOUT_ROOT = Path(__file__).resolve().parents[3]


class TemplateError(RuntimeError):
    """The template cannot be found, read, transformed or deployed."""


def find_template(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The template to use: the given path, $DATASET_FORWARDER_TEMPLATE, the checkout's, or ./template.yaml."""
    candidates = [Path(explicit)] if explicit else []
    if not candidates and os.environ.get(TEMPLATE_ENV):
        candidates = [Path(os.environ[TEMPLATE_ENV])]
    if not candidates:
        candidates = [_CHECKOUT_ROOT / TEMPLATE_NAME, Path.cwd() / TEMPLATE_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise TemplateError(f"no SAM template found (tried {tried}); pass --template or set {TEMPLATE_ENV}")


def _loader() -> Any:
    """A YAML loader with CloudFormation's short intrinsic tags (!Ref, !Sub, !GetAtt A.B, ...)."""
    import yaml

    class CloudFormationLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
        """SafeLoader plus the intrinsic tags."""

    def intrinsic(loader: Any, tag_suffix: str, node: Any) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        if tag_suffix in ("Ref", "Condition"):
            return {tag_suffix: value}
        if tag_suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
        return {f"Fn::{tag_suffix}": value}

    CloudFormationLoader.add_multi_constructor("!", intrinsic)
    return CloudFormationLoader


def load_template(path: Path | None = None) -> dict[str, Any]:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise TemplateError(f"PyYAML is not installed: {INSTALL_HINT}") from exc

    with (path or find_template()).open(encoding="utf-8") as handle:
        loaded = yaml.load(handle, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    if not isinstance(loaded, dict):
        raise TemplateError(f"{path}: not a YAML mapping")
    return loaded


def _local_uris(template: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(logical id, property, local path) of every CodeUri/ContentUri that `sam package` would upload."""
    found = []
    for name, resource in template.get("Resources", {}).items():
        properties = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            value = properties.get(key)
            if isinstance(value, str) and not value.startswith("s3://"):
                found.append((name, key, value))
    return found


def packaged(template: dict[str, Any]) -> dict[str, Any]:
    """What `sam package` does: local CodeUri/ContentUri become S3 locations of their zips."""
    result = copy.deepcopy(template)
    for name, key, _ in _local_uris(template):
        result["Resources"][name]["Properties"][key] = f"s3://{ARTIFACT_BUCKET}/{name}.zip"
    return result


def transformed(template: dict[str, Any] | None = None, region: str = DEFAULT_REGION) -> dict[str, Any]:
    """The plain CloudFormation that the AWS::Serverless-2016-10-31 transform makes of the template.

    What `samtranslator.translator.transform.transform` does, with the region given instead of read from the
    caller's AWS configuration, and no IAM call for managed policies (the template names none).
    """
    try:
        import boto3
        from samtranslator.parser.parser import Parser
        from samtranslator.translator.translator import Translator
        from samtranslator.utils.py27hash_fix import to_py27_compatible_template, undo_mark_unicode_str_in_template
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise TemplateError(f"aws-sam-translator is not installed: {INSTALL_HINT}") from exc

    source = packaged(template if template is not None else load_template())
    parameter_values: dict[str, Any] = {}
    to_py27_compatible_template(source, parameter_values)
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
    result = translator.translate(source, parameter_values=parameter_values, get_managed_policy_map=dict)
    plain: dict[str, Any] = json.loads(json.dumps(undo_mark_unicode_str_in_template(result)))
    return plain


def _zip_of(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()


def upload_artifacts(session: Any, template: dict[str, Any], base_dir: Path) -> None:
    """Put the zips `packaged` points at into (moto's) S3: the function code and the layer's source."""
    s3 = session.client("s3")
    if ARTIFACT_BUCKET not in {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=ARTIFACT_BUCKET)
    for name, _, local in _local_uris(template):
        s3.put_object(Bucket=ARTIFACT_BUCKET, Key=f"{name}.zip", Body=_zip_of(base_dir / local))


def deploy(
    session: Any,
    stack_name: str,
    parameters: dict[str, str] | None = None,
    template_path: Path | None = None,
    timeout_s: float = 120,
    region: str = DEFAULT_REGION,
) -> dict[str, Any]:
    """Create the transformed template as a stack; describe_stacks' entry once it left *_IN_PROGRESS."""
    path = template_path or find_template()
    template = load_template(path)
    upload_artifacts(session, template, path.parent)
    cloudformation = session.client("cloudformation")
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(transformed(template, region)),
        Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in (parameters or {}).items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    deadline = time.monotonic() + timeout_s
    while True:
        stack: dict[str, Any] = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            return stack
        time.sleep(0.2)
