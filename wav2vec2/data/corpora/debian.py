"""Fetching a corpus from Debian's archive: `apt-get download` the .debs, `dpkg-deb -x` them.

Nothing is installed system-wide: the packages land in a directory of the corpus's output,
and every step is cached there (a .deb present is not fetched again, one extracted is not
extracted again). Used by the corpus recipes of this package (asterisk, fillets).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess

from wav2vec2.files import atomic_write

logger = logging.getLogger(__name__)


def download_packages(pkgs: list[str], debs_dir: str, *, recipe: str) -> list[str]:
    """`apt-get download` the packages not already in debs_dir; returns every .deb there.
    `recipe` names the caller in the error raised on a system without apt-get/dpkg-deb."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: {recipe} needs a Debian-based system")
    os.makedirs(debs_dir, exist_ok=True)
    missing = [p for p in pkgs if not glob.glob(os.path.join(debs_dir, f"{p}_*.deb"))]
    if missing:
        logger.info("apt-get download %s", " ".join(missing))
        result = _apt_download(missing, debs_dir)
        if result.returncode != 0:  # usually stale or absent package lists
            update = subprocess.run(["apt-get", "update"], capture_output=True, text=True)
            result = _apt_download(missing, debs_dir)
            if result.returncode != 0:
                raise RuntimeError(
                    f"apt-get download {' '.join(missing)} failed (exit {result.returncode}):\n"
                    f"{result.stderr.strip()[-2000:]}\napt-get update said:\n{update.stderr.strip()[-1000:]}"
                )
    return sorted(glob.glob(os.path.join(debs_dir, "*.deb")))


def _apt_download(pkgs: list[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "download", *pkgs], cwd=cwd, capture_output=True, text=True)


def extract_debs(debs: list[str], extract_dir: str) -> None:
    """`dpkg-deb -x` each .deb once (a marker file records it)."""
    os.makedirs(extract_dir, exist_ok=True)
    for deb in debs:
        marker = os.path.join(extract_dir, ".done-" + os.path.basename(deb))
        if os.path.exists(marker):
            continue
        result = subprocess.run(["dpkg-deb", "-x", deb, extract_dir], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"dpkg-deb -x {deb} failed: {result.stderr.strip()}")
        atomic_write(marker, "")
