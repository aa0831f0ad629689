"""
Token files of the sasl-xoauth2 Cyrus SASL plugin (XOAUTH2 for Microsoft 365
and Gmail). The plugin, running inside Postfix's smtp process, refreshes the
access token and rewrites the file itself; the formula writes it only when the
pillar's values (refresh token, client, endpoint) change, tracked by a digest
in the minion's cache, so a refreshed file is never overwritten by a re-apply.

CLI Example:

.. code-block:: bash

    salt-call postfix_xoauth2.token_current /var/spool/postfix/etc/sasl-xoauth2/x.json
"""

import contextlib
import grp
import hashlib
import json
import os
import pwd
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

__virtualname__ = "postfix_xoauth2"


def __virtual__():
    return __virtualname__


def digest(data):
    """A digest of the values the formula puts in a token file."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _stamp_file(path):
    name = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:24]
    return os.path.join(__opts__.get("cachedir", "/var/cache/salt"), "postfix_relay",
                        f"xoauth2-{name}")


def token_current(path, data):
    """
    True when the token file was written from these values and is still
    usable (the plugin may have refreshed it since: that is current too).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_xoauth2.token_current /etc/sasl-xoauth2/x.json '{...}'
    """
    try:
        with open(_stamp_file(path), encoding="ascii") as handle:
            stamp = handle.read().strip()
    except OSError:
        return False
    return stamp == digest(data) and _usable(path)


def _usable(path):
    """A token file the plugin can read: JSON with a refresh token (which the
    plugin may have replaced with a rotated one)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return bool(json.load(handle).get("refresh_token"))
    except (OSError, ValueError, AttributeError):
        return False


def write_token(path, data, user="postfix"):
    """
    Write the token file (0600, owned by the user Postfix's smtp runs as, who
    rewrites it on refresh) atomically, and remember what it was written from.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_xoauth2.write_token /etc/sasl-xoauth2/x.json '{...}'
    """
    entry = pwd.getpwnam(user)
    _write_json(path, data, 0o600, (entry.pw_uid, entry.pw_gid))
    stamp = _stamp_file(path)
    __utils__["postfix_files.private_dir"](os.path.dirname(stamp))
    __utils__["postfix_files.write_atomic"](stamp, digest(data), mode=0o600,
                                           backdate_mtime=False)
    return True


def stale_tokens(path, keep=None):
    """
    The other token files (``*.json``) in path's directory: left from a relay
    the pillar no longer names, each still holds a refresh token. ``keep``:
    more file names to leave (the token files of the other relays). Nothing
    is changed (``prune`` removes them).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_xoauth2.stale_tokens /var/spool/postfix/etc/sasl-xoauth2/x.json
    """
    directory, name = os.path.split(os.path.abspath(path))
    kept = {name, *(keep or ())}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:  # not written yet: nothing left over either
        return []
    stale = [n for n in names if n.endswith(".json") and n not in kept]
    # a removed relay's CA bundle beside its token file goes with it
    cas = [n[:-len(".json")] + ".ca.pem" for n in stale]
    return sorted(stale + [n for n in cas if n in names])


def prune(path, keep=None):
    """
    Remove the other token files in path's directory (``stale_tokens``),
    but those named in ``keep``. Returns the names removed.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_xoauth2.prune /var/spool/postfix/etc/sasl-xoauth2/x.json
    """
    directory = os.path.dirname(os.path.abspath(path))
    removed = stale_tokens(path, keep)
    for name in removed:
        os.unlink(os.path.join(directory, name))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_stamp_file(os.path.join(directory, name)))
    return removed


def private_changes(path, user="postfix"):
    """
    What ``ensure_private`` would change on an existing token file: ``user``
    when it is not owned by user (and user's group), ``mode`` when it is not
    0600. Nothing is changed.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_xoauth2.private_changes /var/spool/postfix/etc/sasl-xoauth2/x.json
    """
    entry, stat = pwd.getpwnam(user), os.stat(path)
    changes = {}
    if (stat.st_uid, stat.st_gid) != (entry.pw_uid, entry.pw_gid):
        changes["user"] = user
    if stat.st_mode & 0o777 != 0o600:
        changes["mode"] = "0600"
    return changes


def ensure_private(path, user="postfix"):
    """
    Give an existing token file back to user with mode 0600 (the content,
    maybe refreshed by the plugin, is kept). Returns what was changed.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_xoauth2.ensure_private /var/spool/postfix/etc/sasl-xoauth2/x.json
    """
    changes = private_changes(path, user)
    if "user" in changes:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    if "mode" in changes:
        os.chmod(path, 0o600)
    return changes


def _host_path(chroot, path):
    """Where a path seen by the chrooted smtp process lies on this host."""
    return os.path.join(chroot, path.lstrip("/")) if chroot else path


def _can_write(stat, user):
    """Write permission for user by the mode bits (what the smtp process has)."""
    if stat.st_uid == user.pw_uid:
        return bool(stat.st_mode & 0o200)
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    if stat.st_gid in groups:
        return bool(stat.st_mode & 0o020)
    return bool(stat.st_mode & 0o002)


def file_problems(path, chroot="", owner="postfix"):
    """
    What keeps Postfix's smtp process (running as ``owner``, chrooted in
    ``chroot``) from using the token file ``path`` (as smtp sees it): missing,
    not writable by it (the plugin rewrites it on every refresh, through a new
    file in the same directory), or readable by others. A list of
    ``{"kind", "cause", "fix"}``, kind one of missing, not_writable, readable.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_xoauth2.file_problems /etc/sasl-xoauth2/smtp.office365.com-587.json \\
            /var/spool/postfix
    """
    where = f" inside smtp's chroot ({chroot})" if chroot else ""
    real = _host_path(chroot, path)
    reapply = "re-apply postfix_relay (it writes the token file with the right owner)"
    if not os.path.exists(real):
        return [{"kind": "missing",
                 "cause": f"the XOAUTH2 token file {path} does not exist{where}: "
                          f"the plugin has no refresh token ({real})", "fix": reapply}]
    user = pwd.getpwnam(owner)
    problems = []
    stat = os.stat(real)
    if not _can_write(stat, user) or not _can_write(os.stat(os.path.dirname(real)), user):
        problems.append({
            "kind": "not_writable",
            "cause": f"the XOAUTH2 token file {real} (or its directory) is not writable by "
                     f"{owner}, the user Postfix's smtp process runs as: the plugin cannot "
                     "store refreshed access tokens and authentication fails",
            "fix": reapply})
    if stat.st_mode & 0o077:
        problems.append({"kind": "readable",
                         "cause": f"the XOAUTH2 token file {real} (a refresh token) is "
                                  f"readable by others (mode {stat.st_mode & 0o777:04o})",
                         "fix": reapply})
    return problems


def _plugin_config(conf_file):
    try:
        with open(conf_file, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _post(url, form, ca_file, timeout):
    """POST a form; (HTTP status, JSON body) or an OSError/ssl error."""
    context = ssl.create_default_context(cafile=ca_file)
    # Python 3.13+ is stricter than libcurl (OpenSSL's defaults): judge as it does
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    request = urllib.request.Request(
        url, data=urllib.parse.urlencode(form).encode(), method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        return exc.code, body


def refresh(path, chroot="", conf_file="/etc/sasl-xoauth2.conf", timeout=10):
    """
    Exchange the token file's refresh token for an access token as the plugin
    would (same endpoint, client and CA bundle, the bundle as smtp sees it in
    its chroot), and store the result in the file as the plugin does, so the
    next mail uses it. Returns ``({"token_endpoint", "answered",
    "refresh_token_accepted", "error", "error_code", "expires_in",
    "ca_bundle"}, access token or None)``: the token is for the caller's AUTH
    test, never shown. error_code: the endpoint's OAuth2 error (invalid_grant,
    ...), or ca_missing, untrusted, unreachable when it was not reached.
    """
    real = _host_path(chroot, path)
    with open(real, encoding="utf-8") as handle:
        token = json.load(handle)
    conf = _plugin_config(conf_file)
    setting = {key: token.get(key, conf.get(key, ""))
               for key in ("client_id", "client_secret", "token_endpoint", "ca_bundle_file")}
    # no ca_bundle_file: libcurl's default path, inside the chroot too
    ca_seen = setting["ca_bundle_file"] or "/etc/ssl/certs/ca-certificates.crt"
    info = {"token_endpoint": setting["token_endpoint"], "ca_bundle": ca_seen,
            "answered": False, "refresh_token_accepted": False, "error": None,
            "error_code": None}
    ca_real = _host_path(chroot, ca_seen)
    if not os.path.exists(ca_real):
        info["error"] = (f"the CA bundle {ca_seen} does not exist inside smtp's chroot "
                         f"({ca_real}): the plugin cannot verify the token endpoint")
        info["error_code"] = "ca_missing"
        return info, None
    form = {"client_id": setting["client_id"], "client_secret": setting["client_secret"],
            "grant_type": "refresh_token", "refresh_token": token.get("refresh_token", "")}
    try:
        status, body = _post(setting["token_endpoint"], form, ca_real, timeout)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc  # urllib wraps the cause
        if isinstance(reason, ssl.SSLCertVerificationError):
            info["error"] = (f"the token endpoint's certificate is not trusted by {ca_seen}, "
                             "the CA bundle the plugin uses in smtp's chroot "
                             f"({reason.verify_message})")
            info["error_code"] = "untrusted"
        else:
            info["error"] = f"the token endpoint is unreachable ({reason})"
            info["error_code"] = "unreachable"
        return info, None
    info["answered"] = True
    if status != 200 or not body.get("access_token"):
        error = body.get("error") or f"HTTP {status}"
        # first line only (Microsoft's go on with trace ids, CRLF-separated)
        description = (str(body.get("error_description") or "").splitlines() or [""])[0][:200]
        info["error"] = f"{error}: {description}" if description else error
        info["error_code"] = error
        return info, None
    info["refresh_token_accepted"] = True
    info["expires_in"] = int(body.get("expires_in") or 0)
    token["access_token"] = body["access_token"]
    token["expiry"] = str(int(time.time()) + info["expires_in"])
    if body.get("refresh_token"):  # rotated: the old one may stop working
        token["refresh_token"] = body["refresh_token"]
    _replace(real, token)
    return info, body["access_token"]


def _replace(path, data):
    """Rewrite the token file as the plugin does, keeping its owner and mode."""
    stat = os.stat(path)
    _write_json(path, data, stat.st_mode & 0o777, (stat.st_uid, stat.st_gid))


def _write_json(path, data, mode, owner):
    """Never half-written, never readable by others on the way (a temp file
    beside it, renamed over it)."""
    __utils__["postfix_files.write_atomic"](path, json.dumps(data, indent=1), mode=mode,
                                           backdate_mtime=False, owner=owner)


# -- keep-alive: refresh tokens that would otherwise die of silence --------------
# Microsoft revokes a refresh token unused for 90 days (AADSTS700082), Google
# after 7 days for apps in "Testing": a host that mails once a quarter loses
# its token. A daily job (postfix_relay.oauth2_keepalive SLS) runs keepalive.

DAY = 86400


def keepalive_paths():
    """
    The keep-alive's files in the minion's cachedir (root-only): ``plan``,
    the relays to keep alive as the last apply saw them (no secrets; read
    when the pillar is not there, as under ``salt-call --local`` on a
    minion of a master), and ``status``, each token file's last outcome
    (read by the beacon).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_xoauth2.keepalive_paths
    """
    base = os.path.join(__opts__.get("cachedir", "/var/cache/salt"), "postfix_relay")
    return {"plan": os.path.join(base, "oauth2_keepalive_relays.json"),
            "status": os.path.join(base, "oauth2_keepalive.json")}


def keepalive_plan(settings=None):
    """
    The oauth2 relays whose tokens the keep-alive refreshes, from the
    pillar's settings: ``[{key, relay, name, token (as smtp sees it),
    chroot, keepalive_days}]``, relays with keepalive_days 0 (off) left out.
    No secrets.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_xoauth2.keepalive_plan
    """
    if settings is None:
        settings = __salt__["postfix_relay_settings.get"](
            lookup=__salt__["postfix_relay_settings.lookup"]())
    host_paths = {r["key"]: r["token"] for r in settings.get("oauth2_relays") or []}
    plan = []
    for relay in settings.get("relays") or []:
        days = (relay.get("oauth2") or {}).get("keepalive_days") or 0
        if relay["key"] not in host_paths or days <= 0:
            continue
        seen = relay["token_path"]
        plan.append({"key": relay["key"], "relay": relay["nexthop"],
                     "name": os.path.basename(seen), "token": seen,
                     "chroot": host_paths[relay["key"]][:-len(seen)],
                     "keepalive_days": days})
    return plan


def _current_plan():
    """The pillar's relays when this run has the formula's pillar (a
    standalone host, a minion's own run), else the plan the last apply saved
    (``salt-call --local`` on a minion whose pillar lives on the master)."""
    if (__pillar__ or {}).get("postfix_relay"):
        return keepalive_plan()
    try:
        with open(keepalive_paths()["plan"], encoding="utf-8") as handle:
            plan = json.load(handle)
        return plan if isinstance(plan, list) else []
    except (OSError, ValueError):
        return []


def _last_refresh(real):
    """When the token file was last refreshed. The plugin rewrites the whole
    file (a new file renamed over it) exactly when it refreshes, and so do
    this keep-alive and an apply that writes a new refresh token: the mtime
    is the last time the refresh token was used or replaced. Its ``expiry``
    field only says when the access token ends (the lifetime differs by
    provider, and a file the formula wrote has none)."""
    return os.stat(real).st_mtime


def _keep_one(entry, limit, conf_file, timeout, user):
    """Refresh one relay's token file when it is older than limit seconds:
    ``{outcome: refreshed|fresh|failed, error, error_code, rotated}``."""
    real = _host_path(entry["chroot"], entry["token"])
    try:
        age = time.time() - _last_refresh(real)
    except OSError:
        return {"outcome": "failed", "error_code": "missing",
                "error": f"the token file {real} does not exist: re-apply postfix_relay"}
    if age < limit:
        return {"outcome": "fresh", "error": None, "error_code": None,
                "age_days": round(age / DAY, 2)}
    try:
        before = _refresh_token_digest(real)
        info, _access = refresh(entry["token"], entry["chroot"], conf_file, timeout)
    except (OSError, ValueError) as exc:  # unreadable or not JSON: the plugin fails too
        return {"outcome": "failed", "error_code": "unreadable",
                "error": f"the token file {real} cannot be read ({type(exc).__name__}): "
                         "re-apply postfix_relay"}
    if not info["refresh_token_accepted"]:
        # refresh() wrote nothing: the old refresh token stays in the file
        return {"outcome": "failed", "error": info["error"], "error_code": info["error_code"]}
    ensure_private(real, user)
    return {"outcome": "refreshed", "error": None, "error_code": None,
            "rotated": _refresh_token_digest(real) != before}


def _refresh_token_digest(real):
    with open(real, encoding="utf-8") as handle:
        return digest(json.load(handle).get("refresh_token"))


def keepalive(max_age=None, conf_file=None, timeout=20, user="postfix"):
    """
    Refresh, as the plugin would, every oauth2 relay's token whose file was
    last refreshed longer ago than the relay's ``oauth2:keepalive_days``
    (``max_age``: seconds instead, for every relay with the keep-alive on),
    so the provider never sees the refresh token unused for long. The result
    goes in the token file as the plugin stores it (a rotated refresh token
    kept; on failure the file is left as it was). Returns, per token file,
    ``{outcome: refreshed|fresh|failed, relay, key, error}`` (error: the
    provider's answer, never a token); records it in the status file
    (``keepalive_paths``) for the beacon; the exit code is 1 when one failed.

    CLI Example:

    .. code-block:: bash

        salt-call --local postfix_xoauth2.keepalive
        salt-call --local postfix_xoauth2.keepalive max_age=0
    """
    # the plugin's config (client and endpoint defaults the token file may lack)
    conf_file = conf_file or __salt__["postfix_relay_settings.xoauth2_paths"]()["conf"]
    results = {}
    for entry in _current_plan():
        limit = float(max_age) if max_age is not None else entry["keepalive_days"] * DAY
        outcome = _keep_one(entry, limit, conf_file, int(timeout), user)
        results[entry["name"]] = {"relay": entry["relay"], "key": entry["key"], **outcome}
    _record(results)
    if any(r["outcome"] == "failed" for r in results.values()):
        __context__["retcode"] = 1
    return results


def keepalive_status():
    """
    The keep-alive's last outcome per token file: ``{name: {ok, error,
    error_code, outcome, relay, key, time}}`` ({} before its first run).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_xoauth2.keepalive_status
    """
    try:
        with open(keepalive_paths()["status"], encoding="utf-8") as handle:
            status = json.load(handle)
        return status if isinstance(status, dict) else {}
    except (OSError, ValueError):
        return {}


def _record(results):
    """Save this run's outcomes (relays no longer configured drop out) and
    tell the beacon's hook about refreshes that reached the endpoint, and
    about a failure that has cleared (a new refresh token applied since)."""
    before, now = keepalive_status(), time.time()
    status = {name: {"ok": r["outcome"] != "failed", "error": r["error"],
                     "error_code": r["error_code"], "outcome": r["outcome"],
                     "relay": r["relay"], "key": r["key"], "time": now}
              for name, r in results.items()}
    path = keepalive_paths()["status"]
    __utils__["postfix_files.private_dir"](os.path.dirname(path))
    __utils__["postfix_files.write_atomic"](path, json.dumps(status, indent=1), mode=0o600,
                                           backdate_mtime=False)
    note = __salt__.get("postfix_watch.note_oauth2")
    for name, entry in status.items():
        was_failing = not (before.get(name) or {}).get("ok", True)
        if note and (entry["outcome"] != "fresh" or was_failing):
            note(entry["relay"], entry["ok"], entry["error"], entry["error_code"])


CRON_FILE = "/etc/cron.d/postfix_relay_oauth2_keepalive"
CRON_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _salt_call():
    """The salt-call of the Salt that runs this (beside the running program:
    /usr/bin for packages, /opt/saltstack/salt for onedir, a venv's bin), as
    an absolute path: cron's PATH may not have it."""
    for candidate in (os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "salt-call"),
                      shutil.which("salt-call"),
                      os.path.join(os.path.dirname(sys.executable), "salt-call")):
        if candidate and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    return "salt-call"


def keepalive_job():
    """
    The daily job that runs the keep-alive: ``{path, contents, command,
    cron_daemon}``. A cron.d entry, because it works wherever a cron daemon
    runs, with systemd or without (containers, OpenRC), needs no running
    salt-minion (a Salt schedule would never run on a host driven by
    ``salt-call --local``), and is what Debian, Raspberry Pi OS, RHEL and
    SUSE read. The minute and hour come from the minion id, so a fleet does
    not call the token endpoint at once. Output only on failure: cron mails
    it (through a fallback relay, or queued until the token is fixed).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_xoauth2.keepalive_job
    """
    slot = int(hashlib.sha256(str(__opts__.get("id")).encode()).hexdigest(), 16) % 1440
    command = (f"{_salt_call()} --local --config-dir={__opts__.get('conf_dir', '/etc/salt')} "
               "--out=txt --log-level=quiet postfix_xoauth2.keepalive")
    contents = (
        "# postfix_relay (Salt): keeps XOAUTH2 refresh tokens alive; a provider revokes\n"
        "# one left unused (Microsoft: 90 days, AADSTS700082). Outcome: salt-call\n"
        "# postfix_xoauth2.keepalive_status. Managed by Salt: edits are overwritten.\n"
        f"SHELL=/bin/sh\nPATH={CRON_PATH}\n"
        f'{slot % 60} {slot // 60} * * * root out=$({command} 2>&1) || echo "$out"\n')
    return {"path": CRON_FILE, "contents": contents, "command": command,
            "cron_daemon": any(shutil.which(name, path=CRON_PATH) for name in ("cron", "crond"))}
