"""run.sh: finds a Python >= 3.12 or says what to install."""
from __future__ import annotations

import shutil
import subprocess

from tests.conftest import ROOT


def test_run_sh_names_what_to_install_when_no_python_312(tmp_path):
    shutil.copy(ROOT / "run.sh", tmp_path / "run.sh")
    for name in ("requirements.txt", "requirements-dev.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("bash", "env", "dirname", "cat", "sha256sum", "cut", "ls", "sort", "rm", "mkdir"):
        found = shutil.which(tool)
        if found:
            (fake_bin / tool).symlink_to(found)
    old = shutil.which("python3.11") or "/usr/bin/python3.11"
    (fake_bin / "python3").symlink_to(old)   # only an old interpreter is available
    out = subprocess.run(["bash", str(tmp_path / "run.sh"), "heartbeat"], capture_output=True, text=True,
                         env={"PATH": str(fake_bin), "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path / "nopyenv")},
                         timeout=30)
    assert out.returncode == 127
    assert "needs Python 3.12 or newer" in out.stderr and "pyenv install 3.12" in out.stderr
    assert not (tmp_path / ".venv").exists()


def test_ci_runs_exactly_the_readme_test_command():
    assert "./run.sh test" in (ROOT / ".ci" / "run").read_text()
    assert "./run.sh test" in (ROOT / "README.md").read_text()
