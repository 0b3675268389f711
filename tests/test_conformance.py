"""The OpenAPI document says exactly what the API accepts (issue 13).

schemathesis 4 runs every check (`--checks all`) as an admin against a real `pyedge run`
with every installed service and a real Docker engine: requests valid by the document
must be accepted, invalid ones refused, and every answer must match the document. The
run is bounded (examples per operation, a seed, deterministic generation); its settings
are in tests/conformance/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.containers.conftest import DEFAULT_NETWORKS
from tests.docker_engine import DockerEngine
from tests.test_run import Node, start_node, stop_node, wait_ready

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parent.parent
CONFORMANCE = REPO / "tests" / "conformance"
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
# Streams that never end by themselves: schemathesis reads a whole answer, so it would
# only wait for its time-out. Their own tests cover them (tests/containers/test_streams.py,
# tests/dashboard).
STREAMS = r"/stream$|^/api/events$"
MAX_EXAMPLES = 10
SEED = 13
# The token schemathesis may revoke (see tests/conformance/schemathesis.toml).
SPARE_TOKEN = "conformance-spare"
RUN_TIMEOUT_S = 540
# Every operation of the solo node but the streams is tested (78 of 81 when written).
MIN_OPERATIONS = 70


@pytest.fixture
def engine() -> Iterator[DockerEngine]:
    """A dockerd of this test's own: the run prunes images, makes networks and volumes."""
    engine = DockerEngine()
    try:
        engine.start()
        engine.build_busybox()
        yield engine
        remove_networks(engine)
    finally:
        engine.remove()


def remove_networks(engine: DockerEngine) -> None:
    """Remove the networks the run made: a stopped dockerd leaves their bridges on the
    host, and enough of them use up the engine's address pools for every other engine."""
    client = engine.client()
    try:
        for container in client.containers.list(all=True):
            container.remove(force=True)
        for network in client.networks.list():
            if network.name not in DEFAULT_NETWORKS:
                network.remove()
    finally:
        client.close()


@pytest.fixture
def node(tmp_path: Path, engine: DockerEngine) -> Iterator[Node]:
    """`pyedge run` with every installed service on the test's engine."""
    node = start_node(tmp_path, DOCKER_HOST=engine.url)
    log = (tmp_path / "pyedge.log").open("w")

    def drain() -> None:
        # Read its output all along: a full pipe would block its logging threads.
        for line in node.process.stdout:  # type: ignore[union-attr]
            log.write(line)

    reader = threading.Thread(target=drain, name="pyedge-log", daemon=True)
    reader.start()
    try:
        wait_ready(node, timeout=30)
        yield node
    finally:
        stop_node(node)
        reader.join(10)
        log.close()


def schemathesis_run(node: Node) -> subprocess.CompletedProcess[str]:
    """`schemathesis run` against the node's document, as an admin."""
    status, _ = node.call("/api/auth/tokens", "POST", {"name": SPARE_TOKEN, "role": "viewer"})
    assert status == 201
    env: dict[str, Any] = {
        **os.environ,
        "PYEDGE_SPARE_TOKEN": SPARE_TOKEN,
        "SCHEMATHESIS_HOOKS": "tests.conformance.hooks",
        "PYTHONPATH": str(REPO),
    }
    command = [
        SCHEMATHESIS,
        "--config-file", str(CONFORMANCE / "schemathesis.toml"),
        "run", node.url("/api/openapi.json"),
        "--header", f"Authorization: Bearer {node.token}",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--generation-deterministic",
        "--request-timeout", "10",
        # Generation health checks, not API checks: an app spec (services keyed by a
        # pattern, each a container spec) takes hypothesis many drafts and much time.
        "--suppress-health-check", "filter_too_much,too_slow",
        "--exclude-path-regex", STREAMS,
        "--no-color",
    ]  # fmt: skip
    return subprocess.run(
        # In the test's directory: schemathesis keeps a cache in .schemathesis/ there.
        command,
        cwd=node.data_dir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def test_schemathesis_finds_no_failure(node: Node) -> None:
    result = schemathesis_run(node)
    report = result.stdout + result.stderr
    assert result.returncode == 0, f"schemathesis found failures:\n{report[-30000:]}"
    tested = re.search(r"Tested: (\d+)", report)
    assert tested and int(tested[1]) >= MIN_OPERATIONS, report[-5000:]


def test_a_missing_required_body_is_refused(client: FlaskClient) -> None:
    response = client.put("/api/custom-service/heartbeat")
    assert response.status_code == 422
    assert response.json["errors"] == {"json": {"_schema": ["a JSON body is required"]}}
    response = client.put("/api/custom-service/heartbeat", data="x", content_type="text/plain")
    assert response.status_code == 415


def test_an_operation_whose_params_all_have_defaults_starts_without_a_body(
    client: FlaskClient,
) -> None:
    spec = client.get("/api/openapi.json").json
    paths = spec["paths"]
    assert paths["/api/custom-service/ops/heartbeat/start"]["post"]["requestBody"]["required"] is (
        False
    )
    assert paths["/api/custom-service/ops/sleep/start"]["post"]["requestBody"]["required"] is True
    assert client.post("/api/custom-service/ops/heartbeat/start").status_code == 202
    assert client.post("/api/custom-service/ops/heartbeat/stop").status_code == 200


def test_the_document_declares_what_the_code_enforces(client: FlaskClient) -> None:
    schemas = client.get("/api/openapi.json").json["components"]["schemas"]
    seconds = schemas["SleepParams"]["properties"]["seconds"]
    assert (seconds["minimum"], seconds["exclusiveMinimum"]) == (0, True)
    assert client.post("/api/custom-service/ops/sleep/start", json={"seconds": 0}).status_code == (
        422
    )
    interval = schemas["HeartbeatParams"]["properties"]["interval"]
    assert interval["maximum"] == 86400
    name = schemas["TokenCreate"]["properties"]["name"]
    assert name["pattern"] == "^[A-Za-z0-9._@-]{1,64}$"
    refused = client.post("/api/auth/tokens", json={"name": "a b", "role": "viewer"})
    assert refused.status_code == 422
