"""Hub settings (pydantic-settings, ``HUB_`` prefix; a TOML/JSON file is optional).

Every field has a description; ``cloud-hub serve --help`` and the README list
them. Placeholder secrets are refused outside dev mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_KEYS = {"changeme", "admin", "secret", "dev-admin-key", "dev-client-key"}


class HubSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUB_", extra="ignore")

    data_dir: Path = Field(Path("./hub-data"), description="Artifacts, SQLite database and keys live here.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/hub.db. "
                                     "Use postgresql+psycopg://… for several replicas.")
    host: str = Field("127.0.0.1", description="Address `cloud-hub serve` binds.")
    port: int = Field(8000, description="Port `cloud-hub serve` binds.")
    public_url: str | None = Field(None, description="URL devices use to download bundles; "
                                   "default http://<host>:<port>.")
    mqtt_url: str | None = Field(None, description="Broker URL (mqtt://host:port). Unset: start an "
                                 "embedded amqtt broker on a free port.")
    mqtt_prefix: str = Field("edgefleet/v1", description="Topic prefix of the device protocol.")
    mqtt_username: str | None = Field(None, description="Hub's broker user name.")
    mqtt_password: str | None = Field(None, description="Hub's broker password.")
    signing_key: Path | None = Field(None, description="ed25519 private key (PEM) the hub signs bundles "
                                     "with; default <data_dir>/keys/hub.key, created in dev mode.")
    trusted_keys: list[Path] = Field(default_factory=list, description="Public keys (PEM) whose "
                                     "signatures the registry accepts on upload.")
    allow_unsigned: bool = Field(False, description="Accept unsigned bundle uploads (the hub signs them).")
    admin_keys: list[str] = Field(default_factory=list, description="API keys with the admin role.")
    client_keys: list[str] = Field(default_factory=list, description="API keys with the inference-client role.")
    viewer_keys: list[str] = Field(default_factory=list, description="API keys with the read-only role.")
    dev: bool = Field(False, description="Dev mode: generate keys and accept placeholder API keys.")
    max_body_bytes: int = Field(8 * 1024 * 1024, description="Largest request body accepted (413 above).")
    max_upload_bytes: int = Field(512 * 1024 * 1024, description="Largest bundle upload accepted; "
                                  "also the largest size a bundle tar may unpack to.")
    artifacts: Literal["local", "database"] = Field(
        "local", description="Where bundle artifacts live: 'local' (<data_dir>/artifacts; replicas must "
        "share that directory) or 'database' (blobs in the hub database, so replicas need only it).")
    shadow_queue_size: int = Field(10_000, description="Bounded shadow mirror queue; overflow is dropped and counted.")
    shadow_executor: str = Field("thread", description="Where shadows run: 'thread' (worker thread in the hub "
                                 "process) or 'process' (a separate process: no GIL shared with the primary).")
    microbatch: bool = Field(True, description="Adaptive micro-batching of concurrent predict calls: "
                             "a lone request runs at once, concurrent ones for the same bundle share one "
                             "engine call (see Hub REST in benchmarks/RESULTS.md). 0 turns it off.")
    microbatch_max_size: int = Field(64, description="Largest micro-batch.")
    microbatch_max_wait_ms: float = Field(2.0, description="Longest wait to fill a micro-batch (it closes "
                                          "earlier, as soon as two event-loop turns add no request).")
    onnx_providers: list[str] = Field(default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
                                      description="ONNX Runtime providers, best first; unavailable ones are skipped.")
    threads: int = Field(1, description="ONNX Runtime intra-op threads per model.")
    access_log: bool = Field(True, description="Log one JSON line per HTTP request (with its request id).")
    log_level: str = Field("info", description="Log level of `cloud-hub serve` (debug, info, warning, error).")
    log_format: str = Field("json", description="Log format of `cloud-hub serve`: json (structured) or text.")
    rollout_tick_s: float = Field(5.0, description="Rollout controller tick interval.")
    device_silent_after_s: float = Field(120.0, description="A device with no telemetry for this long is 'unknown'.")

    @model_validator(mode="after")
    def _check_secrets(self) -> "HubSettings":
        if not self.dev:
            weak = [k for k in self.admin_keys + self.client_keys + self.viewer_keys
                    if k in PLACEHOLDER_KEYS or len(k) < 16]
            if weak:
                raise ValueError("placeholder or short API key (< 16 chars) refused outside dev "
                                 "mode (HUB_DEV=1 allows it)")
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'hub.db').resolve()}"

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"
