"""Every repository path that code, comments and documents cite (agent/..., tests/..., bench/..., ...) exists:
a renamed or deleted file leaves no reference behind to mislead the next reader."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"\b((?:agent|drivers|sandbox|hub|tests|bench|image)/[A-Za-z0-9_./-]+\."
                   r"(?:py|sh|md|toml|html|json|service))")


def test_every_cited_path_exists():
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    missing = {}
    for name in listed:
        if not name.endswith((".py", ".md", ".toml", ".sh", ".html")) or "/vendor/" in name:
            continue
        for match in CITED.finditer((ROOT / name).read_text(errors="replace")):
            path = match.group(1).rstrip(".")
            if not (ROOT / path).exists():
                missing.setdefault(path, []).append(name)
    assert not missing, missing
