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
import ssl
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
        description = str(body.get("error_description") or "").split("\n")[0][:200]
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
