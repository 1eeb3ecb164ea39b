"""The release version: the repository's VERSION file, which this package carries (a symlink in the source tree,
a copy once `sam build` or a wheel has packaged it). Both pyprojects, the CLI's --version and the User-Agent read it.
"""

from pathlib import Path

__version__ = Path(__file__).with_name("VERSION").read_text(encoding="utf-8").strip()
