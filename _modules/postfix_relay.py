"""
Does this host's mail get out, how, and if not, why.

.. code-block:: bash

    salt '*' postfix_relay.probe      # each relay: TLS, AUTH mechanisms, Postfix's pick, login
    salt '*' postfix_relay.verify     # a real mail through sendmail, followed to the relay
    salt '*' postfix_relay.status     # the queue at a glance

Every failure is returned as ``diagnosis``: a list of ``{"cause", "fix"}``
(in probe's top-level list also ``relay``: the pillar key of the relay).
The work is done by ``postfix_probe`` (one relay's SMTP session and TLS),
``postfix_probe_auth`` and ``postfix_probe_oauth2`` (credentials, SASL),
``postfix_log`` (following a mail in the log) and ``_utils/postfix_tls``.
Passwords are read from Postfix's own table only inside ``postfix_probe_auth``
and never leave it. ``debug_peer_list`` is never used (it logs the password in
clear).
"""

import collections
import json
import re
import socket
import time
import uuid

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "postfix_relay"

CONF_NAMES = [
    "relayhost", "smtp_tls_security_level", "smtp_tls_wrappermode", "smtp_tls_CAfile",
    "smtp_sasl_auth_enable", "smtp_sasl_password_maps", "smtp_sasl_mechanism_filter",
    "smtp_sasl_security_options", "smtp_sasl_tls_security_options",
    "smtp_sender_dependent_authentication", "maillog_file", "myhostname", "mail_version",
    "mail_owner", "smtp_tls_fingerprint_digest", "smtp_tls_fingerprint_cert_match",
    "smtp_fallback_relay", "smtp_tls_policy_maps", "sender_dependent_relayhost_maps",
    "recipient_delimiter",
]
PILLAR_ROOT = "postfix_relay"


def __virtual__():
    return __virtualname__


def _diag(result, cause, fix, relay=None):
    item = {"cause": cause, "fix": fix}
    if relay is not None:
        item["relay"] = relay
    result.setdefault("diagnosis", []).append(item)


def config(config_dir="/etc/postfix"):
    """
    The live Postfix settings that decide how mail is relayed (``postconf -x``).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay.config
    """
    res = __salt__["postfix_cmd.run"](["postconf", "-c", config_dir, "-hx"] + CONF_NAMES)
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


def _destinations(value):
    """The destinations of a relayhost or smtp_fallback_relay list."""
    return [d for d in re.split(r"[\s,]+", (value or "").strip()) if d]


def _entry(key, role, nexthop, sender=None, **more):
    """A relay as probe needs it, from its destination string."""
    parsed = parse_relayhost(nexthop)
    entry = {"key": key, "role": role, "sender": sender, "host": parsed["host"],
             "port": parsed["port"], "mx": parsed["mx"], "nexthop": nexthop,
             "password_key": sender or nexthop}
    entry.update(more)
    return entry


# Table types postmap -s can list (an indexed file, not a server or regexp).
INDEXED_TYPES = ("hash", "btree", "dbm", "sdbm", "cdb", "lmdb")


def _from_main_cf(conf, config_dir="/etc/postfix"):
    """The relays the live main.cf names (no pillar): relayhost's list, then
    smtp_fallback_relay, then sender_dependent_relayhost_maps' entries, keyed
    as the pillar would key them."""
    dests = _destinations(conf["relayhost"]) + _destinations(conf.get("smtp_fallback_relay"))
    return [_entry("relay", "primary", dest) if not index else
            _entry(f"fallback_relays:{index - 1}", "fallback", dest)
            for index, dest in enumerate(dests)] + _sender_relays(conf, config_dir)


def _sender_relays(conf, config_dir):
    """sender_dependent_relayhost_maps' entries (indexed tables, read with
    postmap -s) as sender relays: pattern and next hop."""
    found = []
    for spec in _destinations(conf.get("sender_dependent_relayhost_maps")):
        if spec.partition(":")[0].lower() not in INDEXED_TYPES:
            continue  # regexp, pcre, ldap...: its entries cannot be listed
        res = __salt__["postfix_cmd.run"](["postmap", "-c", config_dir, "-s", spec])
        lines = res["stdout"].splitlines() if not res["retcode"] else []
        for pattern, *value in (line.split(None, 1) for line in lines if line.strip()):
            # postmap -s prints key TAB value
            dests = _destinations(value[0] if value else "")
            if pattern and dests and dests[0].upper() != "DUNNO":
                found.append(_entry(f"sender_relays:{pattern}", "sender", dests[0],
                                    sender=pattern))
    return sorted(found, key=lambda e: e["sender"])  # postmap -s lists in hash order


def relays(config_dir="/etc/postfix"):
    """
    The relays this host sends through, in Postfix's order: the primary
    (key ``relay``), the fallbacks (``fallback_relays:N``), the sender relays
    (``sender_relays:<pattern>``), from the pillar (secrets masked); without
    a ``postfix_relay`` pillar, from the live main.cf (relayhost, then
    smtp_fallback_relay, then the entries of sender_dependent_relayhost_maps
    when it is an indexed table such as hash or lmdb).
    Returns ``{"source": "pillar"|"main.cf", "relays": [...]}``.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay.relays
    """
    found = {"source": "main.cf"}
    if __pillar__.get(PILLAR_ROOT):
        try:
            values = __salt__["postfix_relay_settings.lookup"]()  # the formula's os_family map
            if config_dir != "/etc/postfix":
                values["config_dir"] = config_dir
            found.update(source="pillar", relays=__salt__["postfix_relay_settings.get"](
                lookup=values)["relays"])
        except (SaltInvocationError, CommandExecutionError):
            # a pillar the formula refuses: what main.cf says is what runs
            found["pillar_error"] = "postfix_relay_settings.get refuses the pillar " \
                                    "(run it for the key and fix); relays read from main.cf"
    if "relays" not in found:
        found["relays"] = _from_main_cf(config(config_dir), config_dir)
    return found


def _to_probe(conf, relay, config_dir):
    """(the relays to probe, where they come from, problems with main.cf)."""
    found = relays(config_dir)
    entries, problems = found["relays"], {}
    if relay:  # a pillar key, or a destination: every configured relay on it, else itself
        wanted = relay.strip().lower()
        named = [e for e in entries if e["key"].lower() == wanted] or \
            [e for e in entries if e["nexthop"].lower() == wanted]  # one account each
        return (named or [_entry("relay", "primary", relay.strip())]), found, problems
    if found.get("pillar_error"):
        _diag(problems, found["pillar_error"], "salt-call postfix_relay_settings.get")
    live = [d.lower() for d in _destinations(conf["relayhost"]) +
            _destinations(conf.get("smtp_fallback_relay"))]
    wanted = [e["nexthop"].lower() for e in entries if e["role"] != "sender"]
    if entries and found["source"] == "pillar" and live != wanted:
        _diag(problems, f"main.cf sends through {', '.join(live) or 'no relay'}, the pillar "
              f"through {', '.join(wanted)}: this probe checks the pillar's relays",
              "apply postfix_relay")
    return entries, found, problems


def probe(relay=None, timeout=10, config_dir="/etc/postfix", envelope=True):
    """
    Open an SMTP session to every relay Postfix may use (or only ``relay``,
    in relayhost syntax) as Postfix would, and report for each: TLS
    protocol, cipher, certificate and whether it verifies at the level
    Postfix uses for that relay; the AUTH mechanisms offered; which survive
    the mechanism filter, the security options and the installed SASL
    plugins; the mechanism Postfix will negotiate (decided by libsasl2); and
    whether the relay accepts the credentials Postfix finds for it; then,
    without sending a message, whether it accepts the envelope Postfix would
    send (``envelope``: MAIL FROM the rewritten sender, or a sender relay's
    address, and RCPT TO the recipient; a send-as refusal named; not with
    ``envelope=False``). ``relay`` may also be a pillar key (``sender_relays:billing@example.org``);
    a destination several relays share (one provider, one account per
    sender) probes each of them with its own account.

    ``relays`` holds one entry per relay (``key``, ``role``, ``sender`` and
    the fields above); the top level holds the primary's fields, ``ok``
    (true only when every relay passes) and ``diagnosis``, each item naming
    its relay's pillar key.

    CLI Example:

    .. code-block:: bash

        salt '*' postfix_relay.probe
        salt-call postfix_relay.probe relay='[smtp.example.net]:465'
    """
    conf = config(config_dir)
    entries, found, problems = _to_probe(conf, relay, config_dir)
    if not entries:
        result = {"relayhost": conf["relayhost"], "ok": False, "relays": [],
                  "source": found["source"]}
        _diag(result, "relayhost is empty: Postfix delivers directly, not through a relay",
              "set postfix_relay:relay:host and apply postfix_relay")
        return result
    if conf["smtp_sasl_auth_enable"] == "yes":
        problems.setdefault("diagnosis", []).extend(
            __salt__["postfix_probe_auth.table_problems"](conf, config_dir))
    results = [__salt__["postfix_probe.relay"](entry, conf, timeout, config_dir, envelope)
               for entry in entries]
    return _summary(results, problems.get("diagnosis", []), found["source"])


def _summary(results, problems, source):
    """The primary's fields at the top (as before several relays), every
    relay under ``relays``, one diagnosis naming the relay of each cause."""
    top = {k: v for k, v in results[0].items() if k not in ("key", "role", "sender")}
    top["source"] = source
    top["relays"] = results
    top["diagnosis"] = list(problems)
    for res in results:
        for item in res.get("diagnosis", []):
            _diag(top, f"{res['key']} ({res['relayhost']}): {item['cause']}", item["fix"],
                  relay=res["key"])
    top["failing"] = [res["key"] for res in results if not res["ok"]]
    top["ok"] = not top["diagnosis"] and not top["failing"]
    if not top["diagnosis"]:
        del top["diagnosis"]
    return top


def _check_sender(sender):
    """An envelope sender sendmail -f takes as one address, never an option."""
    if sender is None:
        return None
    sender = str(sender).strip()
    if not sender or sender.startswith("-") or re.search(r"[\s<>]", sender):
        raise SaltInvocationError(f"sender {sender!r} is not an envelope address "
                                  "(billing@example.org, or <> is not accepted)")
    return sender


def verify(recipient=None, timeout=60, config_dir="/etc/postfix", sender=None):
    """
    Send a verification mail through the local sendmail (the path cron uses),
    follow it through Postfix's log until it is sent, deferred or bounced (or
    ``timeout`` seconds pass), and report queue id, status, relay, DSN, the
    relay's reply, delay, the rewritten envelope sender and recipient, and the
    SASL mechanism from ``probe``. A mail not sent says what became of it
    (``outcome``; deferred: ``still_queued``) and a relay's refusal of the
    sender (send-as) is named with its provider (``refusal``) and fix.
    With ``sender``, the mail goes with that
    envelope sender (``sendmail -f``); ``relay_used`` names the relay it went
    through and ``relay_as_configured`` whether that is the relay configured
    for its sender (its ``sender_relays`` entry, else the primary and
    fallbacks). A failure sets a non-zero retcode, so
    ``salt '*' postfix_relay.verify`` shows which hosts fail.

    CLI Example:

    .. code-block:: bash

        salt '*' postfix_relay.verify
        salt-call postfix_relay.verify recipient=me@example.org timeout=30
        salt-call postfix_relay.verify sender=billing@example.org
    """
    sender = _check_sender(sender)
    conf = config(config_dir)
    where = __salt__["postfix_log.source"](config_dir, conf["maillog_file"])
    result = {"ok": False, "log": where}
    if where["type"] == "none":
        _diag(result, "Postfix's log was not found (no maillog_file, journal or syslog file)",
              "set postfix_relay:log_file, or run a syslog daemon")
        __context__["retcode"] = 1
        return result
    found = _send_and_follow(result, conf, where, (recipient, sender), timeout)
    if found is None:  # sendmail refused it: nothing to follow
        __context__["retcode"] = 1
        return result
    used = _which_relay(result, found, sender, config_dir) if "relay" in found else None
    if found.get("status") not in (None, "sent"):
        _refused(result, found, used)
    if conf["smtp_sasl_auth_enable"] == "yes":
        try:
            # the mail itself tested the envelope: no second MAIL FROM at the relay
            # by its key: relays sharing a next hop differ in their account
            result["mechanism"] = probe(relay=used and used["key"], config_dir=config_dir,
                                        envelope=False).get("negotiated_mechanism")
        except Exception as exc:  # pylint: disable=broad-except
            result["mechanism"] = None
            result["probe_error"] = str(exc)
    result["ok"] = found.get("status") == "sent" and \
        result.get("relay_as_configured") is not False
    if not result["ok"]:
        __context__["retcode"] = 1
    return result


def _send_and_follow(result, conf, where, addresses, timeout):
    """Hand a uniquely identified mail to sendmail and follow it in the log
    until its delivery attempt (or timeout); what the log said, None when
    sendmail failed. The result gets it, and a diagnosis unless it was sent."""
    recipient, sender = addresses
    token = uuid.uuid4().hex
    host = conf["myhostname"] or socket.getfqdn()
    message_id = f"<postfix-relay-verify.{token}@{host}>"
    reader = __salt__["postfix_log.reader"](where)  # opened before sending: no line is missed
    message = (f"Subject: postfix_relay verification from {host} ({token})\n"
               f"Message-ID: {message_id}\n"
               "X-Postfix-Relay-Verify: yes\n\n"
               f"This message checks that {host} can deliver its mail. Token: {token}\n")
    started = time.monotonic()
    argv = ["/usr/sbin/sendmail", "-i"] + (["-f", sender] if sender else [])
    sent = __salt__["postfix_cmd.run"](argv + ["--", recipient or "root"], stdin=message)
    if sent["retcode"]:
        _diag(result, f"sendmail failed: {sent['stderr'].strip()}",
              "check that Postfix is installed and `postfix check` passes")
        return None
    found = __salt__["postfix_log.follow"](reader, message_id,
                                           max(timeout - (time.monotonic() - started), 0.1))
    result.update(found)
    result["elapsed"] = round(time.monotonic() - started, 3)
    result["message_id"] = message_id
    if "status" not in found:
        _diag(result, f"no delivery attempt was logged within {timeout} s"
              + (f" (queue id {found['queue_id']})" if "queue_id" in found else ""),
              "check `postfix status`, `postqueue -p` and the log: " +
              (where["path"] or "the journal (journalctl SYSLOG_FACILITY=2)"))
    return found


def _still_queued(queue_id):
    """Whether the queue still holds queue_id (postqueue -j)."""
    res = __salt__["postfix_cmd.run"](["postqueue", "-j"])
    if res["retcode"]:
        return None
    return any(json.loads(line).get("queue_id") == queue_id
               for line in res["stdout"].splitlines() if line.strip())


def _refused(result, found, used):
    """A mail not sent: what became of it (deferred stays queued, bounced
    goes back to its sender) and why, a send-as refusal named."""
    status, qid = found["status"], found.get("queue_id")
    if status == "deferred":
        result["still_queued"] = _still_queued(qid)
        result["outcome"] = (f"deferred: queue id {qid} is "
                             f"{'still' if result['still_queued'] else 'no longer'} queued; "
                             "Postfix retries until maximal_queue_lifetime")
    elif status == "bounced":
        result["outcome"] = (f"bounced: the relay refused it for good; Postfix returns it "
                             f"to <{found.get('sender') or 'its sender'}> with the reply "
                             "(a non-delivery notice)")
    named = __utils__["postfix_replies.classify"](
        found["reply"], sender=found.get("sender"), relay_key=used and used["key"],
        relay_host=used and used["host"])
    if named is None:
        _diag(result, f"the mail was {status}: {found['reply']}",
              "run postfix_relay.probe for the cause")
        return
    result["refusal"] = {k: named[k] for k in ("kind", "provider", "code", "dsn", "stage")}
    _diag(result, f"the mail was {status}: {named['cause']}", named["fix"])


def expected_relays(entries, sender, delimiter=""):
    """
    The relays configured for mail from ``sender`` (the envelope sender as
    queued), as sender_dependent_relayhost_maps decides: the sender relay
    whose pattern is the full address, else the address without its
    extension (``delimiter``: main.cf's recipient_delimiter), else its
    @domain; else the primary and fallbacks.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay.expected_relays "$(salt-call --out=json postfix_relay.relays)" \
            billing+june@example.org delimiter=+
    """
    patterns = {(e.get("sender") or "").lower(): e for e in entries if e.get("role") == "sender"}
    for pattern in __salt__["postfix_probe_auth.address_keys"](sender, delimiter):
        if pattern in patterns:
            return [patterns[pattern]]
    return [e for e in entries if e.get("role") != "sender"]


def _matching_field(entries, field, expected):
    """The configured relays the relay= field names (host and port), those
    configured for the sender first: one provider may carry several
    accounts (relays) on one host:port."""
    if not field:
        return []
    names = (field["name"].lower(), field["address"].lower())
    same = [e for e in entries if e["port"] == field["port"] and e["host"].lower() in names]
    return [e for e in same if e in expected] + [e for e in same if e not in expected]


def _shared_note(matching, field, as_expected):
    """Several relays on one host:port: the log cannot tell the account."""
    note = (f"{', '.join(e['key'] for e in matching)} share {field['name']}:{field['port']}: "
            "the log names the host, not the account, so it cannot tell which of their "
            "accounts sent the mail")
    if as_expected:
        note += f"; {matching[0]['key']} is the one configured for this sender"
    return note


def _which_relay(result, found, sender, config_dir):
    """Name the relay the mail went through (from the log's relay= field) and
    whether it is one configured for its sender; the relay used, or None."""
    field = __salt__["postfix_log.relay_field"](found["relay"])
    entries = relays(config_dir)["relays"]
    delimiter = config(config_dir).get("recipient_delimiter") or ""
    expected = expected_relays(entries, found.get("sender") or sender, delimiter)
    result["relay_expected"] = [e["key"] for e in expected]
    matching = _matching_field(entries, field, expected)
    used = matching[0] if matching else None
    result["relay_used"] = used and {"key": used["key"], "role": used["role"],
                                     "nexthop": used["nexthop"]}
    if len(matching) > 1:
        result["relay_note"] = _shared_note(matching, field, used in expected)
    if not field or found.get("status") != "sent":
        result["relay_as_configured"] = None  # not delivered over SMTP: nothing to judge
    elif used is None and any(e.get("mx") for e in expected):
        result["relay_as_configured"] = None  # an MX host's name is not the relay's
    else:
        result["relay_as_configured"] = used is not None and used in expected
    if result["relay_as_configured"] is False:
        through = used["key"] if used else "a relay that is not configured"
        _diag(result, f"the mail from <{found.get('sender') or sender}> went through "
              f"{through} ({found['relay']}), but {', '.join(result['relay_expected'])} is "
              "configured for it",
              "check sender_relays and sender_mode (local: application senders keep their "
              "address) and re-apply postfix_relay")
    return used


def status():
    """
    The queue at a glance (``postqueue -j``): messages per queue, the oldest
    message's age in seconds, and the most common deferral reasons.

    CLI Example:

    .. code-block:: bash

        salt '*' postfix_relay.status
    """
    res = __salt__["postfix_cmd.run"](["postqueue", "-j"])
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
