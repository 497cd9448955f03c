"""Push hardening (issue 13): a bundle is exactly its manifest, bounded unpacking, no server
paths in errors, model names, no orphan artifacts, scratch space swept at start, the
database artifact store and the replica start-up checks."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edge_runtime.bundle import pack_bundle, read_bundle, sign_bundle
from tests.edge_runtime.test_bundle_exact import _tar_with_extra, gzip_bomb


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request):
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("fresh_pg_url")


def _client(hub) -> TestClient:
    from cloud_hub.app import create_app

    return TestClient(create_app(hub), raise_server_exceptions=False)


def _push(c: TestClient, data: bytes, **params):
    return c.post("/v1/models", content=data, params=params, headers={"Content-Type": "application/x-tar"})


def _renamed(bundle: Path, tmp_path: Path, key: Path, **changes) -> Path:
    d = tmp_path / f"b-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(bundle, d)
    m = json.loads((d / "manifest.json").read_text())
    m.update(changes)
    m.pop("signature", None)
    (d / "manifest.json").write_text(json.dumps(m))
    sign_bundle(d, key)
    return d


def _files(root: Path) -> dict[str, int]:
    """Every file under ``root`` except this process's live scratch dir and its lock."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and "/proc-" not in f"/{p.relative_to(root)}"}


def _artifacts(hub) -> list[Path]:
    return [p for p in (hub.data_dir / "artifacts").rglob("*") if p.is_file()]


def test_push_of_an_unlisted_file_is_refused_naming_it(make_hub, cancer_bundle, tmp_path):
    hub = make_hub()
    c = _client(hub)
    evil = _tar_with_extra(cancer_bundle, tmp_path / "evil.tar", "README-smuggled.sh")
    r = _push(c, evil.read_bytes())
    assert r.status_code == 400 and "README-smuggled.sh" in r.json()["error"], r.text
    assert r.json()["field"] == "files"
    absolute = _tar_with_extra(cancer_bundle, tmp_path / "abs.tar", "/etc/cron.d/evil")
    r = _push(c, absolute.read_bytes())
    assert r.status_code == 400 and "unsafe entry name" in r.json()["error"]
    assert hub.registry.list() == [] and _artifacts(hub) == []


def test_gzip_bomb_is_refused_with_the_data_dir_unchanged(make_hub, tmp_path):
    bomb = gzip_bomb(tmp_path / "bomb.tar.gz", 1024**3, first=("manifest.json", b"{}"))
    assert bomb.stat().st_size < 1.1 * 1024 * 1024  # ~1 MB that unpacks to 1 GiB
    hub = make_hub()
    c = _client(hub)
    before = _files(hub.data_dir)
    r = _push(c, bomb.read_bytes())
    assert r.status_code == 400, r.text
    assert "unpacks to more than" in r.json()["error"] and str(hub.data_dir) not in r.text
    assert _files(hub.data_dir) == before
    assert list(hub.workdir.path.iterdir()) == []


def test_client_errors_show_no_server_path(make_hub, tmp_path):
    hub = make_hub()
    c = _client(hub)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("model.onnx")
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    for body in (buf.getvalue(), b"not a tar at all" * 64):
        r = _push(c, body)
        assert r.status_code == 400, r.text
        text = r.text
        assert str(hub.data_dir) not in text and "/tmp" not in text and "upload-" not in text, text


@pytest.mark.parametrize("name", [".", "..", "_hidden", "-x", "a" * 201])
def test_bad_model_names_are_refused_and_store_nothing(make_hub, cancer_bundle, tmp_path, keypair, name, db_url):
    hub = make_hub(database_url=db_url)
    c = _client(hub)
    d = _renamed(cancer_bundle, tmp_path, keypair[0], name=name) if len(name) <= 200 else None
    if d is None:  # the manifest schema has no length limit, the registry has
        d = _renamed(cancer_bundle, tmp_path, keypair[0], name="a" * 201)
    r = _push(c, pack_bundle(d, tmp_path / "n.tar").read_bytes())
    assert r.status_code in (400, 422) and r.json()["field"] in ("manifest.name", "manifest"), r.text
    assert hub.registry.list() == [] and _artifacts(hub) == []


def test_long_version_is_refused_on_both_backends(make_hub, cancer_bundle, tmp_path, keypair, db_url):
    hub = make_hub(database_url=db_url)
    d = _renamed(cancer_bundle, tmp_path, keypair[0], version="1." + "0" * 250)
    r = _push(_client(hub), pack_bundle(d, tmp_path / "v.tar").read_bytes())
    assert r.status_code == 400 and r.json()["field"] == "manifest.version", r.text
    assert _artifacts(hub) == []


def test_a_failed_insert_leaves_no_artifact(make_hub, cancer_bundle, tmp_path, monkeypatch):
    """The row insert fails after the artifact was stored: the artifact goes too."""
    from sqlalchemy.exc import IntegrityError

    import cloud_hub.registry as reg

    hub = make_hub()
    real = reg.insert

    def failing(table):
        if table is reg.model_versions:
            raise IntegrityError("insert", {}, Exception("simulated lost race"))
        return real(table)

    monkeypatch.setattr(reg, "insert", failing)
    r = _push(_client(hub), pack_bundle(cancer_bundle, tmp_path / "a.tar").read_bytes())
    assert r.status_code == 409, r.text
    assert _artifacts(hub) == []


def test_scratch_space_is_swept_at_start(make_hub, hub_settings):
    s = hub_settings()
    tmp = s.data_dir / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "upload-abc.tar").write_bytes(b"x" * 100)  # an older layout's leftover
    dead = tmp / "proc-999999-dead"
    (dead / "bundle-x").mkdir(parents=True)
    (dead / "bundle-x" / "model.onnx").write_bytes(b"y")
    (tmp / "proc-999999-dead.lock").write_bytes(b"")  # nobody holds its lock
    first = make_hub(s)
    live = first.workdir.path
    (live / "upload-live.tar").write_bytes(b"z")
    second = make_hub(s)  # a second process on the same data dir keeps the live one's files
    left = sorted(p.name for p in tmp.iterdir())
    assert left == sorted([live.name, live.name + ".lock", second.workdir.path.name,
                           second.workdir.path.name + ".lock"])
    assert (live / "upload-live.tar").exists()
    second.close()
    assert not second.workdir.path.exists()


def test_artifacts_gc_removes_only_unreferenced(make_hub, hub_settings, cancer_bundle, tmp_path, monkeypatch, capsys):
    from cloud_hub.cli import main

    hub = make_hub()
    hub.registry.push(cancer_bundle)
    orphan = tmp_path / "orphan.tar"
    orphan.write_bytes(os.urandom(1000))
    sha, _ = hub.registry.store.put_file(orphan)
    used = hub.registry.list()[0].artifact_sha256
    monkeypatch.setenv("HUB_DATA_DIR", str(hub.data_dir))
    assert main(["artifacts", "gc", "--json"]) == 0  # an hour's grace: nothing goes
    assert json.loads(capsys.readouterr().out)["young"] == 1
    assert main(["artifacts", "gc", "--min-age-s", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["removed"] == [sha] and out["kept"] == 1
    assert hub.registry.store.exists(used) and not hub.registry.store.exists(sha)
    assert main(["artifacts", "check"]) == 0


def test_database_artifact_store_serves_pushes_and_downloads(make_hub, cancer_bundle, cancer_data, tmp_path, db_url):
    hub = make_hub(database_url=db_url, artifacts="database")
    c = _client(hub)
    r = _push(c, pack_bundle(cancer_bundle, tmp_path / "a.tar").read_bytes(), alias="champion")
    assert r.status_code == 201, r.text
    assert _artifacts(hub) == []  # nothing under <data_dir>/artifacts
    x, _, names = cancer_data
    r = c.post("/v1/models/cancer/predict", json={"rows": [dict(zip(names, map(float, x[0])))]})
    assert r.status_code == 200, r.text
    digest = hub.registry.list()[0].digest
    r = c.get(f"/v1/bundles/{digest}")
    assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
    assert r.headers["etag"] == f'"{digest}"'
    (tmp_path / "dl.tar").write_bytes(r.content)
    assert read_bundle(tmp_path / "dl.tar").digest == digest
    r = c.get(f"/v1/bundles/{digest}", headers={"If-None-Match": f'"{digest}"'})
    assert r.status_code == 304


def test_replica_with_another_signing_key_refuses_to_start(make_hub, hub_settings, tmp_path, fresh_pg_url):
    from cloud_hub.startup import StartupError

    make_hub(hub_settings(data_dir=tmp_path / "a", database_url=fresh_pg_url, dev=True))
    with pytest.raises(StartupError, match="signing key .* is not the hub key"):
        make_hub(hub_settings(data_dir=tmp_path / "b", database_url=fresh_pg_url, dev=True))


def test_replica_without_the_artifacts_refuses_to_start(make_hub, hub_settings, cancer_bundle, tmp_path, fresh_pg_url):
    from cloud_hub.startup import StartupError

    a = make_hub(hub_settings(data_dir=tmp_path / "a", database_url=fresh_pg_url, dev=True))
    a.registry.push(cancer_bundle)
    (tmp_path / "b" / "keys").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "keys" / "hub.key", tmp_path / "b" / "keys" / "hub.key")
    with pytest.raises(StartupError, match="1 bundle artifact.*cancer:1.0.0.*HUB_ARTIFACTS=database"):
        make_hub(hub_settings(data_dir=tmp_path / "b", database_url=fresh_pg_url, dev=True))
