"""The containers' health check: `python -m edge_server.healthcheck [http|mqtt]`.

`http` (the default) asks this container's own `/api/health` and is healthy on 200 only
(the bus connected and every service ok). `mqtt` logs in to this container's broker with
the read-only `subscriber` account from the broker's data dir: healthy once Mosquitto
accepts a login, which proves it read its password file. Exit 0 healthy, 1 not; one line
on stdout says why (docker inspect shows it). It imports only what it needs, since Docker
runs it every few seconds.
"""

from __future__ import annotations

import json
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


def check_mqtt() -> tuple[bool, str]:
    """Log in to the broker on this container's port as `subscriber`."""
    import paho.mqtt.client as mqtt  # only here: the HTTP check must stay light

    data_dir = Path(os.environ.get("EDGE_DATA_DIR", "data"))
    port = int(os.environ.get("EDGE_MQTT_PORT", "1883"))
    try:
        store = json.loads((data_dir / "mosquitto" / "accounts.json").read_text())
        password = store["passwords"]["subscriber"]
    except (OSError, ValueError, KeyError) as exc:
        return False, f"no subscriber account in {data_dir / 'mosquitto'}: {exc}"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
    client.username_pw_set("subscriber", password)
    try:
        client.connect("127.0.0.1", port, keepalive=10)
    except OSError as exc:
        return False, f"127.0.0.1:{port}: {exc}"
    outcome: list[str] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: outcome.append(str(reason))
    client.loop(timeout=TIMEOUT_S)
    client.disconnect()
    if outcome == ["Success"]:
        return True, f"127.0.0.1:{port}: login accepted"
    return False, f"127.0.0.1:{port}: {outcome[0] if outcome else 'no CONNACK'}"


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
