"""The base images the Dockerfile names, made locally from Debian's packages.

No image registry is reachable here, so `python:3.11-slim-bookworm` (the Dockerfile's
BASE_IMAGE) is stood in for by a debootstrapped Debian 12 with Debian's Python 3.11, pip
and venv, tagged with exactly that name. The machine's CA bundle goes into it, so that
`pip install` inside `docker build` reaches PyPI as the machine does. Root filesystems are
kept in CACHE_DIR between runs on one machine (a fresh CI machine makes them anew).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BASE_IMAGE = "python:3.11-slim-bookworm"
CACHE_DIR = Path(os.environ.get("PYEDGE_IMAGE_CACHE", "/var/tmp/pyedge-test-images"))
PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBOOTSTRAP_TIMEOUT_S = 900


def rootfs(arch: str) -> Path:
    """A tarball of a minimal Debian 12 root filesystem with Python for `arch` (cached)."""
    tarball = CACHE_DIR / f"bookworm-python-{arch}.tar"
    if tarball.exists():
        return tarball
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"rootfs-{arch}-", dir=CACHE_DIR))
    try:
        root = work / "root"
        subprocess.run(
            [
                shutil.which("debootstrap") or "/usr/sbin/debootstrap",
                f"--arch={arch}", "--variant=minbase", f"--include={PACKAGES}",
                "bookworm", str(root),
            ],
            check=True, stdout=subprocess.DEVNULL, timeout=DEBOOTSTRAP_TIMEOUT_S,
        )  # fmt: skip
        # The machine's CAs: pip in `docker build` then trusts what the machine trusts.
        shutil.copy(CA_BUNDLE, root / CA_BUNDLE.relative_to("/"))
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        partial = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
        return tarball
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_base(docker: list[str], arch: str, tag: str = BASE_IMAGE) -> None:
    """Tag a Debian-with-Python image for `arch` (amd64, arm64) as `tag` on the engine."""
    tarball = rootfs(arch)
    context = Path(tempfile.mkdtemp(prefix="base-context-"))
    try:
        os.link(tarball, context / "rootfs.tar")
        (context / "Dockerfile").write_text(
            'FROM scratch\nADD rootfs.tar /\nENV LANG=C.UTF-8\nCMD ["python3"]\n'
        )
        # The classic builder sets the image's architecture from --platform (docker
        # import does not on engine 20.10).
        subprocess.run(
            [*docker, "build", "--platform", f"linux/{arch}", "-t", tag, "-q", str(context)],
            check=True, env={**os.environ, "DOCKER_BUILDKIT": "0"}, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        shutil.rmtree(context, ignore_errors=True)
