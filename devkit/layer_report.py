"""What `sam build` put in the dependencies layer: bytecode, runtime duplicates, native code, size.

Used by tests/template/test_sam_cli.py and by `make sam-build`:
`python -m devkit.layer_report BUILD_DIR` prints the size and exits 1 on a problem.
"""

from __future__ import annotations

import io
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

LAYER = "DependenciesLayer"
# Shipped by the python3.13 Lambda runtime (template.yaml); a copy in the layer only costs size and cold start.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath")
ELF_MACHINE_AARCH64 = 183
# The runtime's bytecode: the layer's .pyc files are compiled by that interpreter (layers/dependencies/Makefile).
BYTECODE_TAG = "cpython-313"


@dataclass(frozen=True)
class LayerReport:
    modules: int
    compiled: int
    unzipped_bytes: int
    zipped_bytes: int
    problems: tuple[str, ...]

    def summary(self) -> str:
        return (
            f"layer {LAYER}: {self.unzipped_bytes / 2**20:.1f} MiB unzipped ({self.unzipped_bytes} bytes), "
            f"{self.zipped_bytes / 2**20:.1f} MiB zipped ({self.zipped_bytes} bytes), "
            f"{self.compiled}/{self.modules} modules with bytecode"
        )


def _zipped_size(root: Path) -> int:
    """The size of the zip `sam deploy` uploads (deflate, like SAM's own packaging)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(root).as_posix())
    return len(buffer.getvalue())


def _elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    return int.from_bytes(header[18:20], "little")


def inspect(build_dir: Path) -> LayerReport:
    root = build_dir / LAYER
    site = root / "python"
    problems: list[str] = []
    modules = [path for path in site.rglob("*.py") if "__pycache__" not in path.parts]
    compiled = [path for path in modules if (path.parent / "__pycache__" / f"{path.stem}.{BYTECODE_TAG}.pyc").is_file()]
    if not modules:
        problems.append(f"no Python modules under {site}")
    if len(compiled) < len(modules):
        missing = sorted(str(path.relative_to(site)) for path in set(modules) - set(compiled))
        problems.append(f"{len(missing)} modules without {BYTECODE_TAG} bytecode, e.g. {missing[:3]}")
    for package in RUNTIME_PACKAGES:
        if (site / package).exists() or list(site.glob(f"{package}-*.dist-info")):
            problems.append(f"{package} is in the layer, but the Lambda runtime already ships it")
    for library in site.rglob("*.so"):
        if _elf_machine(library) != ELF_MACHINE_AARCH64:
            problems.append(f"{library.relative_to(site)} is not built for arm64 (aarch64)")
    unzipped = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    return LayerReport(len(modules), len(compiled), unzipped, _zipped_size(root), tuple(problems))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m devkit.layer_report BUILD_DIR", file=sys.stderr)
        return 2
    report = inspect(Path(argv[0]))
    print(report.summary())
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
