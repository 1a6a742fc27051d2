"""Issue 23 item 8 and issue 24 item 6: ``registry serve`` as a real process. A store is
locked by its real file (a symlink or a hard link to a store in use is refused); a busy
port, a port out of range, a file that is not a registry database, a truncated one and
one holding broken JSON rows each give one line on stderr, exit 2, and leave no file
behind."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys

import pytest

from registry_server.schemas import REGISTRIES
from registry_server.store import EmbeddedStore

from .seed_docs import CLUSTER, fresh
from .test_api import ROOT, Server


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "registry_server", *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def one_line(out: subprocess.CompletedProcess, *words: str) -> None:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stdout == "", out.stdout  # it never announced that it serves
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("how", ["symlink", "hardlink", "relative"])
def test_a_second_server_through_another_name_is_refused(tmp_path, how):
    db = tmp_path / "registry.sqlite3"
    first = Server(db)
    try:
        assert first.call("POST", "/clusters", fresh(CLUSTER))[0] == 201
        other = tmp_path / "other-name.sqlite3"
        if how == "symlink":
            other.symlink_to(db)
        elif how == "hardlink":
            os.link(db, other)
        else:
            other = tmp_path / "sub" / ".." / "registry.sqlite3"
            (tmp_path / "sub").mkdir()
        out = serve("--port", "0", "--db", str(other))
        one_line(out, "in use by another registry server")
        assert first.call("PUT", f"/clusters/{CLUSTER['id']}", {"$inc": {"n": 1}})[0] == 200
    finally:
        first.stop()
    assert not (tmp_path / "registry.sqlite3.lock").exists()  # the lock is the file itself


def test_the_lock_is_released_when_the_server_stops(tmp_path):
    db = tmp_path / "r.sqlite3"
    first = Server(db)
    assert first.call("POST", "/clusters", fresh(CLUSTER))[0] == 201
    first.stop()
    assert first.p.returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == ["r.sqlite3"]  # no -wal, -shm, .lock
    second = Server(db)  # starts: the first one's lock went with it
    assert second.call("GET", f"/clusters/{CLUSTER['id']}")[0] == 200
    second.stop()


def test_a_busy_port_is_one_line_and_leaves_nothing(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = serve("--port", str(port), "--db", str(tmp_path / "r.sqlite3"))
    one_line(out, "address already in use", str(port))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("port", ["99999", "65536", "-1"])
def test_a_port_out_of_range_is_one_line(tmp_path, port):
    out = serve("--port", port, "--db", str(tmp_path / "r.sqlite3"))
    one_line(out, "--port must be 0-65535")
    assert list(tmp_path.iterdir()) == []


def _store_with(path, n: int = 50) -> None:
    store = EmbeddedStore(path, list(REGISTRIES))
    for i in range(n):
        store.insert("clusters", f"c{i}", {"id": f"c{i}", "pad": "x" * 2000})
    store.close()


def test_a_file_that_is_not_a_database_is_one_line(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_bytes(os.urandom(4096))
    out = serve("--port", "0", "--db", str(bad))
    one_line(out, "is not a registry database or is damaged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_truncated_store_is_one_line(tmp_path):
    db = tmp_path / "r.sqlite3"
    _store_with(db)
    os.truncate(db, os.path.getsize(db) // 2)
    out = serve("--port", "0", "--db", str(db))
    one_line(out, "is not a registry database or is damaged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.sqlite3"]


def test_rows_with_broken_json_are_counted_and_refused(tmp_path):
    db = tmp_path / "r.sqlite3"
    _store_with(db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE clusters SET doc = '{\"id\": \"c3\", ' WHERE id = 'c3'")
        conn.execute("UPDATE clusters SET doc = '[1, 2]' WHERE id = 'c7'")
    conn.close()
    out = serve("--port", "0", "--db", str(db))
    one_line(out, "2 document(s) whose JSON is broken", "'c3'", "'c7'")
    with sqlite3.connect(db) as conn:  # the command the message suggests repairs it
        conn.execute("DELETE FROM clusters WHERE NOT json_valid(doc) OR json_type(doc) != 'object'")
    conn.close()
    server = Server(db)
    try:
        assert server.call("GET", "/health")[1]["data"]["counts"]["clusters"] == 48
    finally:
        server.stop()
