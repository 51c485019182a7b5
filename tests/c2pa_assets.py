"""Media signed with C2PA Content Credentials by the real c2pa library, for the tests: a throwaway ES256 chain
(its root is on no trust list, so a good signature reads "untrusted" unless the root is given as trust anchors),
manifests with IPTC digital source types, and JPEG surgery that changes pixels after signing."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
SIGNER_ORG, SIGNER_CN = "Deepsift Tests", "Deepsift Test Signer"
GENERATOR = {"name": "deepsift-tests", "version": "1.0"}


@dataclass(frozen=True)
class SigningChain:
    chain_pem: bytes  # leaf, then root
    key_pem: bytes
    root_pem: str


def _usage(*, signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signing,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not signing,
        crl_sign=not signing,
        encipher_only=False,
        decipher_only=False,
    )


def _certificate(subject: x509.Name, issuer: x509.Name, key: Any, issuer_key: Any, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(_usage(signing=not ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_chain() -> SigningChain:
    """A throwaway ES256 root CA and a leaf with the emailProtection EKU C2PA accepts."""

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIGNER_ORG)]
        )

    root_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = name("Deepsift Test Root CA")
    root = _certificate(root_name, root_name, root_key, root_key, ca=True)
    leaf = _certificate(name(SIGNER_CN), root_name, leaf_key, root_key, ca=False)
    pem = serialization.Encoding.PEM
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return SigningChain(leaf.public_bytes(pem) + root.public_bytes(pem), key_pem, root.public_bytes(pem).decode())


def actions(*actions: tuple[str, str]) -> dict[str, Any]:
    return {
        "claim_generator_info": [GENERATOR],
        "title": "deepsift test asset",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {"actions": [{"action": a, "digitalSourceType": IPTC + t} for a, t in actions]},
            }
        ],
    }


Sign = Callable[..., Path]


def signer(chain: SigningChain) -> Sign:
    """``sign(source, dest, media_type, manifest, remote=None)``: signs ``source`` into ``dest`` with the chain;
    no thumbnail, no time stamp."""

    def sign_to(source: Path, dest: Path, media_type: str, manifest: dict[str, Any], remote: str | None = None):
        info = c2pa.C2paSignerInfo(alg=b"es256", sign_cert=chain.chain_pem, private_key=chain.key_pem, ta_url=None)
        context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        with context, c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest, context=context) as builder:
            if remote is not None:
                builder.set_no_embed()
                builder.set_remote_url(remote)
            with source.open("rb") as src, dest.open("w+b") as dst:
                builder.sign(signer, media_type, src, dst)
        return dest

    return sign_to


def jpeg_segments(data: bytes) -> dict[int, tuple[int, int]]:
    """JPEG marker -> (offset, length) of its first segment before the scan; the scan's data starts after SOS."""
    found: dict[int, tuple[int, int]] = {}
    offset = 2
    while offset < len(data):
        marker, length = data[offset + 1], int.from_bytes(data[offset + 2 : offset + 4], "big")
        found.setdefault(marker, (offset, length))
        if marker == 0xDA:
            return found
        offset += 2 + length
    raise AssertionError("no scan in JPEG")


def tamper_scan(data: bytes) -> bytes:
    """The JPEG with one bit of its entropy-coded scan flipped (no marker made): it still decodes, but no longer
    matches the hash its manifest signed."""
    changed = bytearray(data)
    sos_offset, sos_length = jpeg_segments(data)[0xDA]
    scan = sos_offset + 2 + sos_length
    position = next(i for i in range(scan + 500, len(changed)) if changed[i] < 0xFE and changed[i - 1] != 0xFF)
    changed[position] ^= 0x01
    return bytes(changed)
