"""template.yaml as CloudFormation receives it: read, packaged in memory, transformed by aws-sam-translator.

`deploy` then creates it in moto's CloudFormation, so the tests read back what the shipped template
really creates. Nothing here is a second copy of the template.
"""

from __future__ import annotations

import copy
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
ARTIFACT_BUCKET = "dataset-forwarder-artifacts"


class _CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short intrinsic tags (!Ref, !Sub, !GetAtt A.B, ...)."""


def _intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
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


_CloudFormationLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        loaded = yaml.load(handle, Loader=_CloudFormationLoader)
    assert isinstance(loaded, dict)
    return loaded


def packaged(template: dict[str, Any]) -> dict[str, Any]:
    """What `sam package` does: local CodeUri/ContentUri become S3 locations of their zips."""
    result = copy.deepcopy(template)
    for name, resource in result["Resources"].items():
        properties = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str) and not properties[key].startswith("s3://"):
                properties[key] = f"s3://{ARTIFACT_BUCKET}/{name}.zip"
    return result


class _NoIamManagedPolicies:
    """aws-sam-translator's managed-policy loader, without asking IAM (the template names none)."""

    def load(self) -> dict[str, str]:
        return {}


def transformed(template: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plain CloudFormation that the AWS::Serverless-2016-10-31 transform makes of the template."""
    from samtranslator.translator.transform import transform

    source = packaged(template if template is not None else load_template())
    result = transform(source, {}, _NoIamManagedPolicies())
    plain: dict[str, Any] = json.loads(json.dumps(result))  # plain dicts and lists only
    return plain


def _zip_of(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()


def upload_artifacts(session: Any, template: dict[str, Any]) -> None:
    """Put the zips `packaged` points at into (moto's) S3: the function code and the layer's source."""
    s3 = session.client("s3")
    if ARTIFACT_BUCKET not in {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=ARTIFACT_BUCKET)
    for name, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str) and not properties[key].startswith("s3://"):
                s3.put_object(Bucket=ARTIFACT_BUCKET, Key=f"{name}.zip", Body=_zip_of(ROOT / properties[key]))


def deploy(session: Any, stack_name: str, parameters: dict[str, str] | None = None) -> dict[str, Any]:
    """Create the transformed template as a stack; describe_stacks' entry once it left *_IN_PROGRESS."""
    template = load_template()
    upload_artifacts(session, template)
    cloudformation = session.client("cloudformation")
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(transformed(template)),
        Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in (parameters or {}).items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    deadline = time.monotonic() + 60
    while True:
        stack: dict[str, Any] = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            return stack
        time.sleep(0.5)
