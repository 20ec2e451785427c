"""Is the API's port free to listen on, and if not, who holds it.

After a hard crash (the launcher's process group SIGKILLed, `ray stop --force`), the processes that
listened on the API port can take a moment to die, and Serve's direct ingress, which pins its
replica to that one port, gives up on the first failed bind. So ``raysquad up`` waits for the port
before it starts anything, and says in one line who holds it when it does not come free.
"""

from __future__ import annotations

import errno
import socket
import time

import psutil

#: How long ``raysquad up`` waits for a port held by processes that are going away.
PORT_WAIT_S = 30.0


def bindable(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (with SO_REUSEADDR, as uvicorn binds:
    connections of a dead server in TIME_WAIT do not count)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def holder(port: int) -> str:
    """Who listens on ``port``: "pid N (name)", or "another process" when that cannot be read."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port \
                    and conn.pid:
                try:
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                except psutil.Error:
                    return f"pid {conn.pid}"
    except psutil.Error:
        pass
    return "another process"


def wait_until_bindable(host: str, port: int, timeout_s: float = PORT_WAIT_S) -> str | None:
    """None once ``host:port`` can be listened on; after ``timeout_s``, why it cannot."""
    deadline = time.monotonic() + timeout_s
    while not bindable(host, port):
        if time.monotonic() > deadline:
            return (f"port {port} on {host} is still in use by {holder(port)} after "
                    f"{timeout_s:.0f}s: stop it, or pick another port with --port")
        time.sleep(0.2)
    return None
