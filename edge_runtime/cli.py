"""``edge-runtime``: the device command line. It only parses and prints.

    edge-runtime predict --bundle DIR --input JSON|@FILE|FILE
    edge-runtime serve --bundle DIR [--host H --port P --unix-socket PATH]
    edge-runtime run --config device.toml
    edge-runtime bench --bundle DIR [--runs N --batch N --http]
    edge-runtime bundle inspect|verify|sign PATH
    edge-runtime keygen --out fleet.key
    edge-runtime store status|install|rollback|promote|remove --config device.toml
    edge-runtime install-service [--config /etc/edgefleet/device.toml] [--user edgefleet] [--dry-run]

Domain errors print one line on stderr (``edge-runtime: error: MESSAGE (code, field F)``,
``edge_runtime.errors.error_line``) and exit 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_runtime import __version__, keygen
from edge_runtime.errors import ValidationError, run_cli


# ---- helpers ----------------------------------------------------------------------------
def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _read_input(text: str) -> Any:
    """``@FILE``, ``@-`` (stdin), an existing file path, or inline JSON."""
    source = "--input"
    if text.startswith("@"):
        path = text[1:]
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except OSError as exc:
            raise ValidationError(f"cannot read input file {path}: {exc.strerror}",
                                  field="input") from exc
        source = path
    elif not text.lstrip().startswith(("{", "[")) and Path(text).is_file():
        source = text
        text = Path(text).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{source} is not valid JSON (line {exc.lineno} column {exc.colno}: "
                              f"{exc.msg})", field="input") from exc


def _rows_of(payload: Any) -> Any:
    if isinstance(payload, dict) and "rows" in payload:
        return payload["rows"]
    return payload


def _keys(paths: list[str] | None):
    from edge_runtime.signing import load_public_key

    return [load_public_key(p) for p in (paths or [])]


def _settings(args: argparse.Namespace, **overrides: Any):
    from edge_runtime.settings import load_settings

    return load_settings(getattr(args, "config", None), **overrides)


def _load_verified(args: argparse.Namespace):
    """Read a bundle, check its hashes (and signature when keys are given), load it."""
    from edge_runtime.bundle import read_bundle, verify_bundle
    from edge_runtime.model import Model
    from edge_runtime.profile import load_profile

    bundle = read_bundle(args.bundle)
    keys = _keys(args.public_key)
    verify_bundle(bundle, keys, require_signature=bool(keys))
    profile = load_profile(args.profile) if args.profile else None
    return Model.load(bundle, profile.engine_options() if profile else None)


# ---- commands ------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    from edge_runtime.daemon import model_ref

    payload = _read_input(args.input)
    model = _load_verified(args)
    if isinstance(payload, dict) and set(payload) == {"tensors"}:
        outs = model.run_tensors(payload["tensors"])
        _print_json({"model": model_ref(model),
                     "outputs": {n: o.tolist() for n, o in zip(model.engine.output_names, outs)}})
        return 0
    _print_json({"model": model_ref(model), "predictions": model.predict(_rows_of(payload))})
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from edge_runtime.daemon import Daemon

    api: dict[str, Any] = {}
    for key in ("host", "port", "unix_socket"):
        if getattr(args, key) is not None:
            api[key] = getattr(args, key)
    overrides: dict[str, Any] = {"local_api": api}
    if args.public_key:
        overrides["store"] = {"public_keys": args.public_key}
    if args.profile:
        overrides["device"] = {"profile": args.profile}
    settings = _settings(args, **overrides)
    daemon = Daemon(settings, bundle=args.bundle)
    model = daemon.model("active")

    def announce() -> None:
        print(f"serving {model.name} {model.version} on {', '.join(daemon.api.addresses)} "
              "(Ctrl-C to stop)", file=sys.stderr, flush=True)

    daemon.services.append(_Callback(announce))
    daemon.run_forever()
    return 0


class _Callback:
    def __init__(self, on_start) -> None:
        self.on_start = on_start

    def start(self) -> None:
        self.on_start()

    def stop(self) -> None:
        pass


def cmd_run(args: argparse.Namespace) -> int:
    from edge_runtime.daemon import Daemon

    settings = _settings(args)
    logging.getLogger().setLevel(settings.log_level)
    daemon = Daemon(settings)
    active = daemon.model("active")

    def announce() -> None:
        what = f"{active.name} {active.version}" if active else "no active model yet"
        where = ", ".join(daemon.api.addresses) if daemon.api else "local API disabled"
        print(f"device {settings.device.id} ({daemon.profile.name}): {what}; {where}",
              file=sys.stderr, flush=True)

    daemon.services.insert(0, _Callback(announce))
    daemon.run_forever()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_runtime.bench import bench_model, format_table

    model = _load_verified(args)
    daemon = None
    url = None
    if args.http:
        from edge_runtime.daemon import Daemon
        from edge_runtime.settings import load_settings

        daemon = Daemon(load_settings(local_api={"port": 0}), bundle=args.bundle).start()
        url = daemon.api.url
    try:
        result = bench_model(model, runs=args.runs, batch=args.batch, http_url=url)
    finally:
        if daemon is not None:
            daemon.stop()
    if args.json:
        _print_json(result)
    else:
        print(format_table(result))
    return 0


def cmd_bundle_inspect(args: argparse.Namespace) -> int:
    from edge_runtime.bundle import read_bundle

    b = read_bundle(args.path)
    m = b.manifest
    if args.json:
        _print_json({"sha256": m.digest, **m.model_dump(mode="json", exclude_none=True)})
        return 0
    lines = [f"name:      {m.name}", f"version:   {m.version}", f"sha256:    {m.digest}",
             f"format:    {m.format} ({m.model_file})", f"task:      {m.task}"]
    if m.inputs.kind == "features":
        feats = ", ".join(f"{f.name}:{f.dtype}" for f in m.inputs.features)
        lines.append(f"features:  {len(m.inputs.features)} -> tensor {m.inputs.tensor}: {feats}")
    else:
        lines.append("tensors:   " + ", ".join(f"{t.name}{t.shape}:{t.dtype}" for t in m.inputs.tensors))
    lines.append("outputs:   " + ", ".join(f"{o.name} ({o.role})" for o in m.outputs))
    pp = m.postprocess
    if pp.classes:
        lines.append(f"classes:   {pp.classes} positive={pp.positive_class} threshold={pp.threshold}")
    if pp.risk_levels:
        lines.append("risk:      " + ", ".join(f"{r.name}>={r.min:g}" for r in pp.risk_levels))
    lines.append(f"golden:    {sum(len(g.rows or []) for g in m.golden)} row(s) in "
                 f"{len(m.golden)} vector set(s)")
    for name, e in m.files.items():
        lines.append(f"file:      {name} {e.size} bytes sha256 {e.sha256}")
    if m.provenance:
        lines.append(f"provenance: {json.dumps(m.provenance, sort_keys=True)}")
    sig = m.signature
    lines.append(f"signature: {'ed25519 key ' + sig.key_id if sig else 'none (unsigned)'}")
    print("\n".join(lines))
    return 0


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    from edge_runtime.bundle import read_bundle, verify_bundle

    b = read_bundle(args.path)
    keys = _keys(args.public_key)
    if not keys and not args.allow_unsigned:
        raise ValidationError("give --public-key KEY.pub to check the signature "
                              "(or --allow-unsigned to check file hashes only)", field="public_key")
    report = verify_bundle(b, keys, require_signature=not args.allow_unsigned)
    what = f"signed by key {report.key_id}" if report.key_id else "hashes only, signature not checked"
    print(f"ok: {b.name} {b.version} sha256 {report.digest} ({len(report.files)} file(s) "
          f"match; {what})")
    return 0


def cmd_bundle_sign(args: argparse.Namespace) -> int:
    from edge_runtime.bundle import sign_bundle

    m = sign_bundle(args.path, args.key)
    print(f"signed {m.name} {m.version} (sha256 {m.digest}) with key {m.signature.key_id}")
    return 0


def _open_store(args: argparse.Namespace):
    from edge_runtime.profile import load_profile
    from edge_runtime.store import ModelStore

    s = _settings(args)
    return ModelStore(s.store.dir, load_profile(s.device.profile), s.store.key_paths(),
                      require_signature=not s.store.allow_unsigned,
                      latency_runs=s.store.latency_runs)


def cmd_store_status(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        st = store.status()
    if args.json:
        _print_json(st)
        return 0
    print(f"store {st['dir']} (profile {st['profile']})")
    for slot, info in st["slots"].items():
        desc = f"{info['name']} {info['version']} sha256 {info['sha256'][:16]}…" if info else "-"
        print(f"  {slot:<9}{desc}")
    for line in st["recovery"]:
        print(f"  recovered: {line}")
    return 0


def cmd_store_install(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        r = store.install(args.bundle, args.slot)
    if not r.switched:
        print(f"{r.name} {r.version} is already {r.slot}")
    else:
        print(f"{r.name} {r.version} is {r.slot}: {r.golden_checked} golden set(s) passed, "
              f"single-row p99 {r.p99_ms:.3f} ms, RSS +{r.rss_growth_mb:.1f} MB")
    return 0


def cmd_store_rollback(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        info = store.rollback()
    print(f"rolled back: {info.name} {info.version} is active")
    return 0


def cmd_store_promote(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        info = store.promote()
    print(f"promoted: {info.name} {info.version} is active")
    return 0


def cmd_store_remove(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        store.remove(args.slot)
    print(f"slot {args.slot} emptied")
    return 0


# ---- parser ------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _bundle_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle directory or .tar")
    p.add_argument("--public-key", action="append", metavar="KEY.pub",
                   help="fleet public key; when given, the signature must verify (repeatable)")
    p.add_argument("--profile", help="device profile for thread settings (e.g. rpi4)")


def cmd_install_service(args: argparse.Namespace) -> int:
    """Write the systemd unit (and create the account and store directory) or print it."""
    import os
    import pwd
    import shutil
    import subprocess

    from edge_runtime.systemd import UNIT_NAME, UnitOptions, render_unit

    config = Path(args.config).resolve()
    if config.is_file():
        store_dir = Path(_settings(args).store.dir).resolve()
    elif args.dry_run:
        store_dir = Path("/var/lib/edgefleet")
    else:
        raise ValidationError(f"config file not found: {config} (write it first, or use "
                              "--dry-run to see the unit)", field="config")
    if args.store_dir:
        store_dir = Path(args.store_dir).resolve()
    exec_path = Path(sys.executable).with_name("edge-runtime")
    if not exec_path.is_file():
        found = shutil.which("edge-runtime")
        if found is None:
            raise ValidationError("cannot find the edge-runtime executable to run",
                                  field="exec")
        exec_path = Path(found).resolve()
    unit = render_unit(UnitOptions(exec_path=exec_path, config=config, user=args.user,
                                   store_dir=store_dir, watchdog_s=args.watchdog))
    if args.dry_run:
        sys.stdout.write(unit)
        return 0
    if os.geteuid() != 0:
        raise ValidationError("install-service needs root (it creates a user and writes "
                              f"{args.unit_dir}); use --dry-run to print the unit", field="user")
    done: list[str] = []
    try:
        pwd.getpwnam(args.user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", str(store_dir), "--shell", "/usr/sbin/nologin", args.user],
                       check=True, capture_output=True)
        done.append(f"created system user {args.user}")
    account = pwd.getpwnam(args.user)
    store_dir.mkdir(parents=True, exist_ok=True)
    for path in [store_dir, *store_dir.rglob("*")]:
        os.chown(path, account.pw_uid, account.pw_gid)
    done.append(f"store directory {store_dir} owned by {args.user} (the only writable path)")
    unit_path = Path(args.unit_dir) / UNIT_NAME
    unit_path.parent.mkdir(parents=True, exist_ok=True)
    unit_path.write_text(unit)
    done.append(f"wrote {unit_path}")
    for line in done:
        print(line)
    print(f"next: systemctl daemon-reload && systemctl enable --now {UNIT_NAME.split('.')[0]}")
    print(f"logs: journalctl -u {UNIT_NAME.split('.')[0]} -f")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-runtime",
                                 description="On-device inference: run, serve and check model bundles.")
    ap.add_argument("--version", action="version", version=f"edge-runtime {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="predict rows with a bundle and print JSON",
                       description="Load a bundle (hashes checked), predict the input rows, print "
                       '{"model": {...}, "predictions": [...]}.')
    _bundle_opts(p)
    p.add_argument("--input", required=True, metavar="JSON|@FILE",
                   help='inline JSON ({"rows": [...]}, one row object or a list), @FILE, '
                   "@- for stdin, or a file path")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="serve one bundle on the local HTTP endpoint",
                       description="Serve POST /predict, GET /health, GET /models for one bundle.")
    _bundle_opts(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8700, 0 = any free port)")
    p.add_argument("--unix-socket", help="also listen on this Unix socket path")
    p.add_argument("--config", help="device.toml for the other local API settings")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("run", help="run the device daemon from device.toml",
                       description="Open the model store and serve its active model locally "
                       "(and connect to the hub when the config names a broker).")
    p.add_argument("--config", required=True, help="device.toml (EDGE_* variables override it)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="latency of a bundle vs the raw engine call",
                       description="Single-row and batch p50/p99 of Model.predict next to the raw "
                       "engine call on the same model: onnxruntime InferenceSession.run (ONNX) or "
                       "a plain LiteRT interpreter invoke (TFLite); the local HTTP path with --http.")
    _bundle_opts(p)
    p.add_argument("--runs", type=_positive_int, default=5000,
                   help="single-row calls per path (default 5000)")
    p.add_argument("--batch", type=_positive_int, default=64,
                   help="rows per batch call (default 64)")
    p.add_argument("--http", action="store_true", help="also time POST /predict on 127.0.0.1")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_bench)

    pb = sub.add_parser("bundle", help="inspect, verify or sign a bundle",
                        description="Bundle tools: inspect, verify, sign.")
    bsub = pb.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    p = bsub.add_parser("inspect", help="show a bundle's manifest", description="Show the manifest.")
    p.add_argument("path", help="bundle directory or .tar")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_bundle_inspect)
    p = bsub.add_parser("verify", help="check file hashes and the signature",
                        description="Check every file's sha256 and size and the ed25519 signature.")
    p.add_argument("path", help="bundle directory or .tar")
    p.add_argument("--public-key", action="append", metavar="KEY.pub", help="trusted public key (repeatable)")
    p.add_argument("--allow-unsigned", action="store_true", help="check file hashes only")
    p.set_defaults(func=cmd_bundle_verify)
    p = bsub.add_parser("sign", help="sign a bundle directory in place",
                        description="Check file hashes, then (re)sign the manifest with an ed25519 key.")
    p.add_argument("path", help="bundle directory")
    p.add_argument("--key", required=True, help="private key PEM (from edge-runtime keygen)")
    p.set_defaults(func=cmd_bundle_sign)

    keygen.register(sub)

    ps = sub.add_parser("store", help="the device model store (daemon stopped)",
                        description="Manage the model store named in device.toml.")
    ssub = ps.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    for name, func, help_ in (("status", cmd_store_status, "show the slots"),
                              ("rollback", cmd_store_rollback, "make the previous bundle active again"),
                              ("promote", cmd_store_promote, "make the shadow bundle active")):
        p = ssub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")
        p.add_argument("--config", required=True, help="device.toml")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)
    p = ssub.add_parser("install", help="verify, self-test and activate a bundle",
                        description="Install a bundle: verify, load, self-test, budget check, switch.")
    p.add_argument("bundle", help="bundle directory or .tar")
    p.add_argument("--config", required=True, help="device.toml")
    p.add_argument("--slot", choices=("active", "shadow"), default="active",
                   help="target slot (default active)")
    p.set_defaults(func=cmd_store_install)
    p = ssub.add_parser("remove", help="empty the shadow or previous slot",
                        description="Empty the shadow or previous slot.")
    p.add_argument("slot", choices=("shadow", "previous"), help="the slot to empty")
    p.add_argument("--config", required=True, help="device.toml")
    p.set_defaults(func=cmd_store_remove)
    p = sub.add_parser("install-service", help="install the daemon as a systemd service",
                       description="Write a hardened systemd unit that runs `edge-runtime run` "
                       "under a dedicated user (read-only system, the store directory writable, "
                       "restart on failure, watchdog, journald logs); create the user and the "
                       "store directory. --dry-run only prints the unit.")
    p.add_argument("--config", default="/etc/edgefleet/device.toml",
                   help="device.toml the service runs with (default /etc/edgefleet/device.toml)")
    p.add_argument("--user", default="edgefleet", help="account to run as (default edgefleet)")
    p.add_argument("--store-dir", help="writable store directory (default: [store] dir of the config)")
    p.add_argument("--unit-dir", default="/etc/systemd/system",
                   help="where to write edgefleet-device.service (default /etc/systemd/system)")
    p.add_argument("--watchdog", type=_positive_int, default=30, metavar="SECONDS",
                   help="systemd WatchdogSec (default 30)")
    p.add_argument("--dry-run", action="store_true", help="print the unit, change nothing")
    p.set_defaults(func=cmd_install_service)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_cli("edge-runtime", lambda: args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
