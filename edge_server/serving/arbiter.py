"""The gunicorn arbiter of `pyedge run` and `pyedge serve`, in a lean process of its own.

Checking the settings needs every service's code, Flask and the rest (~35 MB once
imported); the arbiter only forks and watches the worker. So the command checks
everything, takes its locks, starts the broker, and then execs this module with the same
pid: it imports gunicorn and the standard library alone, and the worker it forks imports
the app (gunicorn calls `load()` in the worker when it does not preload). Had the arbiter
imported the app's modules, the worker's writes to their objects (reference counts, the
garbage collector's marks) would copy most of those pages into the worker anyway.

The plan (gunicorn's options, the app's settings, the broker's pid) comes through an
inherited pipe, so that the broker password in it never shows in the command line.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn, TypedDict

from gunicorn.app.base import BaseApplication

logger = logging.getLogger(__name__)

# The command line's log format (edge_server.cli), which the arbiter and worker keep.
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# A worker's many threads (EDGE_HTTP_THREADS + EDGE_SSE_CLIENTS) would each get a malloc
# arena of their own (up to 8 per core), each keeping freed memory; two is enough for
# threads that mostly wait. The user's own value wins.
MALLOC_ARENAS = "2"
BROKER_STOP_S = 5.0


class Plan(TypedDict):
    """What the command hands the arbiter: all checked before the exec."""

    options: dict[str, Any]  # gunicorn settings
    overrides: dict[str, Any]  # create_app's settings
    log_level: str
    log_format: str
    broker_pid: int | None  # the embedded Mosquitto, a child to stop on the way out
    stopped: str  # logged when the arbiter is done


def exec_arbiter(plan: Plan) -> NoReturn:
    """Replace this process with the lean arbiter serving `plan` (OSError if it cannot)."""
    data = pickle.dumps(plan)
    read_end, write_end = os.pipe()
    # The plan is a few hundred bytes: it fits the pipe's buffer, nobody reads it yet.
    os.write(write_end, data)
    os.close(write_end)
    os.set_inheritable(read_end, True)
    environ = dict(os.environ)
    environ.setdefault("MALLOC_ARENA_MAX", MALLOC_ARENAS)
    # The command line stays the user's (ps, pgrep), after the plan's file descriptor.
    # -P: the current directory must not shadow the installed packages.
    args = [sys.executable, "-P", "-m", "edge_server.serving", str(read_end), *sys.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, args, environ)
    finally:
        os.close(read_end)


def close_services(app: Any) -> None:
    """Stop the app's operations and say offline on the bus (idempotent)."""
    host = app.extensions.get("pyedge")
    if host is not None:
        host.close()


class EdgeServerApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn serving create_app(overrides) with one gthread worker."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        super().__init__()

    def load_config(self) -> None:
        """The plan's settings, and the hooks that stop the services with the worker."""
        options = {
            **self.plan["options"],
            "post_worker_init": _post_worker_init,
            "worker_exit": _worker_exit,
            "pre_fork": _pre_fork,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Create the app inside the worker, where its threads will live."""
        from edge_server.app import create_app

        return create_app(self.plan["overrides"])


def _pre_fork(server: Any, worker: Any) -> None:
    # The arbiter's objects (gunicorn, the standard library) stay shared with the worker
    # only while nothing writes to them: frozen, the worker's collector never marks them.
    gc.collect()
    gc.freeze()


def _post_worker_init(worker: Any) -> None:
    # On SIGTERM, end the sessions right away so that long-polling `wait` requests return
    # and gunicorn's graceful shutdown does not sit out its timeout.
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        threading.Thread(target=close_services, args=(worker.wsgi,), daemon=True).start()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        close_services(app)


def stop_broker(pid: int, timeout: float = BROKER_STOP_S) -> None:
    """Stop the broker started before the exec (it saves its persistence file on SIGTERM)."""
    # gunicorn's SIGCHLD handler reaps any child; without it, a broker that already died
    # stays ours (a zombie) until waited for, so its pid cannot be someone else's.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    deadline = time.monotonic() + timeout
    try:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        os.kill(pid, signal.SIGTERM)
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                logger.warning("Mosquitto did not stop within %.0f s; killing it", timeout)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.05)
    except ChildProcessError:  # reaped by gunicorn while it ran: it had already exited
        return


def serve(plan: Plan) -> None:
    """Run the arbiter until SIGTERM or Ctrl-C, then stop the broker."""
    owner = os.getpid()
    try:
        EdgeServerApplication(plan).run()
    finally:
        # The worker leaves through here too; only the arbiter owns the broker.
        if os.getpid() == owner:
            if plan["broker_pid"] is not None:
                stop_broker(plan["broker_pid"])
            logger.info("%s", plan["stopped"])


def main(argv: Sequence[str]) -> None:
    """Entry point after the exec: argv[1] is the plan's file descriptor."""
    with os.fdopen(int(argv[1]), "rb") as pipe:
        plan: Plan = pickle.load(pipe)
    logging.basicConfig(level=plan["log_level"], format=plan["log_format"])
    serve(plan)
