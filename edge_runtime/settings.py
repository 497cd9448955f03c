"""Device settings: ``device.toml`` plus ``EDGE_*`` environment variables.

Precedence (highest first): keyword arguments, environment variables
(``EDGE_DEVICE__ID``, ``EDGE_MQTT__URL``, ``EDGE_LOCAL_API__PORT`` … — sections
joined with ``__``), the TOML file, then the defaults below. Relative paths in
the TOML file are resolved against the file's own directory, so a daemon
started from anywhere finds its store and keys.

    from edge_runtime.settings import load_settings
    settings = load_settings("device.toml")
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import socket
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import pydantic
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from edge_runtime.errors import ValidationError, field_path

log = logging.getLogger("edge_runtime.settings")


def _not_bool(value: Any) -> Any:
    # pydantic's lax mode reads true as 1: `port = true` would bind port 1
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")  # noqa: TRY004 - pydantic reports ValueError
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]

_TOML_PATH: contextvars.ContextVar[Path | None] = contextvars.ContextVar("edge_toml", default=None)

MIN_INTERVAL_S = 0.5  # telemetry windows: the floor outside dev mode
PLACEHOLDER_SECRETS = {"changeme", "change-me", "change_me", "password", "secret", "xxx", "todo"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceSection(_Section):
    id: str = Field(default_factory=socket.gethostname, min_length=1,
                    pattern=r"^[A-Za-z0-9_.\-]+$",
                    description="Device id: the MQTT topic segment and the hub's key for this device.")
    profile: str = Field("x86-gateway", description="Device profile name (devices/profiles) or a "
                         "path to a profile TOML: threads, memory and latency budgets.")
    tags: dict[str, str] = Field(default_factory=dict,
                                 description="Labels used by rollout cohort selectors, e.g. region.")


class MqttSection(_Section):
    url: str | None = Field(None, description="Broker URL, mqtt://host:1883 or mqtts://host:8883; "
                            "None runs the device offline (local inference only).")
    username: str | None = Field(None, description="MQTT username (usually the device id).")
    password: SecretStr | None = Field(None, description="MQTT password.")
    ca_file: Path | None = Field(None, description="CA bundle to verify the broker's TLS certificate.")
    certfile: Path | None = Field(None, description="Client certificate for TLS client auth.")
    keyfile: Path | None = Field(None, description="Private key of the client certificate.")
    prefix: str = Field("edgefleet/v1", description="Topic prefix shared with the hub.")
    keepalive_s: Int = Field(30, ge=5, le=65535, description="MQTT keep-alive; the hub sees the device "
                             "offline (LWT) about 1.5× this after it vanishes.")


    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        u = urlparse(v)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ValueError(f"{v!r} must look like mqtt://host:1883 or mqtts://host:8883")
        try:
            u.port  # noqa: B018 - raises on a port that is not a number in 0-65535
        except ValueError:
            raise ValueError(f"{v!r}: the port must be a number 1-65535") from None
        return v


class HubSection(_Section):
    url: str | None = Field(None, description="Hub base URL; bundles are downloaded from "
                            "{url}/v1/bundles/{sha256}.")
    allow_file_urls: bool = Field(False, description="Accept file:// bundle URLs in desired documents "
                                  "(a local path; development and air-gapped setups only).")
    install_jitter_s: Float = Field(1.0, ge=0.0, le=3600.0, description="Before downloading a bundle a "
                                    "desired document asks for, wait a random 0…this many seconds, so a "
                                    "fleet told at once does not download and self-test in the same "
                                    "instant; a newer desired document ends the wait, and a rollback to "
                                    "the previous model (a local slot swap) is never delayed. 0: no wait.")


class StoreSection(_Section):
    dir: Path = Field(Path("edge-data"), description="Model store directory (slots, journal).")
    public_keys: list[Path] = Field(default_factory=list,
                                    description="Fleet ed25519 public key PEM files; a bundle must be "
                                    "signed by one of them.")
    public_key: Path | None = Field(None, description="Shorthand for a single public key file.")
    allow_unsigned: bool = Field(False, description="Accept unsigned bundles (development only).")
    latency_runs: Int = Field(200, ge=10, le=100_000, description="Single-row runs timed for the p99 budget check.")

    def key_paths(self) -> list[Path]:
        keys = list(self.public_keys)
        if self.public_key is not None and self.public_key not in keys:
            keys.append(self.public_key)
        return keys


class TelemetrySection(_Section):
    interval_s: Float = Field(10.0, ge=0.05, le=86400.0, description="Seconds per telemetry "
                              "window: 0.5 s … 1 day (down to 0.05 s with dev = true, for "
                              "simulations and tests).")
    buffer_max_windows: Int = Field(10_000, ge=1, description="Windows kept while offline; the "
                                    "oldest are dropped (and counted) past this.")


class ShadowSection(_Section):
    sample_rate: Float = Field(1.0, ge=0.0, le=1.0,
                               description="Fraction of requests mirrored to the shadow model "
                               "(off the critical path).")


class LocalApiSection(_Section):
    enabled: bool = Field(True, description="Serve the local HTTP endpoint.")
    host: str = Field("127.0.0.1", description="Bind address; keep it on loopback (no auth).")
    port: Int = Field(8700, ge=0, le=65535, description="TCP port (0 picks a free one).")
    unix_socket: Path | None = Field(None, description="Also serve on this Unix socket path.")
    max_body_bytes: Int = Field(1 << 20, ge=1024, le=1 << 30, description="Larger request bodies get 413.")
    max_rows: Int = Field(10_000, ge=1, description="Most rows accepted in one /predict call.")
    max_connections: Int = Field(256, ge=1, le=65536, description="Open connections at most; past "
                                 "it the longest-idle keep-alive one is closed, else 503.")
    workers: Int = Field(4, ge=1, le=64, description="Threads that serve requests: one I/O "
                         "thread runs fast ones inline, workers - 1 pool threads run slow ones (body "
                         "over 64 KiB, or a slow model); idle connections hold none.")
    header_timeout_s: Float = Field(10.0, ge=0.1, le=3600, description="A request head must "
                                    "arrive within this many seconds of its first byte (else 408).")
    body_timeout_s: Float = Field(30.0, ge=0.1, le=3600, description="A request body must arrive "
                                  "within this many seconds of its head (else 408).")
    idle_timeout_s: Float = Field(30.0, ge=0.1, le=86400, description="Idle keep-alive "
                                  "connections are closed after this many seconds.")
    max_buffered_bytes: Int = Field(16 << 20, ge=1 << 20, description="Request bodies over 64 KiB "
                                    "held at once, all connections together (past it: 503).")


class EdgeSettings(BaseSettings):
    """All device settings; each section is a table in ``device.toml``."""

    model_config = SettingsConfigDict(env_prefix="EDGE_", env_nested_delimiter="__",
                                      extra="forbid")

    device: DeviceSection = Field(default_factory=DeviceSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    hub: HubSection = Field(default_factory=HubSection)
    store: StoreSection = Field(default_factory=StoreSection)
    telemetry: TelemetrySection = Field(default_factory=TelemetrySection)
    shadow: ShadowSection = Field(default_factory=ShadowSection)
    local_api: LocalApiSection = Field(default_factory=LocalApiSection)
    dev: bool = Field(False, description="Development mode: allows placeholder secrets.")
    allow_insecure_secrets: bool = Field(False, description="Start even when a secret (TLS key, "
                                         "a config file holding the MQTT password) is readable "
                                         "by other users: warn instead of refusing.")
    log_level: str = Field("INFO", description="Python logging level.")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return v

    @model_validator(mode="after")
    def _interval_floor(self) -> EdgeSettings:
        if not self.dev and self.telemetry.interval_s < MIN_INTERVAL_S:
            raise ValueError(f"telemetry.interval_s: {self.telemetry.interval_s:g} s is below "
                             f"{MIN_INTERVAL_S:g} s (a window per few ms burns the CPU; smaller "
                             "only with dev = true)")
        return self

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> EdgeSettings:
        pw = self.mqtt.password
        if not self.dev and pw is not None and pw.get_secret_value().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("mqtt.password is a placeholder; set a real secret (or dev = true)")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        path = _TOML_PATH.get()
        sources = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def load_settings(path: str | Path | None = None, **overrides: Any) -> EdgeSettings:
    """Read ``device.toml`` (optional) + ``EDGE_*`` variables; refuse bad values by field.

    Every refusal is one line naming the setting and where it came from
    (``env EDGE_LOCAL_API__PORT``, ``device.toml:12`` or ``argument``).
    """
    toml_path = None
    text = ""
    if path is not None:
        toml_path = Path(path)
        if not toml_path.is_file():
            raise ValidationError(f"config file not found: {toml_path}", field="config")
        try:
            text = toml_path.read_text()
            doc = tomllib.loads(text)
        except OSError as exc:
            raise ValidationError(f"cannot read {toml_path}: {exc.strerror}", field="config") from exc
        except UnicodeDecodeError as exc:
            raise ValidationError(f"{toml_path} is not UTF-8 text", field="config") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ValidationError(f"{toml_path} is not valid TOML: {exc}", field="config") from exc
    else:
        doc = {}
    token = _TOML_PATH.set(toml_path)
    try:
        settings = EdgeSettings(**overrides)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        where = err["loc"]
        m = re.match(r"^([a-z_]+\.[a-z_]+): ", msg) if not where else None
        if m:  # a check across fields names the field it is about
            where, msg = tuple(m.group(1).split(".")), msg[m.end():]
        loc = field_path(*where) or "settings"
        src = _source(where, toml_path, text, overrides)
        raise ValidationError(f"invalid setting {loc} ({src}): {msg}", field=loc) from None
    except SettingsError as exc:  # an EDGE_* variable that is not valid JSON for its field
        m = re.search(r'field "(\w+)"', str(exc))
        section = m.group(1) if m else ""
        names = sorted(k for k in os.environ if k.upper().startswith(f"EDGE_{section.upper()}"))
        where = f"env {names[0]}" if names else "the environment"
        field = names[0][5:].lower().replace("__", ".") if names else section or "settings"
        raise ValidationError(f"invalid setting {field} ({where}): the value must be JSON for a "
                              f"list or a table, e.g. '[\"a.pub\"]' or '{{\"port\": 8700}}'",
                              field=field) from None
    finally:
        _TOML_PATH.reset(token)
    if toml_path is not None:
        _resolve_paths(settings, toml_path.resolve().parent)
    _check_files(settings, toml_path, text, overrides)
    _check_secret_modes(settings, toml_path, doc)
    return settings


def _source(loc: tuple[Any, ...], toml_path: Path | None, text: str,
            overrides: dict[str, Any]) -> str:
    """Where the value at ``loc`` came from: an argument, an EDGE_* variable or a TOML line."""
    keys = [str(p) for p in loc if not isinstance(p, int)]
    if keys and keys[0] in overrides:
        return "argument"
    env = {k.upper(): k for k in os.environ}
    for n in range(len(keys), 0, -1):
        name = "EDGE_" + "__".join(keys[:n]).upper()
        if name in env:
            return f"env {env[name]}"
    if toml_path is not None and keys:
        line = _toml_line(text, keys)
        if line:
            return f"{toml_path.name}:{line}"
        return str(toml_path.name)
    return "default"


def _toml_line(text: str, keys: list[str]) -> int | None:
    """The line of ``[a] b = …`` (or ``[a]`` alone) in a TOML text; None when not found."""
    table: list[str] = []
    section_line = None
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = re.match(r"^\[\s*([A-Za-z0-9_.\-\s]+?)\s*\]", line)
        if m:
            table = [p.strip() for p in m.group(1).split(".")]
            if table == keys[:len(table)] and section_line is None:
                section_line = i
            continue
        m = re.match(r"^([A-Za-z0-9_.\-\s]+?)\s*=", line)
        if m:
            full = table + [p.strip() for p in m.group(1).split(".")]
            if full == keys[:len(full)]:
                return i
    return section_line


def _check_files(s: EdgeSettings, toml_path: Path | None, text: str,
                 overrides: dict[str, Any]) -> None:
    files: list[tuple[tuple[str, ...], Path | None]] = [
        (("mqtt", "ca_file"), s.mqtt.ca_file), (("mqtt", "certfile"), s.mqtt.certfile),
        (("mqtt", "keyfile"), s.mqtt.keyfile), (("store", "public_key"), s.store.public_key)]
    files += [(("store", "public_keys"), p) for p in s.store.public_keys]
    for loc, p in files:
        if p is not None and not p.is_file():
            what = "not a file" if p.exists() else "file not found"
            src = _source(loc, toml_path, text, overrides)
            raise ValidationError(f"invalid setting {'.'.join(loc)} ({src}): {what}: {p}",
                                  field=".".join(loc))


def _check_secret_modes(s: EdgeSettings, toml_path: Path | None, doc: dict[str, Any]) -> None:
    """A TLS key, or a config file holding the MQTT password, must not be readable by others."""
    secrets: list[tuple[str, Path]] = []
    if s.mqtt.keyfile is not None:
        secrets.append(("mqtt.keyfile", s.mqtt.keyfile))
    if toml_path is not None and isinstance(doc.get("mqtt"), dict) and "password" in doc["mqtt"]:
        secrets.append(("mqtt.password", toml_path))
    for what, p in secrets:
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
        except OSError:
            continue
        if mode & 0o007:
            msg = (f"{p} holds a secret ({what}) and is readable by other users (mode "
                   f"{mode:04o}): chmod 600 it, or set allow_insecure_secrets = true")
            if not s.allow_insecure_secrets:
                raise ValidationError(msg, field=what)
            log.warning("%s (allowed by allow_insecure_secrets)", msg)


def _resolve_paths(s: EdgeSettings, base: Path) -> None:
    def fix(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else base / p

    s.store.dir = fix(s.store.dir)
    s.store.public_keys = [fix(p) for p in s.store.public_keys]
    s.store.public_key = fix(s.store.public_key)
    s.mqtt.ca_file = fix(s.mqtt.ca_file)
    s.mqtt.certfile = fix(s.mqtt.certfile)
    s.mqtt.keyfile = fix(s.mqtt.keyfile)
    s.local_api.unix_socket = fix(s.local_api.unix_socket)
    if Path(s.device.profile).suffix:
        s.device.profile = str(fix(Path(s.device.profile)))
