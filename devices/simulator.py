"""Fleet simulator: N devices running the real daemon code in one process (or several).

Each simulated device is a real :class:`~edge_runtime.daemon.Daemon` (its own model
store, SQLite journal and outbox, its own MQTT connection, last will, desired-state
reconciler, telemetry windows and on-device shadow comparison). To fit 1,000 devices
on a laptop, the simulator

* drives the telemetry windows and the request load from a few shared threads
  instead of one timer thread per device, and every device's MQTT connection from one
  epoll thread (:class:`devices.network_loop.NetworkLoop`) instead of paho's thread per client
  (whose ``select()`` also cannot watch descriptors above 1024),
* (``share_models=True``) shares the loaded :class:`~edge_runtime.model.Model` of a
  bundle between devices: every device still stages, hashes, verifies the signature
  of and self-tests its own copy; only the ONNX Runtime session is shared,
* lets at most ``reconcile_concurrency`` devices per process apply a desired document (or
  provision their first bundle) at a time (default 2; not while one waits its install jitter):
  a real device reconciles on its own CPU, but here hundreds of devices share a few cores. With
  every device of a process at once, a self-test timed while dozens of others install measures
  them (the store's single-row p99 budget check then refuses good bundles), and hundreds of
  threads contending for one GIL doubled the CPU time of a fleet-wide rollback, and
* (:class:`ProcessFleet`) splits the fleet over several processes, one GIL each. A device's
  download can also wait a jittered delay (``install_jitter_s``, the daemon's
  ``[hub] install_jitter_s``), as a real fleet told at once does not install in one instant.

Faults on demand (:meth:`Fleet.inject`): ``disconnect`` (network cut for T seconds;
the device keeps serving and buffering), ``slow`` (added inference latency),
``errors`` (a fraction of predict calls fail), ``crash`` (no goodbye: the broker
fires the last will; ``restart`` or ``duration`` brings it back on the same disk).

    fleet = Fleet(50, hub_url=hub.settings.base_url, mqtt_url=hub.fleet.mqtt_url,
                  bundle=path, public_keys=[pub], interval_s=0.5)
    fleet.start(); fleet.inject("slow", devices=["sim-0003"], latency_ms=80, duration=30)
    ...; fleet.stop()
"""

from __future__ import annotations

import heapq
import logging
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgeError, EngineError, ValidationError

log = logging.getLogger("devices.simulator")

FAULTS = ("disconnect", "slow", "errors", "crash", "restart", "clear")


# ---- shared models ---------------------------------------------------------------------------
class _SharedModels:
    """Process-wide cache of loaded models keyed by bundle digest, patched into the model store
    while at least one fleet uses it (reference-counted, so fleets may overlap); a shared
    model's ``close()`` is a no-op until the last fleet stops."""

    _lock = threading.Lock()
    _users = 0
    _orig: Any = None
    _cache: dict[tuple[str, str], Any] = {}

    def __init__(self) -> None:
        self.active = False

    def install(self) -> None:
        import edge_runtime.store as store_mod

        if self.active:
            return
        self.active = True
        cls_ = _SharedModels
        with cls_._lock:
            cls_._users += 1
            if cls_._users > 1:
                return
            cls_._orig = orig = store_mod.Model

            class SharedModel(orig):  # type: ignore[misc, valid-type]
                @classmethod
                def load(cls, path, options=None, *, warmup: bool = True):
                    from edge_runtime.bundle import Bundle, read_bundle

                    b = path if isinstance(path, Bundle) else read_bundle(path)
                    key = (b.manifest.digest, repr(options))
                    with cls_._lock:
                        m = cls_._cache.get(key)
                        if m is None:
                            m = orig.load(b, options, warmup=warmup)
                            m.close = lambda: None  # shared: closed when the last fleet stops
                            cls_._cache[key] = m
                    return m

            store_mod.Model = SharedModel

    def uninstall(self) -> None:
        import edge_runtime.store as store_mod

        if not self.active:
            return
        self.active = False
        cls_ = _SharedModels
        with cls_._lock:
            if cls_._users == 0:
                return
            cls_._users -= 1
            if cls_._users > 0:
                return
            store_mod.Model = cls_._orig
            cls_._orig = None
            models, cls_._cache = list(cls_._cache.values()), {}
        for m in models:
            try:
                type(m).close(m)
            except Exception:  # closing a shared session must not stop the others
                log.debug("closing a shared model failed", exc_info=True)


# ---- faults ------------------------------------------------------------------------------------
@dataclass
class Faults:
    extra_latency_s: float = 0.0
    error_rate: float = 0.0
    sha256: str | None = None  # only while the device's active bundle is this one (a "bad model")

    @property
    def active(self) -> bool:
        return self.extra_latency_s > 0 or self.error_rate > 0


class _FaultyModel:
    """Wraps a Model: slower and/or failing ``score_array``; everything else passes through."""

    def __init__(self, model: Any, faults: Faults, rnd: random.Random) -> None:
        self._m, self._f, self._rnd = model, faults, rnd

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)

    def score_array(self, x):
        if self._f.extra_latency_s > 0:
            time.sleep(self._f.extra_latency_s)
        if self._f.error_rate > 0 and self._rnd.random() < self._f.error_rate:
            raise EngineError("injected inference error (simulator fault)")
        return self._m.score_array(x)


def _daemon_class():
    from edge_runtime.daemon import Daemon

    class SimDaemon(Daemon):
        faults: Faults

        def active_model(self):
            m = super().active_model()
            f = getattr(self, "faults", None)
            if f is None or not f.active or (f.sha256 is not None and m.digest != f.sha256):
                return m
            return _FaultyModel(m, f, self._rnd)

    return SimDaemon


# ---- devices -------------------------------------------------------------------------------------
class SimDevice:
    def __init__(self, fleet: Fleet, index: int, device_id: str, tags: dict[str, str], profile: str,
                 password: str | None) -> None:
        self.fleet = fleet
        self.index = index
        self.id = device_id
        self.tags = tags
        self.profile = profile
        self.password = password
        self.dir = fleet.workdir / device_id
        self.faults = Faults()
        self.daemon = None
        self.crashed = False
        self.disconnected = False
        self.requests = 0
        self.errors = 0
        self._timers: list[threading.Timer] = []

    # settings of the real daemon
    def settings(self):
        from edge_runtime.settings import EdgeSettings

        f = self.fleet
        mqtt: dict[str, Any] = {"url": f.mqtt_url, "prefix": f.prefix, "keepalive_s": f.keepalive_s}
        if self.password is not None:
            mqtt.update(username=self.id, password=self.password)
        return EdgeSettings(
            device={"id": self.id, "profile": self.profile, "tags": self.tags},
            mqtt=mqtt, hub={"url": f.hub_url, **({} if f.install_jitter_s is None
                                                 else {"install_jitter_s": f.install_jitter_s})},
            store={"dir": str(self.dir / "store"), "public_keys": [str(k) for k in f.public_keys],
                   "allow_unsigned": f.allow_unsigned, "latency_runs": 10},
            telemetry={"interval_s": f.interval_s, "buffer_max_windows": f.buffer_max_windows},
            shadow={"sample_rate": f.sample_rate},
            local_api={"enabled": False}, dev=True)

    @property
    def agent(self):
        return self.daemon.fleet if self.daemon is not None else None

    def boot(self) -> None:
        d = _daemon_class()(self.settings())
        sem = self.fleet._cpu_slots  # one host, a few cores: a few devices reconcile at a time
        d.faults = self.faults
        d._rnd = random.Random(self.fleet.seed * 7919 + self.index)
        if d.store.slot("active") is None and self.fleet.bundle is not None:
            for attempt in range(3):  # provisioning; the store's latency budget check is real, and
                try:                  # hundreds of devices booting at once on one host can trip it
                    if sem is not None:
                        with sem:
                            d.store.install(self.fleet.bundle, "active")
                    else:
                        d.store.install(self.fleet.bundle, "active")
                    break
                except EdgeError as exc:
                    if attempt == 2 or "budget" not in str(exc.message):
                        d.stop()
                        raise
                    time.sleep(0.2 * (attempt + 1))
        if d.fleet is not None:
            d.fleet.reconciler.concurrency = sem
            d.fleet._own_timer = False  # the fleet's scheduler rolls windows
            if d.fleet.link is not None and self.fleet.net_loop is not None:
                d.fleet.link.net_loop = self.fleet.net_loop  # one epoll thread for every device
        d.start()
        self.daemon = d
        self.crashed = False
        self.disconnected = False

    def crash(self) -> None:
        """Die without a goodbye: no last window, socket dropped (the broker publishes the will)."""
        d = self.daemon
        if d is None:
            return
        self.daemon = None
        self.crashed = True
        if d.fleet is not None:
            d.services.remove(d.fleet)
            d.fleet.stop(graceful=False, flush=False)
        d.stop()

    def restart(self) -> None:
        if self.daemon is not None:
            self.crash()
        self.boot()

    def disconnect(self) -> None:
        if self.agent is not None and self.agent.link is not None:
            self.agent.link.cut()
            self.disconnected = True

    def reconnect(self) -> None:
        if self.agent is not None and self.agent.link is not None and self.disconnected:
            self.agent.link.resume()
            self.disconnected = False

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
        d = self.daemon
        if d is None:
            return None
        self.requests += 1
        try:
            return d.predict(rows)
        except EdgeError:
            self.errors += 1
            return None

    def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def state(self) -> dict[str, Any]:
        a = self.agent
        return {"id": self.id, "tags": self.tags, "profile": self.profile, "crashed": self.crashed,
                "disconnected": self.disconnected, "connected": bool(a and a.link and a.link.connected.is_set()),
                "requests": self.requests, "errors": self.errors,
                "buffered": a.outbox.count("telemetry") if a else None,
                "running": [b.model_dump() for b in a.state().bundles] if a else []}


def default_rows(n: int = 569) -> list[dict[str, float]]:
    """Rows from scikit-learn's breast-cancer data set (feature names with underscores)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [c.replace(" ", "_") for c in data.feature_names]
    return [dict(zip(names, map(float, r))) for r in data.data[:n]]


class Fleet:
    """N simulated devices running the real daemon; see the module docstring."""

    def __init__(self, n: int, hub_url: str | None = None, mqtt_url: str = "mqtt://127.0.0.1:1883", *,
                 prefix: str = "edgefleet/v1", bundle: str | Path | None = None,
                 public_keys: Iterable[str | Path] = (), allow_unsigned: bool = False,
                 tags: Callable[[int], dict[str, str]] | Sequence[dict[str, str]] | None = None,
                 profiles: Sequence[str] = ("rpi4", "jetson-nano", "x86-gateway"),
                 interval_s: float = 10.0, request_rate: float = 1.0, batch: int = 1,
                 rows: Sequence[Mapping[str, Any]] | None = None, sample_rate: float = 1.0,
                 share_models: bool = True, id_prefix: str = "sim", passwords: Mapping[str, str] | None = None,
                 buffer_max_windows: int = 10_000, workdir: str | Path | None = None, seed: int = 0,
                 load_threads: int = 1, keepalive_s: int = 10, start_concurrency: int = 8,
                 shared_network: bool = True, install_jitter_s: float | None = None,
                 shard: tuple[int, int] = (0, 1), reconcile_concurrency: int | None = 2) -> None:
        if n < 1:
            raise ValidationError("a fleet needs at least one device", field="n")
        k, shards = shard
        if not (shards >= 1 and 0 <= k < shards):
            raise ValidationError(f"shard must be (k, N) with 0 <= k < N (got {shard!r})", field="shard")
        self.fleet_size = n  # devices of the whole fleet; this process holds those with i % N == k
        self.shard = (k, shards)
        self.install_jitter_s = install_jitter_s
        self._cpu_slots = threading.BoundedSemaphore(reconcile_concurrency) if reconcile_concurrency else None
        self.hub_url = hub_url
        self.mqtt_url = mqtt_url
        self.prefix = prefix
        self.bundle = Path(bundle) if bundle else None
        self.public_keys = [Path(k) for k in public_keys]
        self.allow_unsigned = allow_unsigned
        self.interval_s = interval_s
        self.request_rate = request_rate
        self.batch = max(1, batch)
        self.sample_rate = sample_rate
        self.buffer_max_windows = buffer_max_windows
        self.keepalive_s = keepalive_s
        self.seed = seed
        self.load_threads = max(1, load_threads)
        self.start_concurrency = start_concurrency
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="edgefleet-sim-"))
        self.rows = list(rows) if rows is not None else default_rows()
        self._shared = _SharedModels() if share_models else None
        self.net_loop = None
        if shared_network:
            from devices.network_loop import NetworkLoop

            self.net_loop = NetworkLoop()
        rnd = random.Random(seed)
        regions = ("eu", "us", "apac")
        self.devices: list[SimDevice] = []
        for i in range(n):
            dev_id = f"{id_prefix}-{i:04d}"
            if callable(tags):
                t = dict(tags(i))
            elif tags is not None:
                t = dict(tags[i % len(tags)])
            else:
                t = {"region": regions[i % 3], "ring": "canary" if rnd.random() < 0.1 else "main"}
            if i % shards != k:  # another simulator process holds it (same id, tags and profile)
                continue
            self.devices.append(SimDevice(self, i, dev_id, t, profiles[i % len(profiles)],
                                          (passwords or {}).get(dev_id)))
        self.n = len(self.devices)  # devices in this process
        if self.n == 0:
            raise ValidationError(f"shard {k} of {shards} of a {n}-device fleet holds no device", field="shard")
        self._by_id = {d.id: d for d in self.devices}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.started = False

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self, *, wait: bool = True, timeout: float = 60.0) -> Fleet:
        if self._shared is not None:
            self._shared.install()
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.start_concurrency) as pool:
            list(pool.map(lambda d: d.boot(), self.devices))
        self._stop.clear()
        self._threads = [threading.Thread(target=self._scheduler, name="sim-telemetry", daemon=True)]
        if self.request_rate > 0:
            for k in range(self.load_threads):
                self._threads.append(threading.Thread(target=self._load, args=(k,), name=f"sim-load-{k}",
                                                      daemon=True))
        for t in self._threads:
            t.start()
        self.started = True
        if wait:
            self.wait_connected(timeout)
        return self

    def wait_connected(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        for d in self.devices:
            a = d.agent
            if a is None or a.link is None or d.disconnected:
                continue
            if not a.link.wait_connected(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        def stop_one(d) -> None:
            try:
                d.stop()
            except Exception:
                log.exception("stopping %s", d.id)

        # in parallel: a graceful stop waits (up to 2 s) for the hub to acknowledge the last window
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(32, max(1, len(self.devices)))) as pool:
            list(pool.map(stop_one, self.devices))
        if self.net_loop is not None:
            self.net_loop.close()
            self.net_loop = None
        if self._shared is not None:
            self._shared.uninstall()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.started = False

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def device(self, device_id: str) -> SimDevice:
        return self._by_id[device_id]

    # ---- faults ------------------------------------------------------------------------------------
    def inject(self, fault: str, devices: Iterable[str] | float | None = None, *,
               duration: float | None = None, latency_ms: float = 0.0, rate: float = 0.0,
               sha256: str | None = None) -> list[str]:
        """Apply ``fault`` to ``devices`` (ids, a count, a fraction, or all); returns the ids.

        ``sha256`` scopes ``slow``/``errors`` to one bundle: the fault shows only while a device
        runs that bundle in its active slot (how a rollout test makes a model "bad").

        ``duration`` undoes it after that many seconds (disconnect → reconnect, crash → restart,
        slow/errors → cleared).
        """
        if fault not in FAULTS:
            raise ValidationError(f"fault must be one of {', '.join(FAULTS)} (got {fault!r})", field="fault")
        targets = self._select(devices)
        for d in targets:
            if fault == "disconnect":
                d.disconnect()
                undo = d.reconnect
            elif fault == "slow":
                d.faults.sha256 = sha256
                d.faults.extra_latency_s = latency_ms / 1000.0
                undo = lambda d=d: setattr(d.faults, "extra_latency_s", 0.0)
            elif fault == "errors":
                d.faults.sha256 = sha256
                d.faults.error_rate = rate
                undo = lambda d=d: setattr(d.faults, "error_rate", 0.0)
            elif fault == "crash":
                d.crash()
                undo = d.boot
            elif fault == "restart":
                d.restart()
                undo = None
            else:
                d.faults.extra_latency_s, d.faults.error_rate = 0.0, 0.0
                if d.disconnected:
                    d.reconnect()
                if d.crashed:
                    d.boot()
                undo = None
            if duration and undo is not None:
                t = threading.Timer(duration, self._guarded(undo))
                t.daemon = True
                d._timers.append(t)
                t.start()
        return [d.id for d in targets]

    def _guarded(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            if not self._stop.is_set():
                try:
                    fn()
                except Exception:
                    log.exception("undoing a fault failed")
        return run

    def _select(self, devices: Iterable[str] | float | None) -> list[SimDevice]:
        if devices is None:
            return list(self.devices)
        if isinstance(devices, float) and 0 < devices <= 1:
            return self.devices[:max(1, round(devices * self.n))]
        if isinstance(devices, int):
            return self.devices[:devices]
        if isinstance(devices, str):
            devices = [devices]
        out = []
        for x in devices:
            if x not in self._by_id:
                raise ValidationError(f"no simulated device {x!r}", field="devices")
            out.append(self._by_id[x])
        return out

    # ---- background threads -----------------------------------------------------------------------
    def _scheduler(self) -> None:
        """Roll each device's window when it is due: a heap of (due, device) rather than asking
        every device every few milliseconds (at 250 devices in a process, that polling was about a
        quarter of the process's CPU time and slowed everything else it does, rollbacks included)."""
        recheck = max(0.05, min(0.5, self.interval_s / 10))  # a device with no agent (crashed)
        now = time.monotonic()
        heap = [(now, j) for j in range(len(self.devices))]
        heapq.heapify(heap)
        while heap and not self._stop.is_set():
            due, j = heap[0]
            wait = due - time.monotonic()
            if wait > 0:
                if self._stop.wait(min(wait, 0.5)):
                    return
                continue
            a = self.devices[j].agent
            nxt = time.monotonic() + recheck
            if a is not None:
                try:
                    a.tick()
                except Exception:
                    log.exception("telemetry tick of %s failed", self.devices[j].id)
                nxt = max(a._next_roll, time.monotonic() + 0.001)
            heapq.heapreplace(heap, (nxt, j))

    def _load(self, k: int) -> None:
        mine = [j for j in range(len(self.devices)) if j % self.load_threads == k]  # positions
        if not mine:
            return
        rnd = random.Random(self.seed * 31 + k + 1000 * self.shard[0])
        period = 1.0 / self.request_rate
        now = time.monotonic()
        heap = [(now + rnd.random() * period, j) for j in mine]
        heapq.heapify(heap)
        rows = self.rows
        while not self._stop.is_set():
            due, idx = heap[0]
            wait = due - time.monotonic()
            if wait > 0:
                if self._stop.wait(min(wait, 0.1)):
                    return
                continue
            heapq.heapreplace(heap, (max(due + period, time.monotonic() - period), idx))
            start = rnd.randrange(len(rows))
            batch = [rows[(start + j) % len(rows)] for j in range(self.batch)]
            self.devices[idx].predict(batch)

    # ---- reporting ----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {"devices": self.n,
                "connected": sum(1 for d in self.devices if d.agent and d.agent.link
                                 and d.agent.link.connected.is_set()),
                "crashed": sum(d.crashed for d in self.devices),
                "disconnected": sum(d.disconnected for d in self.devices),
                "requests": sum(d.requests for d in self.devices),
                "errors": sum(d.errors for d in self.devices),
                "buffered_windows": sum(d.agent.outbox.count("telemetry") for d in self.devices if d.agent)}

    def outbox_seqs(self) -> dict[str, dict[str, Any]]:
        """Per running device: ``first``/``last`` telemetry seq it produced and the seqs still in its
        outbox (not yet acknowledged by the hub), read in that order — so a seq in
        ``[first, last]`` that is not ``pending`` had been acknowledged, i.e. stored at the hub,
        before this call returned (the window-accounting step of ``benchmarks/rollout.py``)."""
        import sqlite3
        from contextlib import closing

        out: dict[str, dict[str, Any]] = {}
        for d in self.devices:
            a = d.agent
            if a is None:
                continue
            ob = a.outbox
            first, last, dropped = ob.first_seq, ob.last_seq, ob.dropped
            with closing(sqlite3.connect(f"file:{ob.path}?mode=ro", uri=True, timeout=30)) as c:
                pending = sorted(r[0] for r in c.execute("SELECT seq FROM outbox WHERE kind='telemetry'"))
            out[d.id] = {"first": first, "last": last, "pending": pending, "dropped": dropped}
        return out


# ---- a fleet split over several processes ------------------------------------------------------------
def _fleet_process(conn: Any, n: int, shard: tuple[int, int], kw: dict[str, Any], log_level: int) -> None:
    """Body of one simulator process of a :class:`ProcessFleet`: a sharded :class:`Fleet` driven
    by ``(method, args, kwargs)`` requests on ``conn``; every answer is ``("ok", value)`` or
    ``("error", text)``. Ends after ``stop`` or when the parent goes away."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s sim-{shard[0]} %(name)s %(levelname)s %(message)s")
    try:
        fleet = Fleet(n, shard=shard, **kw)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", [d.id for d in fleet.devices]))
    while True:
        try:
            method, args, kwargs = conn.recv()
        except (EOFError, OSError):  # the parent died: stop the devices, do not linger
            fleet.stop()
            return
        try:
            value = getattr(fleet, method)(*args, **kwargs)
            conn.send(("ok", None if value is fleet else value))
        except Exception as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        if method == "stop":
            return


class ProcessFleet:
    """The fleet ``Fleet(n, **kw)`` would simulate, split over ``procs`` processes.

    Process ``k`` runs the devices ``i`` with ``i % procs == k`` (same ids, tags, profiles and
    seeds as one process would give them), each with its own MQTT network loop, telemetry and
    load threads and shared-model cache. One Python process is one GIL: a thousand daemons in
    one process queue every install, self-test, state report and request behind each other,
    which no real fleet does; several processes use every core the host has.

    ``start``, ``stop``, ``inject``, ``stats`` and ``outbox_seqs`` are those of :class:`Fleet`
    (answers merged); ``tags`` must be picklable (a list, not a lambda). Each process is
    stopped through its pipe, and killed by PID if it does not end in time.
    """

    def __init__(self, n: int, *, procs: int = 2, workdir: str | Path | None = None,
                 id_prefix: str = "sim", log_level: int = logging.ERROR, **kw: Any) -> None:
        import multiprocessing as mp

        if n < 1:
            raise ValidationError("a fleet needs at least one device", field="n")
        self.n = n
        self.procs = max(1, min(int(procs), n))
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="edgefleet-sim-"))
        self.ids = [f"{id_prefix}-{i:04d}" for i in range(n)]
        self._shard_of = {dev: i % self.procs for i, dev in enumerate(self.ids)}
        ctx = mp.get_context("spawn")  # a fresh interpreter: no locks or threads inherited from the parent
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        kw = {**kw, "workdir": str(self.workdir), "id_prefix": id_prefix}
        try:
            for k in range(self.procs):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_fleet_process, args=(child, n, (k, self.procs), kw, log_level),
                                name=f"sim-fleet-{k}", daemon=True)
                p.start()
                child.close()
                self._procs.append(p)
                self._conns.append(parent)
            for k in range(self.procs):
                self._answer(k, 120.0)
        except BaseException:
            self._kill()
            raise
        self.started = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def _answer(self, k: int, timeout: float) -> Any:
        conn = self._conns[k]
        if not conn.poll(timeout):
            raise TimeoutError(f"simulator process {k} (pid {self._procs[k].pid}) did not answer in {timeout:g}s")
        status, value = conn.recv()
        if status != "ok":
            raise RuntimeError(f"simulator process {k}: {value}")
        return value

    def _call_all(self, method: str, *args: Any, timeout: float = 600.0,
                  per_shard: list[tuple[tuple, dict]] | None = None, **kwargs: Any) -> list[Any]:
        """Send to every process first (they work in parallel), then collect the answers."""
        for k, conn in enumerate(self._conns):
            a, kw = per_shard[k] if per_shard is not None else (args, kwargs)
            conn.send((method, a, kw))
        return [self._answer(k, timeout) for k in range(self.procs)]

    # ---- the Fleet interface ------------------------------------------------------------------
    def start(self, *, wait: bool = True, timeout: float = 60.0) -> ProcessFleet:
        """Boot every process's devices in parallel (each waits for its own to connect)."""
        self._call_all("start", timeout=timeout + 600.0,
                       per_shard=[((), {"wait": wait, "timeout": timeout})] * self.procs)
        self.started = True
        return self

    def stop(self) -> None:
        try:
            if self._conns:
                for conn in self._conns:
                    try:
                        conn.send(("stop", (), {}))
                    except (OSError, ValueError):
                        pass
                for k in range(len(self._conns)):
                    try:
                        self._answer(k, 120.0)
                    except Exception as exc:  # noqa: BLE001 - the others must still stop
                        log.warning("stopping simulator process %d: %s", k, exc)
        finally:
            self._kill()
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.started = False

    def _kill(self) -> None:
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()  # this process's own child, by its PID
                p.join(timeout=10)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []

    def __enter__(self) -> ProcessFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, fault: str, devices: Iterable[str] | float | None = None, **kw: Any) -> list[str]:
        """:meth:`Fleet.inject` on the whole fleet (counts and fractions: the first devices by index)."""
        if fault not in FAULTS:
            raise ValidationError(f"fault must be one of {', '.join(FAULTS)} (got {fault!r})", field="fault")
        if devices is None:
            ids = list(self.ids)
        elif isinstance(devices, float) and 0 < devices <= 1:
            ids = self.ids[:max(1, round(devices * self.n))]
        elif isinstance(devices, int):
            ids = self.ids[:devices]
        else:
            ids = [devices] if isinstance(devices, str) else list(devices)
            unknown = [x for x in ids if x not in self._shard_of]
            if unknown:
                raise ValidationError(f"no simulated device {unknown[0]!r}", field="devices")
        mine: list[list[str]] = [[] for _ in range(self.procs)]
        for x in ids:
            mine[self._shard_of[x]].append(x)
        if devices is None:  # "all" per process (also devices added there later, as Fleet does)
            self._call_all("inject", fault, None, **kw)
        else:
            self._call_all("inject", per_shard=[((fault, m), kw) for m in mine])
        return ids

    def stats(self) -> dict[str, Any]:
        parts = self._call_all("stats", timeout=120.0)
        return {k: sum(p[k] for p in parts) for k in parts[0]}

    def outbox_seqs(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for part in self._call_all("outbox_seqs", timeout=300.0):
            out.update(part)
        return out
