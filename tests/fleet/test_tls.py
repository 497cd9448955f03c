"""The device link over TLS (mqtts://, own CA) against a private Mosquitto with a TLS listener."""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from pathlib import Path

from tests.conftest import free_port
from tests.fleet.conftest import wait_for


def _make_ca_and_server_cert(d: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, cert_pem, key_pem = d / "ca.pem", d / "server.pem", d / "server.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return ca_pem, cert_pem, key_pem


def test_device_link_over_tls(own_mosquitto, prefix, make_hub, make_agent, cancer_bundle, cancer_data, tmp_path):
    ca, cert, key = _make_ca_and_server_cert(tmp_path)
    tls_port = free_port()
    broker = own_mosquitto(extra=[f"listener {tls_port} 127.0.0.1", f"cafile {ca}", f"certfile {cert}",
                                  f"keyfile {key}", "require_certificate false"])
    hub = make_hub(mqtt_url=broker.url, mqtt_prefix=prefix)  # the hub on the plain listener
    hub.fleet.start(session_expiry=0)
    assert hub.fleet.ingest.wait_connected(10)
    agent = make_agent("dev-tls", url=f"mqtts://127.0.0.1:{tls_port}", prefix=prefix, bundle=cancer_bundle,
                       ca_file=str(ca))
    agent.start()
    assert agent.link.wait_connected(10), agent.link.refused
    wait_for(lambda: hub.fleet.window_count("dev-tls") >= 1, what="a window over TLS")
    assert hub.fleet.device("dev-tls").online
    agent.stop(graceful=False)  # the last will works over TLS too
    wait_for(lambda: not hub.fleet.device("dev-tls").online, what="last will")
    # without the CA the broker's certificate is refused: no connection, local inference unaffected
    untrusting = make_agent("dev-untrusting", url=f"mqtts://127.0.0.1:{tls_port}", prefix=prefix,
                            bundle=cancer_bundle)
    untrusting.start()
    x, _, names = cancer_data
    _model, out = untrusting.predict([dict(zip(names, map(float, x[0])))])
    assert 0.0 <= out[0]["probability"] <= 1.0
    time.sleep(1.5)
    assert not untrusting.link.connected.is_set()
