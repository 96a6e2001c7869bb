"""A regular (non-editable) `pip install .` makes the twistd plugin and the command work.

Twisted's plugin scan finds ``twisted/plugins/daemonapp_plugin.py`` only in a real
install. The test installs this checkout into a fresh venv whose other packages
are links to the test venv's (so it needs no network and stays fast), leaving out
daemonapp and its dropin so that only the new install can provide them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import twisted

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(twisted.__file__).resolve().parent.parent
SOURCES = ("daemonapp", "plugins", "scripts", "setup.cfg", "pyproject.toml", "README.md")


def link_dependencies(target: Path) -> None:
    """Link every package of the test venv into ``target``, except daemonapp's own files."""
    for entry in SITE.iterdir():
        name = entry.name
        if name.startswith("daemonapp") or name in ("twisted", "__pycache__") \
                or name.endswith(".pth"):
            continue
        (target / name).symlink_to(entry)
    twisted_dir = target / "twisted"
    twisted_dir.mkdir()
    for entry in (SITE / "twisted").iterdir():
        if entry.name not in ("plugins", "__pycache__"):
            (twisted_dir / entry.name).symlink_to(entry)
    plugins = twisted_dir / "plugins"
    plugins.mkdir()
    for entry in (SITE / "twisted" / "plugins").iterdir():
        if entry.name not in ("daemonapp_plugin.py", "dropin.cache", "__pycache__"):
            (plugins / entry.name).symlink_to(entry)


@pytest.mark.integration
def test_pip_install_provides_the_twistd_plugin(tmp_path: Path) -> None:
    """After `pip install .` into a fresh venv, twistd lists and runs daemonapp."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60).stdout.strip())
    link_dependencies(site)
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "DAEMONAPP_CONFIG", "PIP_REQUIRE_VIRTUALENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-build-isolation",
                    "--no-deps", "--no-index", str(source)],
                   check=True, cwd=tmp_path, env=env, timeout=300)

    where = subprocess.run([str(python), "-c", "import daemonapp; print(daemonapp.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=60).stdout.strip()
    assert where.startswith(str(site)), where
    assert (site / "twisted" / "plugins" / "daemonapp_plugin.py").is_file()

    twistd = [str(python), "-c", "import sys; sys.argv[0] = 'twistd'; "
              "from twisted.scripts.twistd import run; run()"]
    usage = subprocess.run([*twistd, "--help"], capture_output=True, text=True, cwd=tmp_path,
                           env=env, timeout=120, check=False)
    assert usage.returncode == 0, usage.stderr
    assert any(line.split()[:1] == ["daemonapp"] for line in usage.stdout.splitlines()), \
        usage.stdout

    config = tmp_path / "daemons.yaml"
    config.write_text(textwrap.dedent("""
        app: {shutdown_after: 1s}
        daemons:
          hello: {type: "daemonapp.examples.hello:Hello"}
    """))
    run = subprocess.run([*twistd, "-n", "--pidfile=", "daemonapp", "-c", str(config)],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "hello, Ada!" in run.stdout

    version = subprocess.run([str(venv / "bin" / "daemonapp"), "--version"],
                             capture_output=True, text=True, cwd=tmp_path, env=env, check=False,
                             timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("daemonapp ")
