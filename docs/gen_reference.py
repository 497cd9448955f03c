"""Generated documentation pages: CLI reference, HTTP API reference, error catalogue, benchmarks.

The pages are built from the code itself so they cannot drift from it:

- ``reference/cli.md``      the argparse parsers of ``edge-runtime``, ``edge-convert``, ``cloud-hub``
                            (every sub-command's ``--help``);
- ``reference/http-api.md`` the hub's OpenAPI document (``cloud_hub.app.create_app(hub).openapi()``);
- ``reference/errors.md``   ``edge_runtime.errors.CODES`` plus the advice below (a code without
                            advice is an error: the build fails, so a new code gets documented);
- ``benchmarks.md``         ``benchmarks/RESULTS.md`` as it is.

``docs/hooks.py`` adds them to every ``mkdocs build``/``serve`` without writing into ``docs/``;
``python docs/gen_reference.py --out DIR`` writes them to ``DIR`` to read or diff them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# What to do about each error code (the meaning and status come from edge_runtime.errors.CODES).
ADVICE: dict[str, str] = {
    "invalid_input": "Fix the value `field` names (feature, type, range, NaN); the reason says "
    "what the contract expects. Batch and stream put such rows in the rejects / dead letters.",
    "invalid_tensor": "Send the tensor with the name, datatype and shape the model's OIP "
    "metadata (`GET /v2/models/{name}`) lists; the data length must match the shape.",
    "invalid_json": "Send valid UTF-8 JSON, nested at most 32 levels.",
    "invalid_request": "Fix the HTTP framing (request line, headers, a single valid "
    "Content-Length, no Content-Length with Transfer-Encoding, `Host` on HTTP/1.1).",
    "payload_too_large": "Split the request (fewer rows) or raise the limit "
    "(`HUB_MAX_BODY_BYTES`, `HUB_MAX_UPLOAD_BYTES`, `[local_api] max_body_bytes`/`max_rows`); "
    "large scoring jobs belong in batch.",
    "headers_too_large": "Send fewer or smaller headers (at most 64 KiB and 100 fields).",
    "length_required": "Send a `Content-Length` header (the device's local API takes no "
    "chunked bodies).",
    "unsupported_media_type": "Send `Content-Type: application/json` (bundle pushes: "
    "`application/x-tar` or multipart).",
    "unsupported_encoding": "Send the body uncompressed, or gzip/deflate where the route "
    "takes them (OIP).",
    "request_timeout": "Send the request head within `header_timeout_s` and the body within "
    "`body_timeout_s` of the device's local API; check the client and the network.",
    "method_not_allowed": "Use a method the route takes (see the HTTP API reference).",
    "unauthorized": "Send an API key (`Authorization: Bearer KEY` or `X-API-Key`) the hub "
    "knows, or log in to the dashboard again.",
    "forbidden": "Use a key of a role that may do this (viewer < client < admin).",
    "csrf": "Reload the dashboard page (it carries the session's CSRF token); API clients "
    "send an API key header instead of the cookie.",
    "not_found": "Check the name `field` points at (model, alias, version, device, rollout, "
    "job); `cloud-hub models list` / `devices list` show what exists.",
    "conflict": "Read the current state (the message says which); e.g. a `name:version` "
    "pushed with other content, an alias still pointing at a version, a promotion without a "
    "PROMOTE verdict (`--force` overrides).",
    "invalid_bundle": "Rebuild or re-sign the bundle (`edge-convert`, `edge-runtime bundle "
    "sign`) with a trusted key; `edge-runtime bundle verify` names the bad file or signature.",
    "conversion_failed": "The message names the model part or the worst row; convert a "
    "supported model (see Converters) or change what the message names.",
    "unsupported_ops": "Ship the ONNX bundle for this model, or change the model to avoid "
    "the listed ops (the error lists every one).",
    "internal_error": "A bug: the log has the trace under the request id (`EDGEFLEET_DEBUG=1` "
    "shows it in the CLIs); report it.",
    "engine_error": "The runtime could not load or run the model: check the bundle with "
    "`edge-convert check` / `edge-runtime bench`, and the engine installed on that machine.",
    "integrity_error": "A stored artifact changed on disk: restore it from a backup or push "
    "the bundle again; `cloud-hub artifacts check` lists the affected versions.",
    "store_error": "Free disk space or fix permissions of the store / artifact directory; "
    "the previous state is kept.",
    "io_error": "Check the path named in the message exists and is readable/writable.",
    "startup_refused": "Give every replica the same signing key and the same artifacts "
    "(`HUB_ARTIFACTS=database` or a shared `<data_dir>/artifacts`).",
    "ray_error": "Check the Ray cluster (`RAY_ADDRESS`) or run with `--engine local`.",
    "transient": "Nothing: the device retries with backoff; persistent ones become a failed "
    "event with the reason.",
    "unavailable": "Install a model (`edge-runtime store install`) or the missing optional "
    "dependency the message names, then retry.",
    "busy": "Retry shortly; the device's local API is at `max_connections`.",
    "transport_error": "Check the stream broker's URL, credentials and that it is up.",
    "hub_unreachable": "Check `--url` / `HUB_URL` and that the hub is running.",
}

CLI_PARSERS: list[tuple[str, str]] = [
    ("edge-runtime", "edge_runtime.cli"),
    ("edge-convert", "converters.cli"),
    ("cloud-hub", "cloud_hub.cli"),
]


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    out: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:  # argparse has no public API for this
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases map to the same parser
                    seen.add(id(sub))
                    out.append((name, sub))
    return out


def _walk(prog: str, parser: argparse.ArgumentParser, level: int, lines: list[str]) -> None:
    lines += [f"{'#' * level} `{prog}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in _subparsers(parser):
        _walk(f"{prog} {name}", sub, min(level + 1, 4), lines)


def cli_markdown() -> str:
    import importlib

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; fix it for a stable page
    lines = [
        "# CLI reference",
        "",
        (
            "Generated from the argparse parsers (`build_parser()` of `edge_runtime.cli`, "
            "`converters.cli` and `cloud_hub.cli`) at every docs build: each command's "
            "`--help`."
        ),
        "",
    ]
    for prog, module in CLI_PARSERS:
        _walk(prog, importlib.import_module(module).build_parser(), 2, lines)
    return "\n".join(lines)


def openapi_document() -> dict[str, Any]:
    from cloud_hub.app import create_app
    from cloud_hub.hub import Hub
    from cloud_hub.settings import HubSettings

    with tempfile.TemporaryDirectory(prefix="edgefleet-docs-") as tmp:
        hub = Hub(HubSettings(data_dir=Path(tmp) / "hub", dev=True))
        try:
            return create_app(hub).openapi()
        finally:
            hub.close()


def _schema_name(schema: dict[str, Any] | None) -> str:
    if not schema:
        return ""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(filter(None, (_schema_name(s) for s in schema["anyOf"])))
    if schema.get("type") == "array":
        return f"array of {_schema_name(schema.get('items')) or 'any'}"
    return schema.get("type", "")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def http_api_markdown(doc: dict[str, Any] | None = None) -> str:
    doc = doc or openapi_document()
    lines = [
        "# HTTP API reference",
        "",
        (
            f"Generated from the hub's OpenAPI document ({doc['info']['title']} "
            f"{doc['info']['version']}) at every docs build. A running hub serves the same "
            "document at `/openapi.json` and an interactive page at `/docs`. Every error "
            'answer is `{"error", "code", "field"}` (see the [error catalogue](errors.md)).'
        ),
        "",
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "delete", "patch"):
                tag = (
                    op.get("tags")
                    or [
                        path.strip("/").split("/")[1]
                        if path.count("/") > 1
                        else path.strip("/") or "root"
                    ]
                )[0]
                by_tag.setdefault(tag, []).append((method.upper(), path, op))
    for tag in sorted(by_tag):
        lines += [f"## {tag}", ""]
        for method, path, op in by_tag[tag]:
            lines += [f"### `{method} {path}`", ""]
            if op.get("summary"):
                lines += [_cell(op["summary"]), ""]
            if op.get("description") and op.get("description") != op.get("summary"):
                lines += [op["description"].strip(), ""]
            params = op.get("parameters") or []
            if params:
                lines += [
                    "| parameter | in | required | type | description |",
                    "|---|---|---|---|---|",
                ]
                for p in params:
                    lines.append(
                        f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'}"
                        f" | {_cell(_schema_name(p.get('schema')))}"
                        f" | {_cell(p.get('description', ''))} |"
                    )
                lines.append("")
            body = op.get("requestBody")
            if body:
                kinds = ", ".join(
                    f"`{ct}` {_schema_name(v.get('schema'))}".rstrip()
                    for ct, v in body.get("content", {}).items()
                )
                lines += [f"Request body: {kinds}", ""]
            responses = op.get("responses") or {}
            if responses:
                lines += ["| status | meaning |", "|---|---|"]
                for status, r in responses.items():
                    lines.append(f"| {status} | {_cell(r.get('description', ''))} |")
                lines.append("")
    schemas = doc.get("components", {}).get("schemas", {})
    if schemas:
        lines += [
            "## Schemas",
            "",
            ("The request and response bodies named above (properties, type, required)."),
            "",
        ]
        for name in sorted(schemas):
            s = schemas[name]
            lines += [f"### {name}", ""]
            if s.get("description"):
                lines += [_cell(s["description"]), ""]
            props = s.get("properties") or {}
            if props:
                required = set(s.get("required") or [])
                lines += ["| property | type | required | description |", "|---|---|---|---|"]
                for pname, p in props.items():
                    lines.append(
                        f"| `{pname}` | {_cell(_schema_name(p)) or 'any'} | "
                        f"{'yes' if pname in required else 'no'} | "
                        f"{_cell(p.get('description', ''))} |"
                    )
                lines.append("")
            elif s.get("enum"):
                lines += ["One of " + ", ".join(f"`{v}`" for v in s["enum"]), ""]
    return "\n".join(lines)


def errors_markdown() -> str:
    from edge_runtime.errors import CODES

    missing = sorted(set(CODES) - set(ADVICE))
    if missing:
        raise SystemExit(
            f"docs/gen_reference.py: no advice for error code(s) {missing}: add them to ADVICE"
        )
    stale = sorted(set(ADVICE) - set(CODES))
    if stale:
        raise SystemExit(f"docs/gen_reference.py: ADVICE names unknown code(s) {stale}")
    lines = [
        "# Error catalogue",
        "",
        (
            "Every error the hub, the device's local API and the three CLIs report carries one "
            'of these codes. HTTP answers are JSON `{"error", "code", "field"}` with the '
            "status below (`field` is a path like `rows[3].tenure` or `inputs[0].datatype`); "
            "the CLIs print one line naming the code and field and exit 1 "
            "(`EDGEFLEET_DEBUG=1` shows the traceback of an unexpected error)."
        ),
        "",
        (
            "Generated from `edge_runtime.errors.CODES`, the one list of codes; a code not "
            "listed there is a bug."
        ),
        "",
        "| code | status | meaning | what to do |",
        "|---|---|---|---|",
    ]
    for code, (status, meaning) in CODES.items():
        lines.append(f"| `{code}` | {status} | {_cell(meaning)} | {_cell(ADVICE[code])} |")
    lines.append("")
    return "\n".join(lines)


def benchmarks_markdown() -> str:
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    note = (
        "!!! note\n    This page is `benchmarks/RESULTS.md`, included as it is at build time. "
        "Every figure names its command, machine, versions and load; benchmarks are not "
        "tests and the test suite never asserts a timing.\n\n"
    )
    first, _, rest = text.partition("\n")
    if first.startswith("# "):
        return first + "\n\n" + note + rest
    return "# Benchmarks\n\n" + note + text


PAGES: dict[str, Callable[[], str]] = {
    "reference/cli.md": cli_markdown,
    "reference/http-api.md": http_api_markdown,
    "reference/errors.md": errors_markdown,
    "benchmarks.md": benchmarks_markdown,
}


def generate() -> dict[str, str]:
    """Every generated page: path under docs/ → Markdown."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return {path: make() for path, make in PAGES.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the generated docs pages to a directory.")
    ap.add_argument("--out", type=Path, required=True, help="directory to write the pages into")
    ap.add_argument("--openapi-json", action="store_true", help="also write openapi.json")
    args = ap.parse_args(argv)
    for path, text in generate().items():
        target = args.out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target}")
    if args.openapi_json:
        (args.out / "openapi.json").write_text(json.dumps(openapi_document(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
