"""Build the wheel the Databricks jobs install: the package, requiring only the `databricks` extra.

The package's own requirements are the ingester's (aiohttp, boto3, typer, ...): what
`pip install stock-pipeline` must bring for `ingest`. A cluster runs only the notebooks, which
import what the `databricks` extra lists, next to what the Databricks Runtime has. So the bundle
builds the ordinary wheel and rewrites its metadata: the version gets the local label
`+databricks`, `Requires-Dist` becomes the extra's requirements, and the console commands go
(they need the ingester's). The code is the same.

Run from the repository root (the bundle's artifact build does):

    python databricks/cluster_wheel.py            # writes databricks/dist/*.whl

Standard library only: it runs on the machine that deploys, before anything is installed.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

LABEL = "databricks"


def cluster_requirements(pyproject: Path) -> list[str]:
    """The `databricks` extra's requirements, as pyproject.toml declares them."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return list(project["optional-dependencies"][LABEL])


def _digest(data: bytes) -> str:
    encoded = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={encoded.decode()}"


def _metadata(text: str, version: str, requirements: list[str]) -> str:
    """METADATA with the new version and only `requirements` (no extras left to offer)."""
    head, _, body = text.partition("\n\n")
    lines = []
    for line in head.splitlines():
        if line.startswith(("Requires-Dist:", "Provides-Extra:")):
            continue
        lines.append(f"Version: {version}" if line.startswith("Version:") else line)
    lines += [f"Requires-Dist: {requirement}" for requirement in requirements]
    return "\n".join(lines) + "\n\n" + body


def rewrite(wheel: Path, requirements: list[str], out_dir: Path) -> Path:
    """A copy of `wheel` in `out_dir` whose version carries `+databricks` and whose only
    requirements are `requirements`; RECORD is written again with the new hashes."""
    name, version, *tags = wheel.name.removesuffix(".whl").split("-")
    cluster_version = f"{version}+{LABEL}"
    old_info, new_info = f"{name}-{version}.dist-info", f"{name}-{cluster_version}.dist-info"
    target = out_dir / "-".join([name, cluster_version, *tags])
    target = target.with_name(target.name + ".whl")
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    with (
        zipfile.ZipFile(wheel) as source,
        zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out,
    ):
        for item in source.infolist():
            path = item.filename.replace(f"{old_info}/", f"{new_info}/", 1)
            if path in (f"{new_info}/RECORD", f"{new_info}/entry_points.txt"):
                continue  # RECORD is written anew; the CLI's commands need the ingester's
            data = source.read(item)
            if path == f"{new_info}/METADATA":
                data = _metadata(data.decode(), cluster_version, requirements).encode()
            out.writestr(zipfile.ZipInfo(path, item.date_time), data, zipfile.ZIP_DEFLATED)
            records.append(f"{path},{_digest(data)},{len(data)}")
        records.append(f"{new_info}/RECORD,,")
        out.writestr(f"{new_info}/RECORD", "\n".join(records) + "\n")
    return target


def main() -> None:
    root = Path.cwd()
    out_dir = root / "databricks" / "dist"
    shutil.rmtree(out_dir, ignore_errors=True)  # this build's wheel only: ./dist/*.whl
    with tempfile.TemporaryDirectory() as built:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", built, "."]
        subprocess.run(command, check=True)
        [wheel] = Path(built).glob("*.whl")
        target = rewrite(wheel, cluster_requirements(root / "pyproject.toml"), out_dir)
    print(f"built {target.relative_to(root)}")


if __name__ == "__main__":
    main()
