"""Test certificates and SuperNode keys for a secured Flower deployment.

    python -m ssl_zoo.federated.keys keys/ --hosts superlink.example.org --supernodes 2

writes into keys/:
- ca.crt / ca.key: a certificate authority of your own. Every SuperNode and the flwr CLI get
  ca.crt (`--root-certificates`, `root-certificates` in config.toml) to check the SuperLink.
- superlink.crt / superlink.key: the SuperLink's TLS certificate, signed by that CA, valid for
  the names in --hosts (and localhost / 127.0.0.1, for loopback tests).
- supernode-K / supernode-K.pub: SuperNode K's key pair (EC P-384, OpenSSH format, as Flower's
  SuperNode authentication reads it). Register the .pub with `flwr supernode register`; the
  private key stays on that SuperNode (`--auth-supernode-private-key`).

A CA made here is for tests and closed networks; on the internet use your organisation's CA. It is
written with `cryptography` (installed with flwr), so no openssl or ssh-keygen is needed.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(subject, issuer, public_key, signer, days, *extensions) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks of the machines differ
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def _subject_alt_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    names = []
    for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_keys(out: Path, hosts: list[str], supernodes: int, days: int = 365) -> list[Path]:
    """Write the CA, the SuperLink's certificate and `supernodes` key pairs into `out`; return
    the SuperNodes' private key paths (each .pub beside it)."""
    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _certificate(
        _name("ssl_zoo federation CA"),
        _name("ssl_zoo federation CA"),
        ca_key.public_key(),
        ca_key,
        days,
        (x509.BasicConstraints(ca=True, path_length=0), True),
    )
    link_key = ec.generate_private_key(ec.SECP384R1())
    link = _certificate(
        _name(hosts[0] if hosts else "localhost"),
        ca.subject,
        link_key.public_key(),
        ca_key,
        days,
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_subject_alt_names(hosts), False),
    )
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": _pem_key(ca_key),
        "superlink.crt": link.public_bytes(serialization.Encoding.PEM),
        "superlink.key": _pem_key(link_key),
    }
    nodes = []
    for k in range(supernodes):
        key = ec.generate_private_key(ec.SECP384R1())
        files[f"supernode-{k}"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        files[f"supernode-{k}.pub"] = public + b"\n"
        nodes.append(out / f"supernode-{k}")
    for name, data in files.items():
        path = out / name
        path.write_bytes(data)
        if not name.endswith((".crt", ".pub")):
            path.chmod(0o600)  # private keys: readable by their owner only
    return nodes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the keys into")
    parser.add_argument("--hosts", nargs="*", default=[], help="the SuperLink's names or IPs")
    parser.add_argument("--supernodes", type=int, default=2, help="how many SuperNode key pairs")
    parser.add_argument("--days", type=int, default=365, help="certificate validity")
    args = parser.parse_args(argv)
    make_keys(args.out, args.hosts, args.supernodes, args.days)
    print(f"wrote ca.crt, superlink.crt/.key, {args.supernodes} SuperNode key pairs: {args.out}")


if __name__ == "__main__":
    main()
