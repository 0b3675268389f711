"""The containers' health check: `python -m edge_server.healthcheck [http|mqtt]`.

`http` (the default) asks this container's own `/api/health` and is healthy on 200 only
(the bus connected and every service ok). `mqtt` is healthy once this container's broker
listens on its port. Exit 0 healthy, 1 not; one line on stdout says why (docker inspect
shows it). It imports only what it needs, since Docker runs it every few seconds. Run it
with `python -I`: the mqtt container runs it as root, in a directory its broker writes.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_S = 5.0
TRUE = ("1", "true", "yes", "on")


def check_http() -> tuple[bool, str]:
    """GET /api/health on this container's own port; healthy on 200."""
    port = os.environ.get("EDGE_HTTP_PORT", "8000")
    tls = os.environ.get("EDGE_TLS", "").strip().lower() in TRUE
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/api/health"
    # Our own loopback port: the certificate names the device, not 127.0.0.1.
    context = ssl._create_unverified_context() if tls else None
    # No environment proxy: this is a call to ourselves.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=TIMEOUT_S) as answer:
            return answer.status == 200, f"{url}: {answer.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code} {exc.read(300).decode(errors='replace')}"
    except OSError as exc:
        return False, f"{url}: {exc}"


def listening(port: int, tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> bool:
    """True when a socket of this network namespace listens on TCP `port`."""
    for table in tables:
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def check_mqtt() -> tuple[bool, str]:
    """The broker listens on EDGE_MQTT_PORT in this container.

    Mosquitto opens its listeners only once it has read its configuration, password file
    and ACL, and exits when one is unusable. A login would prove no more, and Mosquitto
    would log three lines for every check.
    """
    port = int(os.environ.get("EDGE_MQTT_PORT", "1883"))
    if listening(port):
        return True, f"listening on port {port}"
    return False, f"nothing listens on port {port}"


def main(argv: list[str]) -> int:
    """Run the check named by argv[0] (http by default); 0 when healthy."""
    kind = argv[0] if argv else "http"
    checks = {"http": check_http, "mqtt": check_mqtt}
    if kind not in checks or len(argv) > 1:
        sys.stderr.write("usage: python -m edge_server.healthcheck [http|mqtt]\n")
        return 2
    healthy, why = checks[kind]()
    sys.stdout.write(f"{'healthy' if healthy else 'unhealthy'}: {why}\n")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
