"""Peak memory of a process holding the edge-server app vs one holding a bare Flask app."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from bench.broker import running_broker

# Each child builds its app and reports its peak RSS. VmHWM, not ru_maxrss: Linux carries
# ru_maxrss over from the parent across fork and exec, VmHWM belongs to the new image.
PEAK = """
def peak_kib():
    status = open('/proc/self/status').read()
    return int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1))
"""
# The baseline imports Flask alone (bench.api would pull in PyEdge through bench.broker).
BARE = """
import re
from flask import Flask, request
app = Flask('bare')
@app.get('/api/custom-service/hello')
def hello():
    return {'message': 'Hello, ' + request.args.get('name', 'world') + '!', 'node': 'bench'}
app.test_client().get('/api/custom-service/hello')
print(peak_kib())
"""
PYEDGE = """
import re, sys, tempfile
from edge_server import create_app
app = create_app({'EDGE_MQTT_PORT': int(sys.argv[1]), 'EDGE_NODE_ID': 'bench-mem',
                  'EDGE_DATA_DIR': tempfile.mkdtemp()})
app.extensions['pyedge'].bus.wait_connected(5)
from pyedge.security import Role
token = app.extensions['pyedge.auth'].accounts.create_token('bench', Role.VIEWER)
client = app.test_client()
client.environ_base['HTTP_AUTHORIZATION'] = 'Bearer ' + token
assert client.get('/api/custom-service/hello').status_code == 200
client.get('/api/openapi.json')
print(peak_kib())
app.extensions['pyedge'].close()
"""


def peak_rss_mib(code: str, *args: str) -> float:
    """Peak RSS in MiB of a fresh interpreter running `code`."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK + code, *args], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[0]) / 1024


def run() -> dict[str, Any]:
    """Compare peak memory; the ratio is baseline / pyedge (higher is leaner)."""
    with running_broker() as port:
        baseline = peak_rss_mib(BARE)
        pyedge = peak_rss_mib(PYEDGE, str(port))
    return {
        "name": "memory: peak RSS",
        "unit": "MiB",
        "pyedge": pyedge,
        "baseline": baseline,
        "ratio": baseline / pyedge,
        "what": "edge-server with custom-service and bus vs a bare Flask app; ratio bare/pyedge",
    }
