"""schemathesis fuzzes the registry API from its own /openapi.json: whatever it sends,
the server never answers 5xx and always answers JSON."""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from registry_server.openapi import build_spec  # noqa: E402

from .test_api import Server  # noqa: E402

schema = schemathesis.openapi.from_dict(build_spec())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("fuzz") / "registry.sqlite3")
    yield srv
    srv.stop()


def test_openapi_document_is_served(server):
    status, body = server.call("GET", "/openapi.json")
    assert status == 200 and body["openapi"].startswith("3.")
    assert "/clusters/query" in body["paths"]


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("AIOS_FUZZ_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_gets_a_server_error(case, server):
    response = case.call(base_url=f"http://127.0.0.1:{server.port}")
    case.validate_response(response, checks=[not_a_server_error])
    body = response.json()  # always JSON, errors included
    assert isinstance(body, dict) and isinstance(body.get("success"), bool)
