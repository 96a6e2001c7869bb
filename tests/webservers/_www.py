"""A Python runtime that user www-data can run: Apache's workers and mod_fcgid run as it.

The venv's interpreter lives under /root (pyenv, mode 0700), out of www-data's reach.
Debian's /usr/bin/python3.11 has the same ABI (cpython-311), so it can import the
venv's installed packages, compiled extensions included, as long as www-data can read
them: when the venv's site-packages is reachable by others it is used as is, else the
files of ``daemonapp`` and of its runtime requirements (read from their RECORD) are
copied to a world-readable directory. ``spawned_app.py`` goes in a directory of its own,
first on PYTHONPATH.

The interpreter runs from a bare venv over /usr/bin/python3.11 (no pip, no system
site-packages): Debian's dist-packages would otherwise come after PYTHONPATH, and its
pyOpenSSL (without service_identity) breaks ``import twisted.internet.endpoints``.
"""

from __future__ import annotations

import importlib.metadata
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests._env import unavailable

WWW_USER = "www-data"
#: Debian's interpreter: world-executable, and the ABI of the venv (3.11); www-data runs it
#: through a bare venv (see the module docstring).
WWW_PYTHON = "/usr/bin/python3.11"
SPAWNED_APP = Path(__file__).with_name("spawned_app.py")


@dataclass(frozen=True)
class WwwRuntime:
    """What a process running as www-data needs to run ``daemonapp`` and ``spawned_app``."""

    python: str
    pythonpath: str
    uid: int
    gid: int
    copied: bool

    def env(self, **extra: str) -> dict[str, str]:
        """A minimal environment for a process run as www-data."""
        return {"PATH": "/usr/bin:/bin", "PYTHONPATH": self.pythonpath, **extra}

    def run(self, code: str) -> subprocess.CompletedProcess[str]:
        """``python -c code`` as www-data, with no inherited environment."""
        return subprocess.run([self.python, "-c", code], user=self.uid, group=self.gid,
                              extra_groups=[], env=self.env(), cwd="/",
                              capture_output=True, text=True, timeout=30, check=False)

    def chown(self, path: Path, mode: int) -> None:
        """Make ``path`` www-data's, with ``mode`` (state and socket directories)."""
        os.chown(path, self.uid, self.gid)
        path.chmod(mode)


def runtime_distributions(name: str = "daemonapp") -> list[importlib.metadata.Distribution]:
    """``name``'s distribution and those it requires at run time (no extras), recursively."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [name]
    while pending:
        key = canonicalize_name(pending.pop())
        if key in found:
            continue
        dist = importlib.metadata.distribution(key)
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(found.values())


def reachable_by_others(path: Path) -> bool:
    """Whether every ancestor of ``path`` is searchable by others (o+x)."""
    return all(os.stat(directory).st_mode & stat.S_IXOTH for directory in [path, *path.parents])


def _installed_files(dist: importlib.metadata.Distribution) -> Iterator[tuple[Path, Path]]:
    """(source, path relative to site-packages) of each file the distribution installed there.

    Files outside site-packages (console scripts in bin/, RECORD's ``../`` entries) are left
    out: nothing here runs them.
    """
    for entry in dist.files or []:
        if entry.parts and entry.parts[0] == "..":
            continue
        source = Path(str(dist.locate_file(entry)))
        if source.is_file():
            yield source, Path(*entry.parts)


def _copy_site(dists: list[importlib.metadata.Distribution], target: Path) -> None:
    """A world-readable copy of the distributions' files under ``target``.

    Files readable by others are hard-linked when they can be (no chmod then: the link is
    the venv's file). The .pyc files come along with their sources' mtimes, so they stay
    valid and www-data, who cannot write ``__pycache__`` here, does not compile Twisted
    on each spawn.
    """
    made: set[Path] = set()
    for dist in dists:
        for source, relative in _installed_files(dist):
            destination = target / relative
            if relative.parent not in made:
                destination.parent.mkdir(parents=True, exist_ok=True)
                made.update([relative.parent, *relative.parent.parents])
            mode = source.stat().st_mode
            if mode & stat.S_IROTH:
                try:  # a hard link: fast, and already readable by others
                    os.link(source, destination)
                    continue
                except OSError:  # another file system
                    pass
            shutil.copy2(source, destination)
            destination.chmod(0o755 if mode & stat.S_IXUSR else 0o644)
    for directory in made:  # mkdir's mode is masked by the umask
        (target / directory).chmod(0o755)


def www_runtime(workdir: Path, *, copy: bool | None = None) -> WwwRuntime:
    """A runtime for www-data with its files under ``workdir`` (made 0755; caller removes it).

    ``copy``: None copies only when the venv's site-packages is out of others' reach;
    True or False forces the choice (a test checks both ways).
    """
    if os.geteuid() != 0:
        unavailable("the Apache tests run as root (Apache switches its workers to www-data)")
    if not os.access(WWW_PYTHON, os.X_OK):
        unavailable(f"{WWW_PYTHON} is missing (Debian's python3.11, for user www-data)")
    if sys.version_info[:2] != (3, 11):
        unavailable(f"{WWW_PYTHON} cannot import this venv's packages (Python "
                    f"{sys.version_info.major}.{sys.version_info.minor}): needs 3.11")
    try:
        user = pwd.getpwnam(WWW_USER)
    except KeyError:
        unavailable(f"there is no user {WWW_USER}")
    workdir.chmod(0o755)
    python = workdir / "python"
    subprocess.run([WWW_PYTHON, "-m", "venv", "--without-pip", str(python)], check=True,
                   capture_output=True, timeout=30, umask=0o022)
    dists = runtime_distributions()
    locations = {Path(str(dist.locate_file(""))).resolve() for dist in dists}
    site: Path | None = None
    if len(locations) == 1:
        site = locations.pop()
    if copy is None:
        copy = site is None or not reachable_by_others(site) or not all(
            source.stat().st_mode & stat.S_IROTH
            for dist in dists for source, _ in _installed_files(dist))
    if copy:
        site = workdir / "site"
        site.mkdir(mode=0o755)
        site.chmod(0o755)
        _copy_site(dists, site)
    assert site is not None, f"the distributions are spread over {sorted(locations)}"
    modules = workdir / "modules"
    modules.mkdir()
    modules.chmod(0o755)
    shutil.copy2(SPAWNED_APP, modules / SPAWNED_APP.name)
    (modules / SPAWNED_APP.name).chmod(0o644)
    return WwwRuntime(python=str(python / "bin" / "python3.11"),
                      pythonpath=f"{modules}{os.pathsep}{site}",
                      uid=user.pw_uid, gid=user.pw_gid, copied=copy)
