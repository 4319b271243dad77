"""The systemd units: the embedded database has a unit of its own (started before the monitor and cron, outside the
monitor's memory cap), the monitor only attaches to it, and each unit's paths and sandbox options hold together for an
install under /opt, /root or /home once the README's install lines have rewritten them."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest

from core.environment import Environment
from core.settings import load_settings
from runtime.database import DatabaseUnavailable, resolve_target
from tests.conftest import ROOT

UNITS = ("catalyst-db.service", "position-monitor.service")
PATH_KEYS = ("WorkingDirectory", "ExecStart", "EnvironmentFile", "PIDFile", "ReadWritePaths", "BindPaths",
             "BindReadOnlyPaths", "Documentation")


def parse(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}} (keys may repeat; space-separated lists are split)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def readme_install_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Install the schedule and the monitor", 1)[1].split("\n## ", 1)[0]
    return [ln for block in re.findall(r"```bash\n(.*?)```", section, re.S) for ln in block.splitlines()]


def installed(unit: str, root: str, user: str, group: str) -> str:
    """The unit as the README's install line writes it for a project in `root` run by `user`."""
    [line] = [ln for ln in readme_install_lines() if f"config/{unit}" in ln and ln.lstrip().startswith("sed ")]
    command = line.split("|", 1)[0]                       # sed ... config/UNIT   (| sudo tee /etc/systemd/...)
    command = command.replace("$PWD", root).replace("$(stat -c %U .)", user).replace("$(stat -c %G .)", group)
    out = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10)
    return out.stdout


def paths(unit: dict) -> list[str]:
    found = []
    for key in PATH_KEYS:
        for value in unit["Unit"].get(key, []) + unit["Service"].get(key, []):
            for word in shlex.split(value):
                word = word.lstrip("-").removeprefix("file://")
                if word.startswith("/"):
                    found.append(word)
    return found


def test_the_database_unit_runs_the_server_on_its_own_before_the_monitor_and_cron():
    db = parse((ROOT / "config" / "catalyst-db.service").read_text())
    monitor = parse((ROOT / "config" / "position-monitor.service").read_text())
    assert {"position-monitor.service", "cron.service"} <= set(" ".join(db["Unit"]["Before"]).split())
    assert "catalyst-db.service" in " ".join(monitor["Unit"]["After"]).split()
    assert "catalyst-db.service" in " ".join(monitor["Unit"]["Wants"]).split()
    service = db["Service"]
    assert service["Type"] == ["forking"] and "MemoryMax" not in service
    assert service["ExecStart"] == ["/opt/catalyst/.venv/bin/python -m runtime.database serve"]
    assert service["PIDFile"] == ["/opt/catalyst/var/pgdata/postmaster.pid"]
    assert service["KillSignal"] == ["SIGINT"]                      # PostgreSQL's fast shutdown
    assert db["Install"]["WantedBy"] == ["multi-user.target"]
    # the monitor never starts the server itself: it would run inside the monitor's memory cap
    assert monitor["Service"]["MemoryMax"] == ["300M"]
    assert "CATALYST_EMBEDDED_DB=attach" in monitor["Service"]["Environment"]


@pytest.mark.parametrize("root,user", [("/opt/catalyst", "catalyst"), ("/root/catalyst", "root"),
                                       ("/home/alice/catalyst", "alice")])
@pytest.mark.parametrize("name", UNITS)
def test_paths_and_sandbox_hold_together_for_an_install_under(name, root, user):
    unit = parse(installed(name, root, user, user))
    service = unit["Service"]
    assert service["User"] == [user] and service["Group"] == [user]
    assert service["WorkingDirectory"] == [root]
    for path in paths(unit):
        assert path == root or path.startswith(root + "/"), (name, path)
    if "ProtectSystem" in service:
        assert service["ProtectSystem"] == ["strict"]
        writable = " ".join(service["ReadWritePaths"]).split()
        assert {f"{root}/var", f"{root}/logs"} <= set(writable)
    protect = (service.get("ProtectHome") or ["false"])[-1]
    if root.startswith(("/root/", "/home/")):
        # true / read-only would hide or freeze the project itself
        assert protect in ("false", "no", "tmpfs"), (name, protect)
        if protect == "tmpfs":
            shown = " ".join(service.get("BindPaths", []) + service.get("BindReadOnlyPaths", [])).split()
            assert root in shown, (name, shown)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", UNITS)
def test_systemd_accepts_the_installed_units(tmp_path, name):
    """systemd's own check of the unit as installed for this checkout (executables exist, every option parses)."""
    import getpass
    import grp
    import os
    text = installed(name, str(ROOT), getpass.getuser(), grp.getgrgid(os.getgid()).gr_name)
    (tmp_path / name).write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True,
                         timeout=60)
    problems = [ln for ln in (out.stdout + out.stderr).splitlines() if name in ln]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr


def test_attach_only_never_starts_an_embedded_server(tmp_path):
    settings = load_settings(env=Environment(values={"CATALYST_VAR_DIR": str(tmp_path / "var"),
                                                     "CATALYST_EMBEDDED_DB": "attach"}))
    try:
        with pytest.raises(DatabaseUnavailable, match="catalyst-db"):
            resolve_target(settings)
        assert not (tmp_path / "var" / "pgdata").exists()
    finally:
        if (tmp_path / "var" / "pgdata").exists():
            from runtime.database import stop_embedded
            stop_embedded(tmp_path / "var" / "pgdata")


def test_wirings_of_one_simulated_market_share_its_computed_paths():
    """A process wiring the same simulated market twice (replay's history sync and its run; eval's engines) gets one
    market object, so the paths computed for the first are not computed again; another seed is another market."""
    from core.calendar import MarketCalendar
    from runtime.wiring import build_source
    from tests.agent_fixtures import agent_settings
    a = agent_settings("unit_a")
    b = agent_settings("unit_b")
    other = agent_settings("unit_c", market_data={"seed": a.config.market_data.seed + 1})
    cal = MarketCalendar(a.config.market.exchange)
    assert build_source(a, cal) is build_source(b, MarketCalendar(b.config.market.exchange))
    assert build_source(other, cal) is not build_source(a, cal)
