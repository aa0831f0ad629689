"""
Does this host's mail get out, how, and if not, why.

.. code-block:: bash

    salt '*' postfix_relay.probe      # TLS, AUTH mechanisms, the one Postfix will use, credentials
    salt '*' postfix_relay.verify     # a real mail through sendmail, followed to the relay
    salt '*' postfix_relay.status     # the queue at a glance

Every failure is returned as ``diagnosis``: a list of ``{"cause", "fix"}``.
The password is read from Postfix's own table to test it against the relay
and never leaves this module: no return, log line or exception carries it.
``debug_peer_list`` is never used (it logs the password in clear).
"""

import collections
import hashlib
import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import time
import uuid

from salt.exceptions import CommandExecutionError

__virtualname__ = "postfix_relay"

CONF_NAMES = [
    "relayhost", "smtp_tls_security_level", "smtp_tls_wrappermode", "smtp_tls_CAfile",
    "smtp_sasl_auth_enable", "smtp_sasl_password_maps", "smtp_sasl_mechanism_filter",
    "smtp_sasl_security_options", "smtp_sasl_tls_security_options",
    "smtp_sender_dependent_authentication", "maillog_file", "myhostname", "mail_version",
    "mail_owner", "smtp_tls_fingerprint_digest", "smtp_tls_fingerprint_cert_match",
]
SMTPLIB_MECHANISMS = {"PLAIN", "LOGIN", "CRAM-MD5"}
PLUGIN_PACKAGES = {
    "Debian": "libsasl2-modules", "RedHat": "cyrus-sasl-plain (and cyrus-sasl-md5)",
    "Suse": "cyrus-sasl-plain (and cyrus-sasl-crammd5)", "Alpine": "cyrus-sasl-login",
    "Arch": "libsasl", "FreeBSD": "cyrus-sasl",
}
SYSLOG_FILES = ("/var/log/mail.log", "/var/log/maillog", "/var/log/mail.info",
                "/var/log/messages", "/var/log/syslog")


def __virtual__():
    return __virtualname__


def _run(argv):
    return __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True,
                                   output_loglevel="quiet")


def _diag(result, cause, fix):
    result.setdefault("diagnosis", []).append({"cause": cause, "fix": fix})


def config(config_dir="/etc/postfix"):
    """
    The live Postfix settings that decide how mail is relayed (``postconf -x``).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay.config
    """
    res = _run(["postconf", "-c", config_dir, "-hx"] + CONF_NAMES)
    if res["retcode"]:
        raise CommandExecutionError(f"postconf failed: {res['stderr'].strip()}")
    return dict(zip(CONF_NAMES, res["stdout"].split("\n")))


def parse_relayhost(value):
    """
    Split a relayhost as Postfix reads it: ``[host]:port`` (no MX lookup),
    ``host:port`` (MX lookup), default port 25.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay.parse_relayhost '[smtp.example.net]:587'
    """
    value = (value or "").strip()
    if not value:
        return None
    match = re.match(r"^\[(?P<host>[^\]]+)\](?::(?P<port>\w+))?$", value) or \
        re.match(r"^(?P<host>[^:\[\]]+)(?::(?P<port>\w+))?$", value)
    if not match:
        return {"dest": value, "host": value, "port": 25, "mx": False}
    port = match.group("port") or "25"
    port = int(port) if port.isdigit() else socket.getservbyname(port, "tcp")
    host = match.group("host")
    host = host[5:] if host.lower().startswith("ipv6:") else host
    return {"dest": value, "host": host, "port": port, "mx": not value.startswith("[")}


def _table(spec):
    map_type, _, path = spec.partition(":")
    return map_type, path


def lookup_credentials(conf, config_dir="/etc/postfix"):
    """Find the relay's entry the way Postfix's smtp client does (host name,
    then the destination as written in relayhost); returns the match and,
    separately, the secret (kept inside this module)."""
    relay = parse_relayhost(conf["relayhost"])
    result = {"table": conf["smtp_sasl_password_maps"], "keys_tried": [], "key": None,
              "username": None}
    secret = None
    if not relay or not result["table"]:
        return result, secret
    for spec in re.split(r"[\s,]+", result["table"].strip()):
        map_type, path = _table(spec)
        for key in (relay["host"].lower(), relay["dest"].lower()):
            result["keys_tried"].append(key)
            value = __salt__["postmap.query"](path, key, map_type, config_dir) \
                if path else None
            if value is not None:
                user, _, secret = value.partition(":")
                result.update(key=key, username=user)
                return result, secret
    return result, secret


def _table_problems(result, conf, config_dir):
    """Missing or stale password table; a key that almost matches relayhost."""
    relay = parse_relayhost(conf["relayhost"])
    for spec in re.split(r"[\s,]+", conf["smtp_sasl_password_maps"].strip()):
        map_type, path = _table(spec)
        compiled = __salt__["postmap.compiled_files"](path, map_type)
        if not os.path.exists(path) and not compiled:
            _diag(result, f"the password table {path} does not exist",
                  "apply postfix_relay with relay:username and relay:password")
            continue
        outdated = __salt__["postmap.outdated_files"](path, map_type)
        missing = [f for f in outdated if not os.path.exists(f)]
        if missing:
            _diag(result, f"the password table {spec} was never compiled ({missing[0]} "
                  "is missing): Postfix finds no password",
                  f"run `postmap {spec}` or re-apply postfix_relay")
            continue
        if outdated:
            _diag(result, f"the password table {spec} is stale: {path} changed after "
                  f"{outdated[0]} was built", f"run `postmap {spec}` or re-apply postfix_relay")
        if result["credentials"]["key"] is None and relay and os.path.exists(path):
            keys = [k for k, _ in __salt__["postmap.parse"](
                __salt__["postfix_control.read_file"](path) or "",
                __salt__["postmap.folds_utf8"](config_dir))]
            near = [k for k in keys if relay["host"].lower() in k.lower()]
            _diag(result, f"no entry in {spec} for {relay['host']!r} or {relay['dest']!r} "
                  f"(the keys Postfix looks up){': found ' + ', '.join(near) if near else ''}",
                  f"write the key exactly as relayhost: {relay['dest']} "
                  "(brackets and port included)")


def _banner_first(host, port, wait):
    """True when the server speaks first in plain text (a STARTTLS/plain port),
    False when it waits silently for a TLS ClientHello (an implicit-TLS port)."""
    with socket.create_connection((host, port), timeout=wait) as sock:
        sock.settimeout(wait)
        try:
            return sock.recv(4).startswith(b"2")
        except TimeoutError:
            return False


def _tls_context(verify, ca_file):
    if not verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=ca_file or None)
    # Python 3.13+ is stricter than Postfix (OpenSSL's defaults): judge as it does
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    return ctx


def _open(host, port, wrapper, ctx, timeout, helo):
    """An SMTP session with TLS started (implicit or STARTTLS when offered)."""
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


def _cert_info(sock):
    from cryptography import x509  # pylint: disable=import-outside-toplevel

    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "names": _alt_names(cert, x509.DNSName) + _alt_names(cert, x509.IPAddress)}


def _alt_names(cert, kind):
    """The certificate's subjectAltName values of one kind, as text."""
    from cryptography import x509  # pylint: disable=import-outside-toplevel

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in sans.value.get_values_for_type(kind)]


def _negotiate(conf, offered):
    tls_opts = conf["smtp_sasl_tls_security_options"] or conf["smtp_sasl_security_options"]
    return __salt__["postfix_sasl.negotiate"](
        offered, mechanism_filter=conf["smtp_sasl_mechanism_filter"],
        security_options=conf["smtp_sasl_security_options"], tls=True,
        tls_security_options=tls_opts)


def _try_auth(smtp, mechanism, username, secret):
    """AUTH with the table's credentials; the relay's reply, never the secret."""
    smtp.user, smtp.password = username, secret
    method = {"PLAIN": smtp.auth_plain, "LOGIN": smtp.auth_login,
              "CRAM-MD5": smtp.auth_cram_md5}[mechanism]
    try:
        code, reply = smtp.auth(mechanism, method, initial_response_ok=True)
    except smtplib.SMTPAuthenticationError as exc:
        code, reply = exc.smtp_code, exc.smtp_error
    finally:
        smtp.user = smtp.password = None
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    return {"accepted": 200 <= code < 300, "code": code, "reply": text.replace(secret, "****")}


def probe(relay=None, timeout=10, config_dir="/etc/postfix"):
    """
    Open an SMTP session to the relay Postfix uses (or ``relay``, in relayhost
    syntax) as Postfix would, and report: TLS protocol, cipher, certificate
    and whether it verifies; the AUTH mechanisms offered; which survive the
    mechanism filter, the security options and the installed SASL plugins;
    the mechanism Postfix will negotiate (decided by libsasl2); and whether
    the relay accepts the credentials from the password table.

    CLI Example:

    .. code-block:: bash

        salt '*' postfix_relay.probe
        salt-call postfix_relay.probe relay='[smtp.example.net]:465'
    """
    conf = config(config_dir)
    if relay:
        conf["relayhost"] = relay
    result, target = _probe_target(conf)
    if not target:
        return result
    creds, secret = ({"key": None}, None)
    if conf["smtp_sasl_auth_enable"] == "yes":
        creds, secret = lookup_credentials(conf, config_dir)
        result["credentials"] = creds
        _table_problems(result, conf, config_dir)
    host, port, wrapper = target["host"], target["port"], result["wrappermode"]
    if not _reachable_as_configured(result, host, port, wrapper, timeout):
        return result
    helo = conf["myhostname"] or socket.getfqdn()
    try:
        smtp, tls = _open(host, port, wrapper, _tls_context(False, None), timeout, helo)
    except (OSError, smtplib.SMTPException) as exc:
        _diag(result, f"SMTP session with {host}:{port} failed: {exc}",
              "check relay:host, relay:port and relay:tls")
        return result
    with smtp:
        trusted = _session_tls(result, conf, smtp, tls, timeout, helo)
        if conf["smtp_sasl_auth_enable"] == "yes":
            offered = result["mechanisms_offered"]
            _sasl(result, conf, smtp, offered, creds, secret, trusted, config_dir)
    result["ok"] = not result.get("diagnosis")
    return result


def _probe_target(conf):
    """The result's first fields and the relay to probe (None: no relayhost)."""
    target = parse_relayhost(conf["relayhost"])
    result = {"relayhost": conf["relayhost"], "ok": False}
    if not target:
        _diag(result, "relayhost is empty: Postfix delivers directly, not through a relay",
              "set postfix_relay:relay:host and apply postfix_relay")
        return result, None
    result.update(host=target["host"], port=target["port"],
                  tls_level=conf["smtp_tls_security_level"] or "none",
                  wrappermode=conf["smtp_tls_wrappermode"] == "yes")
    if target["mx"]:
        result["note"] = "relayhost without brackets: Postfix looks up MX records first; " \
                         "this probe connects to the name itself"
    return result, target


def _reachable_as_configured(result, host, port, wrapper, timeout):
    """The relay resolves, answers, and speaks first as wrappermode expects."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        _diag(result, f"the relay name {host} does not resolve ({exc.strerror})",
              "check relay:host and this host's DNS (/etc/resolv.conf)")
        return False
    try:
        plain_first = _banner_first(host, port, min(timeout, 5))
    except OSError as exc:
        _diag(result, f"relay {host}:{port} is unreachable: {exc.strerror or exc}",
              "check relay:host and relay:port, and that the relay and firewalls allow it")
        return False
    if wrapper and plain_first:
        _diag(result, f"port {port} speaks plain SMTP first (STARTTLS), but "
              "smtp_tls_wrappermode = yes expects TLS from the first byte",
              "use port 465 for implicit TLS, or turn wrappermode off (relay:port 587)")
        return False
    if not wrapper and not plain_first:
        _diag(result, f"port {port} sends no SMTP greeting: it expects implicit TLS "
              "(port 465 style), but smtp_tls_wrappermode = no",
              "set relay:port 465 (postfix_relay turns wrappermode on), or "
              "main_cf smtp_tls_wrappermode: yes")
        return False
    return True


def _session_tls(result, conf, smtp, tls, timeout, helo):
    """TLS of the open session, its certificate checked as the level asks, and
    the AUTH mechanisms offered; whether the credentials may be sent."""
    host, port, level = result["host"], result["port"], result["tls_level"]
    result["tls"] = tls and {"protocol": smtp.sock.version(),
                             "cipher": smtp.sock.cipher()[0],
                             "certificate": _cert_info(smtp.sock)}
    if not tls and level not in ("none", "may"):
        _diag(result, "the relay offers no STARTTLS, and smtp_tls_security_level = "
              f"{level} requires TLS: Postfix defers all mail",
              "use the relay's submission port with TLS (587 or 465)")
    result["mechanisms_offered"] = (smtp.esmtp_features.get("auth") or "").upper().split()
    if tls and level == "fingerprint":
        _check_fingerprint(result, smtp.sock, conf)
    elif tls and level not in DANE_LEVELS:
        _verify_cert(result, host, port, result["wrappermode"], conf, timeout, helo, level)
    # The password goes only where Postfix would send it: inside TLS, and
    # to a verified certificate when the level asks for verification.
    trusted = credentials_allowed(level, tls, (result["tls"] or {}).get("verified"))
    if tls and level in DANE_LEVELS:
        result["tls"]["verified"] = None
        result["tls"]["verify_error"] = "not checked: probe does not look up DANE " \
                                        "TLSA records (Postfix does)"
    return trusted


def _sasl(result, conf, smtp, offered, creds, secret, trusted, config_dir):  # noqa: PLR0913
    if not offered:
        result["negotiated_mechanism"] = None
        result["note_auth"] = "the relay offers no AUTH: Postfix sends without authenticating"
        return
    nego = _negotiate(conf, offered)
    result["negotiation"] = nego
    result["negotiated_mechanism"] = nego.get("chosen")
    if not nego.get("chosen"):
        reason = nego.get("reason") or "no mechanism left"
        if "plugin" in reason and nego["after_filter"] == ["XOAUTH2"]:
            fix = _xoauth2_plugin_fix()
        elif "plugin" in reason:
            family = __grains__.get("os_family", "Debian")
            fix = f"install the SASL client plugins: {PLUGIN_PACKAGES.get(family, 'cyrus-sasl')}"
        elif "filter" in reason and "XOAUTH2" not in offered and \
                conf["smtp_sasl_mechanism_filter"].lower() == "xoauth2":
            reason = f"the relay does not offer XOAUTH2 (it offers {', '.join(offered)})"
            fix = ("relay:oauth2 needs a relay that takes OAuth2 tokens (Microsoft 365: "
                   "smtp.office365.com:587, Gmail: smtp.gmail.com:587); for this relay use "
                   "relay:password")
        elif "filter" in reason:
            fix = "remove relay:mechanisms or list one the relay offers: " + ", ".join(offered)
        elif "noplaintext" in reason:
            fix = "use smtp_sasl_tls_security_options = noanonymous (postfix_relay's default) " \
                  "so PLAIN/LOGIN work inside TLS"
        else:
            fix = "compare the relay's mechanisms with the SASL settings above"
        _diag(result, f"No worthy mechs found: {reason}", fix)
        return
    if creds.get("key") is None:
        return
    if nego["chosen"] == "XOAUTH2":
        _xoauth2(result, conf, smtp, creds, secret, trusted, config_dir)
        return
    if not trusted:
        secret = None
    if nego["chosen"] not in SMTPLIB_MECHANISMS:
        result["credentials"]["checked"] = False
        return
    if secret is None:
        _not_sent(result)
        return
    check = _try_auth(smtp, nego["chosen"], creds["username"], secret)
    result["credentials"].update(checked=True, **check)
    if not check["accepted"]:
        _diag(result, f"the relay rejects the credentials ({check['code']} {check['reply']})",
              "fix relay:username / relay:password in the pillar and re-apply")


def _not_sent(result):
    if result.get("tls_level") in DANE_LEVELS and result.get("tls"):
        reason = "not sent: probe does not check the relay's DANE TLSA records"
    else:
        reason = "not sent: no TLS, or a certificate that does not verify"
    result["credentials"].update(checked=False, reason=reason)


def credentials_allowed(level, tls, verified):
    """
    Whether probe may send the credentials in a session as Postfix would:
    inside TLS only; at verify, secure and fingerprint only to a certificate
    that passed; never at dane/dane-only, whose TLSA check probe does not do.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay.credentials_allowed fingerprint True True
    """
    if not tls or level in DANE_LEVELS:
        return False
    return bool(verified) if level in VERIFYING_LEVELS else True


def cert_fingerprints(der, digest="sha256"):
    """
    The certificate's and its public key's fingerprints as Postfix logs them
    (hex pairs with colons): the digest of the DER certificate and of its DER
    SubjectPublicKeyInfo.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay.cert_fingerprints "$(cat cert.der)" sha256
    """
    from cryptography import x509  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives import serialization  # pylint: disable=C0415

    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def pairs(data):
        hexa = hashlib.new(digest, data).hexdigest().upper()
        return ":".join(hexa[i:i + 2] for i in range(0, len(hexa), 2))
    return {"certificate": pairs(der), "public_key": pairs(spki)}


def fingerprint_matches(der, digest, cert_match):
    """
    True when the certificate or its public key has a fingerprint listed in
    ``cert_match`` (smtp_tls_fingerprint_cert_match: separated by commas or
    spaces, colons optional, any case), as Postfix's fingerprint level checks.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay.fingerprint_matches "$(cat cert.der)" sha256 'AB:CD:...'
    """
    listed = {item.replace(":", "").lower()
              for item in re.split(r"[\s,|]+", cert_match or "") if item}
    found = cert_fingerprints(der, digest)
    return any(fp.replace(":", "").lower() in listed for fp in found.values())


def _check_fingerprint(result, sock, conf):
    """tls fingerprint: the certificate or public key must be listed, as
    Postfix checks it (no CA, no name, no expiry)."""
    digest = conf["smtp_tls_fingerprint_digest"] or "sha256"
    der = sock.getpeercert(binary_form=True)
    result["tls"]["fingerprints"] = {digest: cert_fingerprints(der, digest)}
    result["tls"]["verified"] = fingerprint_matches(
        der, digest, conf["smtp_tls_fingerprint_cert_match"])
    if not result["tls"]["verified"]:
        result["tls"]["verify_error"] = "fingerprint not in smtp_tls_fingerprint_cert_match"
        _diag(result, f"the relay's certificate and public-key {digest} fingerprints "
              f"({result['tls']['fingerprints'][digest]['certificate']}) are not in "
              "smtp_tls_fingerprint_cert_match: with smtp_tls_security_level = fingerprint "
              "Postfix defers all mail",
              f"set relay:fingerprints to the relay's {digest} fingerprint (check it "
              "with the relay's operator first)")


def _xoauth2_conf():
    """The plugin's config file (read when the plugin loads)."""
    return __salt__["postfix_relay_settings.xoauth2_paths"]()["conf"]


def _xoauth2_plugin_fix():
    if os.path.exists(_xoauth2_conf()):
        return __salt__["postfix_sasl.xoauth2_hint"]()
    return (f"{__salt__['postfix_sasl.xoauth2_hint']()}; if it is installed: it does not load "
            f"without {_xoauth2_conf()} (apply postfix_relay with relay:oauth2 to write it)")


def _xoauth2(result, conf, smtp, creds, token_path, trusted, config_dir):  # noqa: PLR0913
    """XOAUTH2 (sasl-xoauth2): the table's "password" is the token file's path
    as smtp sees it. Check the file, refresh as the plugin would, then AUTH."""
    chroot = __salt__["postfix_control.smtp_chroot_dir"](config_dir)
    owner = conf.get("mail_owner") or "postfix"
    oauth = {"token_file": token_path, "chroot": chroot or None}
    result["oauth2"] = oauth
    problems = __salt__["postfix_xoauth2.file_problems"](token_path, chroot, owner)
    for problem in problems:
        _diag(result, problem["cause"], problem["fix"])
    if any(problem["kind"] == "missing" for problem in problems):
        return
    try:
        info, access = __salt__["postfix_xoauth2.refresh"](token_path, chroot, _xoauth2_conf())
    except (OSError, ValueError) as exc:  # unreadable, or not JSON: the plugin fails too
        _diag(result, f"the XOAUTH2 token file {token_path} cannot be read ({type(exc).__name__})",
              "re-apply postfix_relay with relay:oauth2:refresh_token (it rewrites the file)")
        return
    oauth.update(info)
    if not info["refresh_token_accepted"]:
        _diag(result, *_oauth2_failure(info))
        return
    if not trusted:
        _not_sent(result)
        return
    check = _try_xoauth2(smtp, creds["username"], access)
    result["credentials"].update(checked=True, **check)
    if not check["accepted"]:
        _diag(result, *_xoauth2_rejected(check, creds["username"]))


def _oauth2_failure(info):
    """(cause, fix) for a refresh that failed."""
    error, code, endpoint = info["error"], info["error_code"], info["token_endpoint"]
    if code == "invalid_grant":
        return (f"the token endpoint rejects the refresh token ({error}): revoked, expired "
                "or issued to another client; Postfix keeps the mail queued",
                "get a new refresh token for relay:username (e.g. sasl-xoauth2-tool "
                "get-token), set relay:oauth2:refresh_token and re-apply")
    if code in ("invalid_client", "unauthorized_client"):
        return (f"the token endpoint rejects the client ({error})",
                "check relay:oauth2:client_id and client_secret against the app registration")
    if info["answered"]:
        return (f"the token endpoint {endpoint} refuses the refresh ({error})",
                "check relay:oauth2 against the provider's app registration")
    if code == "ca_missing":
        return (error, "re-apply postfix_relay (it copies relay:oauth2:ca_file, or the "
                "system CAs, into smtp's chroot)")
    if code == "untrusted":
        return (error, "set relay:oauth2:ca_file to the CA that signed the token endpoint's "
                "certificate and re-apply")
    return (f"{error}: {endpoint}", "check relay:oauth2:token_endpoint and that this host "
            "reaches it over HTTPS (DNS, proxy, firewall)")


def _try_xoauth2(smtp, username, access):
    """AUTH XOAUTH2 with a fresh access token; the reply, never the token."""
    def response(challenge=None):
        # a challenge is the relay's error JSON: answer empty to get its reply
        return "" if challenge is not None else f"user={username}\1auth=Bearer {access}\1\1"
    try:
        code, reply = smtp.auth("XOAUTH2", response, initial_response_ok=True)
    except smtplib.SMTPAuthenticationError as exc:
        code, reply = exc.smtp_code, exc.smtp_error
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    return {"accepted": 200 <= code < 300, "code": code, "reply": text.replace(access, "****")}


def _xoauth2_rejected(check, username):
    """(cause, fix) for a relay that refuses a token the endpoint just issued."""
    said = f"{check['code']} {check['reply']}"
    if "5.7.139" in said:
        return (f"the relay has SMTP AUTH turned off for {username} or its tenant ({said})",
                "Microsoft 365: turn Authenticated SMTP on for the mailbox (Set-CASMailbox "
                f"{username} -SmtpClientAuthenticationDisabled $false) or the tenant")
    if "5.7.3" in said:
        return (f"the relay refuses the token for {username} ({said})",
                "the token must be for relay:username, and the app must hold the SMTP "
                "permission (Microsoft: https://outlook.office.com/SMTP.Send; Google: "
                "https://mail.google.com/); then get a new refresh token")
    return (f"the relay rejects the XOAUTH2 login ({said})",
            "check relay:username and the app's SMTP permission; get a new refresh token")


# Levels whose certificate must verify (DANE levels are handled apart: see
# DANE_LEVELS; probe does not check TLSA records).
VERIFYING_LEVELS = ("verify", "secure", "fingerprint")
DANE_LEVELS = ("dane", "dane-only")


def _verify_cert(result, host, port, wrapper, conf, timeout, helo, level):
    """Chain check against the configured CA, then the name check Postfix
    does: DNS names only (subjectAltName, else CN); IP addresses never match."""
    ca_file = conf["smtp_tls_CAfile"] or None
    ctx = _tls_context(True, ca_file)
    ctx.check_hostname = False
    try:
        smtp, _ = _open(host, port, wrapper, ctx, timeout, helo)
        der = smtp.sock.getpeercert(binary_form=True)
        smtp.close()
    except ssl.SSLCertVerificationError as exc:
        _cert_failed(result, level, f"{exc.verify_message}, against "
                     f"{ca_file or 'the system CAs'}",
                     "set relay:ca_file to the CA that signed the relay's certificate")
        return
    except (OSError, smtplib.SMTPException) as exc:
        result["tls"]["verified"] = False
        result["tls"]["verify_error"] = str(exc)
        return
    names = _dns_names(der)
    dot_nexthop = level != "verify"  # secure: smtp_tls_secure_cert_match has dot-nexthop
    if any(_name_matches(name, host, dot_nexthop) for name in names):
        result["tls"]["verified"] = True
        return
    _cert_failed(result, level, f"the certificate names {names or 'nothing'}, not {host} "
                 "(Postfix matches DNS names only, never IP addresses)",
                 "use in relay:host a name the relay's certificate carries")


def _cert_failed(result, level, why, fix):
    result["tls"]["verified"] = False
    result["tls"]["verify_error"] = why
    if level in VERIFYING_LEVELS:
        _diag(result, f"the relay's certificate does not verify ({why}): with "
              f"smtp_tls_security_level = {level} Postfix defers all mail", fix)


def _dns_names(der):
    from cryptography import x509  # pylint: disable=import-outside-toplevel
    from cryptography.x509.oid import NameOID  # pylint: disable=import-outside-toplevel

    cert = x509.load_der_x509_certificate(der)
    dns = _alt_names(cert, x509.DNSName)
    if dns:
        return dns
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _name_matches(name, host, dot_nexthop):
    """Postfix's rules: exact (case-insensitive), a leading "*." for one label,
    and with dot-nexthop any name below host."""
    name, host = name.lower().rstrip("."), host.lower().rstrip(".")
    if name == host:
        return True
    if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
        return True
    return dot_nexthop and name.endswith("." + host)


def log_source(config_dir="/etc/postfix", maillog_file=None):
    """
    Where this host's Postfix logs: ``maillog_file``, the journal, or a syslog
    file. Returns ``{"type": "file"|"journal", "path": ..., "also": ...}``;
    with the journal, ``also`` names the syslog file rsyslog may write too
    (journald set to keep nothing, ``Storage=none``, only forwards to it).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay.log_source
    """
    if maillog_file is None:
        maillog_file = config(config_dir)["maillog_file"]
    if maillog_file and maillog_file != "/dev/stdout":
        return {"type": "file", "path": maillog_file}
    syslog_file = next((path for path in SYSLOG_FILES if os.path.exists(path)), None)
    if os.path.isdir("/run/systemd/journal") and __salt__["cmd.has_exec"]("journalctl"):
        return {"type": "journal", "path": None, "also": syslog_file}
    if syslog_file:
        return {"type": "file", "path": syslog_file}
    return {"type": "none", "path": None}


class _LogReader:
    """New log lines since the reader was made: the journal's and those of the
    log file (the source's own, or the syslog file beside a journal, which is
    the only record when journald keeps nothing)."""

    def __init__(self, source):
        self.since = time.time() - 1
        self.journal = source["type"] == "journal"
        self.path = source["path"] if source["type"] == "file" else source.get("also")
        try:
            self.offset = os.path.getsize(self.path) if self.path else 0
        except OSError:
            self.offset = 0
        self.file_lines = []

    def poll(self):
        if self.path:
            self.file_lines.extend(self._new_file_lines())
        if self.journal:
            out = subprocess.run(["journalctl", "--no-pager", "-o", "short", "--since",
                                  f"@{int(self.since)}", "SYSLOG_FACILITY=2"],
                                 capture_output=True, text=True, check=False).stdout
            # journal first; the file's copy of a line changes nothing in
            # parse_log (it takes the first match), and a journal that keeps
            # nothing leaves the file's lines ("-- ..." lines are journalctl's)
            lines = [line for line in out.splitlines() if not line.startswith("-- ")]
            return lines + self.file_lines
        return list(self.file_lines)

    def _new_file_lines(self):
        try:
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                handle.seek(self.offset)
                data = handle.read()
                self.offset = handle.tell()
        except OSError:
            return []
        return data.splitlines()


_DELIVERY = re.compile(
    r"(?P<qid>[0-9A-Za-z]+): to=<(?P<to>[^>]*)>(?:, orig_to=<(?P<orig_to>[^>]*)>)?, "
    r"relay=(?P<relay>[^,]+), (?:conn_use=\d+, )?delay=(?P<delay>[\d.]+), "
    # Postfix 3.11 adds fields such as tls=encrypt before dsn=
    r"delays=(?P<delays>[\d./]+)(?:, [a-z_]+=[^,\s]+)*, dsn=(?P<dsn>[\d.]+), "
    r"status=(?P<status>\w+) "
    r"\((?P<reply>.*)\)\s*$")


def parse_log(lines, message_id):
    """
    Follow one message through Postfix's log lines by its Message-ID: its
    queue id, envelope sender and the first delivery attempt's outcome.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay.parse_log '["..."]' '<id@host>'
    """
    found = {}
    mid = re.compile(r"(?P<qid>[0-9A-Za-z]+): message-id=" + re.escape(message_id))
    for line in lines:
        if "queue_id" not in found:
            match = mid.search(line)
            if match:
                found["queue_id"] = match.group("qid")
            continue
        qid = found["queue_id"]
        match = re.search(re.escape(qid) + r": from=<(?P<from>[^>]*)>", line)
        if match:
            found["sender"] = match.group("from")
            continue
        match = _DELIVERY.search(line)
        if match and match.group("qid") == qid:
            found.update(recipient=match.group("to"), orig_recipient=match.group("orig_to"),
                         relay=match.group("relay"), delay=float(match.group("delay")),
                         delays=match.group("delays"), dsn=match.group("dsn"),
                         status=match.group("status"), reply=match.group("reply"))
            break
    return found


def verify(recipient=None, timeout=60, config_dir="/etc/postfix"):
    """
    Send a verification mail through the local sendmail (the path cron uses),
    follow it through Postfix's log until it is sent, deferred or bounced (or
    ``timeout`` seconds pass), and report queue id, status, relay, DSN, the
    relay's reply, delay, the rewritten envelope sender and recipient, and the
    SASL mechanism from ``probe``. A failure sets a non-zero retcode, so
    ``salt '*' postfix_relay.verify`` shows which hosts fail.

    CLI Example:

    .. code-block:: bash

        salt '*' postfix_relay.verify
        salt-call postfix_relay.verify recipient=me@example.org timeout=30
    """
    conf = config(config_dir)
    source = log_source(config_dir, conf["maillog_file"])
    result = {"ok": False, "log": source}
    if source["type"] == "none":
        _diag(result, "Postfix's log was not found (no maillog_file, journal or syslog file)",
              "set postfix_relay:log_file, or run a syslog daemon")
        __context__["retcode"] = 1
        return result
    found = _send_and_follow(result, conf, source, recipient, timeout)
    if found is None:  # sendmail refused it: nothing to follow
        __context__["retcode"] = 1
        return result
    if conf["smtp_sasl_auth_enable"] == "yes":
        try:
            result["mechanism"] = probe(config_dir=config_dir).get("negotiated_mechanism")
        except Exception as exc:  # pylint: disable=broad-except
            result["mechanism"] = None
            result["probe_error"] = str(exc)
    result["ok"] = found.get("status") == "sent"
    if not result["ok"]:
        __context__["retcode"] = 1
    return result


def _send_and_follow(result, conf, source, recipient, timeout):
    """Hand a uniquely identified mail to sendmail and follow it in the log
    until its delivery attempt (or timeout); what the log said, None when
    sendmail failed. The result gets it, and a diagnosis unless it was sent."""
    token = uuid.uuid4().hex
    host = conf["myhostname"] or socket.getfqdn()
    message_id = f"<postfix-relay-verify.{token}@{host}>"
    reader = _LogReader(source)  # opened before sending: no line is missed
    message = (f"Subject: postfix_relay verification from {host} ({token})\n"
               f"Message-ID: {message_id}\n"
               "X-Postfix-Relay-Verify: yes\n\n"
               f"This message checks that {host} can deliver its mail. Token: {token}\n")
    started = time.monotonic()
    sent = subprocess.run(["/usr/sbin/sendmail", "-i", recipient or "root"],
                          input=message.encode(), capture_output=True, check=False)
    if sent.returncode:
        _diag(result, f"sendmail failed: {sent.stderr.decode(errors='replace').strip()}",
              "check that Postfix is installed and `postfix check` passes")
        return None
    found = {}
    while time.monotonic() - started < timeout:
        found = parse_log(reader.poll(), message_id)
        if "status" in found:
            break
        time.sleep(0.05)
    result.update(found)
    result["elapsed"] = round(time.monotonic() - started, 3)
    result["message_id"] = message_id
    if "status" not in found:
        _diag(result, f"no delivery attempt was logged within {timeout} s"
              + (f" (queue id {found['queue_id']})" if "queue_id" in found else ""),
              "check `postfix status`, `postqueue -p` and the log: " +
              (source["path"] or "the journal (journalctl SYSLOG_FACILITY=2)"))
    elif found["status"] != "sent":
        _diag(result, f"the mail was {found['status']}: {found['reply']}",
              "run postfix_relay.probe for the cause")
    return found


def status():
    """
    The queue at a glance (``postqueue -j``): messages per queue, the oldest
    message's age in seconds, and the most common deferral reasons.

    CLI Example:

    .. code-block:: bash

        salt '*' postfix_relay.status
    """
    res = _run(["postqueue", "-j"])
    if res["retcode"]:
        return {"ok": False, "error": res["stderr"].strip()}
    counts = collections.Counter()
    reasons = collections.Counter()
    oldest = None
    for line in res["stdout"].splitlines():
        item = json.loads(line)
        counts[item["queue_name"]] += 1
        oldest = item["arrival_time"] if oldest is None else min(oldest, item["arrival_time"])
        for rcpt in item.get("recipients", []):
            if rcpt.get("delay_reason"):
                # Strip the per-message details (addresses, ids) so reasons group.
                reasons[re.sub(r"\[[^\]]*\]|<[^>]*>", "", rcpt["delay_reason"])[:200]] += 1
    return {
        "ok": True,
        "total": sum(counts.values()),
        "queues": dict(counts),
        "oldest_age": None if oldest is None else int(time.time() - oldest),
        "deferral_reasons": [{"reason": r, "count": n} for r, n in reasons.most_common(5)],
    }
