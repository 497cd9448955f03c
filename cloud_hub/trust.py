"""Which bundles the hub trusts, and the check every bundle *path* goes through before it is loaded.

``cloud-hub batch run`` and ``cloud-hub stream`` accept a bundle directory or ``.tar``
instead of a registry reference; such a bundle did not pass the registry's push
checks, so it is verified here first, with the registry's own policy: every file's
sha256 and size, exactly the files the manifest lists, and the ed25519 signature
against the trusted keys. Trusted keys: the ``--public-key`` files when given,
otherwise ``HUB_TRUSTED_KEYS``, every ``*.pub`` in ``<data_dir>/keys/trusted/`` and
the hub's own public key (bundles downloaded from ``/v1/bundles`` are hub-signed).
An unsigned bundle is accepted (hashes checked) only with ``HUB_ALLOW_UNSIGNED=1``,
as on push. Registry artifacts are checked against their sha256 by the artifact store
(:meth:`cloud_hub.artifacts.ArtifactStore.verified_path`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_runtime import signing
from edge_runtime.bundle import Bundle, read_bundle, verify_bundle
from edge_runtime.engines import EngineOptions
from edge_runtime.errors import BundleError
from edge_runtime.model import Model


def fleet_keys(settings: Any) -> list[Ed25519PublicKey]:
    """``HUB_TRUSTED_KEYS`` and every ``*.pub`` in ``<data_dir>/keys/trusted/``: the keys whose
    signatures the registry accepts on push."""
    keys = [signing.load_public_key(p) for p in settings.trusted_keys]
    trusted_dir = Path(settings.data_dir) / "keys" / "trusted"
    if trusted_dir.is_dir():
        keys += [signing.load_public_key(p) for p in sorted(trusted_dir.glob("*.pub"))]
    return keys


def trusted_keys(settings: Any) -> list[Ed25519PublicKey]:
    """The public keys a hub with these settings trusts: :func:`fleet_keys` and the hub's own
    key (when it exists; it is never created here)."""
    keys = fleet_keys(settings)
    key_dir = Path(settings.data_dir) / "keys"
    hub_pub = Path(settings.signing_key or key_dir / "hub.key").with_suffix(".pub")
    if hub_pub.is_file():
        keys.append(signing.load_public_key(hub_pub))
    return keys


def verify_trusted(
    bundle: Bundle, keys: Sequence[Ed25519PublicKey], *, allow_unsigned: bool = False
) -> str | None:
    """Hashes, exact file list and signature; → the signer's key id (None: unsigned, allowed).
    Raises :class:`BundleError` naming the first problem."""
    if bundle.manifest.signature is None:
        if not allow_unsigned:
            raise BundleError(
                "bundle is not signed; sign it with a trusted key (edge-runtime "
                "bundle sign) or set HUB_ALLOW_UNSIGNED=1",
                field="signature",
            )
        verify_bundle(bundle, None, require_signature=False)
        return None
    if not keys:
        raise BundleError(
            "no trusted key to check the bundle's signature: pass --public-key "
            "KEY.pub or set HUB_TRUSTED_KEYS",
            field="public_key",
        )
    return verify_bundle(bundle, list(keys), require_signature=True).key_id


def load_trusted_bundle(
    path: str | Path,
    *,
    public_keys: Sequence[str | Path] = (),
    settings: Any = None,
    options: EngineOptions | None = None,
) -> Model:
    """Verify the bundle at ``path`` (see :func:`verify_trusted`), then load that same copy.

    ``public_keys`` given: only they are trusted; otherwise the keys of ``settings``
    (default: ``HubSettings()`` from the environment)."""
    if public_keys:
        keys = [signing.load_public_key(p) for p in public_keys]
        allow_unsigned = False
    else:
        if settings is None:
            from cloud_hub.settings import HubSettings

            settings = HubSettings()
        keys = trusted_keys(settings)
        allow_unsigned = bool(settings.allow_unsigned)
    bundle = read_bundle(path)
    try:
        verify_trusted(bundle, keys, allow_unsigned=allow_unsigned)
    except BundleError as exc:
        if bundle._tmp is not None:
            bundle._tmp.cleanup()
        raise BundleError(f"bundle {path} refused: {exc.message}", field=exc.field) from exc
    return Model.load(bundle, options)
