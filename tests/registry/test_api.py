"""The registry HTTP API as a real server process on 127.0.0.1: every seed curl example,
every route and error case, and durability across kill -9."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from .seed_docs import BLOCK, CLUSTER, CONTROLLER, VDAG, fresh

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, db, *extra: str) -> None:
        for _ in range(3):  # the picked port may be taken before the server binds it
            if self._start(db, extra):
                return
        raise RuntimeError("the registry could not bind a free port in 3 tries")

    def _start(self, db, extra) -> bool:
        import subprocess
        import sys
        import time

        self.port = free_port()
        self.p = subprocess.Popen(
            [sys.executable, "-m", "registry_server", "--port", str(self.port), "--db", str(db),
             *extra],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                err = self.p.stderr.read()
                if "address already in use" in err.lower():
                    return False
                raise RuntimeError(f"registry did not start: {err}")
            try:
                if self.call("GET", "/health")[0] == 200:
                    return True
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("registry did not start in 15 s")

    def call(self, method: str, path: str, body=None, raw: bytes | None = None):
        data = raw
        if raw is None and body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        self.p.wait(10)


MONGO_URL = os.environ.get("AIOS_MONGO_URL", "")


@pytest.fixture(params=["embedded", "mongodb"])
def server(request, tmp_path):
    """The behaviour suite runs on the embedded store, and on MongoDB when AIOS_MONGO_URL
    names one (no MongoDB server can run on the development machines)."""
    extra: tuple[str, ...] = ()
    if request.param == "mongodb":
        if not MONGO_URL:
            pytest.skip("set AIOS_MONGO_URL=mongodb://... to run the suite on MongoDB")
        extra = ("--mongo-url", MONGO_URL, "--mongo-db", f"aios_test_{uuid.uuid4().hex[:12]}")
    srv = Server(tmp_path / "registry.sqlite3", *extra)
    yield srv
    srv.stop()
    if request.param == "mongodb":
        from pymongo import MongoClient

        MongoClient(MONGO_URL).drop_database(extra[-1])


def test_seed_curl_examples(server):
    call = server.call
    assert call("POST", "/clusters", fresh(CLUSTER))[0] == 201
    status, body = call("GET", "/clusters/cluster-west-vision-001")
    assert status == 200 and body["data"]["clusterMetadata"]["miscContactInfo"]["slack"]
    status, body = call("PUT", "/clusters/cluster-west-vision-001",
                        {"$set": {"tags": ["gpu", "updated"], "reputation": 97}})  # fmt: skip
    assert status == 200 and body["data"]["tags"] == ["gpu", "updated"]
    assert body["data"]["reputation"] == 97
    seed_query = {"gpus.count": {"$gte": 2}, "clusterMetadata.countries": {"$in": ["USA"]}}
    status, body = call("POST", "/clusters/query", seed_query)
    assert status == 200 and [d["id"] for d in body["data"]] == ["cluster-west-vision-001"]
    assert call("DELETE", "/clusters/cluster-west-vision-001")[0] == 200
    assert call("GET", "/clusters/cluster-west-vision-001")[0] == 404

    block = fresh(BLOCK)
    block["cluster"] = {"reputation": 95}
    assert call("POST", "/blocks", block)[0] == 201
    assert call("GET", "/blocks")[1]["data"][0]["id"] == "block-object-detector-001"
    assert call("GET", "/blocks/block-object-detector-001")[0] == 200
    status, body = call("PUT", "/blocks/block-object-detector-001", {"$set": {
        "blockMetadata.description": "Updated description for object detection block",
        "minInstances": 2}})  # fmt: skip
    assert status == 200 and body["data"]["minInstances"] == 2
    assert body["data"]["blockMetadata"]["description"].startswith("Updated")
    status, body = call("POST", "/blocks/query", {
        "query": {"cluster.reputation": {"$gt": 90},
                  "policies.autoscaler.policyRuleURI": {"$ne": ""}},
        "options": {"sort": {"id": 1}, "limit": 10}})  # fmt: skip
    assert status == 200 and len(body["data"]) == 1
    assert call("DELETE", "/blocks/block-object-detector-001")[0] == 200

    status, body = call("POST", "/vdag", fresh(VDAG))
    assert status == 201 and body["data"]["vdagURI"] == "sample-vdag:1.0-stable"
    status, body = call("POST", "/vdags", {"status": "pending", "metadata.owner": "team-ml"})
    assert status == 200 and len(body["data"]) == 1
    status, body = call("PUT", "/vdag/sample-vdag:1.0-stable",
                        {"$set": {"status": "active", "metadata.owner": "team-ml"}})  # fmt: skip
    assert status == 200 and body["data"]["status"] == "active"

    assert call("POST", "/vdag-controller", fresh(CONTROLLER))[0] == 201
    assert call("GET", "/vdag-controller/controller-123")[0] == 200
    change = {"metadata.owner": "team-alpha", "public_url": "https://controller.example.com"}
    status, body = call("PUT", "/vdag-controller/controller-123", {"$set": change})
    assert status == 200 and body["data"]["public_url"] == "https://controller.example.com"
    status, body = call("POST", "/vdag-controllers", {"cluster_id": "cluster-west-1",
                                                       "metadata.owner": "team-alpha"})  # fmt: skip
    assert status == 200 and len(body["data"]) == 1
    status, body = call("GET", "/vdag-controllers/by-vdag-uri/sample-vdag:1.0-stable")
    assert status == 200 and body["data"][0]["vdag_controller_id"] == "controller-123"
    assert call("DELETE", "/vdag-controller/controller-123")[0] == 200
    assert call("DELETE", "/vdag/sample-vdag:1.0-stable")[0] == 200


def test_errors_are_clear_and_never_500(server):
    call = server.call
    assert call("POST", "/clusters", fresh(CLUSTER))[0] == 201
    cases = [
        (("POST", "/clusters", fresh(CLUSTER)), 409, "already exists"),
        (("GET", "/clusters/nope"), 404, "no document"),
        (("PUT", "/clusters/nope", {"$set": {"a": 1}}), 404, "no document"),
        (("DELETE", "/clusters/nope"), 404, "no document"),
        (("POST", "/clusters", {"id": "x"}), 400, "invalid clusters document"),
        (("POST", "/clusters", [1, 2]), 400, "JSON object"),
        (("POST", "/clusters/query", {"$where": "1"}), 400, "executes code"),
        (("POST", "/clusters/query", {"a": {"$bogus": 1}}), 400, "unknown operator"),
        (("POST", "/clusters/query", {"query": {}, "options": {"limit": -1}}), 400, "limit"),
        (("POST", "/clusters/query", {"query": {}, "options": {"sort": {"a": 2}}}), 400, "sort"),
        (("PUT", "/clusters/cluster-west-vision-001", {"$set": {"id": "other"}}), 400,
         "cannot change"),
        (("PUT", "/clusters/cluster-west-vision-001", {"$unset": {"status": ""}}), 400,
         "invalid clusters document"),
        (("PUT", "/clusters/cluster-west-vision-001", {"$inc": {"status": 1}}), 400,
         "needs a number"),
        (("POST", "/vdag-controller", fresh(CONTROLLER)), 400, "no such vDAG"),
        (("GET", "/clusters?limit=x"), 400, "integer"),
    ]  # fmt: skip
    for args, status, message in cases:
        got_status, body = call(*args)
        assert (got_status, body["success"]) == (status, False), (args, body)
        assert message in body["message"], (args, body)
    status, body = call("POST", "/clusters/query", raw=b"{not json")
    assert status == 400 and "malformed JSON" in body["message"]
    status, body = call("POST", "/clusters", raw=b"")
    assert status == 400
    # Absurd nesting: JSON too deep to parse, and a filter too deep to compile.
    status, body = call("POST", "/clusters/query", raw=b'{"a": ' * 5000 + b"1" + b"}" * 5000)
    assert status == 400 and "nested too deeply" in body["message"]
    for depth in (300, 480, 2000):
        deep = b'{"$and": [' * depth + b'{"status": "live"}' + b"]}" * depth
        status, body = call("POST", "/clusters/query", raw=deep)
        assert status in (200, 400), (depth, body)  # answered, or refused: never a 500
        assert status == 200 or "nested too deeply" in body["message"]
    # A failed update changed nothing.
    assert call("GET", "/clusters/cluster-west-vision-001")[1]["data"]["status"] == "live"


def test_unknown_fields_are_kept_and_bare_documents_mean_set(server):
    cluster = fresh(CLUSTER)
    cluster["custom"] = {"anything": [1, 2]}
    assert server.call("POST", "/clusters", cluster)[0] == 201
    status, body = server.call("PUT", "/clusters/cluster-west-vision-001", {"status": "down"})
    assert status == 200 and body["data"]["status"] == "down"
    assert body["data"]["custom"] == {"anything": [1, 2]}


def test_options_sort_skip_limit_projection(server):
    for i in range(5):
        block = fresh(BLOCK)
        block["id"] = f"b-{i}"
        block["minInstances"] = i % 3
        assert server.call("POST", "/blocks", block)[0] == 201
    status, body = server.call("POST", "/blocks/query", {"query": {}, "options": {
        "sort": {"minInstances": -1, "id": 1}, "skip": 1, "limit": 3,
        "projection": {"id": 1, "minInstances": 1}}})  # fmt: skip
    assert status == 200
    # minInstances desc, id asc: b-2(2) b-1(1) b-4(1) b-0(0) b-3(0); skip 1, limit 3
    assert body["data"] == [
        {"id": "b-1", "minInstances": 1},
        {"id": "b-4", "minInstances": 1},
        {"id": "b-0", "minInstances": 0},
    ]
    status, body = server.call("GET", "/blocks?skip=3&limit=1")
    assert [d["id"] for d in body["data"]] == ["b-3"]


def test_acknowledged_writes_survive_kill_9(tmp_path):
    db = tmp_path / "registry.sqlite3"
    srv = Server(db)
    for i in range(50):
        block = fresh(BLOCK)
        block["id"] = f"durable-{i}"
        assert srv.call("POST", "/blocks", block)[0] == 201
    assert srv.call("PUT", "/blocks/durable-7", {"$set": {"minInstances": 4}})[0] == 200
    assert srv.call("DELETE", "/blocks/durable-9")[0] == 200
    srv.stop(signal.SIGKILL)
    again = Server(db)
    try:
        ids = {d["id"] for d in again.call("GET", "/blocks?limit=1000")[1]["data"]}
        assert ids == {f"durable-{i}" for i in range(50)} - {"durable-9"}
        assert again.call("GET", "/blocks/durable-7")[1]["data"]["minInstances"] == 4
    finally:
        again.stop()


def _raw_request(port: int, method: str, path: str, body: bytes, delay: float) -> tuple:
    """Send the headers now and the body ``delay`` seconds later; (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
        sock.sendall(head.encode())
        time.sleep(delay)
        sock.sendall(body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def test_a_slow_body_does_not_lose_racing_updates(server):
    """Issue 13 (1): a PUT whose body arrives 0.3 s after its headers, racing 5 fast $inc
    calls on the same document: every acknowledged increment is kept."""
    block = fresh(BLOCK)
    block["hits"] = 0
    assert server.call("POST", "/blocks", block)[0] == 201
    path = f"/blocks/{block['id']}"
    result = {}

    def slow():
        body = json.dumps({"$inc": {"hits": 1}}).encode()
        result["slow"] = _raw_request(server.port, "PUT", path, body, delay=0.3)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.05)  # the slow request's headers are in
    for _ in range(5):
        status, body = server.call("PUT", path, {"$inc": {"hits": 1}})
        assert status == 200, body
    thread.join(10)
    assert result["slow"][0] == 200, result
    assert server.call("GET", path)[1]["data"]["hits"] == 6


def test_concurrent_updates_of_one_document_all_apply(server):
    """Many clients at once, each $inc and $push on one document: none is lost."""
    block = fresh(BLOCK)
    assert server.call("POST", "/blocks", block)[0] == 201
    path = f"/blocks/{block['id']}"
    errors = []

    def client(n):
        for i in range(10):
            status, body = server.call("PUT", path, {"$inc": {"hits": 1},
                                                     "$push": {"log": f"{n}-{i}"}})  # fmt: skip
            if status != 200:
                errors.append(body)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    doc = server.call("GET", path)[1]["data"]
    assert doc["hits"] == 80 and sorted(doc["log"]) == sorted(
        f"{n}-{i}" for n in range(8) for i in range(10)
    )


def test_a_second_server_on_one_store_file_refuses_to_start(tmp_path):
    """Issue 13 (2): two servers on one --db file would each see only their own writes;
    the second one stops at once with one clear line and a non-zero exit."""
    import subprocess
    import sys

    db = tmp_path / "registry.sqlite3"
    first = Server(db)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "registry_server", "--port", str(free_port()),
             "--db", str(db)],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another registry server" in lines[0], lines
        assert "Traceback" not in second.stderr
        assert first.call("GET", "/health")[0] == 200  # the first one is untouched
    finally:
        first.stop()
    again = Server(db)  # the lock went with the first server
    again.stop()
