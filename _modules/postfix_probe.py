"""
probe's SMTP half for one relay: it resolves and answers as wrappermode
expects, TLS at the level Postfix uses for it (smtp_tls_security_level, or
its entry in smtp_tls_policy_maps), the certificate checked as that level
asks, the AUTH mechanisms offered; then ``postfix_probe_auth`` judges SASL
and ``postfix_probe_envelope`` tests MAIL FROM / RCPT TO (no message).

.. code-block:: bash

    salt-call postfix_probe.tls_policy '[smtp.example.net]:587'
"""

import re
import smtplib
import socket
import ssl

__virtualname__ = "postfix_probe"


def __virtual__():
    return __virtualname__


def _diag(result, cause, fix):
    result.setdefault("diagnosis", []).append({"cause": cause, "fix": fix})


def _policy_maps(config_dir):
    res = __salt__["postfix_cmd.run"](["postconf", "-c", config_dir, "-hx",
                                       "smtp_tls_policy_maps"])
    return res["stdout"].strip() if not res["retcode"] else ""


def tls_policy(nexthop, mx=False, policy_maps=None, config_dir="/etc/postfix"):
    """
    The entry smtp_tls_policy_maps (``policy_maps``, default: main.cf's) holds
    for ``nexthop`` (the destination as relayhost writes it), looked up as
    Postfix does (``postfix_tls.policy_keys``: with brackets or a port only
    the next hop as written; a bare domain, then its parents ".example.com"),
    as ``{"level", "match", "key"}``; None when there is none (the global
    smtp_tls_security_level applies). ``mx`` is accepted for older callers:
    the next hop's form alone decides the keys.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_probe.tls_policy '[smtp.example.net]:587'
    """
    del mx  # Postfix's keys depend on how the next hop is written, not on MX
    if policy_maps is None:
        policy_maps = _policy_maps(config_dir)
    specs = [spec.partition(":") for spec in re.split(r"[\s,]+", policy_maps.strip())]
    # maps_find: every table for a key before the next (parent) key
    for key in __utils__["postfix_tls.policy_keys"](nexthop):
        for map_type, _, path in specs:
            value = __salt__["postmap.query"](path, key, map_type, config_dir) \
                if path else None
            if value:
                words = value.split()
                attrs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
                return {"level": words[0].lower(), "match": attrs.get("match"), "key": key}
    return None


def relay_conf(relay, conf, config_dir="/etc/postfix"):
    """conf as Postfix applies it to this relay: its TLS policy entry, if
    any, replaces the global level (and, for fingerprint, the digests)."""
    policy = tls_policy(relay["nexthop"], relay.get("mx", False),
                        conf.get("smtp_tls_policy_maps") or "", config_dir)
    mine = dict(conf, tls_match=None)
    if policy:
        mine["smtp_tls_security_level"] = policy["level"]
        mine["tls_match"] = policy["match"]
        if policy["level"] == "fingerprint":
            mine["smtp_tls_fingerprint_cert_match"] = policy["match"] or ""
    return mine


def _first_fields(relay, conf):
    """The relay's entry before the session: who it is and how it is reached."""
    result = {"key": relay["key"], "role": relay["role"], "sender": relay.get("sender"),
              "relayhost": relay["nexthop"], "ok": False, "host": relay["host"],
              "port": relay["port"], "tls_level": conf["smtp_tls_security_level"] or "none",
              "wrappermode": conf["smtp_tls_wrappermode"] == "yes"}
    if relay.get("mx"):
        result["note"] = "relayhost without brackets: Postfix looks up MX records first; " \
                         "this probe connects to the name itself"
    return result


def relay(entry, conf, timeout=10, config_dir="/etc/postfix", envelope=True):
    """
    Probe one relay (``entry``: a relay as in ``postfix_relay.relays``) with ``conf``
    (``postfix_relay.config``) as Postfix would, and return its entry:
    reachability, TLS, mechanisms, the negotiated one, credentials, and a
    ``diagnosis`` list of ``{"cause", "fix"}``; with ``envelope``, also
    whether the relay accepts MAIL FROM / RCPT TO (``postfix_probe_envelope``).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_probe.relay '{"key": "relay", "role": "primary", \
            "host": "smtp.example.net", "nexthop": "[smtp.example.net]:587"}' \
            "$(salt-call --out=json postfix_relay.config | jq .local)"

    ``entry`` needs key, role, host, port, mx and nexthop (sender for a
    sender relay); ``conf`` the parameters ``postfix_relay.config`` reads.
    """
    conf = relay_conf(entry, conf, config_dir)
    result = _first_fields(entry, conf)
    sasl = conf["smtp_sasl_auth_enable"] == "yes"
    if sasl:
        result["credentials"] = __salt__["postfix_probe_auth.lookup"](entry, conf, config_dir)
        if result["credentials"]["key"] is None:
            __salt__["postfix_probe_auth.near_keys"](result, entry, conf, config_dir)
    host, port, wrapper = result["host"], result["port"], result["wrappermode"]
    if not _reachable_as_configured(result, host, port, wrapper, timeout):
        return result
    helo = conf["myhostname"] or socket.getfqdn()
    tls_util = __utils__["postfix_tls.tls_context"]
    try:
        smtp, tls = __utils__["postfix_tls.open_session"](host, port, wrapper,
                                                          tls_util(False, None), timeout, helo)
    except (OSError, smtplib.SMTPException) as exc:
        _diag(result, f"SMTP session with {host}:{port} failed: {exc}",
              f"check {entry['key']}:host, {entry['key']}:port and {entry['key']}:tls")
        return result
    with smtp:
        trusted = _session_tls(result, conf, smtp, tls, timeout, helo)
        if sasl:
            __salt__["postfix_probe_auth.check"](result, entry, conf, smtp, trusted, config_dir)
        closed = result.pop("session_closed", False)  # the relay hung up during AUTH
        if envelope and not closed:  # the sender and recipient Postfix would send, no message
            __salt__["postfix_probe_envelope.check"](result, entry, conf, smtp, sasl,
                                                     config_dir)
    result["ok"] = not result.get("diagnosis")
    return result


def _reachable_as_configured(result, host, port, wrapper, timeout):
    """The relay resolves, answers, and speaks first as wrappermode expects."""
    key = result["key"]
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        _diag(result, f"the relay name {host} does not resolve ({exc.strerror})",
              f"check {key}:host and this host's DNS (/etc/resolv.conf)")
        return False
    try:
        plain_first = __utils__["postfix_tls.banner_first"](host, port, min(timeout, 5),
                                                            tls_first=wrapper)
    except OSError as exc:
        _diag(result, f"relay {host}:{port} is unreachable: {exc.strerror or exc}",
              f"check {key}:host and {key}:port, and that the relay and firewalls allow it")
        return False
    if wrapper and plain_first:
        _diag(result, f"port {port} speaks plain SMTP first (STARTTLS), but "
              "smtp_tls_wrappermode = yes expects TLS from the first byte",
              "use port 465 for implicit TLS, or turn wrappermode off "
              f"({key}:port 587)")
        return False
    if not wrapper and not plain_first:
        _diag(result, f"port {port} sends no SMTP greeting: it expects implicit TLS "
              "(port 465 style), but smtp_tls_wrappermode = no",
              f"set {key}:port 465 (postfix_relay turns wrappermode on), or "
              "main_cf smtp_tls_wrappermode: yes")
        return False
    return True


def _session_tls(result, conf, smtp, tls, timeout, helo):  # noqa: PLR0913
    """TLS of the open session, its certificate checked as the level asks, and
    the AUTH mechanisms offered; whether the credentials may be sent."""
    utils = __utils__
    level = result["tls_level"]
    result["tls"] = tls and {"protocol": smtp.sock.version(),
                             "cipher": smtp.sock.cipher()[0],
                             "certificate": utils["postfix_tls.cert_info"](smtp.sock)}
    if not tls and level not in ("none", "may"):
        _diag(result, "the relay offers no STARTTLS, and smtp_tls_security_level = "
              f"{level} requires TLS: Postfix defers all mail",
              "use the relay's submission port with TLS (587 or 465)")
    result["mechanisms_offered"] = (smtp.esmtp_features.get("auth") or "").upper().split()
    if tls and level == "fingerprint":
        _check_fingerprint(result, smtp.sock, conf)
    elif tls and not utils["postfix_tls.is_dane"](level):
        _verify_cert(result, conf, timeout, helo)
    # The password goes only where Postfix would send it: inside TLS, and
    # to a verified certificate when the level asks for verification.
    trusted = utils["postfix_tls.credentials_allowed"](
        level, tls, (result["tls"] or {}).get("verified"))
    if tls and utils["postfix_tls.is_dane"](level):
        result["tls"]["verified"] = None
        result["tls"]["verify_error"] = "not checked: probe does not look up DANE " \
                                        "TLSA records (Postfix does)"
    return trusted


def _verify_cert(result, conf, timeout, helo):
    """Chain check against the configured CA, then the name check Postfix
    does: DNS names only (subjectAltName, else CN); IP addresses never match."""
    host, port, level = result["host"], result["port"], result["tls_level"]
    ca_file = conf["smtp_tls_CAfile"] or None
    ctx = __utils__["postfix_tls.tls_context"](True, ca_file)
    ctx.check_hostname = False
    try:
        smtp, _ = __utils__["postfix_tls.open_session"](host, port, result["wrappermode"], ctx,
                                                        timeout, helo)
        der = smtp.sock.getpeercert(binary_form=True)
        smtp.close()
    except ssl.SSLCertVerificationError as exc:
        _cert_failed(result, f"{exc.verify_message}, against {ca_file or 'the system CAs'}",
                     f"set {result['key']}:ca_file to the CA that signed the relay's "
                     "certificate")
        return
    except (OSError, smtplib.SMTPException) as exc:
        result["tls"]["verified"] = False
        result["tls"]["verify_error"] = str(exc)
        return
    names = __utils__["postfix_tls.dns_names"](der)
    targets = __utils__["postfix_tls.match_targets"](level, host, conf.get("tls_match"))
    if any(__utils__["postfix_tls.name_matches"](name, target, below)
           for name in names for target, below in targets):
        result["tls"]["verified"] = True
        return
    _cert_failed(result, f"the certificate names {names or 'nothing'}, not {host} "
                 "(Postfix matches DNS names only, never IP addresses)",
                 f"use in {result['key']}:host a name the relay's certificate carries")


def _cert_failed(result, why, fix):
    level = result["tls_level"]
    result["tls"]["verified"] = False
    result["tls"]["verify_error"] = why
    if __utils__["postfix_tls.is_verifying"](level):
        _diag(result, f"the relay's certificate does not verify ({why}): with "
              f"smtp_tls_security_level = {level} Postfix defers all mail", fix)


def _check_fingerprint(result, sock, conf):
    """tls fingerprint: the certificate or public key must be listed, as
    Postfix checks it (no CA, no name, no expiry)."""
    digest = conf["smtp_tls_fingerprint_digest"] or "sha256"
    der = sock.getpeercert(binary_form=True)
    result["tls"]["fingerprints"] = {digest: __utils__["postfix_tls.cert_fingerprints"](
        der, digest)}
    result["tls"]["verified"] = __utils__["postfix_tls.fingerprint_matches"](
        der, digest, conf["smtp_tls_fingerprint_cert_match"])
    if not result["tls"]["verified"]:
        result["tls"]["verify_error"] = "fingerprint not in smtp_tls_fingerprint_cert_match"
        _diag(result, f"the relay's certificate and public-key {digest} fingerprints "
              f"({result['tls']['fingerprints'][digest]['certificate']}) are not in "
              "smtp_tls_fingerprint_cert_match: with smtp_tls_security_level = fingerprint "
              "Postfix defers all mail",
              f"set {result['key']}:fingerprints to the relay's {digest} fingerprint (check "
              "it with the relay's operator first)")
