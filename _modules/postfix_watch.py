"""
Is mail leaving this host? The conditions the ``postfix_relay`` beacon
reports, found from the new part of Postfix's log and the queue: ``deferred``
(more than deferred_max messages wait), ``age`` (the oldest deferred message
is older than age_max), ``credentials`` (the relay refuses the login),
``tls``, ``unreachable``, ``oauth2`` (an XOAUTH2 token refresh failed).

The state (log position, active conditions, last delivery) lives in the
minion's cachedir, so a minion restart neither re-reads the log nor repeats
an event. Nothing secret is kept or returned: relay replies are scrubbed of
anything that looks like a token or password.

.. code-block:: bash

    salt-call postfix_watch.conditions
"""

import json
import os
import re
import time

from salt.exceptions import CommandExecutionError

__virtualname__ = "postfix_watch"

CONDITIONS = ("deferred", "age", "credentials", "tls", "unreachable", "oauth2")
LOG_CONDITIONS = ("credentials", "tls", "unreachable", "oauth2")
QUEUES = ("active", "deferred", "hold", "incoming", "maildrop")
# one interval reads at most this much new log: a flood is skipped, not parsed
MAX_READ = 8 * 1024 * 1024
MAX_LINES = 50_000  # the journal's cap per interval

# Postfix's client processes only: smtpd's "SASL authentication failed" is a
# client of ours failing, not our relay refusing us.
_CLIENT = re.compile(r"postfix[^/\s]*/(?:smtp|lmtp|error)\[(?P<pid>\d+)\]: ")
_STATUS = re.compile(r"relay=(?P<relay>[^,\s]+), .*?status=(?P<status>\w+) "
                     r"\((?P<reply>.*)\)\s*$")
_SUSPENDED = re.compile(r"^\s*delivery temporarily suspended:\s*", re.I)
# the relay's reply code (after "said:"; not a port number elsewhere in the line)
_SMTP_CODE = re.compile(r"(?:said:\s*|^\s*)([45]\d\d)[ -](?:([45]\.\d{1,3}\.\d{1,3})\b)?")
_OAUTH2_CODE = re.compile(r"\b(invalid_grant|invalid_client|unauthorized_client)\b")
_NAMADDR = re.compile(r"(?P<name>[^\s\[\](),;:]+)\[(?P<addr>[^\]]+)\](?::(?P<port>\d+))?")
_PATTERNS = (
    ("oauth2", re.compile(r"invalid_grant|invalid_client|unauthorized_client|AADSTS\d+|"
                          r"token has been expired or revoked|xoauth2.*(?:fail|error)|"
                          r"TokenStore", re.I)),
    ("credentials", re.compile(r"SASL authentication failed|\b535[ -]|"
                               r"authentication (?:credentials invalid|failed|unsuccessful)",
                               re.I)),
    ("tls", re.compile(r"TLS is required|Cannot start TLS|refused to start TLS|"
                       r"certificate verification failed|certificate not verified|"
                       r"TLS handshake|untrusted issuer", re.I)),
    ("unreachable", re.compile(r"Connection refused|Connection timed out|No route to host|"
                               r"Network is unreachable|Host or domain name not found|"
                               r"Name service error|conversation with .* timed out|"
                               r"lost connection with .* initial server greeting", re.I)),
)
# What looks like a secret in a relay's or token endpoint's reply.
_SECRET_FIELD = re.compile(
    r"""(?P<key>["']?\b[\w-]*(?:token|secret|password|passwd|assertion|bearer|auth=|"""
    r"""code)[\w-]*["']?\s*[:=]\s*)(?P<value>"[^"]*"|'[^']*'|[^\s,;&}]+)""", re.I)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+\S+", re.I)
_LONG_OPAQUE = re.compile(r"[A-Za-z0-9+/_~.=-]{32,}")


def __virtual__():
    return __virtualname__


def scrub(text):
    """
    A relay's reply with anything secret-looking replaced by ``****``: token,
    secret and password fields (``key=value``, JSON), Bearer/Basic
    credentials, and long opaque strings (JWTs, access and refresh tokens).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_watch.scrub '535 5.7.3 {"access_token":"ya29.x"}'
    """
    text = _SECRET_FIELD.sub(lambda m: m.group("key") + "****", str(text or ""))
    text = _BEARER.sub(lambda m: m.group(1) + " ****", text)
    # a long run with letters and digits is a token, not a word of a reply
    return _LONG_OPAQUE.sub(lambda m: "****" if re.search(r"\d", m.group())
                            and re.search(r"[A-Za-z]", m.group()) else m.group(), text)[:500]


def relay_of(text, field=None):
    """The relay as the log names it (``name[addr]:port``): the relay= field,
    else the first name[addr]:port in the text, else a name the resolver
    could not find."""
    if field and field != "none":
        return field
    match = _NAMADDR.search(text)
    if match:
        return match.group()
    match = re.search(r"name=(\S+?) type=", text)
    return match.group(1) if match else None


def _key_part(relay):
    """(name, port) of a relay string (the log's name[addr]:port, or
    relayhost's [name]:port), for matching a later delivery."""
    match = _NAMADDR.match(relay or "") or re.match(
        r"^\[(?P<name>[^\]]+)\](?::(?P<port>\d+))?$", relay or "")
    if match:
        return match.group("name").lower(), match.group("port")
    return (relay or "").lower(), None


def same_relay(one, other):
    """Two relay strings name the same relay (the port when both have one)."""
    (name1, port1), (name2, port2) = _key_part(one), _key_part(other)
    return bool(name1) and name1 == name2 and (port1 is None or port2 is None or port1 == port2)


def cause_fix(condition, reply, relay, key="relay"):
    """(cause, fix) in probe's words for a condition seen in the log."""
    where = relay or "the relay"
    if condition == "oauth2":
        if "invalid_grant" in reply or "expired or revoked" in reply or "AADSTS" in reply:
            return (f"the token endpoint rejects the refresh token ({reply}): revoked, "
                    "expired or issued to another client; Postfix keeps the mail queued",
                    f"get a new refresh token for {key}:username (e.g. sasl-xoauth2-tool "
                    f"get-token), set {key}:oauth2:refresh_token and re-apply")
        return (f"the XOAUTH2 plugin could not get an access token for {where} ({reply})",
                "run salt-call postfix_relay.probe: it names the token endpoint's answer")
    if condition == "credentials":
        if "offered no compatible" in reply or "cannot authenticate" in reply:
            return (f"No worthy mechs found: {reply}",
                    "run salt-call postfix_relay.probe: it names the mechanism and the "
                    "SASL plugin package")
        return (f"the relay rejects the credentials ({reply})",
                f"fix {key}:username / password in the pillar and re-apply")
    if condition == "tls":
        return _tls_cause_fix(reply, where, key)
    if "not found" in reply or "Name service error" in reply:
        return (f"the relay name {where} does not resolve ({reply})",
                f"check {key}:host and this host's DNS (/etc/resolv.conf)")
    return (f"relay {where} is unreachable: {reply}",
            f"check {key}:host and {key}:port, and that the relay and firewalls allow it")


def _tls_cause_fix(reply, where, key):
    if "not offered" in reply or "refused to start TLS" in reply:
        return (f"the relay offers no STARTTLS, and the TLS level requires TLS: Postfix "
                f"defers all mail ({reply})",
                "use the relay's submission port with TLS (587 or 465)")
    if "verif" in reply or "untrusted" in reply:
        return (f"the relay's certificate does not verify ({reply}): Postfix defers all mail",
                f"set {key}:ca_file to the CA that signed the relay's certificate")
    return (f"TLS with {where} failed ({reply})",
            f"check {key}:port and {key}:tls (465: implicit TLS; 587: STARTTLS), "
            "then run salt-call postfix_relay.probe")


def classify(line, xoauth2=False):
    """
    What one log line says about the relay: ``{"condition", "relay",
    "reply", "pid"}`` for a failure, ``{"sent": relay, "pid"}`` for a
    delivery (pid: the smtp process's), None otherwise. ``xoauth2``: the
    relay logs in with XOAUTH2, so a client-side SASL failure is the token
    refresh failing.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_watch.classify 'postfix/smtp[9]: A1: to=<r@x>, \
            relay=none, delay=1, delays=0/0/1/0, dsn=4.4.1, status=deferred \
            (connect to smtp.example.net[192.0.2.1]:587: Connection refused)'
    """
    client = _CLIENT.search(line)
    if not client:
        return None
    text = line[client.end():]
    status = _STATUS.search(text)
    if status and status.group("status") == "sent":
        relay = status.group("relay")
        return {"sent": relay, "pid": client.group("pid")} \
            if relay not in ("none", "local") else None
    reply = status.group("reply") if status else text
    # Postfix words a failure twice: as it happens, and for the messages the
    # site is then marked dead for ("delivery temporarily suspended: ...")
    reply = _SUSPENDED.sub("", reply)
    for condition, pattern in _PATTERNS:
        if pattern.search(reply):
            if xoauth2 and condition == "credentials" and "cannot authenticate" in reply:
                condition = "oauth2"
            return {"condition": condition, "relay": relay_of(reply, status and
                                                              status.group("relay")),
                    "reply": scrub(reply), "pid": client.group("pid")}
    return None


def queue_facts(config_dir="/etc/postfix"):
    """
    The queue from ``postqueue -j``: messages per queue, the deferred count,
    the oldest deferred message's age in seconds, and the most common
    deferral reason (scrubbed).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_watch.queue_facts
    """
    res = __salt__["postfix_cmd.run"](["postqueue", "-c", config_dir, "-j"])
    facts = {"ok": not res["retcode"], "queues": dict.fromkeys(QUEUES, 0),
             "deferred": 0, "oldest_age": None, "reason": None}
    oldest, reasons = None, {}
    for line in res["stdout"].splitlines() if facts["ok"] else ():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        name = item.get("queue_name")
        facts["queues"][name] = facts["queues"].get(name, 0) + 1
        if name != "deferred":
            continue
        arrival = item.get("arrival_time") or time.time()
        oldest = arrival if oldest is None else min(oldest, arrival)
        for rcpt in item.get("recipients") or ():
            reason = rcpt.get("delay_reason")
            if reason:
                reasons[reason] = reasons.get(reason, 0) + 1
    facts["deferred"] = facts["queues"]["deferred"]
    if oldest is not None:
        facts["oldest_age"] = max(0, int(time.time() - oldest))
    if reasons:
        facts["reason"] = scrub(max(reasons, key=reasons.get))
    return facts


def state_path():
    """Where the beacon keeps its state: the minion's cachedir (root-only)."""
    return os.path.join(__opts__["cachedir"], "postfix_relay", "beacon.json")


def load_state(path=None):
    """The saved state, or a fresh one (no log position: start at the end)."""
    try:
        with open(path or state_path(), encoding="utf-8") as handle:
            state = json.load(handle)
        if isinstance(state, dict):
            return state
    except (OSError, ValueError):
        pass
    return {"active": {}, "position": None, "last_sent": None}


def save_state(state, path=None):
    """Written atomically (temp + rename), 0600 in a root-only directory."""
    path = path or state_path()
    __utils__["postfix_files.private_dir"](os.path.dirname(path))
    __utils__["postfix_files.write_atomic"](path, json.dumps(state, sort_keys=True),
                                           mode=0o600, backdate_mtime=False)


# -- the new part of the log ---------------------------------------------------

def _read_from(path, offset, limit=MAX_READ):
    """(lines from offset to the end of path, the end offset); at most limit
    bytes, the newest ones, starting on a whole line."""
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        start = max(offset, end - limit)
        handle.seek(start)
        data = handle.read(end - start)
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > offset and lines:
        lines = lines[1:]  # the cut line's tail
    return lines, end


def _rotated_tail(path, inode, offset):
    """Lines appended to the old file after the last read, when it was
    renamed (logrotate's path.1, ``postfix logrotate``'s path.<date>): the
    file beside it with the old inode; none when it is gone or compressed."""
    directory, base = os.path.split(path)
    try:
        names = [name for name in os.listdir(directory or ".")
                 if name.startswith(base + ".") and
                 not name.endswith((".gz", ".xz", ".bz2", ".zst"))]
    except OSError:
        return []
    for name in sorted(names):
        old = os.path.join(directory, name)
        try:
            if os.stat(old).st_ino == inode:
                return _read_from(old, offset)[0]
        except OSError:
            continue
    return []


def file_lines(position, path):
    """
    New lines of a log file since ``position`` (``{"path", "inode",
    "offset"}``, None: start at the end now) and the new position. A new
    inode (rotation) or a smaller file (truncation) is read from the top.
    """
    try:
        st = os.stat(path)
    except OSError:
        return [], {"path": path, "inode": None, "offset": 0}
    if not position or position.get("path") != path:
        return [], {"path": path, "inode": st.st_ino, "offset": st.st_size}
    lines, offset = [], position.get("offset") or 0
    if position.get("inode") != st.st_ino:
        lines = _rotated_tail(path, position.get("inode"), offset)
        offset = 0
    elif st.st_size < offset:
        offset = 0
    if st.st_size > offset:
        new, offset = _read_from(path, offset)
        lines += new
    return lines, {"path": path, "inode": st.st_ino, "offset": offset}


def journal_lines(position):
    """
    New mail-facility lines of the journal after ``position``'s cursor (None:
    start at the end now; at most MAX_LINES, the rest next interval) and the
    new position. A cursor the journal no
    longer has (vacuumed) starts again at the end.
    """
    argv = ["journalctl", "--no-pager", "--show-cursor", "-o", "short", "SYSLOG_FACILITY=2"]
    cursor = (position or {}).get("cursor")
    # after a cursor, -n takes the oldest MAX_LINES: a long downtime is read
    # over several intervals, never all at once
    res = __salt__["postfix_cmd.run"](argv + (["--after-cursor", cursor, "-n", str(MAX_LINES)]
                                              if cursor else ["-n", "1"]))
    if res["retcode"] and cursor:
        return journal_lines(None)
    lines = res["stdout"].splitlines()
    new = next((line[len("-- cursor: "):] for line in reversed(lines)
                if line.startswith("-- cursor: ")), cursor)
    text = [line for line in lines if not line.startswith("-- ")]
    return (text if cursor else []), {"journal": True, "cursor": new}


def new_lines(state, where):
    """The log lines written since the state's position (updated in place).
    A journal that holds nothing (Storage=none) leaves the syslog file."""
    position = state.get("position")
    if where["type"] == "journal":
        lines, pos = journal_lines(position if (position or {}).get("journal") else None)
        if pos["cursor"] or not where.get("also"):
            state["position"] = pos
            return lines
        where = {"type": "file", "path": where["also"]}
    if where["type"] != "file":
        state["position"] = None
        return []
    lines, state["position"] = file_lines(position if (position or {}).get("path") else None,
                                          where["path"])
    return lines


# -- conditions -----------------------------------------------------------------

_SYSLOG_TIME = re.compile(r"^(?P<stamp>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d)\s")


def _line_time(line, now):
    """A log line's time (syslog's "Nov 28 02:40:01", this year), else now."""
    match = _SYSLOG_TIME.match(line)
    if not match:
        return now
    try:
        stamp = time.strptime(f"{time.gmtime(now).tm_year} {match.group('stamp')}",
                              "%Y %b %d %H:%M:%S")
    except ValueError:
        return now
    found = time.mktime(stamp)
    return found if found <= now + 86400 else now  # a line from last December


def _uses_xoauth2(cache, config_dir):
    """The relay login is XOAUTH2 (asked once per interval, only when needed)."""
    if "xoauth2" not in cache:
        res = __salt__["postfix_cmd.run"](["postconf", "-c", config_dir, "-hx",
                                           "smtp_sasl_mechanism_filter"])
        cache["xoauth2"] = "xoauth2" in res["stdout"].lower()
    return cache["xoauth2"]


# Active conditions are keyed by condition and relay ("unreachable@host:port";
# "deferred" and "age" are the queue's): two failing relays are two
# conditions, each with its own event, and a delivery clears only its relay's.

def _relay_id(relay):
    name, port = _key_part(relay)
    return f"{name}:{port}" if port else name


def condition_key(active, condition, relay):
    """The key of ``condition`` for ``relay`` in ``active``: the existing
    one for the same relay (a log line may name it without its port; a
    line naming none joins the only one there is), else a new one."""
    mine = {key: entry for key, entry in active.items() if entry.get("condition") == condition}
    for key, entry in mine.items():
        if same_relay(entry.get("relay"), relay) or not (entry.get("relay") or relay):
            return key
    if not relay and len(mine) == 1:
        return next(iter(mine))  # a line naming no relay (the XOAUTH2 plugin's): the one
    return f"{condition}@{_relay_id(relay)}"


def _code(condition, reply, old=None):
    """What distinguishes one cause from another for the same relay: the
    SMTP code for credentials (535 5.7.8 vs 535 5.7.139), the OAuth2 error
    code; never free text (a relay words one failure many ways). A line that
    names no code keeps the one known (the plugin's "generic failure" after
    the keep-alive's invalid_grant is the same revoked token)."""
    match = None
    if condition == "credentials":
        match = _SMTP_CODE.search(reply or "")
        found = " ".join(part for part in match.groups() if part) if match else None
    elif condition == "oauth2":
        match = _OAUTH2_CODE.search(reply or "")
        found = match.group(1) if match else None
    else:
        return ""
    return found or (old or {}).get("code") or ""


def _set_failure(active, condition, relay, reply, now):
    """Record a log or keep-alive failure; returns its key."""
    key = condition_key(active, condition, relay)
    old = active.get(key)
    cause, fix = cause_fix(condition, reply, relay)
    code = _code(condition, reply, old)
    active[key] = {"condition": condition, "relay": relay or (old or {}).get("relay"),
                   "reply": reply, "cause": cause, "fix": fix, "code": code,
                   "since": (old or {}).get("since", now),
                   "fingerprint": f"{key}:{code}"}
    return key


def _configured(cache, config_dir):
    """The relays the pillar (or main.cf) names now, as [host]:port strings;
    None when they cannot be read (then every relay counts as configured)."""
    if "configured" not in cache:
        try:
            entries = __salt__["postfix_relay.relays"](config_dir)["relays"]
            cache["configured"] = [f"[{e['host']}]:{e['port']}" for e in entries]
        except Exception:  # pylint: disable=broad-except
            cache["configured"] = None
    return cache["configured"]


def _delivered(active, found, seen, configured):
    """A delivery through relay Y clears Y's log conditions, and nothing
    else: another relay's failure stays while that relay is configured (a
    sender relay delivering proves nothing about the primary). A failing
    relay no longer configured is superseded: cleared once nothing waits."""
    for key in [k for k, e in active.items() if e.get("condition") in LOG_CONDITIONS]:
        relay = active[key].get("relay")
        if same_relay(relay, found["sent"]):
            del active[key]
            seen.discard(key)
            continue
        names = configured()
        if names is not None and not (relay and any(same_relay(relay, n) for n in names)):
            active[key]["superseded"] = True


def observe(state, lines, now, configured=None, config_dir="/etc/postfix"):
    """Apply this interval's log lines, in order, to the log conditions
    (``state["active"]``): a failure sets its condition for its relay, a
    delivery clears that relay's. Returns the keys seen failing now.
    ``configured``: the relays in use (a list; default: asked of
    postfix_relay.relays once, when a delivery needs it); ``config_dir``:
    the Postfix whose log this is."""
    active, seen, cache = state.setdefault("active", {}), set(), {}
    ask = (lambda: configured) if configured is not None else \
        (lambda: _configured(cache, config_dir))
    for line in lines:
        found = classify(line)
        if not found:
            continue
        if "sent" in found:
            state["last_sent"] = _line_time(line, now)
            _delivered(active, found, seen, ask)
            continue
        name = found["condition"]
        if name == "credentials" and "cannot authenticate" in found["reply"] and \
                _uses_xoauth2(cache, config_dir):
            name = "oauth2"
        seen.add(_set_failure(active, name, found["relay"], found["reply"], now))
    return seen


def _queue_condition(name, facts, limit, state):
    """deferred / age: too many or too old deferred messages, and why (the
    most common deferral reason, in probe's words). Its fingerprint: the
    reason's condition and relay, not its free text."""
    reason = _SUSPENDED.sub("", facts["reason"] or "")
    why = next((cond for cond, pattern in _PATTERNS if pattern.search(reason)), None)
    relay = relay_of(reason)
    if why:
        cause, fix = cause_fix(why, reason, relay)
    else:
        cause, fix = reason or "no reason logged yet", \
            "run salt-call postfix_relay.status and postfix_relay.probe"
    if name == "deferred":
        head = f"{facts['deferred']} messages wait in the deferred queue (more than " \
               f"beacon:deferred_max {limit})"
    else:
        head = f"the oldest deferred message waits for {facts['oldest_age']} s (more " \
               f"than beacon:age_max {limit} s)"
    since = state["active"].get(name, {}).get("since", time.time())
    return {"condition": name, "relay": relay, "reply": reason, "cause": f"{head}: {cause}",
            "fix": fix, "since": since,
            "fingerprint": f"{name}:{why or 'other'}:{_relay_id(relay) if relay else ''}"}


def settle(state, facts, seen, limits):
    """The queue conditions from ``facts``; a superseded log condition (its
    relay is no longer configured) not seen failing now clears once nothing
    waits in the deferred queue. Without a delivery through its relay
    nothing proves the relay works again: the condition stays."""
    active = state["active"]
    for key in [k for k, e in active.items() if e.get("condition") in LOG_CONDITIONS
                and k not in seen]:
        if facts["ok"] and facts["deferred"] == 0 and active[key].get("superseded"):
            del active[key]
    over = {"deferred": facts["deferred"] > limits["deferred_max"],
            "age": (facts["oldest_age"] or 0) > limits["age_max"]}
    for name, limit in (("deferred", limits["deferred_max"]), ("age", limits["age_max"])):
        if facts["ok"] and over[name]:
            active[name] = _queue_condition(name, facts, limit, state)
        elif facts["ok"]:
            active.pop(name, None)


# -- one interval -----------------------------------------------------------------

def _log_source(config_dir):
    """Where Postfix logs, asked again every 5 minutes (an apply may move it)."""
    cached = __context__.get("postfix_watch.source")
    if cached and time.monotonic() - cached[0] < 300:
        return cached[1]
    where = __salt__["postfix_log.source"](config_dir)
    __context__["postfix_watch.source"] = (time.monotonic(), where)
    return where


def _notes_path():
    return os.path.join(os.path.dirname(state_path()), "oauth2.json")


def oauth2_notes(state, notes, now):
    """Apply the keep-alive's notes (``{relay: {ok, error, error_code,
    at}}``), each relay on its own: a note is new when its ``at`` differs
    from the last one seen for that relay (a clock stepped back still
    counts); a failure raises that relay's oauth2, a success clears that
    relay's only. Returns the keys seen failing."""
    seen, last = set(), state.setdefault("oauth2_seen", {})
    active = state.setdefault("active", {})
    for relay, note in sorted(notes.items()):
        if not isinstance(note, dict) or note.get("at") == last.get(relay):
            continue
        last[relay] = note.get("at")
        if note.get("ok"):
            for key in [k for k, e in active.items() if e.get("condition") == "oauth2"
                        and same_relay(e.get("relay"), relay)]:
                del active[key]
            continue
        code = note.get("error_code") if note.get("error_code") in \
            ("invalid_grant", "invalid_client", "unauthorized_client") else ""
        reply = scrub(" ".join(filter(None, (code if code and code not in str(
            note.get("error")) else None, note.get("error")))) or "refresh failed")
        seen.add(_set_failure(active, "oauth2", relay, reply, now))
    return seen


def _read_notes():
    try:
        with open(_notes_path(), encoding="utf-8") as handle:
            notes = json.load(handle)
        return notes if isinstance(notes, dict) else {}
    except (OSError, ValueError):
        return {}


def note_oauth2(relay, ok, error=None, error_code=None):
    """
    Record a token refresh's outcome for the beacon (the keep-alive calls
    this): a failure raises the ``oauth2`` event with the provider's error
    (scrubbed), a success clears it. ``relay``: ``[host]:port``.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_watch.note_oauth2 '[smtp.office365.com]:587' false \
            error='invalid_grant: AADSTS700082' error_code=invalid_grant
    """
    path, notes = _notes_path(), _read_notes()
    notes[relay] = {"ok": bool(ok), "error": scrub(error) if error else None,
                    "error_code": error_code, "at": time.time()}
    __utils__["postfix_files.private_dir"](os.path.dirname(path))
    __utils__["postfix_files.write_atomic"](path, json.dumps(notes), mode=0o600,
                                           backdate_mtime=False)
    return notes[relay]


def _pillar_key(relay, relays):
    """The pillar key of the relay the log names (relay, fallback_relays:0,
    sender_relays:...), for the fix; "relay" when none matches. ``relays``:
    a function giving the configured relays (asked once for all events)."""
    name, port = _key_part(relay)
    entries = relays()
    if entries is None:
        return "relay"  # the fix still reads right with the primary's key
    match = _NAMADDR.match(relay or "")
    addr = match.group("addr").lower() if match else None
    for entry in entries:
        if entry["host"].lower() in (name, addr) and (port is None or
                                                      str(entry["port"]) == port):
            return entry["key"]
    return "relay"


def _event(name, entry, facts, now, relays):
    data = {"tag": name, "condition": name, "cause": entry["cause"], "fix": entry["fix"],
            "relay": entry.get("relay"), "reply": entry.get("reply"),
            "deferred": facts["deferred"], "oldest_age": facts["oldest_age"],
            "since": entry.get("since"),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    key = _pillar_key(entry.get("relay"), relays) if entry.get("relay") else "relay"
    if key != "relay":  # name the relay's own pillar key in the fix
        data["fix"] = re.sub(r"\brelay:", f"{key}:", entry["fix"])
    data["relay_key"] = key
    return data


def changes(before, after, facts, now, config_dir="/etc/postfix"):
    """One event per change of a (condition, relay) pair: a new one, one
    whose cause changed (its fingerprint: condition, relay, code; the
    latest reply rides along in the data), and ``recovered`` (naming the
    condition and the relay) for one that cleared. ``config_dir``: the
    Postfix whose relays name the pillar keys."""
    events, cache = [], {}

    def relays():
        if "relays" not in cache:
            try:
                cache["relays"] = __salt__["postfix_relay.relays"](config_dir)["relays"]
            except Exception:  # pylint: disable=broad-except
                cache["relays"] = None
        return cache["relays"]
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if new and (not old or old.get("fingerprint") != new.get("fingerprint")):
            events.append(_event(new.get("condition", key), new, facts, now, relays))
        elif old and not new:
            name = old.get("condition", key)
            where = f" for {old['relay']}" if old.get("relay") else ""
            data = _event("recovered", dict(old, cause=f"{name} cleared{where} (was: "
                                            f"{old['cause']})", fix="nothing to do"),
                          facts, now, relays)
            data["recovered"] = name
            events.append(data)
    return events


def _upgrade(state):
    """A state saved before conditions were keyed by relay: re-keyed (each
    keeps its fingerprint until its next failure line)."""
    active = state.setdefault("active", {})
    for key in [k for k in active if k in CONDITIONS and "condition" not in active[k]]:
        entry = dict(active.pop(key), condition=key)
        active[key if key in ("deferred", "age") else
               f"{key}@{_relay_id(entry.get('relay'))}"] = entry
    return state


def evaluate(state, limits, config_dir="/etc/postfix"):
    """
    One interval's judgement on a state the caller holds (the beacon's own,
    which it loads and saves itself): reads the log after the state's
    position and the queue, updates ``state`` in place and returns
    ``{"events": [...], "facts": queue_facts}``. Saves nothing: from the
    command line it starts at the log's end, so it can never take the
    beacon's events (``salt-call postfix_watch.conditions`` is the
    read-only view).
    """
    now = time.time()
    _upgrade(state)
    before = {key: dict(entry) for key, entry in state["active"].items()}
    seen = observe(state, new_lines(state, _log_source(config_dir)), now,
                   config_dir=config_dir)
    seen |= oauth2_notes(state, _read_notes(), now)
    facts = queue_facts(config_dir)
    settle(state, facts, seen, limits)
    state["checked"] = now
    return {"events": changes(before, state["active"], facts, now, config_dir),
            "facts": facts}


def conditions(deferred_max=10, age_max=3600, config_dir="/etc/postfix", path=None):
    """
    The conditions holding now, as the beacon sees them (its saved state
    and the queue now; nothing is saved, no event is sent): ``{"active":
    {"<condition>@<relay>": {condition, cause, fix, relay, reply, since}},
    "queue": ...}``. ``path``: another state file (one of
    ``postfix_watch.interval``'s) instead of the beacon's.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_watch.conditions
        salt-call postfix_watch.conditions deferred_max=0 age_max=600
    """
    state = _upgrade(load_state(path))
    facts = queue_facts(config_dir)
    settle(state, facts, {k for k, e in state["active"].items()
                          if e.get("condition") in LOG_CONDITIONS},
           {"deferred_max": int(deferred_max), "age_max": int(age_max)})
    active = {key: {k: v for k, v in entry.items() if k not in ("fingerprint", "code")}
              for key, entry in state["active"].items()}
    return {"active": active, "queue": facts, "last_sent": state.get("last_sent"),
            "log_position": state.get("position"), "checked": state.get("checked")}


def leftovers(after_beacon=False):
    """
    Every file the beacon wrote that exists now: its state, the keep-alive's
    notes and the metrics textfile it last wrote (remembered in its state:
    the pillar may be gone by then). ``postfix_relay.clean`` and the beacon
    SLS without ``postfix_relay:beacon`` remove them, so node_exporter stops
    exporting an old condition and a later beacon starts afresh.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_watch.leftovers

    ``after_beacon``: none unless the beacon's state exists (the beacon SLS
    without the key: the keep-alive's notes alone are no beacon's leftovers,
    and removing them on every apply would be a change every day).
    """
    if after_beacon and not os.path.exists(state_path()):
        return []  # (the keep-alive's notes alone are no beacon's leftovers)
    state = load_state()
    paths = [state_path(), _notes_path(), state.get("metrics_textfile")]
    return [path for path in paths if isinstance(path, str) and os.path.isabs(path)
            and os.path.lexists(path)]


def minion_daemon():
    """
    True when a salt-minion daemon runs for this minion id: its event bus
    answers (the IPC pull socket in sock_dir that event.fire and
    beacons.* talk to; a stale socket file left by a killed minion refuses
    the connection). Beacons run only there.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_watch.minion_daemon
    """
    import hashlib  # pylint: disable=import-outside-toplevel
    import socket  # pylint: disable=import-outside-toplevel
    opts = __opts__
    if opts.get("ipc_mode") == "tcp":
        family, where = socket.AF_INET, ("127.0.0.1", int(opts.get("tcp_pull_port", 4511)))
    else:
        digest = getattr(hashlib, opts.get("hash_type") or "sha256")(
            str(opts.get("hash_id", opts["id"])).encode()).hexdigest()[:10]
        family = socket.AF_UNIX
        where = os.path.join(opts["sock_dir"], f"minion_event_{digest}_pull.ipc")
        if not os.path.exists(where):
            return False
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(where)
        except OSError:
            return False
    return True


def metrics_text(facts, state):
    """node_exporter textfile lines: queue sizes, oldest deferred age, last
    delivery seen, one gauge per condition."""
    out = ["# HELP postfix_relay_queue_messages Messages in Postfix's queues.",
           "# TYPE postfix_relay_queue_messages gauge"]
    out += [f'postfix_relay_queue_messages{{queue="{name}"}} {count}'
            for name, count in sorted(facts["queues"].items())]
    out += ["# HELP postfix_relay_oldest_deferred_seconds Age of the oldest deferred message.",
            "# TYPE postfix_relay_oldest_deferred_seconds gauge",
            f"postfix_relay_oldest_deferred_seconds {facts['oldest_age'] or 0}",
            "# HELP postfix_relay_last_sent_timestamp_seconds Last delivery to a relay "
            "seen in the log (0: none seen yet).",
            "# TYPE postfix_relay_last_sent_timestamp_seconds gauge",
            f"postfix_relay_last_sent_timestamp_seconds {int(state.get('last_sent') or 0)}",
            "# HELP postfix_relay_condition 1 while the condition holds.",
            "# TYPE postfix_relay_condition gauge"]
    held = {entry.get("condition", key) for key, entry in state["active"].items()}
    out += [f'postfix_relay_condition{{condition="{name}"}} '
            f'{1 if name in held else 0}' for name in CONDITIONS]
    out += ["# HELP postfix_relay_beacon_checked_timestamp_seconds Last beacon interval.",
            "# TYPE postfix_relay_beacon_checked_timestamp_seconds gauge",
            f"postfix_relay_beacon_checked_timestamp_seconds {int(state.get('checked') or 0)}"]
    return "\n".join(out) + "\n"


def write_metrics(path, facts, state):
    """The textfile, replaced atomically (temp + rename: node_exporter never
    reads half a file); a directory that does not exist yet is made."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    __utils__["postfix_files.write_atomic"](path, metrics_text(facts, state), mode=0o644,
                                           backdate_mtime=False)


def interval(limits, config_dir="/etc/postfix", path=None):
    """
    One interval on a state file of the caller's own (``path``, required):
    for a test or a second watcher. The beacon's own state is private to
    the beacon (a CLI interval on it would advance its log position and
    swallow its events): ``salt-call postfix_watch.conditions`` shows it.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_watch.interval '{"deferred_max": 10, "age_max": 3600}' \
            path=/root/postfix_watch.json
    """
    if not path or os.path.realpath(path) == os.path.realpath(state_path()):
        raise CommandExecutionError(
            "postfix_watch.interval: the beacon's state is the beacon's own (this would "
            "take its events); use postfix_watch.conditions, or pass path=<a state file "
            "of your own>")
    state = load_state(path)
    events = evaluate(state, limits, config_dir)["events"]
    save_state(state, path)
    return events
