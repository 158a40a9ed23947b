"""The systemd units parse cleanly and keep their sandboxing (checked offline)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).resolve().parent.parent / "systemd").glob("*.service"))
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def installed_copy(unit: Path, tmp_path: Path) -> Path:
    """The unit as installed: ExecStart points at this environment's paxosd script."""
    paxosd = Path(sys.executable).parent / "paxosd"
    assert paxosd.exists(), f"{paxosd} is missing: install the package first"
    target = tmp_path / unit.name
    target.write_text(unit.read_text().replace("/opt/paxosd/bin/paxosd", str(paxosd)))
    return target


def test_there_is_a_unit_for_one_member_and_a_template_for_several():
    assert {u.name for u in UNITS} == {"paxosd.service", "paxosd@.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_verify_prints_nothing(unit, tmp_path):
    path = installed_copy(unit, tmp_path)
    if unit.name.endswith("@.service"):
        instance = tmp_path / unit.name.replace("@.", "@1.")
        instance.symlink_to(path)
        path = instance
    done = subprocess.run([ANALYZE, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stdout + done.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_offline_security_exposure_is_at_most_2(unit, tmp_path):
    path = installed_copy(unit, tmp_path)
    done = subprocess.run([ANALYZE, "security", "--offline=true", str(path)],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0, done.stdout


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_the_unit_is_a_notify_service_with_a_watchdog_and_its_own_directories(unit):
    text = unit.read_text()
    for line in ("Type=notify", "Restart=on-failure", "User=paxosd", "StateDirectory=paxosd",
                 "ConfigurationDirectory=paxosd", "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)
    assert re.search(r"^LimitNOFILE=\d+$", text, re.M)
