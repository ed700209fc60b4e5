"""The embedded Redis of ``make up`` and how the launcher picks a server.

Every server here is a real ``redis-server`` on a free loopback port with its
files in the test's temporary folder; the shared server on 6379 is never used.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from titan_bus import devstack
from titan_bus.config import parse_config
from titan_bus.embedded import (
    EmbeddedRedis,
    find_redis_server,
    free_port,
    redis_answers,
    stop_stale_server,
)
from titan_bus.errors import BusConnectionError

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "config" / "redis.conf"


def _client(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def test_embedded_server_answers_with_aof_everysec(tmp_path: Path) -> None:
    """The server answers on its port with AOF on, fsync every second, in data_dir."""
    with EmbeddedRedis(tmp_path, port=free_port(), conf=CONF) as server:
        client = _client(server)
        try:
            assert client.ping()
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert Path(str(client.config_get("dir")["dir"])) == tmp_path.resolve()
        finally:
            client.close()

    assert (tmp_path / "redis.log").is_file()


def test_stop_is_clean_and_frees_the_port(tmp_path: Path) -> None:
    """stop() ends the server with exit code 0, removes its pid file, frees the port."""
    server = EmbeddedRedis(tmp_path, port=free_port(), conf=CONF)
    server.start()
    assert server.pid_file.is_file()

    code = server.stop()

    assert code == 0
    assert not server.running
    assert not server.pid_file.exists()
    assert not redis_answers(server.url, timeout_s=0.5)


def test_data_survives_stop_and_start(tmp_path: Path) -> None:
    """Stream entries written before a clean stop are there after the next start."""
    port = free_port()
    with EmbeddedRedis(tmp_path, port=port, conf=CONF) as server:
        client = _client(server)
        entry_id = client.xadd("titan:{chat.v1}:lane:normal", {"event": "one"})
        client.close()

    with EmbeddedRedis(tmp_path, port=port, conf=CONF) as server:
        client = _client(server)
        entries = client.xrange("titan:{chat.v1}:lane:normal")
        client.close()

    assert entries == [(entry_id, {b"event": b"one"})]
    assert any(tmp_path.glob("appendonly*")), "no AOF file in the data folder"


def test_without_a_conf_file_aof_is_set_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started outside the project (no config/redis.conf), AOF is still on."""
    monkeypatch.chdir(tmp_path)
    with EmbeddedRedis(tmp_path / "data", port=free_port()) as server:
        assert server.conf is None
        client = _client(server)
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        finally:
            client.close()


def test_server_left_running_on_the_data_dir_is_stopped_first(tmp_path: Path) -> None:
    """A server whose launcher died is stopped before a new one uses its AOF."""
    old_port = free_port()
    argv = [find_redis_server(), str(CONF), "--port", str(old_port)]
    argv += ["--dir", str(tmp_path), "--pidfile", str(tmp_path / "redis.pid")]
    orphan = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        old_url = f"redis://127.0.0.1:{old_port}/0"
        _wait_until(lambda: redis_answers(old_url, timeout_s=0.2), timeout_s=10)

        with EmbeddedRedis(tmp_path, port=free_port(), conf=CONF) as server:
            assert orphan.wait(timeout=10) == 0
            assert redis_answers(server.url)
    finally:
        orphan.kill()
        orphan.wait()


def test_stale_pid_of_another_program_is_left_alone(tmp_path: Path) -> None:
    """A pid file naming a process that is not redis-server is ignored."""
    other = subprocess.Popen(["sleep", "30"])
    try:
        pid_file = tmp_path / "redis.pid"
        pid_file.write_text(f"{other.pid}\n", encoding="ascii")

        assert stop_stale_server(pid_file) is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_start_failure_quotes_the_server_log(tmp_path: Path) -> None:
    """A port already taken makes start() fail with the server's own reason."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = EmbeddedRedis(tmp_path, port=taken.getsockname()[1], conf=CONF)

        with pytest.raises(BusConnectionError, match="exited with code") as info:
            server.start(timeout_s=10)

    assert "address already in use" in str(info.value).lower()
    assert not server.running


def test_choose_redis_prefers_titan_redis_url(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With TITAN_REDIS_URL set, the launcher uses that server and starts none."""
    monkeypatch.setenv("TITAN_REDIS_URL", redis_url)

    choice = devstack.choose_redis(
        parse_config({}), mode="auto", data_dir=tmp_path / "data"
    )

    assert (choice.url, choice.origin, choice.server) == (
        redis_url,
        "TITAN_REDIS_URL",
        None,
    )
    assert not (tmp_path / "data").exists()


def test_choose_redis_fails_when_the_named_server_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TITAN_REDIS_URL that does not answer is an error naming where it came from."""
    monkeypatch.setenv("TITAN_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")

    with pytest.raises(BusConnectionError, match="from TITAN_REDIS_URL"):
        devstack.choose_redis(parse_config({}), mode="auto", data_dir=tmp_path)


def test_choose_redis_starts_a_private_server_when_none_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing configured and nothing at the default address: embedded, with AOF.

    The default address is pointed at a closed port so the test never touches
    the shared server on 6379.
    """
    closed = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.delenv("TITAN_REDIS_URL", raising=False)
    monkeypatch.setattr(devstack, "DEFAULT_REDIS_URL", closed)
    config = parse_config({"redis": {"url": closed}})

    choice = devstack.choose_redis(config, mode="auto", data_dir=tmp_path, port=None)
    try:
        assert choice.server is not None
        assert choice.origin.startswith("embedded")
        assert choice.server.data_dir == (tmp_path / "redis").resolve()
        assert redis_answers(choice.url)
    finally:
        assert choice.server is not None
        choice.server.stop()


def _wait_until(check: Callable[[], bool], *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
