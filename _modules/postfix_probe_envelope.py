"""
probe's envelope test for one relay: after AUTH, ``MAIL FROM`` the sender
Postfix would send (cron's mail from root, rewritten as main.cf's sender
rules say; a sender relay's own address) and ``RCPT TO`` the recipient, then
``RSET``: no message is sent. A refusal is named (send-as refusals with
their provider, see ``_utils/postfix_replies``).

.. code-block:: bash

    salt-call postfix_probe_envelope.rewrite root sender
"""

import re
import smtplib

from salt.exceptions import CommandExecutionError

__virtualname__ = "postfix_probe_envelope"

PARAMS = ["myorigin", "mydestination", "myhostname", "canonical_maps",
          "sender_canonical_maps", "recipient_canonical_maps", "masquerade_domains",
          "masquerade_exceptions", "smtp_generic_maps"]
# regexp and pcre tables are asked the whole address only (canonical(5))
WHOLE_ADDRESS_ONLY = ("regexp", "pcre")


def __virtual__():
    return __virtualname__


def _diag(result, cause, fix):
    result.setdefault("diagnosis", []).append({"cause": cause, "fix": fix})


def _settings(config_dir):
    res = __salt__["postfix_cmd.run"](["postconf", "-c", config_dir, "-hx"] + PARAMS)
    values = res["stdout"].split("\n") if not res["retcode"] else []
    # the output is stripped: trailing empty values are gone
    return dict(zip(PARAMS, values + [""] * (len(PARAMS) - len(values))))


def _list(value):
    return [item for item in re.split(r"[\s,]+", (value or "").strip()) if item]


def _lookup(maps, address, local_domains, config_dir):
    """The first answer of a map list for address, as cleanup asks it:
    user@domain, then user (a local domain), then @domain."""
    user, _, domain = address.rpartition("@")
    for spec in _list(maps):
        map_type, _, path = spec.partition(":")
        keys = [address]
        if map_type not in WHOLE_ADDRESS_ONLY:
            keys += ([user] if domain.lower() in local_domains else []) + [f"@{domain}"]
        for key in keys:
            value = __salt__["postmap.query"](path, key, map_type, config_dir)
            if value:
                return value.split(",")[0].strip()
    return address


def _masquerade(address, settings):
    """masquerade_domains: a subdomain's sender becomes the domain's."""
    user, _, domain = address.rpartition("@")
    if user in _list(settings["masquerade_exceptions"]):
        return address
    for masq in _list(settings["masquerade_domains"]):
        if masq.startswith("!"):
            if domain.lower() == masq[1:].lower():
                return address
            continue
        if domain.lower().endswith("." + masq.lower()):
            return f"{user}@{masq}"
    return address


def rewrite(address="root", kind="sender", config_dir="/etc/postfix"):
    """
    ``address`` as Postfix's smtp client sends it to the relay: qualified
    with myorigin, through sender_canonical_maps (``kind`` sender) or
    recipient_canonical_maps (recipient), canonical_maps, masquerading
    (senders) and smtp_generic_maps. (virtual aliases are not followed.)

    CLI Example:

    .. code-block:: bash

        salt-call postfix_probe_envelope.rewrite root sender
    """
    settings = _settings(config_dir)
    local = {d.lower() for d in _list(settings["mydestination"]) +
             [settings["myorigin"], settings["myhostname"]] if d}
    if "@" not in address:
        address = f"{address}@{settings['myorigin']}"
    first = "sender_canonical_maps" if kind == "sender" else "recipient_canonical_maps"
    for maps in (settings[first], settings["canonical_maps"]):
        address = _lookup(maps, address, local, config_dir)
    if kind == "sender":
        address = _masquerade(address, settings)
    return _lookup(settings["smtp_generic_maps"], address, local, config_dir)


def addresses(entry, config_dir="/etc/postfix"):
    """
    (sender, recipient, note) of the envelope probe tests for a relay
    (``entry`` as in ``postfix_relay.relays``): cron's mail from root as
    rewritten, or a sender relay's address; sender None for an @domain
    pattern (note says why).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_probe_envelope.addresses '{"role": "primary"}'
    """
    recipient = rewrite("root", "recipient", config_dir)
    pattern = entry.get("sender") if entry.get("role") == "sender" else None
    if pattern is None:
        return rewrite("root", "sender", config_dir), recipient, None
    if pattern.startswith("@"):
        # any address of the domain goes there; an invented one (postmaster@)
        # could be refused although the addresses in use are allowed
        return None, recipient, (f"not tested: {pattern} stands for every sender of the "
                                 "domain; verify sender=<an address you use> tests one")
    return pattern, recipient, None


def _untestable(result, sasl):
    """Why Postfix would not reach MAIL FROM in this session, or None."""
    if not result.get("tls") and result.get("tls_level") not in ("none", "may"):
        return "not tested: without TLS Postfix sends nothing to this relay"
    if sasl and result.get("mechanisms_offered"):
        creds = result.get("credentials") or {}
        if creds.get("key") is None:
            return "not tested: no credentials for this relay"
        if not creds.get("accepted"):
            return "not tested: the login was not " + \
                ("accepted" if creds.get("checked") else "checked")
    return None


def check(result, entry, conf, smtp, sasl, config_dir="/etc/postfix"):  # noqa: PLR0913
    """
    In an open, authenticated session: MAIL FROM and RCPT TO as Postfix
    would send them, then RSET (no DATA). Sets ``result["envelope"]``
    (``sender``, ``recipient``, ``tested``, ``accepted``, and on refusal
    ``stage``, ``code``, ``reply``, ``provider``) and names a refusal in
    ``result["diagnosis"]``.
    """
    try:
        sender, recipient, note = addresses(entry, config_dir)
    except CommandExecutionError as exc:  # a rewriting table Postfix cannot read either
        result["envelope"] = {"tested": False, "accepted": None,
                              "note": f"not tested: the envelope is unknown ({exc})"}
        return
    envelope = {"sender": sender, "recipient": recipient, "tested": False, "accepted": None}
    result["envelope"] = envelope
    why = note or _untestable(result, sasl)
    if why:
        envelope["note"] = why
        return
    envelope["tested"] = True
    try:
        refused = _mail_rcpt(smtp, sender, recipient)
    except (OSError, smtplib.SMTPException) as exc:
        envelope["error"] = f"the session ended: {type(exc).__name__}"
        return
    envelope["accepted"] = refused is None
    if refused is None:
        envelope["note"] = "accepted at MAIL FROM and RCPT TO; some providers (Microsoft " \
                           "365, Amazon SES, SendGrid) check the sender only after DATA: " \
                           "postfix_relay.verify sends a real message"
        return
    envelope.update(refused)
    _name(result, entry, refused, sender if refused["stage"] == "MAIL" else recipient)


def _mail_rcpt(smtp, sender, recipient):
    """None when both are accepted, else the refusal; the session is reset."""
    code, reply = smtp.mail(sender)
    stage = "MAIL"
    if 200 <= code < 300:
        code, reply = smtp.rcpt(recipient)
        stage = "RCPT"
        if 200 <= code < 300:
            stage = None
    smtp.rset()
    if stage is None:
        return None
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    return {"stage": stage, "code": code, "reply": f"{code} {text}"}


def _name(result, entry, refused, address):
    """The refusal in the diagnosis: named when it is a send-as refusal."""
    named = __utils__["postfix_replies.classify"](
        refused["reply"], sender=result["envelope"]["sender"],
        relay_key=entry.get("key"), relay_host=entry.get("host"))
    command = "MAIL FROM" if refused["stage"] == "MAIL" else "RCPT TO"
    if named:
        result["envelope"]["provider"] = named["provider"]
        _diag(result, f"at {command}: {named['cause']}", named["fix"])
        return
    short = __utils__["postfix_replies.short"](refused["reply"])
    when = "for now (Postfix defers the mail)" if refused["code"] < 500 else \
        "(Postfix bounces the mail)"
    _diag(result, f"the relay refuses {command}:<{address}> {when}: {short}",
          "check that the relay account may send as this sender and to this recipient "
          "(postfix_relay:sender, domain, recipient)")
