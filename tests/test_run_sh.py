"""run.sh: finds a Python >= 3.12 or says what to install, refuses a missing or unknown mode with its usage, and
is what CI runs (`.ci/run` executes exactly the README's `./run.sh test`)."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, venv_is_current
from unified_agent import MODES

def clean_env(home: Path) -> dict[str, str]:
    """What a user's shell gives run.sh: a PATH and a HOME, nothing of ours."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


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


def test_no_mode_prints_the_usage_and_exits_64_touching_nothing(tmp_path):
    shutil.copy(ROOT / "run.sh", tmp_path / "run.sh")
    out = subprocess.run(["./run.sh"], cwd=tmp_path, capture_output=True, text=True, env=clean_env(tmp_path),
                         timeout=30)
    assert (out.returncode, out.stdout) == (64, "")
    [usage] = out.stderr.splitlines()
    assert usage.startswith("usage: ./run.sh ") and usage.endswith(" [args...]"), usage
    named = set(re.split(r"[|\s]+", usage.removeprefix("usage: ./run.sh ")))
    # every mode of the agent, and run.sh's own
    assert set(MODES) | {"reconcile", "monitor", "test", "bench"} <= named, usage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.sh"]      # no .venv, var/ or logs/ made


@pytest.mark.skipif(not venv_is_current(), reason=".venv is not in step with the requirements: run.sh would "
                                                  "reinstall it (./run.sh test brings it in step)")
def test_an_unknown_mode_is_refused_with_the_agents_usage_and_exit_2(tmp_path):
    out = subprocess.run(["./run.sh", "bogus"], cwd=ROOT, capture_output=True, text=True, env=clean_env(tmp_path),
                         timeout=60)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == ""
    assert out.stderr.startswith("usage: unified_agent.py [-h]")
    assert f"--mode {{{','.join(MODES)}}}" in out.stderr
    assert out.stderr.splitlines()[-1] == ("unified_agent.py: error: argument --mode: invalid choice: 'bogus' "
                                           f"(choose from {', '.join(repr(m) for m in MODES)})")


def readme_test_command() -> list[str]:
    """The test command of the README's "Two commands on a fresh machine", as argv."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands on a fresh machine", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    [line] = [ln for ln in block.splitlines() if shlex.split(ln, comments=True)[1:2] == ["test"]]
    return shlex.split(line, comments=True)


def test_ci_runs_exactly_the_readme_test_command(tmp_path):
    """`.ci/run` (a copy, so it cannot recurse into the suite) runs a recording stand-in for run.sh."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    record = tmp_path / "calls"
    stand_in = tmp_path / "run.sh"
    stand_in.write_text('#!/usr/bin/env bash\nprintf "%s|%s\\n" "$PWD" "$*" >> "$RECORD"\nexit 42\n')
    stand_in.chmod(0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([str(tmp_path / ".ci" / "run")], cwd=elsewhere, capture_output=True, text=True,
                         env={**clean_env(tmp_path), "RECORD": str(record)}, timeout=30)
    assert out.returncode == 42, (out.stdout, out.stderr)        # exec'd: its exit status is CI's
    calls = record.read_text().splitlines()
    assert calls == [f"{tmp_path}|test"], calls          # once, the root's run.sh, from the root, with `test` alone
    assert readme_test_command() == ["./run.sh", "test"]
