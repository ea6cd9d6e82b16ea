"""``python -m devices.serve``: loopback by default, says that it runs any code sent to it."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from devices.loopback import LoopbackTracker
from devices.serve import build_parser


def test_binds_loopback_unless_told_otherwise():
    args = build_parser().parse_args(["--tracker", "10.0.0.5:9190", "--key", "board"])
    assert args.host == "127.0.0.1"
    assert args.tracker == ("10.0.0.5", 9190)


def test_help_warns_that_the_server_runs_any_code():
    result = subprocess.run([sys.executable, "-m", "devices.serve", "--help"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert "executes any code" in result.stdout


def test_tracker_without_key_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "devices.serve", "--tracker", "127.0.0.1:9190"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2 and "--tracker needs --key" in result.stderr


@pytest.mark.parametrize("address", ["9190", "host:", ":9190"])
def test_malformed_tracker_address_is_refused(address: str):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--tracker", address, "--key", "k"])


def test_served_processes_listen_on_loopback_only(loopback_tracker: LoopbackTracker):
    for service in (loopback_tracker.tracker, loopback_tracker.server):
        group = [psutil.Process(service.process.pid)]
        listening = {
            conn.laddr.ip
            for process in group + group[0].children(recursive=True)
            for conn in process.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        }
        assert listening == {"127.0.0.1"}, service.role
