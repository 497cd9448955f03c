"""One thread driving many devices' MQTT links through epoll (the fleet simulator's).

Lives with the simulator, not in ``edge_runtime``: a real device has one link and runs
paho's own network thread; only a process that simulates a thousand devices needs this.
"""

from __future__ import annotations

import heapq
import logging
import select
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_runtime.link import DeviceLink

log = logging.getLogger("devices.network_loop")


class NetworkLoop:
    """One thread driving many paho clients through epoll (paho's external-loop API).

    ``loop_start()`` costs a thread per client and paho's own loop uses ``select()``, which
    cannot watch file descriptors above 1024; the fleet simulator runs a thousand devices in one
    process, so it attaches their links here instead. Connects and reconnects (with the same
    exponential backoff as paho's) also happen on this thread.
    """

    def __init__(self, reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0,
                 misc_interval_s: float = 0.5) -> None:
        self._ep = select.epoll()
        self._lock = threading.RLock()
        self._fds: dict[int, DeviceLink] = {}
        self._links: dict[int, DeviceLink] = {}
        self._due: list[tuple[float, int, int]] = []  # (when, seq, link key)
        self._seq = 0
        self._min, self._max = reconnect_min_s, reconnect_max_s
        self._misc = misc_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- links --------------------------------------------------------------------------------
    def attach(self, link: DeviceLink) -> None:
        c = link.client
        c.on_socket_open = lambda _c, _u, sock, link=link: self._register(link, sock)
        c.on_socket_close = lambda _c, _u, sock: self._unregister(sock)
        c.on_socket_register_write = lambda _c, _u, sock: self._modify(sock, True)
        c.on_socket_unregister_write = lambda _c, _u, sock: self._modify(sock, False)
        with self._lock:
            self._links[id(link)] = link
            self._schedule(link, 0.0)
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="mqtt-network-loop", daemon=True)
                self._thread.start()

    def detach(self, link: DeviceLink) -> None:
        with self._lock:
            self._links.pop(id(link), None)
            sock = link.client.socket()
            if sock is not None:
                self._unregister(sock)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._ep.close()

    def _schedule(self, link: DeviceLink, delay: float) -> None:
        self._seq += 1
        heapq.heappush(self._due, (time.monotonic() + delay, self._seq, id(link)))

    # ---- epoll bookkeeping (called from any thread) -----------------------------------------
    def _register(self, link: DeviceLink, sock) -> None:
        with self._lock:
            fd = sock.fileno()
            self._fds[fd] = link
            try:
                self._ep.register(fd, select.EPOLLIN)
            except (FileExistsError, OSError):
                self._ep.modify(fd, select.EPOLLIN)

    def _unregister(self, sock) -> None:
        with self._lock:
            try:
                fd = sock.fileno()
            except OSError:
                return
            if fd < 0:
                return
            self._fds.pop(fd, None)
            try:
                self._ep.unregister(fd)
            except (KeyError, OSError, ValueError):
                pass

    def _modify(self, sock, write: bool) -> None:
        with self._lock:
            try:
                fd = sock.fileno()
                if fd in self._fds:
                    self._ep.modify(fd, select.EPOLLIN | (select.EPOLLOUT if write else 0))
            except (OSError, ValueError):
                pass

    # ---- the loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        last_misc = 0.0
        while not self._stop.is_set():
            self._connect_due()
            try:
                events = self._ep.poll(0.05)
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                continue
            for fd, ev in events:
                with self._lock:
                    link = self._fds.get(fd)
                if link is None:
                    continue
                c = link.client
                try:
                    if ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                        c.loop_read()
                    if ev & select.EPOLLOUT and c.socket() is not None:
                        c.loop_write()
                except Exception:  # one broken client must not stop the others
                    log.exception("network loop: client %s failed", link.device_id)
            now = time.monotonic()
            if now - last_misc >= self._misc:
                last_misc = now
                self._sweep()

    def _connect_due(self) -> None:
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._due or self._due[0][0] > now:
                    return
                _, _, key = heapq.heappop(self._due)
                link = self._links.get(key)
            if link is None or link.client.socket() is not None:
                continue
            try:
                link.client.connect(link.cfg.host, link.cfg.port, keepalive=link.cfg.keepalive)
            except (OSError, ValueError) as exc:
                link.connect_failures += 1
                delay = link.backoff.next()  # jittered: a fleet does not reconnect in lockstep
                log.debug("device %s: connect failed (%s); retry in %.1fs", link.device_id, exc, delay)
                with self._lock:
                    self._schedule(link, delay)

    def _sweep(self) -> None:
        with self._lock:
            links = list(self._links.values())
            pending = {k for _, _, k in self._due}
        for link in links:
            c = link.client
            if c.socket() is not None:
                try:
                    c.loop_misc()  # keep-alive pings, timeouts
                except Exception:
                    log.exception("network loop: loop_misc of %s failed", link.device_id)
            elif id(link) not in pending:  # dropped: reconnect with backoff
                link.connect_failures += 1
                delay = link.backoff.next()  # jittered: a fleet does not reconnect in lockstep
                with self._lock:
                    if id(link) in self._links:
                        self._schedule(link, delay)
