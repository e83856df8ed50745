"""Whether the browser tests run, skip or fail: ``browser_servers.check_chromium`` and the Makefile's
``LIFTCAM_REQUIRE_BROWSER`` (required where make can install Chromium, i.e. as root with apt-get: CI)."""

import os
import shutil
import subprocess

import pytest
from browser_servers import REPO, REQUIRE_BROWSER, check_chromium


@pytest.fixture
def executable(tmp_path):
    path = tmp_path / "chromium"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_a_present_chromium_runs_the_tests(executable):
    check_chromium(executable, {REQUIRE_BROWSER: "1"})  # returns: neither skip nor fail
    check_chromium(executable, {})


def test_a_missing_chromium_skips_with_what_to_install(tmp_path, executable):
    executable.chmod(0o644)  # there, but not executable: as good as missing
    for path in (tmp_path / "absent", executable):
        with pytest.raises(pytest.skip.Exception, match=rf"{path} is missing: install Debian's chromium package "
                                                        r"\(as root: apt-get install -y chromium\)"):
            check_chromium(path, {})
        with pytest.raises(pytest.skip.Exception):
            check_chromium(path, {REQUIRE_BROWSER: "0"})


def test_a_missing_chromium_fails_where_required(tmp_path):
    with pytest.raises(pytest.fail.Exception, match=rf"is missing.*{REQUIRE_BROWSER}=1 requires them"):
        check_chromium(tmp_path / "absent", {REQUIRE_BROWSER: "1"})


def dry_run(*arguments: str) -> str:
    """What ``make test`` would run (``make -n``: nothing is run), from a clean environment."""
    environ = {k: v for k, v in os.environ.items() if k not in (REQUIRE_BROWSER, "MAKEFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "-n", "test", *arguments], cwd=REPO, env=environ, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_requires_the_browser_where_it_can_install_it(tmp_path):
    absent = f"CHROMIUM={tmp_path / 'chromium'}"
    installer = dry_run(absent, "CAN_INSTALL_CHROMIUM=yes")  # root with apt-get (CI)
    assert "apt-get install -y chromium" in installer and "FAIL (LIFTCAM_REQUIRE_BROWSER=1)" in installer
    assert f"{REQUIRE_BROWSER}=1 .venv/bin/python -m pytest" in installer
    other = dry_run(absent, "CAN_INSTALL_CHROMIUM=")  # any other user
    assert "DEBIAN_FRONTEND=noninteractive apt-get" not in other and "be skipped" in other
    assert f"{REQUIRE_BROWSER}=0 .venv/bin/python -m pytest" in other
    assert f"{REQUIRE_BROWSER}=1 .venv/bin/python" in dry_run(absent, "CAN_INSTALL_CHROMIUM=", f"{REQUIRE_BROWSER}=1")
    # and the Makefile's own decision: root with apt-get requires the browser tests
    required = os.geteuid() == 0 and shutil.which("apt-get") is not None
    assert f"{REQUIRE_BROWSER}={int(required)} .venv/bin/python -m pytest" in dry_run(absent)
