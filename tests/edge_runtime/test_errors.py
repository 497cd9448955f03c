"""One error tree: every exception class under EdgeError, every code listed once in CODES with
its status, one body builder, one field-path style, one CLI error line for the three CLIs."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.errors import (
    CODES,
    EdgeError,
    ValidationError,
    code_for_status,
    error_body,
    error_line,
    field_path,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edge_runtime", "cloud_hub", "converters")
# Raised and caught inside one function, never reaching a caller (control flow, not errors).
INTERNAL = {("edge_runtime/contract.py", "Refused")}

# Modules that define exception classes (imported to check their codes against CODES).
ERROR_MODULES = [
    "edge_runtime.errors", "edge_runtime.reconcile", "edge_runtime.local_api", "cloud_hub.client",
    "cloud_hub.api.deps", "cloud_hub.api.oip", "cloud_hub.stream.transport",
    "cloud_hub.batch.ray_engine", "cloud_hub.startup", "converters.onnx_source",
    "converters.tflite.graph",
]


def _sources():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path.read_text()


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_exception_class_of_the_three_packages_is_an_edge_error():
    """No ``class X(Exception)`` / ``(ValueError)`` … outside the tree (AST scan)."""
    import builtins

    builtin_errors = {n for n in dir(builtins) if n.endswith(("Error", "Exception"))}
    builtin_errors |= {"Exception", "BaseException", "Warning"}
    found = []
    for rel, text in _sources():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if rel == "edge_runtime/errors.py" and node.name == "EdgeError":
                    continue  # the root
                if bases & builtin_errors and (rel, node.name) not in INTERNAL:
                    found.append(f"{rel}: {node.name}({', '.join(sorted(bases))})")
    assert found == []


def test_every_error_class_has_a_listed_code_and_status():
    for name in ERROR_MODULES:
        importlib.import_module(name)
    classes = [EdgeError, *_subclasses(EdgeError)]
    assert len(classes) > 15
    for cls in classes:
        if cls.__module__.startswith("tests."):
            continue
        assert cls.code in CODES, f"{cls.__module__}.{cls.__name__}: code {cls.code!r} not in CODES"
        status, meaning = CODES[cls.code]
        assert meaning
        if cls.__name__ not in ("HubClientError", "_HttpError"):  # carry the answer's status
            assert cls.status_code == status, f"{cls.__name__}: {cls.status_code} vs {status}"


_LITERALS = [
    re.compile(r'\bcode\s*=\s*"([a-z_]+)"'),
    re.compile(r'"code":\s*"([a-z_]+)"'),
    re.compile(r'_(?:error|HttpError)\((\d{3}),\s*"([a-z_]+)"'),
    re.compile(r'error_body\([^()]*?,\s*"([a-z_]+)"'),
    re.compile(r'code=str\([^)]*or\s*"([a-z_]+)"'),
]


def test_every_code_literal_in_the_source_is_listed_with_its_status():
    seen = set()
    for rel, text in _sources():
        for rx in _LITERALS:
            for m in rx.finditer(text):
                if m.lastindex == 2:
                    status, code = int(m.group(1)), m.group(2)
                    assert CODES.get(code, (None,))[0] == status, f"{rel}: {status} {code}"
                else:
                    code = m.group(1)
                assert code in CODES, f"{rel}: code {code!r} is not listed in CODES"
                seen.add(code)
    assert {"invalid_input", "invalid_request", "invalid_json", "payload_too_large"} <= seen
    # one name per meaning: the retired synonyms are gone
    for old in ("bad_request", "invalid_header", "http_error", "hub_error", "usage"):
        assert old not in CODES and old not in seen


def test_error_bodies_are_built_by_error_body_only():
    """No ``{"error": …, "code": …}`` dict literal outside edge_runtime/errors.py."""
    found = []
    for rel, text in _sources():
        if rel == "edge_runtime/errors.py":
            continue
        examples = set()  # documentation: OpenAPI examples and schemas, not bodies sent
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if isinstance(k, ast.Constant) and k.value in ("example", "properties"):
                        examples.add(id(v))
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if {"error", "code"} <= keys and id(node) not in examples:
                    found.append(f"{rel}:{node.lineno}")
    assert found == []


def test_one_body_one_field_style_one_line():
    assert error_body("x too big", "invalid_input", "rows[0].x") == {
        "error": "x too big", "code": "invalid_input", "field": "rows[0].x"}
    assert error_body("boom", "internal_error") == {"error": "boom", "code": "internal_error"}
    err = ValidationError("rows[2].age: not a number", field=field_path("rows", 2, "age"))
    assert err.to_dict() == {"error": "rows[2].age: not a number", "code": "invalid_input",
                             "field": "rows[2].age"}
    assert field_path("inputs", 0, "datatype") == "inputs[0].datatype"
    assert field_path("files", "model.onnx", "sha256") == "files.model.onnx.sha256"
    assert field_path("query", "alias") == "query.alias"
    assert error_line("cloud-hub", err) == (
        "cloud-hub: error: rows[2].age: not a number (invalid_input, field rows[2].age)")
    multi = EdgeError("first\nsecond   line")
    assert error_line("edge-convert", multi) == "edge-convert: error: first second line (internal_error)"
    custom = EdgeError("no", code="invalid_request", status_code=400)
    assert (custom.code, custom.status_code, EdgeError.code) == ("invalid_request", 400,
                                                                 "internal_error")
    assert [code_for_status(s) for s in (404, 405, 400, 418, 500, 502)] == [
        "not_found", "method_not_allowed", "invalid_request", "invalid_request",
        "internal_error", "internal_error"]


@pytest.mark.parametrize("argv", [
    ["-m", "edge_runtime.cli", "predict", "--bundle", "/nonexistent/bundle", "--input", "{}"],
    ["-m", "converters.cli", "check", "/nonexistent/bundle", "--sample", "/nonexistent.csv"],
    ["-m", "cloud_hub.cli", "batch", "run", "--model", "/nonexistent/bundle", "--input",
     "/nonexistent.parquet", "--output", "/tmp/never-written.parquet", "--batch-size", "0"],
])
def test_the_three_clis_print_the_same_error_line(argv):
    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120, check=False)
    prog = {"edge_runtime.cli": "edge-runtime", "converters.cli": "edge-convert",
            "cloud_hub.cli": "cloud-hub"}[argv[1]]
    assert r.returncode == 1 and r.stdout == ""
    assert re.fullmatch(rf"{prog}: error: .+ \([a-z_]+(, field \S+)?\)\n", r.stderr), r.stderr
    code = re.search(r"\(([a-z_]+)(, field \S+)?\)\n$", r.stderr).group(1)
    assert code in CODES

