"""TLS certificates and SuperNode keys for a Flower deployment (``fedvla federation flower-credentials``).

What a SuperLink with TLS and SuperNode authentication needs (flwr 1.41): a CA certificate (every
SuperNode and the ``flwr`` CLI trust it: ``--root-certificates``), the SuperLink's certificate
and key signed by that CA for the names and addresses robots reach it by (``--ssl-certfile``,
``--ssl-keyfile``, ``--ssl-ca-certfile``), and per SuperNode an EC key pair on a NIST curve: the
private key in OpenSSH PEM (``--auth-supernode-private-key``), the public key in OpenSSH form,
registered with ``flwr supernode register KEY.pub CONNECTION`` before the node connects.

The CA's key signs nothing else: keep it off the server, or delete it once the certificate is
made. Certificates are valid for ``days`` (default a year)."""
from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
NODES_DIR = "supernodes"


@dataclasses.dataclass(frozen=True)
class FlowerCredentials:
    directory: Path
    nodes: tuple[str, ...]

    @property
    def ca_certificate(self) -> Path:
        return self.directory / CA_CERT

    @property
    def server_certificate(self) -> Path:
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY

    def node_key(self, node: str) -> Path:
        return self.directory / NODES_DIR / node

    def node_public_key(self, node: str) -> Path:
        return self.directory / NODES_DIR / f"{node}.pub"


def _san(hosts: Sequence[str]):
    from cryptography import x509

    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def make_flower_credentials(directory: str | Path, hosts: Sequence[str], nodes: Sequence[str],
                            days: int = 365) -> FlowerCredentials:
    """A CA, the SuperLink's certificate for ``hosts`` (DNS names or IP addresses) and one key pair
    per SuperNode in ``nodes``, under ``directory`` (new files; existing ones are refused)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from fedvla.config import ConfigError

    directory = Path(directory)
    credentials = FlowerCredentials(directory, tuple(nodes))
    planned = [credentials.ca_certificate, credentials.server_certificate, credentials.server_key,
               *[credentials.node_key(n) for n in nodes]]
    taken = [str(p) for p in planned if p.exists()]
    if taken:
        raise ConfigError("directory", f"{', '.join(taken)} exist already", "a new directory (keys are never overwritten)")
    if not hosts:
        raise ConfigError("hosts", "none given", "the SuperLink's address as robots reach it, e.g. 127.0.0.1")
    (directory / NODES_DIR).mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    begin, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    pem_private = dict(encoding=serialization.Encoding.PEM, format=serialization.PrivateFormat.TraditionalOpenSSL,
                       encryption_algorithm=serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedvla federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(begin).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    _write_private(directory / CA_KEY, ca_key.private_bytes(**pem_private))
    credentials.ca_certificate.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(begin).not_valid_after(end).add_extension(_san(hosts), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    _write_private(credentials.server_key, server_key.private_bytes(**pem_private))
    credentials.server_certificate.write_bytes(server.public_bytes(serialization.Encoding.PEM))

    for node in nodes:  # SuperNode authentication: EC on a NIST curve, OpenSSH formats
        key = ec.generate_private_key(ec.SECP384R1())
        _write_private(credentials.node_key(node), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        credentials.node_public_key(node).write_bytes(key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return credentials
