"""
TLS as Postfix's smtp client judges it (Salt ``__utils__``): the SMTP session
probe opens, the certificate's names and fingerprints, and when the password
may be sent. Pure functions, no Salt calls: ``postfix_probe`` uses them.
"""

import hashlib
import re
import smtplib
import socket
import ssl

# Levels whose certificate must verify (DANE levels are handled apart: probe
# does not check TLSA records).
VERIFYING_LEVELS = ("verify", "secure", "fingerprint")
DANE_LEVELS = ("dane", "dane-only")


_HOSTNAME = re.compile(r"^(?=.*[a-z_-])[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?$", re.I)


def policy_keys(nexthop):
    """The keys Postfix's smtp client looks up in smtp_tls_policy_maps for a
    next hop, in order (smtp_tls_policy.c, tls_policy_lookup: "Only one
    lookup with [nexthop]:port, [nexthop] or nexthop:port ... Parent domain
    matching applies only to sub-domains of the recipient domain"): a next
    hop with brackets, a port or a numeric address is looked up exactly as
    written; a bare domain, then each parent as ".parent" (the loop retries
    with strchr(site_name + 1, '.') while nothing is found)."""
    name = (nexthop or "").strip().lower()
    if not _HOSTNAME.match(name):  # valid_hostname() refuses it: one lookup
        return [name] if name else []
    keys = [name]
    while "." in name[1:]:
        name = name[name.index(".", 1):]
        keys.append(name)
    return keys


def banner_first(host, port, wait, tls_first=False):
    """True when the server speaks first in plain text (a STARTTLS/plain port),
    False when it waits silently for a TLS ClientHello (an implicit-TLS port).
    ``tls_first`` (wrappermode expects implicit TLS): say hello in TLS at once
    rather than wait ``wait`` seconds for a greeting that never comes; a plain
    server's greeting fails that handshake at once. Nothing is sent but the
    hello: no certificate is judged here."""
    with socket.create_connection((host, port), timeout=wait) as sock:
        sock.settimeout(wait)
        if tls_first:
            return _plain_answers_tls_hello(sock)
        try:
            return sock.recv(4).startswith(b"2")
        except TimeoutError:
            return False


def _plain_answers_tls_hello(sock):
    try:
        with tls_context(False, None).wrap_socket(sock):
            return False  # a TLS handshake: implicit TLS
    except ssl.SSLEOFError:
        raise OSError("the relay closed the connection during the TLS handshake") from None
    except ssl.SSLError:
        return True  # plain text where a ServerHello belongs: a greeting
    except TimeoutError:
        return False  # silence: not a plain greeting either


def tls_context(verify, ca_file):
    """A client context: no checks at all, or the chain against ca_file."""
    if not verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=ca_file or None)
    # Python 3.13+ is stricter than Postfix (OpenSSL's defaults): judge as it does
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    return ctx


def open_session(host, port, wrapper, ctx, timeout, helo):  # noqa: PLR0913
    """An SMTP session with TLS started (implicit or STARTTLS when offered);
    returns (smtp, tls)."""
    if wrapper:
        smtp = smtplib.SMTP_SSL(host, port, local_hostname=helo, timeout=timeout, context=ctx)
        smtp.ehlo()
        return smtp, True
    smtp = smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout)
    smtp.ehlo()
    if not smtp.has_extn("starttls"):
        return smtp, False
    smtp.starttls(context=ctx)
    smtp.ehlo()
    return smtp, True


def cert_info(sock):
    """Subject, issuer and names of the peer's certificate (None: no certificate)."""
    from cryptography import x509  # pylint: disable=import-outside-toplevel

    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "names": alt_names(cert, x509.DNSName) + alt_names(cert, x509.IPAddress)}


def alt_names(cert, kind):
    """The certificate's subjectAltName values of one kind, as text."""
    from cryptography import x509  # pylint: disable=import-outside-toplevel

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in sans.value.get_values_for_type(kind)]


def dns_names(der):
    """The names Postfix matches: DNS subjectAltNames, else the CN."""
    from cryptography import x509  # pylint: disable=import-outside-toplevel
    from cryptography.x509.oid import NameOID  # pylint: disable=import-outside-toplevel

    cert = x509.load_der_x509_certificate(der)
    dns = alt_names(cert, x509.DNSName)
    if dns:
        return dns
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def name_matches(name, host, dot_nexthop):
    """Postfix's rules: exact (case-insensitive), a leading "*." for one label,
    and with dot-nexthop any name below host."""
    name, host = name.lower().rstrip("."), host.lower().rstrip(".")
    if name == host:
        return True
    if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
        return True
    return dot_nexthop and name.endswith("." + host)


def match_targets(level, host, match=None):
    """(name, dot_nexthop) pairs a certificate name may match: the level's
    default strategy (verify: hostname; secure: nexthop and dot-nexthop), or a
    TLS policy's match= (hostname, nexthop, dot-nexthop or literal names, a
    leading dot meaning any name below)."""
    if not match:
        return [(host, level != "verify")]
    targets = []
    for item in re.split(r"[\s:]+", match.strip()):
        if item in ("hostname", "nexthop"):
            targets.append((host, False))
        elif item == "dot-nexthop":
            targets.append((host, True))
        elif item.startswith("."):
            targets.append((item[1:], True))
        elif item:
            targets.append((item, False))
    return targets


def is_dane(level):
    """A DANE level: its TLSA check is Postfix's alone."""
    return level in DANE_LEVELS


def is_verifying(level):
    """A level whose certificate must verify."""
    return level in VERIFYING_LEVELS


def credentials_allowed(level, tls, verified):
    """Whether probe may send the credentials in a session as Postfix would:
    inside TLS only; at verify, secure and fingerprint only to a certificate
    that passed; never at dane/dane-only, whose TLSA check probe does not do."""
    if not tls or level in DANE_LEVELS:
        return False
    return bool(verified) if level in VERIFYING_LEVELS else True


def cert_fingerprints(der, digest="sha256"):
    """The certificate's and its public key's fingerprints as Postfix logs them
    (hex pairs with colons): the digest of the DER certificate and of its DER
    SubjectPublicKeyInfo."""
    from cryptography import x509  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives import serialization  # pylint: disable=C0415

    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def pairs(data):
        hexa = hashlib.new(digest, data).hexdigest().upper()
        return ":".join(hexa[i:i + 2] for i in range(0, len(hexa), 2))
    return {"certificate": pairs(der), "public_key": pairs(spki)}


def fingerprint_matches(der, digest, cert_match):
    """True when the certificate or its public key has a fingerprint listed in
    ``cert_match`` (smtp_tls_fingerprint_cert_match or a policy's match=:
    separated by commas, spaces or "|", colons optional, any case), as
    Postfix's fingerprint level checks."""
    listed = {item.replace(":", "").lower()
              for item in re.split(r"[\s,|]+", cert_match or "") if item}
    found = cert_fingerprints(der, digest)
    return any(fp.replace(":", "").lower() in listed for fp in found.values())
