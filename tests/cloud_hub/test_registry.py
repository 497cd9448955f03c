"""Registry: push/verify/re-sign, versions, aliases, persistence — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from edge_runtime.bundle import pack_bundle, read_bundle, verify_bundle
from edge_runtime.errors import BundleError, ConflictError, NotFoundError, ValidationError
from edge_runtime.signing import generate_keypair, load_public_key


def _exercise_registry(make_hub, cancer_bundle, cancer_bundle_v2, **settings):
    hub = make_hub(**settings)
    reg = hub.registry
    v1 = reg.push(cancer_bundle)
    assert (v1.name, v1.version) == ("cancer", "1.0.0")
    assert v1.digest == read_bundle(cancer_bundle).digest
    assert v1.self_test.startswith("passed")
    assert reg.push(cancer_bundle).digest == v1.digest  # idempotent
    v2 = reg.push(cancer_bundle_v2)
    assert [v.version for v in reg.versions("cancer")] == ["1.0.0", "2.0.0"]
    # no champion yet: the bare name resolves to the newest version
    assert reg.resolve("cancer").version == "2.0.0"
    reg.set_alias("cancer", "champion", "1.0.0")
    reg.set_alias("cancer", "challenger", "2.0.0")
    assert reg.resolve("cancer").version == "1.0.0"
    assert reg.resolve("cancer@challenger").digest == v2.digest
    assert reg.resolve("cancer:2.0.0").aliases == ["challenger"]
    # atomic promotion: both aliases move in one transaction
    reg.set_aliases("cancer", {"champion": "2.0.0", "challenger": None}, reason="promote")
    assert reg.aliases("cancer") == {"champion": "2.0.0"}
    hist = reg.alias_history("cancer")
    assert hist[0]["reason"] == "promote" and {h["alias"] for h in hist[:2]} == {"champion", "challenger"}
    # a failing change inside the transaction leaves every alias as it was
    with pytest.raises(NotFoundError):
        reg.set_aliases("cancer", {"champion": "1.0.0", "challenger": "9.9.9"})
    assert reg.aliases("cancer") == {"champion": "2.0.0"}
    for bad in ("cancer@", "ca ncer", "cancer:", "x@1bad"):
        with pytest.raises(ValidationError):
            reg.resolve(bad)
    with pytest.raises(NotFoundError) as e:
        reg.resolve("nope")
    assert e.value.field == "model"
    with pytest.raises(NotFoundError) as e:
        reg.resolve("cancer@staging")
    assert e.value.field == "alias"
    with pytest.raises(NotFoundError) as e:
        reg.resolve("cancer:3.0.0")
    assert e.value.field == "version"
    # the stored tar is re-signed by the hub and verifies against the hub key only
    stored = read_bundle(reg.artifact_path(reg.resolve("cancer:1.0.0")))
    assert stored.digest == v1.digest
    assert stored.manifest.signature.key_id == reg.hub_key.key_id
    verify_bundle(stored, reg.hub_key.public)
    hub_pub = (hub.data_dir / "keys" / "hub.pub") if not settings.get("signing_key") else None
    if hub_pub is not None:
        assert load_public_key(hub_pub.read_bytes()) is not None
    data_dir, url = hub.settings.data_dir, hub.settings.database_url
    key_id = reg.hub_key.key_id
    hub.close()
    # restart: versions, aliases and the key survive
    hub2 = make_hub(data_dir=data_dir, database_url=url)
    assert hub2.registry.aliases("cancer") == {"champion": "2.0.0"}
    assert hub2.registry.resolve("cancer").version == "2.0.0"
    assert hub2.registry.hub_key.key_id == key_id
    mv, model = hub2.models.get("cancer@champion")
    assert mv.version == "2.0.0" and model.self_test() == 1


def test_registry_sqlite(make_hub, cancer_bundle, cancer_bundle_v2):
    _exercise_registry(make_hub, cancer_bundle, cancer_bundle_v2)


@pytest.mark.services
def test_registry_postgres(make_hub, cancer_bundle, cancer_bundle_v2, fresh_pg_url):
    _exercise_registry(make_hub, cancer_bundle, cancer_bundle_v2, database_url=fresh_pg_url)


def test_push_tar_and_refusals(hub, cancer_bundle, tmp_path, keypair):
    reg = hub.registry
    tar = pack_bundle(cancer_bundle, tmp_path / "b.tar")
    mv = reg.push(tar)
    assert mv.version == "1.0.0"
    # tampered model file: hash mismatch, nothing new stored
    bad = tmp_path / "tampered"
    shutil.copytree(cancer_bundle, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["version"] = "1.0.1"
    (bad / "manifest.json").write_text(json.dumps(m))  # signature no longer matches
    with pytest.raises(BundleError) as e:
        reg.push(bad)
    assert e.value.field == "signature"
    bad2 = tmp_path / "tampered2"
    shutil.copytree(cancer_bundle, bad2)
    with open(bad2 / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError) as e:
        reg.push(bad2)
    assert e.value.field.startswith("files.model.onnx")
    # signed by an untrusted key
    other_key, _ = generate_keypair(tmp_path / "other.key")
    from edge_runtime.bundle import sign_bundle

    untrusted = tmp_path / "untrusted"
    shutil.copytree(cancer_bundle, untrusted)
    sign_bundle(untrusted, other_key)
    with pytest.raises(BundleError, match="trusted"):
        reg.push(untrusted)
    # unsigned refused unless allow_unsigned
    unsigned = tmp_path / "unsigned"
    shutil.copytree(cancer_bundle, unsigned)
    m = json.loads((unsigned / "manifest.json").read_text())
    m.pop("signature")
    m["version"] = "1.1.0"
    (unsigned / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="not signed"):
        reg.push(unsigned)
    # not a tar / garbage
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all")
    with pytest.raises(BundleError):
        reg.push(junk)
    assert [v.version for v in reg.versions("cancer")] == ["1.0.0"]
    reg.allow_unsigned = True
    mv = reg.push(unsigned)
    assert mv.signer_key_id is None and mv.version == "1.1.0"
    verify_bundle(read_bundle(reg.artifact_path(mv)), reg.hub_key.public)


def test_same_version_different_content_conflicts(hub, cancer_bundle, tmp_path, cancer_data, keypair):
    from sklearn.tree import DecisionTreeClassifier

    from tests.conftest import build_sklearn_bundle

    x, y, names = cancer_data
    other = build_sklearn_bundle(tmp_path / "other", DecisionTreeClassifier(max_depth=2).fit(x, y), x, names,
                                 key=keypair[0], version="1.0.0")
    hub.registry.push(cancer_bundle)
    with pytest.raises(ConflictError):
        hub.registry.push(other)
    assert hub.registry.resolve("cancer").digest == read_bundle(cancer_bundle).digest


def test_golden_vectors_checked_on_push(hub, cancer_bundle, tmp_path, keypair):
    from edge_runtime.bundle import write_bundle

    b = read_bundle(cancer_bundle)
    fields = b.manifest.unsigned_dict()
    fields.pop("files")
    fields["version"] = "1.0.9"
    fields["golden"][0]["expected_probability"] = [0.5] * len(fields["golden"][0]["expected_probability"])
    out = write_bundle(tmp_path / "badgolden", fields, {"model.onnx": b.model_path}, key=keypair[0])
    with pytest.raises(BundleError, match="golden"):
        hub.registry.push(out.root)
    with pytest.raises(NotFoundError):
        hub.registry.resolve("cancer")


def test_delete_version_and_artifact_store(hub, cancer_bundle, cancer_bundle_v2):
    reg = hub.registry
    v1 = reg.push(cancer_bundle, aliases=["champion"])
    v2 = reg.push(cancer_bundle_v2)
    with pytest.raises(ConflictError):
        reg.delete_version("cancer", "1.0.0")
    reg.delete_version("cancer", "2.0.0")
    assert not reg.store.exists(v2.artifact_sha256)
    assert reg.store.exists(v1.artifact_sha256) and reg.store.verify(v1.artifact_sha256)
    with tarfile.open(reg.artifact_path(v1)) as t:
        assert t.getnames()[0] == "manifest.json"


def test_hub_key_created_once_under_concurrent_starts(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from cloud_hub.registry import HubKey
    from edge_runtime.signing import load_private_key

    path = tmp_path / "keys" / "hub.key"
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: HubKey(path, create=True), range(8)))
    assert len({k.key_id for k in keys}) == 1
    from edge_runtime.signing import key_id

    assert key_id(load_private_key(path)) == keys[0].key_id
    assert load_public_key(path.with_suffix(".pub").read_bytes()) is not None
    assert sorted(p.name for p in path.parent.iterdir()) == ["hub.key", "hub.pub"]
    with pytest.raises(BundleError):
        HubKey(tmp_path / "missing.key", create=False)


def test_trusted_keys_directory(make_hub, tmp_path, keypair, cancer_bundle):
    data = tmp_path / "hub2"
    hub = make_hub(data_dir=data, trusted_keys=[])
    with pytest.raises(BundleError, match="trusted"):
        hub.registry.push(cancer_bundle)
    hub.close()
    (data / "keys" / "trusted").mkdir(parents=True)
    shutil.copy(keypair[1], data / "keys" / "trusted" / "fleet.pub")
    hub = make_hub(data_dir=data, trusted_keys=[])
    assert hub.registry.push(cancer_bundle).signer_key_id == load_public_key_id(keypair[1])


def load_public_key_id(path):
    from edge_runtime.signing import key_id

    return key_id(load_public_key(path))
