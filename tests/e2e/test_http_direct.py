"""Serve's direct path on the shared server: the Ingress replica itself listens on the API's port
(no proxy process on the request path), and Serve's proxy, which 2.60 starts anyway, is elsewhere."""

from __future__ import annotations

from urllib.parse import urlparse

import psutil

from tests.e2e.live import SERVER_PIDS, Api


def listener_of(port: int) -> psutil.Process:
    (conn,) = [c for c in psutil.net_connections(kind="tcp")
               if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
    assert conn.pid is not None
    return psutil.Process(conn.pid)


def test_the_api_port_is_served_by_the_ingress_replica_not_the_proxy(api: Api) -> None:
    port = urlparse(api.url).port
    assert port is not None

    process = listener_of(port)

    name = " ".join(process.cmdline())
    assert "ServeReplica" in name and "Ingress" in name, name
    # The process belongs to this server (it runs under its `raysquad up`).
    up = psutil.Process(SERVER_PIDS[api.url])
    assert process.pid in {p.pid for p in up.children(recursive=True)}
    proxies = [p for p in up.children(recursive=True) if "ProxyActor" in command_line(p)]
    for proxy in proxies:
        ports = {c.laddr.port for c in proxy.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr}
        assert port not in ports


def command_line(process: psutil.Process) -> str:
    """A process's command line; empty for one that ended (or is a zombie) since it was listed."""
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ""
