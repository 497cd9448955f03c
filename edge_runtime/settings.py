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
import socket
import tomllib
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, TomlConfigSettingsSource

from edge_runtime.errors import ValidationError

_TOML_PATH: contextvars.ContextVar[Path | None] = contextvars.ContextVar("edge_toml", default=None)

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
    keepalive_s: int = Field(30, ge=5, description="MQTT keep-alive; the hub sees the device "
                             "offline (LWT) about 1.5× this after it vanishes.")


class HubSection(_Section):
    url: str | None = Field(None, description="Hub base URL; bundles are downloaded from "
                            "{url}/v1/bundles/{sha256}.")
    allow_file_urls: bool = Field(False, description="Accept file:// bundle URLs in desired documents "
                                  "(a local path; development and air-gapped setups only).")


class StoreSection(_Section):
    dir: Path = Field(Path("edge-data"), description="Model store directory (slots, journal).")
    public_keys: list[Path] = Field(default_factory=list,
                                    description="Fleet ed25519 public key PEM files; a bundle must be "
                                    "signed by one of them.")
    public_key: Path | None = Field(None, description="Shorthand for a single public key file.")
    allow_unsigned: bool = Field(False, description="Accept unsigned bundles (development only).")
    latency_runs: int = Field(200, ge=10, description="Single-row runs timed for the p99 budget check.")

    def key_paths(self) -> list[Path]:
        keys = list(self.public_keys)
        if self.public_key is not None and self.public_key not in keys:
            keys.append(self.public_key)
        return keys


class TelemetrySection(_Section):
    interval_s: float = Field(10.0, gt=0, description="Seconds per telemetry window.")
    buffer_max_windows: int = Field(10_000, ge=1, description="Windows kept while offline; the "
                                    "oldest are dropped (and counted) past this.")


class ShadowSection(_Section):
    sample_rate: float = Field(1.0, ge=0.0, le=1.0,
                               description="Fraction of requests mirrored to the shadow model "
                               "(off the critical path).")


class LocalApiSection(_Section):
    enabled: bool = Field(True, description="Serve the local HTTP endpoint.")
    host: str = Field("127.0.0.1", description="Bind address; keep it on loopback (no auth).")
    port: int = Field(8700, ge=0, le=65535, description="TCP port (0 picks a free one).")
    unix_socket: Path | None = Field(None, description="Also serve on this Unix socket path.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Larger request bodies get 413.")
    max_rows: int = Field(10_000, ge=1, description="Most rows accepted in one /predict call.")


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
    log_level: str = Field("INFO", description="Python logging level.")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return v

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
    """Read ``device.toml`` (optional) + ``EDGE_*`` variables; refuse bad values by field."""
    toml_path = None
    if path is not None:
        toml_path = Path(path)
        if not toml_path.is_file():
            raise ValidationError(f"config file not found: {toml_path}", field="config")
        try:
            tomllib.loads(toml_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValidationError(f"{toml_path} is not valid TOML: {exc}", field="config") from exc
    token = _TOML_PATH.set(toml_path)
    try:
        settings = EdgeSettings(**overrides)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        where = f" in {toml_path}" if toml_path else ""
        raise ValidationError(f"invalid setting {loc}{where}: {err['msg']}", field=loc) from exc
    finally:
        _TOML_PATH.reset(token)
    if toml_path is not None:
        _resolve_paths(settings, toml_path.resolve().parent)
    return settings


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
