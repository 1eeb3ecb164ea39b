"""Turn a `sam build` directory into the packaged SAM template of a release: offline, no S3.

    python mk/sam_dist.py BUILD_DIR OUT_DIR

`sam package` uploads code to S3 and rewrites the template to point at it; this does the local half. Every
function's CodeUri and layer's ContentUri that `sam build` left as a directory becomes a zip next to the
template, and the template points at that zip. A platform engineer publishes the release with
`sam deploy --template-file OUT_DIR/template.yaml --resolve-s3 --guided` (or `sam package --template-file ...
--s3-bucket BUCKET` for a template that names S3 objects): SAM uploads a local zip as it is.

Zips are reproducible: sorted entries, a fixed timestamp, the file's mode (executable or not), deflate.
Runs in the SAM CLI venv (it reads and writes the template with SAM CLI's own YAML helpers).
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

from samcli.yamlhelper import yaml_dump, yaml_parse

# The earliest time a zip can hold (1980-01-01): every build of the same files gives the same bytes.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
CODE_PROPERTIES = {"AWS::Serverless::Function": "CodeUri", "AWS::Serverless::LayerVersion": "ContentUri"}


def zip_directory(source: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted(source.rglob("*")):
            if path.is_dir():
                continue
            entry = zipfile.ZipInfo(path.relative_to(source).as_posix(), ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            entry.external_attr = (0o100000 | mode) << 16
            archive.writestr(entry, path.read_bytes())


def package(build_dir: Path, out_dir: Path) -> list[Path]:
    template: dict[str, Any] = yaml_parse((build_dir / "template.yaml").read_text(encoding="utf-8"))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    written = []
    for name, resource in template.get("Resources", {}).items():
        key = CODE_PROPERTIES.get(resource.get("Type", ""))
        uri = resource.get("Properties", {}).get(key) if key else None
        if not isinstance(uri, str) or not (build_dir / uri).is_dir():
            continue
        archive = out_dir / f"{name}.zip"
        zip_directory(build_dir / uri, archive)
        resource["Properties"][key] = archive.name
        written.append(archive)
    if not written:
        raise SystemExit(f"no function or layer directory in {build_dir / 'template.yaml'}: was it built?")
    (out_dir / "template.yaml").write_text(yaml_dump(template), encoding="utf-8")
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    build_dir, out_dir = Path(argv[0]), Path(argv[1])
    for archive in package(build_dir, out_dir):
        print(f"{archive}: {archive.stat().st_size} bytes")
    print(f"{out_dir / 'template.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
