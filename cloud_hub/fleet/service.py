"""``FleetService`` (``hub.fleet``): the device registry, desired state, ingest writes and stats.

Everything the API, the CLI and the rollout controller need about devices goes
through this class; MQTT (the ingest subscriber, the desired publisher, the
embedded broker) is started by :meth:`FleetService.start` (``cloud-hub serve``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import String, Text, and_, bindparam, cast, select, type_coerce
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from cloud_hub.fleet import tables as T
from cloud_hub.fleet.acl import hash_password, new_password, write_acl_files
from cloud_hub.fleet.aggregate import SlotAggregate
from edge_runtime.errors import NotFoundError, ValidationError
from edge_runtime.protocol import DesiredState, DeviceEvent, DeviceState, TelemetryWindow, topic

log = logging.getLogger("cloud_hub.fleet")

_ID_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def check_device_id(device_id: str) -> str:
    if not isinstance(device_id, str) or not device_id or len(device_id) > 128 \
            or any(c not in _ID_OK for c in device_id):
        raise ValidationError("device id must be 1-128 characters of letters, digits, '-', '_', '.', ':' "
                              f"(got {device_id!r})", field="device_id")
    return device_id


@dataclass
class DeviceRecord:
    id: str
    tags: dict[str, str] = field(default_factory=dict)
    profile: str = ""
    registered: bool = False
    online: bool = False
    last_seen: float | None = None
    last_window_at: float | None = None
    bundles: list[dict[str, Any]] = field(default_factory=list)  # what the device says it runs
    applied_desired_id: str | None = None
    runtime_version: str = ""
    desired: dict[str, Any] | None = None
    dropped_windows: int = 0
    rejected_windows: int = 0  # windows refused at ingest (cloud_hub.fleet.validate)
    rejected_reason: str | None = None  # why the last one was refused
    has_credentials: bool = False
    password: str | None = None  # only set by register_device when a password was created/given

    def running(self, slot: str = "active") -> dict[str, Any] | None:
        return next((b for b in self.bundles if b.get("slot") == slot), None)

    @property
    def converged(self) -> bool:
        """The device reports it applied the current desired document."""
        return bool(self.desired) and self.applied_desired_id == self.desired.get("id")

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("id", "tags", "profile", "registered", "online", "last_seen",
                                           "last_window_at", "bundles", "applied_desired_id",
                                           "runtime_version", "desired", "dropped_windows",
                                           "rejected_windows", "rejected_reason", "has_credentials")}
        d["converged"] = self.converged
        return d


def parse_selector(selector: Any) -> tuple[dict[str, str] | None, set[str] | None]:
    """None | {"tag": "value"} | "k=v,k2=v2" | ["dev-1", ...] → (tag filter, id filter)."""
    if selector is None or selector == "" or selector == {}:
        return None, None
    if isinstance(selector, Mapping):
        return {str(k): str(v) for k, v in selector.items()}, None
    if isinstance(selector, str):
        tags: dict[str, str] = {}
        for part in selector.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ValidationError(f"selector part {part!r} must be key=value", field="selector")
            k, v = part.split("=", 1)
            tags[k.strip()] = v.strip()
        return tags, None
    if isinstance(selector, Iterable):
        return None, {str(x) for x in selector}
    raise ValidationError("selector must be a tag mapping, 'k=v,…' or a list of device ids", field="selector")


# the dashboard's sortable columns (FleetService.device_page): query value → DeviceRow field
PAGE_SORTS = {"id": "id", "online": "online", "profile": "profile", "last_seen": "last_seen",
              "version": "version", "rejected": "rejected_windows"}


class DeviceRow(NamedTuple):
    """A device in the few columns the dashboard pages, filters and counts on."""

    id: str
    tags: dict[str, str]
    profile: str
    online: bool
    last_seen: float | None
    rejected_windows: int
    version: str | None  # active slot, "name:version"


def _json(raw: Any) -> Any:
    """A JSON column read as text (SQLite) or already decoded (PostgreSQL's json type)."""
    if raw is None or isinstance(raw, (dict, list)):
        return raw
    return json.loads(raw)


def _loads(raw: Any) -> Any:
    """A JSON column selected as text (see :func:`_as_text`): orjson, falling back to the standard
    parser for what orjson refuses (NaN, huge integers), so the values are json.loads'. Already
    decoded values (PostgreSQL's driver may decode json itself) pass through."""
    if raw is None or not isinstance(raw, (str, bytes)):
        return raw
    try:
        return _orjson_loads(raw)
    except ValueError:  # orjson.JSONDecodeError
        return json.loads(raw)


try:
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - orjson is a hub dependency
    _orjson_loads = json.loads


def _as_text(table, *json_cols: str) -> list[Any]:
    """Every column of ``table``, the named JSON ones as their text (same labels)."""
    return [cast(c, Text).label(c.name) if c.name in json_cols else c for c in table.c]


# steps that end (or restart) an install: a device whose latest one is "failed" is flagged
INSTALL_STEPS = ("received", "active", "failed", "removed", "rolled_back")


def insert_ignore(conn: Connection, table, rows: list[dict[str, Any]]) -> None:
    """Bulk insert, skipping rows that hit a unique constraint (the dedupe)."""
    if not rows:
        return
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # pragma: no cover - other databases: one row at a time
        for r in rows:
            try:
                with conn.begin_nested():
                    conn.execute(table.insert().values(**r))
            except IntegrityError:  # already stored: the dedupe
                continue
        return
    conn.execute(insert(table).on_conflict_do_nothing(), rows)


class FleetService:
    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.settings = hub.settings
        self.engine = hub.engine
        self.prefix = self.settings.mqtt_prefix
        self.mqtt_url: str | None = self.settings.mqtt_url
        self.mqtt_protocol = "5"
        self.broker = None
        self.ingest = None
        self._publisher = None
        self._lock = threading.Lock()
        self._index = None

    # ---- registry ---------------------------------------------------------------
    def register_device(self, device_id: str, tags: Mapping[str, str] | None = None, profile: str = "",
                        password: str | None = None, generate_password: bool = False) -> DeviceRecord:
        """Create or update a device; returns it with ``password`` set when one was given/created."""
        check_device_id(device_id)
        tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if generate_password and password is None:
            password = new_password()
        values: dict[str, Any] = {"tags": tags, "profile": profile or "", "registered": True}
        if password is not None:
            values["credentials_hash"] = hash_password(password)
        with self.engine.begin() as conn:
            exists = conn.execute(select(T.devices.c.id).where(T.devices.c.id == device_id)).first()
            if exists:
                conn.execute(T.devices.update().where(T.devices.c.id == device_id).values(**values))
            else:
                conn.execute(T.devices.insert().values(id=device_id, created_at=time.time(), **values))
        rec = self.device(device_id)
        rec.password = password
        return rec

    def device(self, device_id: str) -> DeviceRecord:
        recs = self._records(ids={device_id})
        if not recs:
            raise NotFoundError(f"device {device_id!r} is not known to the hub (register it, or wait "
                                "for it to connect)", field="device_id")
        return recs[0]

    def devices(self, selector: Any = None, *, online: bool | None = None) -> list[DeviceRecord]:
        tags, ids = parse_selector(selector)
        recs = self._records(ids=ids)
        if tags:
            recs = [r for r in recs if all(r.tags.get(k) == v for k, v in tags.items())]
        if online is not None:
            recs = [r for r in recs if r.online == online]
        return recs

    def cached_devices(self) -> list[DeviceRecord]:
        """:meth:`devices` (every device, sorted by id) from an in-memory index that re-reads only
        the devices whose rows changed since the previous call, by the database's change markers
        (:mod:`cloud_hub.fleet.devindex`; safe with several hub replicas). The records are shared:
        read them, never modify them. The rollout controller's per-tick view of the fleet."""
        if self._index is None:
            from cloud_hub.fleet.devindex import DeviceIndex

            with self._lock:
                if self._index is None:
                    self._index = DeviceIndex(self)
        return self._index.records()

    def device_index(self, online: bool | None = None) -> list[DeviceRow]:
        """Every known device in a few columns (no state documents parsed): what the dashboard's
        paging, filters and counts need. Same devices and values as :meth:`devices`."""
        d, s, w = T.devices, T.device_state, T.desired

        with self.engine.connect() as conn:
            regs = {r[0]: r for r in conn.execute(select(d.c.id, d.c.profile, type_coerce(d.c.tags, String)))}
            # the state document as text, decoded once here (a JSON path per field re-parses it per path)
            states = {r[0]: r for r in conn.execute(select(s.c.device_id, s.c.online, s.c.last_seen,
                                                           s.c.rejected_windows, type_coerce(s.c.state, String)))}
            desired = set(conn.execute(select(w.c.device_id)).scalars())
        out = []
        for dev in set(regs) | set(states) | desired:
            reg, st = regs.get(dev), states.get(dev)
            is_online = bool(st is not None and st[1])
            if online is not None and is_online != online:
                continue
            doc = (_json(st[4]) if st is not None else None) or {}
            if reg is not None:
                tags, profile = _json(reg[2]), reg[1] or doc.get("profile") or ""
            else:
                tags, profile = doc.get("tags") or {}, doc.get("profile") or ""
            version = None
            for b in doc.get("bundles") or []:
                if b.get("slot") == "active":
                    version = f"{b.get('name')}:{b.get('version')}"
                    break
            out.append(DeviceRow(dev, {str(k): str(v) for k, v in (tags or {}).items()}, profile, is_online,
                                 st[2] if st is not None else None, int(st[3] or 0) if st is not None else 0,
                                 version))
        return out

    def device_page(self, selector: Any = None, *, online: bool | None = None, profile: str | None = None,
                    version: str | None = None, problems: bool = False, sort: str = "id",
                    descending: bool = False, limit: int = 200, offset: int = 0) -> dict[str, Any]:
        """One page of the registry, filtered and sorted here (the dashboard's fleet table).

        Filters and sorting run over :meth:`device_index` (a few columns per device); only the
        page's devices are loaded in full. ``version`` matches the active slot as
        ``name:version`` (or the version alone); ``problems`` keeps devices with telemetry gaps,
        failed installs or rejected windows. Each returned device carries ``problems`` (reasons)."""
        if sort not in PAGE_SORTS:
            raise ValidationError(f"sort must be one of {', '.join(PAGE_SORTS)} (got {sort!r})", field="sort")
        tags, ids = parse_selector(selector)
        rows = self.device_index(online=online)
        if ids is not None:
            rows = [r for r in rows if r.id in ids]
        if tags:
            rows = [r for r in rows if all(r.tags.get(k) == v for k, v in tags.items())]
        if profile:
            rows = [r for r in rows if r.profile == profile]
        if version:
            rows = [r for r in rows if r.version is not None
                    and (r.version == version or r.version.split(":", 1)[1] == version)]
        if problems:
            flags = self.problem_flags([r.id for r in rows])
            rows = [r for r in rows if flags.get(r.id)]
        col = PAGE_SORTS[sort]
        rows.sort(key=lambda r: r.id)
        if sort != "id":  # devices without a value (never seen, nothing running) last either way
            blank = [r for r in rows if getattr(r, col) is None]
            rows = sorted((r for r in rows if getattr(r, col) is not None), key=lambda r: getattr(r, col),
                          reverse=descending) + blank
        elif descending:
            rows.reverse()
        page_ids = [r.id for r in rows[offset:offset + limit]]
        full = {r.id: r for r in self._records(ids=set(page_ids))} if page_ids else {}
        flags = self.problem_flags(page_ids)
        out = []
        for i in page_ids:
            d = full[i].to_dict()
            d["problems"] = flags.get(i, [])
            out.append(d)
        return {"devices": out, "count": len(out), "total": len(rows), "offset": offset, "limit": limit}

    def problem_flags(self, device_ids: Sequence[str]) -> dict[str, list[str]]:
        """Why each device needs attention: telemetry gaps, a failed install (its latest install
        event is ``failed``), rejected windows. Devices without a problem are left out."""
        from sqlalchemy import func

        out: dict[str, list[str]] = {}
        if not device_ids:
            return out
        ids = list(device_ids)
        e = T.events
        with self.engine.connect() as conn:
            rejected = dict(conn.execute(select(T.device_state.c.device_id, T.device_state.c.rejected_windows)
                                         .where(T.device_state.c.rejected_windows > 0)).all())
            last = select(e.c.device_id, func.max(e.c.id).label("id")).where(
                e.c.step.in_(INSTALL_STEPS)).group_by(e.c.device_id).subquery()
            failed = {r.device_id: r.reason for r in conn.execute(
                select(e.c.device_id, e.c.reason).join(last, e.c.id == last.c.id).where(e.c.step == "failed"))}
        gaps = self.window_summary(ids if len(ids) <= 500 else None)
        for i in ids:
            why = []
            missing = gaps.get(i, {}).get("missing", 0)
            if missing:
                why.append(f"{missing} telemetry window(s) missing")
            if i in failed:
                why.append("install failed" + (f": {failed[i]}" if failed[i] else ""))
            if rejected.get(i):
                why.append(f"{rejected[i]} window(s) rejected")
            if why:
                out[i] = why
        return out

    def _records(self, ids: set[str] | None = None) -> list[DeviceRecord]:
        d, s, w = T.devices, T.device_state, T.desired
        with self.engine.connect() as conn:
            # JSON columns as text, decoded by _loads (orjson): the driver's json.loads was most of
            # loading 10,000 records
            q1 = select(*_as_text(d, "tags"))
            q2 = select(*_as_text(s, "state"))
            q3 = select(*_as_text(w, "doc"))
            if ids is not None:
                q1, q2, q3 = q1.where(d.c.id.in_(ids)), q2.where(s.c.device_id.in_(ids)), \
                    q3.where(w.c.device_id.in_(ids))
            regs = {r.id: r for r in conn.execute(q1)}
            states = {r.device_id: r for r in conn.execute(q2)}
            desired = {r.device_id: r for r in conn.execute(q3)}
        out = []
        for dev_id in sorted(set(regs) | set(states) | set(desired)):
            reg, st, de = regs.get(dev_id), states.get(dev_id), desired.get(dev_id)
            doc = (_loads(st.state) if st is not None else None) or {}
            rec = DeviceRecord(
                id=dev_id,
                tags=dict(_loads(reg.tags)) if reg is not None else dict(doc.get("tags") or {}),
                profile=(reg.profile if reg is not None and reg.profile else doc.get("profile", "")),
                registered=bool(reg is not None and reg.registered),
                has_credentials=bool(reg is not None and reg.credentials_hash),
                online=bool(st.online) if st is not None else False,
                last_seen=st.last_seen if st is not None else None,
                last_window_at=st.last_window_at if st is not None else None,
                bundles=list(doc.get("bundles") or []),
                applied_desired_id=st.applied_desired_id if st is not None else None,
                runtime_version=doc.get("runtime_version", ""),
                desired=dict(_loads(de.doc)) if de is not None else None,
                dropped_windows=int(st.dropped_windows or 0) if st is not None else 0,
                rejected_windows=int(st.rejected_windows or 0) if st is not None else 0,
                rejected_reason=st.rejected_reason if st is not None else None,
            )
            out.append(rec)
        return out

    # ---- desired state ------------------------------------------------------------
    def bundle_url(self, digest: str) -> str:
        return f"{self.settings.base_url.rstrip('/')}/v1/bundles/{digest}"

    def set_desired(self, device_id: str, desired: DesiredState | Mapping[str, Any]) -> DesiredState:
        """Persist the device's desired document and publish it retained (QoS 1).

        When the broker is not reachable now, the document is still stored and is
        (re)published when the hub's MQTT publisher connects.
        """
        check_device_id(device_id)
        doc = desired if isinstance(desired, DesiredState) else DesiredState.model_validate(dict(desired))
        for slot in doc.bundles:
            if slot not in ("active", "shadow"):
                raise ValidationError(f"desired slot {slot!r} must be 'active' or 'shadow'",
                                      field=f"bundles.{slot}")
        body = doc.model_dump(mode="json")
        with self.engine.begin() as conn:
            row = {"desired_id": doc.id, "rollout_id": doc.rollout_id, "doc": body, "updated_at": time.time()}
            if conn.execute(select(T.desired.c.device_id).where(T.desired.c.device_id == device_id)).first():
                conn.execute(T.desired.update().where(T.desired.c.device_id == device_id).values(**row))
            else:
                conn.execute(T.desired.insert().values(device_id=device_id, **row))
        self._publish_desired(device_id, body)
        return doc

    def set_desired_many(self, docs: Sequence[tuple[str, DesiredState]]) -> None:
        """:meth:`set_desired` for many devices in ONE transaction, then one publish each.

        A rollback or a stage change writes a document per device; one transaction per device
        (plus its commit) was most of the rollout controller's fan-out time at 1,000 devices."""
        if not docs:
            return
        now = time.time()
        rows: dict[str, dict[str, Any]] = {}
        for device_id, doc in docs:
            check_device_id(device_id)
            for slot in doc.bundles:
                if slot not in ("active", "shadow"):
                    raise ValidationError(f"desired slot {slot!r} must be 'active' or 'shadow'",
                                          field=f"bundles.{slot}")
            rows[device_id] = {"desired_id": doc.id, "rollout_id": doc.rollout_id,
                               "doc": doc.model_dump(mode="json"), "updated_at": now}
        w = T.desired
        with self.engine.begin() as conn:
            ids = list(rows)
            have: set[str] = set()
            for i in range(0, len(ids), 500):
                have |= set(conn.execute(select(w.c.device_id).where(w.c.device_id.in_(ids[i:i + 500])))
                            .scalars())
            upd = [{"b_device_id": d, **r} for d, r in rows.items() if d in have]
            new = [{"device_id": d, **r} for d, r in rows.items() if d not in have]
            if upd:
                conn.execute(w.update().where(w.c.device_id == bindparam("b_device_id"))
                             .values({k: bindparam(k) for k in ("desired_id", "rollout_id", "doc", "updated_at")}),
                             upd)
            if new:
                conn.execute(w.insert(), new)
        for device_id, r in rows.items():
            self._publish_desired(device_id, r["doc"])

    def get_desired(self, device_id: str) -> DesiredState | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(T.desired.c.doc).where(T.desired.c.device_id == device_id)).first()
        return DesiredState.model_validate(r.doc) if r else None

    def _publish_desired(self, device_id: str, body: dict[str, Any]) -> None:
        pub = self._ensure_publisher()
        if pub is None:
            log.info("desired state of %s stored; no broker configured yet, published when the hub starts",
                     device_id)
            return
        pub.publish(topic(self.prefix, device_id, "desired"), body)

    def _ensure_publisher(self):
        with self._lock:
            if self._publisher is None and self.mqtt_url:
                from cloud_hub.fleet.ingest import DesiredPublisher

                self._publisher = DesiredPublisher(self)
                self._publisher.start()
            return self._publisher

    def all_desired(self) -> list[tuple[str, dict[str, Any]]]:
        with self.engine.connect() as conn:
            return [(r.device_id, r.doc) for r in conn.execute(select(T.desired.c.device_id, T.desired.c.doc))]

    # ---- ingest writes (called by the subscriber's writer thread, in batches) ---------------
    def write_batch(self, states: Sequence[tuple[DeviceState, float]] = (),
                    events: Sequence[tuple[DeviceEvent, float]] = (),
                    windows: Sequence[tuple[TelemetryWindow, float]] = (), *,
                    validated: bool = False) -> None:
        """Store a batch. ``validated=True`` says every window passed
        :func:`cloud_hub.fleet.validate.split_windows` (the ingest's check): the aggregate then does
        not check its rows again."""
        seen: dict[str, float] = {}
        with self.engine.begin() as conn:
            if events:
                rows = []
                for ev, at in events:
                    rows.append({"event_id": ev.event_id, "device_id": ev.device_id, "step": ev.step,
                                 "slot": ev.slot, "bundle": ev.bundle, "desired_id": ev.desired_id,
                                 "rollout_id": ev.rollout_id, "reason": ev.reason, "ts": ev.ts,
                                 "received_at": at})
                    seen[ev.device_id] = max(seen.get(ev.device_id, 0.0), at)
                insert_ignore(conn, T.events, rows)
            last_window: dict[str, tuple[float, int, int]] = {}
            if windows:
                wrows, srows = [], []
                for w, at in windows:
                    wrows.append({"device_id": w.device_id, "seq": w.seq, "start": w.start, "end": w.end,
                                  "rss_bytes": int(w.rss_bytes), "cpu_percent": float(w.cpu_percent),
                                  "dropped_windows": w.dropped_windows, "received_at": at})
                    for s in w.slots:
                        srows.append({"device_id": w.device_id, "seq": w.seq, "start": w.start, "end": w.end,
                                      "slot": s.slot, "name": s.name, "version": s.version, "sha256": s.sha256,
                                      "requests": s.requests, "errors": s.errors, "calls": s.calls,
                                      "errored_calls": s.errored_calls, "latency": s.latency,
                                      "scores": s.scores, "decisions": s.decisions, "compared": s.compared,
                                      "decision_changed": s.decision_changed,
                                      "compared_calls": s.compared_calls, "changed_share": s.changed_share,
                                      "divergence": s.divergence,
                                      "dropped": s.dropped, "validated": validated})
                    prev = last_window.get(w.device_id)
                    if prev is None or w.seq > prev[1]:
                        last_window[w.device_id] = (at, w.seq, w.dropped_windows)
                    seen[w.device_id] = max(seen.get(w.device_id, 0.0), at)
                insert_ignore(conn, T.windows, wrows)
                insert_ignore(conn, T.slot_stats, srows)
            latest_state: dict[str, tuple[DeviceState, float]] = {}
            for st, at in states:  # in arrival order: the last one wins
                latest_state[st.device_id] = (st, at)
                seen[st.device_id] = max(seen.get(st.device_id, 0.0), at)
            ids = set(seen)
            if not ids:
                return
            ds = T.device_state
            # only the columns the merge needs (the state document only where a will may need it)
            existing = {r.device_id: r.last_seq for r in conn.execute(
                select(ds.c.device_id, ds.c.last_seq).where(ds.c.device_id.in_(ids)))}
            bare_wills = [d for d, (st, _) in latest_state.items()
                          if d in existing and not st.online and not st.bundles]
            old_docs = {r.device_id: r.state for r in conn.execute(
                select(ds.c.device_id, ds.c.state).where(ds.c.device_id.in_(bare_wills)))} if bare_wills else {}
            updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for dev_id in ids:
                vals: dict[str, Any] = {"last_seen": seen[dev_id]}
                if dev_id in latest_state:
                    st, _ = latest_state[dev_id]
                    doc = st.model_dump(mode="json")
                    if dev_id in old_docs and old_docs[dev_id]:
                        # a last will set before the device installed anything: keep the
                        # last known running bundles, shown as offline
                        doc["bundles"] = (old_docs[dev_id] or {}).get("bundles", [])
                    vals.update(online=st.online, state=doc)
                    if st.online or st.applied_desired_id:
                        vals["applied_desired_id"] = st.applied_desired_id
                if dev_id in last_window:
                    at, seq, dropped = last_window[dev_id]
                    vals["last_window_at"] = at
                    old_seq = existing.get(dev_id)
                    if old_seq is None or seq >= old_seq:
                        vals["last_seq"] = seq
                        vals["dropped_windows"] = dropped
                if dev_id in existing:
                    updates.setdefault(tuple(sorted(vals)), []).append({"b_device_id": dev_id, **vals})
                else:
                    vals.setdefault("online", dev_id in latest_state and latest_state[dev_id][0].online)
                    vals.setdefault("state", {"device_id": dev_id, "online": vals["online"]})
                    conn.execute(ds.insert().values(device_id=dev_id, **vals))
            # one executemany per set of changed columns (a statement per device cost ~1 ms each)
            for cols, rows in updates.items():
                conn.execute(ds.update().where(ds.c.device_id == bindparam("b_device_id"))
                             .values({c: bindparam(c) for c in cols}), rows)

    # ---- reads for rollouts / API ------------------------------------------------------
    def window_stats(self, device_ids: Iterable[str] | None = None, *, name: str | None = None,
                     version: str | None = None, slot: str | None = None, since: float | None = None,
                     until: float | None = None, sha256: str | None = None) -> SlotAggregate:
        """Merge the per-slot stats of the matching windows (``since``/``until`` on window end time)."""
        agg = SlotAggregate()
        for r in self._slot_rows(device_ids, name=name, version=version, slot=slot, since=since,
                                 until=until, sha256=sha256):
            agg.add_row(r)
        return agg

    def _slot_rows(self, device_ids: Iterable[str] | None = None, **flt: Any) -> list[dict[str, Any]]:
        s = T.slot_stats
        conds = []
        for key in ("name", "version", "slot", "sha256"):
            if flt.get(key) is not None:
                conds.append(s.c[key] == flt[key])
        if flt.get("since") is not None:
            conds.append(s.c.end >= float(flt["since"]))
        if flt.get("until") is not None:
            conds.append(s.c.end < float(flt["until"]))
        ids = None if device_ids is None else list(device_ids)
        q = select(s)
        if conds:
            q = q.where(and_(*conds))
        rows: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            if ids is None:
                rows = [dict(r._mapping) for r in conn.execute(q)]
            else:
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    rows += [dict(r._mapping) for r in conn.execute(q.where(s.c.device_id.in_(chunk)))]
        return rows

    def stats(self, model: str | None = None, *, by: str = "version", tag: str | None = None,
              slot: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Fleet stats of ``model`` grouped ``by`` version | tag | device | slot."""
        if by not in ("version", "tag", "device", "slot"):
            raise ValidationError(f"--by must be version, tag, device or slot (got {by!r})", field="by")
        rows = self._slot_rows(None, name=model, slot=slot, since=since)
        tags_of = {r.id: r.tags for r in self._records()} if by == "tag" else {}
        groups: dict[tuple, SlotAggregate] = {}
        for r in rows:
            if by == "version":
                keys = [(("name", r["name"]), ("version", r["version"]), ("slot", r["slot"]))]
            elif by == "slot":
                keys = [(("name", r["name"]), ("slot", r["slot"]))]
            elif by == "device":
                keys = [(("device_id", r["device_id"]), ("name", r["name"]), ("version", r["version"]),
                         ("slot", r["slot"]))]
            else:
                dtags = tags_of.get(r["device_id"], {})
                items = [(tag, dtags.get(tag, ""))] if tag else sorted(dtags.items())
                keys = [(("tag", f"{k}={v}"), ("name", r["name"]), ("version", r["version"]),
                         ("slot", r["slot"])) for k, v in items]
            for key in keys:
                groups.setdefault(key, SlotAggregate()).add_row(r)
        out = []
        for key in sorted(groups):
            out.append({**dict(key), **groups[key].to_dict()})
        return out

    def events(self, device_id: str | None = None, rollout_id: str | None = None,
               since: float | None = None, limit: int = 1000, desired_id: str | None = None
               ) -> list[DeviceEvent]:
        """Events in arrival order; ``since`` filters on the device's event time."""
        e = T.events
        q = select(e)
        if device_id is not None:
            q = q.where(e.c.device_id == device_id)
        if rollout_id is not None:
            q = q.where(e.c.rollout_id == rollout_id)
        if desired_id is not None:
            q = q.where(e.c.desired_id == desired_id)
        if since is not None:
            q = q.where(e.c.ts >= float(since))
        q = q.order_by(e.c.id.desc()).limit(int(limit))
        with self.engine.connect() as conn:
            rows = list(conn.execute(q))
        return [DeviceEvent(device_id=r.device_id, event_id=r.event_id, step=r.step, slot=r.slot,
                            bundle=r.bundle, desired_id=r.desired_id, rollout_id=r.rollout_id,
                            reason=r.reason, ts=r.ts) for r in reversed(rows)]

    def window_count(self, device_id: str | None = None) -> int:
        from sqlalchemy import func

        q = select(func.count()).select_from(T.windows)
        if device_id is not None:
            q = q.where(T.windows.c.device_id == device_id)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def window_seqs(self, device_id: str) -> list[int]:
        with self.engine.connect() as conn:
            return sorted(conn.execute(select(T.windows.c.seq).where(T.windows.c.device_id == device_id))
                          .scalars())

    def window_summary(self, device_ids: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """Per device: stored windows, first and last seq, and ``missing`` — seqs between the first
        and the last that the hub never stored (lost, or dropped by a full device buffer, which the
        device counts in ``dropped_windows``; windows still in flight after the last one are not
        counted). One grouped query, so the whole fleet's gaps are cheap to list."""
        from sqlalchemy import func

        w = T.windows
        q = select(w.c.device_id, func.count(), func.min(w.c.seq), func.max(w.c.seq)).group_by(w.c.device_id)
        if device_ids is not None:
            q = q.where(w.c.device_id.in_(list(device_ids)))
        with self.engine.connect() as conn:
            return {d: {"windows": int(n), "first_seq": int(lo), "last_seq": int(hi),
                        "missing": int(hi) - int(lo) + 1 - int(n)}
                    for d, n, lo, hi in conn.execute(q)}

    def missing_seqs(self, device_id: str, limit: int = 100) -> list[tuple[int, int]]:
        """The first ``limit`` gaps (inclusive seq ranges) between the device's stored windows."""
        gaps: list[tuple[int, int]] = []
        prev: int | None = None
        for s in self.window_seqs(device_id):
            if prev is not None and s > prev + 1:
                gaps.append((prev + 1, s - 1))
                if len(gaps) >= limit:
                    break
            prev = s
        return gaps

    # ---- ACL ----------------------------------------------------------------------------
    def write_acl(self, out_dir, hub_user: str | None = None, hub_password: str | None = None):
        """Write mosquitto ``passwd`` + ``acl`` files for the registered devices (and the hub's user)."""
        with self.engine.connect() as conn:
            hashes = {r.id: r.credentials_hash for r in conn.execute(select(T.devices))
                      if r.credentials_hash}
        user = hub_user or self.settings.mqtt_username or "hub"
        pw = hub_password if hub_password is not None else self.settings.mqtt_password
        hub_users = {user: hash_password(pw) if pw else ""}
        return write_acl_files(out_dir, self.prefix, hashes, hub_users)

    def write_broker_config(self, out_dir, *, port: int = 1883, bind: str = "", hub_user: str | None = None,
                            hub_password: str | None = None, plugin: str | None = None,
                            run_as: str | None = None) -> dict[str, Any]:
        """Write ``passwd``, ``acl``, ``dynamic-security.json`` and a ready ``mosquitto.conf``
        (:func:`cloud_hub.fleet.acl.write_broker_config`); devices without a password are left out."""
        from cloud_hub.fleet.acl import write_broker_config
        from edge_runtime.link import client_id_for

        with self.engine.connect() as conn:
            hashes = {r.id: r.credentials_hash for r in conn.execute(select(T.devices)) if r.credentials_hash}
            without = [r.id for r in conn.execute(select(T.devices.c.id, T.devices.c.credentials_hash))
                       if not r.credentials_hash]
        user = hub_user or self.settings.mqtt_username or "hub"
        pw = hub_password if hub_password is not None else self.settings.mqtt_password
        paths = write_broker_config(out_dir, self.prefix, hashes, {user: hash_password(pw) if pw else ""},
                                    {d: client_id_for(d, self.prefix) for d in hashes}, port=port, bind=bind,
                                    plugin=plugin, run_as=run_as)
        return {**paths, "devices": len(hashes), "without_password": without, "hub_user": user}

    # ---- MQTT lifecycle -------------------------------------------------------------------
    def start(self, *, ingest: bool = True, embedded_ok: bool = True, session_expiry: int = 3600) -> str:
        """Start the embedded broker (when no ``HUB_MQTT_URL``), the ingest and the publisher."""
        if self.mqtt_url is None:
            if not embedded_ok:
                raise ValidationError("HUB_MQTT_URL is not set", field="mqtt_url")
            from cloud_hub.fleet.broker import EmbeddedBroker

            self.broker = EmbeddedBroker()
            self.broker.start()
            self.mqtt_url = self.broker.url
            self.mqtt_protocol = "3.1.1"
            log.warning("no HUB_MQTT_URL: started an embedded MQTT broker (amqtt, MQTT 3.1.1) on %s; "
                        "use Mosquitto or another MQTT v5 broker in production", self.broker.url)
        if ingest and self.ingest is None:
            from cloud_hub.fleet.ingest import IngestSubscriber

            self.ingest = IngestSubscriber(self, session_expiry=session_expiry)
            self.ingest.start()
        self._ensure_publisher()
        self.hub.on_close(self.stop)
        return self.mqtt_url

    def stop(self) -> None:
        if self.ingest is not None:
            self.ingest.stop()
            self.ingest = None
        if self._publisher is not None:
            self._publisher.stop()
            self._publisher = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
            self.mqtt_url = self.settings.mqtt_url
