"""``python -m federated.certs --out DIR``: a test CA and a server certificate for localhost.

For rehearsals and tests on one machine only. A hospital federation uses certificates from its own
CA (or a public one) for the SuperLink's real host name; the SuperLink gets ``--ssl-ca-certfile``,
``--ssl-certfile`` and ``--ssl-keyfile``, each SuperNode (and ``flwr``) the CA as ``--root-certificates``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cpsc2018.util import atomic_write_bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_test_certificates(folder: Path, days: int = 30, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> dict[str, Path]:
    """Write ca.crt, ca.key, server.pem, server.key into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ECG-Lite test CA (do not use in production)")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = _key()
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.crt", "ca_key": folder / "ca.key", "server": folder / "server.pem", "server_key": folder / "server.key"}
    atomic_write_bytes(paths["ca"], ca.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(paths["ca_key"], _pem_key(ca_key))
    atomic_write_bytes(paths["server"], cert.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(paths["server_key"], _pem_key(key))
    for k in ("ca_key", "server_key"):
        paths[k].chmod(0o600)
    return paths


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """An EC (NIST P-384) key pair in OpenSSH format for SuperNode authentication: the private key stays
    on the hospital's node (``flower-supernode --auth-supernode-private-key``), the public key is
    registered with the federation (``flwr supernode register KEY.pub <superlink> --name NAME``)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = folder / f"{name}.key"
    public = folder / f"{name}.pub"
    atomic_write_bytes(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    private.chmod(0o600)
    atomic_write_bytes(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m federated.certs", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("certificates"))
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--host", action="append", default=None, help="host name or IP in the certificate (repeatable; default localhost, 127.0.0.1)")
    p.add_argument("--node-key", action="append", default=[], metavar="NAME", help="also make a SuperNode key pair NAME.key/NAME.pub (repeatable)")
    args = p.parse_args(argv)
    paths = make_test_certificates(args.out, args.days, tuple(args.host or ("localhost", "127.0.0.1")))
    for name in args.node_key:
        paths[f"{name} key"], paths[f"{name} public key"] = make_node_key(args.out, name)
    for k, v in paths.items():
        print(f"{k:10s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
