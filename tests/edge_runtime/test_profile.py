"""Device profiles: the shipped TOML files load, bad ones are refused naming the key."""

from __future__ import annotations

import pytest

from edge_runtime.errors import NotFoundError, ValidationError
from edge_runtime.profile import FORMATS, list_profiles, load_profile


def test_shipped_profiles_load_with_sane_budgets():
    names = list_profiles()
    assert {"rpi4", "jetson-nano", "x86-gateway"} <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.name == name  # the file name and the name inside agree
        assert p.threads >= 1 and p.memory_budget_mb > 0 and p.latency_budget_ms > 0
        assert p.preferred_format in FORMATS and p.description
        opts = p.engine_options()
        assert opts.intra_op_threads == p.threads and opts.inter_op_threads == 1
    assert load_profile("rpi4").preferred_format == "tflite"


def test_profile_from_a_path_and_unknown_name(tmp_path):
    f = tmp_path / "gw.toml"
    f.write_text('name = "gw"\nthreads = 3\nmemory_budget_mb = 64\nlatency_budget_ms = 5\n')
    p = load_profile(f)
    assert (p.name, p.threads, p.preferred_format) == ("gw", 3, "onnx")
    assert p.to_dict()["latency_budget_ms"] == 5.0
    with pytest.raises(NotFoundError, match=r"unknown device profile 'rpi9' \(known: .*rpi4"):
        load_profile("rpi9")


@pytest.mark.parametrize("body,field,message", [
    ('name = "x"\nthreads = 2\nlatency_budget_ms = 5\n', "profile.memory_budget_mb",
     "missing key"),
    ('name = "x"\nthreads = 0\nmemory_budget_mb = 1\nlatency_budget_ms = 5\n', "profile.threads",
     "threads must be >= 1"),
    ('name = "x"\nthreads = 1\nmemory_budget_mb = -5\nlatency_budget_ms = 5\n',
     "profile.memory_budget_mb", "must be >= 0"),
    ('name = "x"\nthreads = "many"\nmemory_budget_mb = 1\nlatency_budget_ms = 5\n', "profile",
     "many"),
    (('name = "x"\nthreads = 1\nmemory_budget_mb = 1\nlatency_budget_ms = 5\n'
      'preferred_format = "pmml"\n'), "profile.preferred_format", "pmml"),
    ('name = "x"\nthreads = [1\n', "profile", "not a readable TOML file"),
])
def test_bad_profiles_name_the_key(tmp_path, body, field, message):
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises(ValidationError, match=message) as ei:
        load_profile(f)
    assert ei.value.field == field
