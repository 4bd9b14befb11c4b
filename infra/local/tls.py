"""TLS material for the local broker: a private CA and a broker certificate it signs.

Written once per ``EZ_HOME`` under ``$EZ_HOME/kafka/tls`` (keys readable by the owner only) and
reused afterwards. The broker certificate names the listener host (and ``localhost`` /
``127.0.0.1``), so clients verify the hostname as usual. The CA certificate is what clients trust
(``EZ_KAFKA_SSL_CA_LOCATION``); its key never leaves the folder.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 825


@dataclass(frozen=True)
class BrokerTls:
    ca_cert: Path  # PEM certificate of the CA (the trust anchor for clients and the broker)
    keystore: Path  # PEM: the broker's PKCS#8 private key followed by its certificate chain


def ensure_broker_tls(folder: Path, host: str) -> BrokerTls:
    """The CA and the broker certificate for ``host`` in ``folder``, created when missing."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ca_cert_path, ca_key_path = folder / "ca.pem", folder / "ca-key.pem"
    keystore = folder / "broker.pem"
    if not (ca_cert_path.exists() and ca_key_path.exists()):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "EzAigent Streams local CA")])
        now = dt.datetime.now(dt.timezone.utc)
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(ca_key_path, _pkcs8(ca_key))
        ca_cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        keystore.unlink(missing_ok=True)  # signed by the old CA, if any
    if not keystore.exists() or not _names_host(keystore, host):
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ezstream-kafka")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(_alt_names(host)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # serverAuth for clients; clientAuth because the broker also presents it to its own
            # controller listener (mutual TLS there).
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(keystore, _pkcs8(key) + cert.public_bytes(serialization.Encoding.PEM)
                       + ca_cert.public_bytes(serialization.Encoding.PEM))
    return BrokerTls(ca_cert=ca_cert_path, keystore=keystore)


def _alt_names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        ip = ipaddress.ip_address(host)
        if ip != ipaddress.ip_address("127.0.0.1"):
            names.append(x509.IPAddress(ip))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    return names


def _names_host(keystore: Path, host: str) -> bool:
    cert = x509.load_pem_x509_certificate(keystore.read_bytes().split(b"-----END PRIVATE KEY-----", 1)[1].lstrip())
    wanted = {str(n.value) for n in _alt_names(host)}
    present = {str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}
    return wanted <= present


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
