"""probe sends the password only where Postfix would (issue 12, finding 11):
with fingerprint only to a certificate whose certificate or public-key
fingerprint is listed, never with dane/dane-only (probe does not check TLSA
records), never outside TLS."""

import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers import load_module

relay_mod = load_module("_utils/postfix_tls.py")


def make_cert():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_bytes(serialization.Encoding.DER), spki


def colons(digest):
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)).upper()


@pytest.mark.parametrize("level, tls, verified, allowed", [
    ("encrypt", True, None, True),
    ("encrypt", False, None, False),
    ("verify", True, True, True),
    ("secure", True, False, False),
    ("fingerprint", True, True, True),
    ("fingerprint", True, False, False),
    ("dane-only", True, True, False),   # a CA-valid certificate is not a TLSA match
    ("dane", True, True, False),
    ("may", False, None, False),
])
def test_credentials_go_only_where_postfix_sends_them(level, tls, verified, allowed):
    assert relay_mod.credentials_allowed(level, tls, verified) is allowed


def test_certificate_and_public_key_fingerprints_match_as_postfix_matches_them():
    der, spki = make_cert()
    cert_fp = colons(hashlib.sha256(der).hexdigest())
    pkey_fp = colons(hashlib.sha256(spki).hexdigest())
    assert relay_mod.cert_fingerprints(der, "sha256") == {"certificate": cert_fp,
                                                          "public_key": pkey_fp}
    assert relay_mod.fingerprint_matches(der, "sha256", f"AA:BB, {cert_fp.lower()}")
    assert relay_mod.fingerprint_matches(der, "sha256", pkey_fp.replace(":", ""))
    assert not relay_mod.fingerprint_matches(der, "sha256", "")
    assert not relay_mod.fingerprint_matches(der, "sha1", cert_fp)
    other, _ = make_cert()
    assert not relay_mod.fingerprint_matches(other, "sha256", f"{cert_fp} {pkey_fp}")
