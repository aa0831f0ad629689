"""
Postfix's log, read to follow one message: where Postfix logs (its own
``maillog_file``, the journal, a syslog file), the lines written since a
moment, and one message's queue id, sender and first delivery attempt.

.. code-block:: bash

    salt-call postfix_log.source
"""

import os
import re
import subprocess
import time

__virtualname__ = "postfix_log"

SYSLOG_FILES = ("/var/log/mail.log", "/var/log/maillog", "/var/log/mail.info",
                "/var/log/messages", "/var/log/syslog")

_DELIVERY = re.compile(
    r"(?P<qid>[0-9A-Za-z]+): to=<(?P<to>[^>]*)>(?:, orig_to=<(?P<orig_to>[^>]*)>)?, "
    r"relay=(?P<relay>[^,]+), (?:conn_use=\d+, )?delay=(?P<delay>[\d.]+), "
    # Postfix 3.11 adds fields such as tls=encrypt before dsn=
    r"delays=(?P<delays>[\d./]+)(?:, [a-z_]+=[^,\s]+)*, dsn=(?P<dsn>[\d.]+), "
    r"status=(?P<status>\w+) "
    r"\((?P<reply>.*)\)\s*$")
# relay= as smtp logs it: name[address]:port
_RELAY_FIELD = re.compile(r"^(?P<name>[^\[\s]+)\[(?P<address>[^\]]+)\]:(?P<port>\d+)$")


def __virtual__():
    return __virtualname__


def source(config_dir="/etc/postfix", maillog_file=None):
    """
    Where this host's Postfix logs: ``maillog_file``, the journal, or a syslog
    file. Returns ``{"type": "file"|"journal"|"none", "path": ..., "also": ...}``;
    with the journal, ``also`` names the syslog file rsyslog may write too
    (journald set to keep nothing, ``Storage=none``, only forwards to it).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_log.source
    """
    if maillog_file is None:
        res = __salt__["postfix_cmd.run"](["postconf", "-c", config_dir, "-hx", "maillog_file"])
        maillog_file = res["stdout"].strip() if not res["retcode"] else ""
    if maillog_file and maillog_file != "/dev/stdout":
        return {"type": "file", "path": maillog_file}
    syslog_file = next((path for path in SYSLOG_FILES if os.path.exists(path)), None)
    if os.path.isdir("/run/systemd/journal") and __salt__["cmd.has_exec"]("journalctl"):
        return {"type": "journal", "path": None, "also": syslog_file}
    if syslog_file:
        return {"type": "file", "path": syslog_file}
    return {"type": "none", "path": None}


class LogReader:
    """New log lines since the reader was made: the journal's and those of the
    log file (the source's own, or the syslog file beside a journal, which is
    the only record when journald keeps nothing)."""

    def __init__(self, where):
        self.since = time.time() - 1
        self.journal = where["type"] == "journal"
        self.path = where["path"] if where["type"] == "file" else where.get("also")
        try:
            self.offset = os.path.getsize(self.path) if self.path else 0
        except OSError:
            self.offset = 0
        self.file_lines = []

    def poll(self):
        """Every line since the reader was made."""
        if self.path:
            self.file_lines.extend(self._new_file_lines())
        if self.journal:
            out = subprocess.run(["journalctl", "--no-pager", "-o", "short", "--since",
                                  f"@{int(self.since)}", "SYSLOG_FACILITY=2"],
                                 capture_output=True, text=True, check=False).stdout
            # journal first; the file's copy of a line changes nothing in
            # parse (it takes the first match), and a journal that keeps
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


def reader(where):
    """A :py:class:`LogReader` on ``where`` (a :py:func:`source`), made before
    the mail is sent so that no line is missed."""
    return LogReader(where)


def parse(lines, message_id):
    """
    Follow one message through Postfix's log lines by its Message-ID: its
    queue id, envelope sender and the first delivery attempt's outcome.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_log.parse '["..."]' '<id@host>'
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


def follow(log_reader, message_id, timeout):
    """What the log says of message_id once its delivery attempt is logged,
    or whatever was found when ``timeout`` seconds have passed."""
    started = time.monotonic()
    found = {}
    while time.monotonic() - started < timeout:
        found = parse(log_reader.poll(), message_id)
        if "status" in found:
            break
        time.sleep(0.05)
    return found


def relay_field(value):
    """
    The relay= field of a delivery line split into name, address and port
    (None for ``none``, ``local`` and other non-SMTP relays).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_log.relay_field 'smtp.example.net[192.0.2.1]:587'
    """
    match = _RELAY_FIELD.match((value or "").strip())
    if not match:
        return None
    return {"name": match.group("name"), "address": match.group("address"),
            "port": int(match.group("port"))}
