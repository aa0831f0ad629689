"""
probe's SASL half for one relay: the password-table entry Postfix's smtp
client would find for it, the table's own problems, the mechanism libsasl2
negotiates, and whether the relay accepts the credentials.

The password is read from Postfix's own table, used in the SMTP session and
never leaves this module: no return, log line or exception carries it.

.. code-block:: bash

    salt-call postfix_probe_auth.keys_for '{"host": "h.example", "nexthop": "[h.example]:587"}'
"""

import os
import re
import smtplib

__virtualname__ = "postfix_probe_auth"

SMTPLIB_MECHANISMS = {"PLAIN", "LOGIN", "CRAM-MD5"}
PLUGIN_PACKAGES = {
    "Debian": "libsasl2-modules", "RedHat": "cyrus-sasl-plain (and cyrus-sasl-md5)",
    "Suse": "cyrus-sasl-plain (and cyrus-sasl-crammd5)", "Alpine": "cyrus-sasl-login",
    "Arch": "libsasl", "FreeBSD": "cyrus-sasl",
}


def __virtual__():
    return __virtualname__


def _diag(result, cause, fix):
    result.setdefault("diagnosis", []).append({"cause": cause, "fix": fix})


def _specs(conf):
    """The password tables of smtp_sasl_password_maps as (spec, type, path)."""
    specs = re.split(r"[\s,]+", (conf.get("smtp_sasl_password_maps") or "").strip())
    return [(spec,) + tuple(spec.partition(":")[::2]) for spec in specs if spec]


def address_keys(address, delimiter=""):
    """
    The keys Postfix's address lookups (mail_addr_find) try for ``address``,
    in order: the full address, the address without its extension (cut at
    the first recipient_delimiter character, as split_addr does), then
    @domain. A pattern ("@domain") is its own only key.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_probe_auth.address_keys billing+june@example.org +
    """
    address = (address or "").lower()
    if not address:
        return []
    local, _, domain = address.rpartition("@")
    keys = [address]
    cut = next((i for i, char in enumerate(local) if char in (delimiter or "")), None)
    if cut and local not in ("postmaster", "mailer-daemon"):
        keys.append(f"{local[:cut]}@{domain}")
    if local:
        keys.append("@" + domain)
    return list(dict.fromkeys(keys))


def keys_for(relay, delimiter=""):
    """
    The keys Postfix's smtp client looks up for a relay, in its order: with
    a sender relay the sender's keys first (smtp_sender_dependent_authentication
    searches the sender address: full, without extension, @domain), then the
    remote host name, then the next hop as written.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_probe_auth.keys_for '{"host": "h", "nexthop": "[h]:587"}'
    """
    keys = address_keys(relay.get("sender"), delimiter)
    for key in (relay["host"].lower(), relay["nexthop"].lower()):
        if key not in keys:
            keys.append(key)
    return keys


def _lookup(relay, conf, config_dir):
    """(what was found, the secret): the first key that answers. Postfix
    (maps_find) asks every table for a key before it tries the next key."""
    found = {"table": conf.get("smtp_sasl_password_maps") or "", "keys_tried": [],
             "key": None, "username": None}
    tables = [(map_type, path) for _, map_type, path in _specs(conf) if path]
    for key in keys_for(relay, conf.get("recipient_delimiter") or ""):
        found["keys_tried"].append(key)
        for map_type, path in tables:
            value = __salt__["postmap.query"](path, key, map_type, config_dir)
            if value is not None:
                user, _, secret = value.partition(":")
                found.update(key=key, username=user)
                return found, secret
    return found, None


def lookup(relay, conf, config_dir="/etc/postfix"):
    """
    The password-table entry Postfix finds for ``relay`` (a relay as in
    ``postfix_relay.relays``): the table, the keys tried, the key that
    matched and its username; never the password.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_probe_auth.lookup '{"host": "h", "nexthop": "[h]:587"}' \
            "$(salt-call --out=json postfix_relay.config)"
    """
    return _lookup(relay, conf, config_dir)[0]


def table_problems(conf, config_dir="/etc/postfix"):
    """
    The password tables' own problems, the same for every relay: missing,
    never compiled, or changed after they were compiled. A list of
    ``{"cause", "fix"}``.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_probe_auth.table_problems "$(salt-call --out=json postfix_relay.config)"
    """
    result = {}
    for spec, map_type, path in _specs(conf):
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
        elif outdated:
            _diag(result, f"the password table {spec} is stale: {path} changed after "
                  f"{outdated[0]} was built", f"run `postmap {spec}` or re-apply postfix_relay")
    return result.get("diagnosis", [])


def near_keys(result, relay, conf, config_dir="/etc/postfix"):
    """No entry for the relay: name the keys that almost match (read with
    this Postfix's key folding) and the key to write."""
    for spec, _, path in _specs(conf):
        if not os.path.exists(path):
            continue
        keys = [k for k, _ in __salt__["postmap.parse"](
            __salt__["postfix_maincf.read_file"](path) or "",
            __salt__["postmap.folds_utf8"](config_dir))]
        near = [k for k in keys if relay["host"].lower() in k.lower()]
        tried = " or ".join(repr(k) for k in keys_for(relay,
                                                        conf.get("recipient_delimiter")))
        _diag(result, f"no entry in {spec} for {tried} "
              f"(the keys Postfix looks up){': found ' + ', '.join(near) if near else ''}",
              _key_fix(relay))


def _key_fix(relay):
    if relay.get("sender"):
        return f"write the key exactly as the sender pattern: {relay['sender']}"
    return f"write the key exactly as relayhost: {relay['nexthop']} (brackets and port included)"


def negotiate(conf, offered):
    """
    The mechanism libsasl2 picks from ``offered`` with this host's filter,
    security options and plugins (see ``postfix_sasl.negotiate``).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_probe_auth.negotiate "$(salt-call --out=json postfix_relay.config)" \
            '["PLAIN", "LOGIN"]'
    """
    tls_opts = conf.get("smtp_sasl_tls_security_options") or \
        conf.get("smtp_sasl_security_options")
    return __salt__["postfix_sasl.negotiate"](
        offered, mechanism_filter=conf.get("smtp_sasl_mechanism_filter") or "",
        security_options=conf.get("smtp_sasl_security_options") or "", tls=True,
        tls_security_options=tls_opts)


def _no_mechanism_fix(nego, reason, conf, offered):
    """(reason, fix) when libsasl2 finds no worthy mechanism."""
    if "plugin" in reason and nego["after_filter"] == ["XOAUTH2"]:
        return reason, __salt__["postfix_probe_oauth2.plugin_fix"]()
    if "plugin" in reason:
        family = __grains__.get("os_family", "Debian")
        return reason, ("install the SASL client plugins: "
                        f"{PLUGIN_PACKAGES.get(family, 'cyrus-sasl')}")
    if "filter" in reason and "XOAUTH2" not in offered and \
            (conf.get("smtp_sasl_mechanism_filter") or "").lower() == "xoauth2":
        return (f"the relay does not offer XOAUTH2 (it offers {', '.join(offered)})",
                "relay:oauth2 needs a relay that takes OAuth2 tokens (Microsoft 365: "
                "smtp.office365.com:587, Gmail: smtp.gmail.com:587); for this relay use "
                "relay:password")
    if "filter" in reason:
        return reason, "remove relay:mechanisms or list one the relay offers: " + \
            ", ".join(offered)
    if "noplaintext" in reason:
        return reason, ("use smtp_sasl_tls_security_options = noanonymous (postfix_relay's "
                        "default) so PLAIN/LOGIN work inside TLS")
    return reason, "compare the relay's mechanisms with the SASL settings above"


def check(result, relay, conf, smtp, trusted, config_dir="/etc/postfix"):  # noqa: PLR0913
    """In an open session (``smtp``): the negotiated mechanism and, where
    Postfix would send them (``trusted``), whether the relay accepts the
    credentials. Fills ``result``; the secret stays here."""
    offered = result["mechanisms_offered"]
    if not offered:
        result["negotiated_mechanism"] = None
        result["note_auth"] = "the relay offers no AUTH: Postfix sends without authenticating"
        return
    nego = negotiate(conf, offered)
    result["negotiation"] = nego
    result["negotiated_mechanism"] = nego.get("chosen")
    if not nego.get("chosen"):
        reason, fix = _no_mechanism_fix(nego, nego.get("reason") or "no mechanism left",
                                        conf, offered)
        _diag(result, f"No worthy mechs found: {reason}", fix)
        return
    creds, secret = _lookup(relay, conf, config_dir)
    if creds["key"] is None:
        return
    if nego["chosen"] == "XOAUTH2":  # the table's "password" is the token file's path
        if __salt__["postfix_probe_oauth2.check"](result, conf, smtp, creds["username"],
                                                  secret, trusted, config_dir) is False:
            not_sent(result)
        return
    if nego["chosen"] not in SMTPLIB_MECHANISMS:
        result["credentials"]["checked"] = False
    elif not trusted:
        not_sent(result)
    else:
        _auth(result, smtp, nego["chosen"], creds["username"], secret)


def _auth(result, smtp, mechanism, username, secret):
    check_ = _try_auth(smtp, mechanism, username, secret)
    result["credentials"].update(checked=True, **check_)
    if check_["code"] == 0:
        result["session_closed"] = True  # nothing more can be asked in this session
        _diag(result, f"the relay closed the connection during AUTH {mechanism} "
              f"({check_['reply']})", "check the relay's log for this login (some relays "
              f"drop a refused login), then {result.get('key') or 'relay'}:username / "
              "password")
    elif not check_["accepted"]:
        _diag(result, f"the relay rejects the credentials ({check_['code']} {check_['reply']})",
              f"fix {result.get('key') or 'relay'}:username / password in the pillar "
              "and re-apply")


def _try_auth(smtp, mechanism, username, secret):
    """AUTH with the table's credentials; the relay's reply, never the secret."""
    smtp.user, smtp.password = username, secret
    method = {"PLAIN": smtp.auth_plain, "LOGIN": smtp.auth_login,
              "CRAM-MD5": smtp.auth_cram_md5}[mechanism]
    try:
        code, reply = smtp.auth(mechanism, method, initial_response_ok=True)
    except smtplib.SMTPAuthenticationError as exc:
        code, reply = exc.smtp_code, exc.smtp_error
    except (smtplib.SMTPException, OSError) as exc:
        # the relay dropped the session during AUTH: this relay's finding,
        # not an error that stops the probe of the others
        code, reply = 0, f"the session ended during AUTH: {exc.__class__.__name__}"
    finally:
        smtp.user = smtp.password = None
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    return {"accepted": 200 <= code < 300, "code": code,
            "reply": text.replace(secret, "****") if secret else text}


def not_sent(result):
    """The credentials were not sent: say why."""
    if __utils__["postfix_tls.is_dane"](result.get("tls_level")) and result.get("tls"):
        reason = "not sent: probe does not check the relay's DANE TLSA records"
    else:
        reason = "not sent: no TLS, or a certificate that does not verify"
    result["credentials"].update(checked=False, reason=reason)
