"""
Control of the host's Postfix: facts, main.cf, the SMTP listener and the service.

The checks here run on every apply, so they are done in Python (reading files)
wherever that is exact, and spawn Postfix commands only to change something.

Any Postfix command that reads a main.cf written less than ~2 s ago first sleeps
about 1.8 s (Postfix waits for files that may still be being written). main.cf is
replaced atomically by rename, so it is never half-written: its mtime is set two
seconds back so the commands that follow the write don't pay that sleep.

CLI Example:

.. code-block:: bash

    salt-call postfix_control.facts
    salt-call postfix_control.status
"""

import contextlib
import json
import os
import pty
import re
import shutil
import subprocess
import tempfile
import time

from salt.exceptions import CommandExecutionError

__virtualname__ = "postfix_control"

HEADER = (
    "# Managed by Salt (postfix_relay formula). Local changes are overwritten;\n"
    "# set extra parameters in the pillar key postfix_relay:main_cf instead.\n"
)
_UNUSED = re.compile(r"unused parameter: ([a-z0-9_]+)=")
BACKUP_SUFFIX = ".pre-postfix_relay"
_RESTART_PARAMS = ("inet_interfaces", "inet_protocols")
_CHECKED = "postfix_control.checked_main_cf"


def __virtual__():
    return __virtualname__


def _run(argv, **kwargs):
    return __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True,
                                   output_loglevel="quiet", **kwargs)


def _facts_key(config_dir):
    """What the facts depend on: the postconf binary and the dynamic map list."""
    parts = []
    for path in (shutil.which("postconf"), os.path.join(config_dir, "dynamicmaps.cf"),
                 os.path.join(config_dir, "dynamicmaps.cf.d")):
        try:
            st = os.stat(path)
            parts.append(f"{path}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
        except (OSError, TypeError):
            parts.append(f"{path}:-")
    return "|".join(parts)


def _facts_cache_file():
    return os.path.join(__opts__.get("cachedir", "/var/cache/salt"), "postfix_relay", "facts.json")


def facts(config_dir="/etc/postfix"):
    """
    Facts about the installed Postfix that the formula depends on.

    Returns mail_version, default_database_type, map_types (``postconf -m``),
    queue_directory and config_dir. They change only with the Postfix package,
    so they are cached on disk, keyed by the postconf binary and the dynamic
    map list: a no-op apply spawns no postconf.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.facts
    """
    key = _facts_key(config_dir)
    cached = __context__.get("postfix_control.facts", {})
    if cached.get("key") == key:
        return dict(cached["facts"])
    cache_file = _facts_cache_file()
    try:
        with open(cache_file, encoding="utf-8") as handle:
            cached = json.load(handle)
    except (OSError, ValueError):
        cached = {}
    if cached.get("key") != key:
        cached = {"key": key, "facts": _read_facts(config_dir)}
        with contextlib.suppress(OSError):
            __utils__["postfix_files.private_dir"](os.path.dirname(cache_file))
            __utils__["postfix_files.write_atomic"](cache_file, json.dumps(cached),
                                                   backdate_mtime=False)
    __context__["postfix_control.facts"] = cached
    return dict(cached["facts"])


def _read_facts(config_dir):
    if not shutil.which("postconf"):
        raise CommandExecutionError("postconf not found: is Postfix installed?")
    with __utils__["postfix_files.readable_config_dir"](config_dir) as readable:
        names = ["mail_version", "default_database_type", "queue_directory"]
        res = _run(["postconf", "-c", readable, "-d", "-h"] + names)
        maps = _run(["postconf", "-c", readable, "-m"])
    if res["retcode"] or maps["retcode"]:
        raise CommandExecutionError(f"postconf failed: {res['stderr'] or maps['stderr']}")
    result = dict(zip(names, _lines(res["stdout"])))
    result["map_types"] = maps["stdout"].split()
    result["config_dir"] = config_dir
    return result


def compatibility_level(mail_version):
    """The installed Postfix's own compatibility level, as its main.cf.dist
    sets it for a new install.

    Postfix does not print it (`postconf -d compatibility_level` says 0), so it
    follows from the release: since 3.6 the level is the release itself (3.7
    on Debian 12, 3.10 on Debian 13); 3.0 to 3.5 know level 2.
    """
    try:
        major, minor = (int(x) for x in str(mail_version).split(".")[:2])
    except ValueError:
        return "2"
    if (major, minor) >= (3, 6):
        return f"{major}.{minor}"
    return "2" if major >= 3 else "1"


def complete_params(params, config_dir="/etc/postfix"):
    """params with the host's own compatibility_level first, unless set."""
    if "compatibility_level" in params:
        return dict(params)
    level = compatibility_level(facts(config_dir)["mail_version"])
    return {"compatibility_level": level, **params}


def render_main_cf(params):
    """Render a params dict as main.cf text (one ``name = value`` line each):
    compatibility_level first, then by name, so the text depends only on the
    values (SLS data may arrive in another order than Python built it)."""
    lines = [HEADER]
    names = sorted(params, key=lambda name: (name != "compatibility_level", name))
    lines.extend(f"{name} = {params[name]}".rstrip() + "\n" for name in names)
    return "".join(lines)


def _lines(text):
    """text's lines as Postfix reads them: ended by "\n" only (str.splitlines
    also splits at U+2028, U+0085 and the like, which a value may hold)."""
    parts = text.split("\n")
    return parts[:-1] if parts and parts[-1] == "" else parts


def parse_main_cf(text):
    """Parse main.cf text into a dict (continuation lines joined)."""
    params, name = {}, None
    for line in _lines(text or ""):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and name:
            params[name] = f"{params[name]} {line.strip()}".strip()
            continue
        name, _, value = line.partition("=")
        name = name.strip()
        params[name] = value.strip()
    return params


def read_file(path):
    """Return a file's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def diff_params(old_text, new_params):
    """The parameters that differ, as {name: {"old": .., "new": ..}}."""
    old = parse_main_cf(old_text)
    new = {k: str(v) for k, v in new_params.items()}
    changes = {}
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            changes[name] = {"old": old.get(name), "new": new.get(name)}
    return changes


def check_main_cf(text, config_dir="/etc/postfix"):
    """
    Check candidate main.cf text with Postfix itself before it goes live.

    The candidate is written to a private directory beside a copy of the live
    master.cf, then ``postconf -n`` and ``postfix check`` read it there. Unknown
    parameters and anything Postfix calls fatal are returned as problems.
    Nothing outside that private directory is written (see _check_copy).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.check_main_cf "$(cat /etc/postfix/main.cf)"
    """
    tmp = tempfile.mkdtemp(prefix="postfix_relay.check.")
    try:
        os.chmod(tmp, 0o755)
        _write_candidate(tmp, text)
        master = os.path.join(config_dir, "master.cf")
        if os.path.exists(master):
            shutil.copy(master, os.path.join(tmp, "master.cf"))
        problems = []
        res = _run(["postconf", "-c", tmp, "-n"])
        for name in sorted(set(_UNUSED.findall(res["stderr"]))):
            problems.append(f"main_cf:{name}: Postfix does not know this parameter")
        if res["retcode"]:
            problems.append(f"postconf rejects the new main.cf: {res['stderr'].strip()}")
        if not problems:
            problems = _check_copy(tmp, text)
        return problems
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_candidate(directory, text):
    path = os.path.join(directory, "main.cf")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    __utils__["postfix_files.backdate"](path)


def _check_copy(tmp, text):
    """
    ``postfix check`` on the candidate in tmp, its writes kept in tmp.

    ``postfix check`` creates missing queue and data directories (post-install
    create-missing), repairs queue files (postsuper) and may log to
    maillog_file: the copy it reads points those into tmp, so a check (also
    the one run while the SLS renders, under test=True too) never changes the
    host. The candidate's own queue directory is only looked at: Postfix
    refuses to run without it.
    """
    names = ["queue_directory", "data_directory", "maillog_file", "maillog_file_prefixes"]
    res = _run(["postconf", "-c", tmp, "-x", "-h"] + names)
    values = dict(zip(names, _lines(res["stdout"])))
    problems = _own_paths_problems(values)
    if problems:
        return problems
    private = {"queue_directory": os.path.join(tmp, "queue"),
               "data_directory": os.path.join(tmp, "data")}
    if values.get("maillog_file"):
        private.update(maillog_file=os.path.join(tmp, "maillog"), maillog_file_prefixes=tmp)
    os.mkdir(private["queue_directory"])
    os.chmod(private["queue_directory"], 0o755)
    _write_candidate(tmp, _without_params(text, private) +
                     "".join(f"{name} = {path}\n" for name, path in private.items()))
    code, message = _check_with_tty(tmp)
    if code:
        return [f"postfix check failed: {message or 'exit code ' + str(code)}"]
    return []


def _own_paths_problems(values):
    """What ``postfix check`` would refuse in the paths _check_copy replaces."""
    queue = values.get("queue_directory", "")
    if not os.path.isdir(queue):
        return [f"postfix check failed: queue_directory {queue} does not exist "
                "(create it or set main_cf:queue_directory to Postfix's queue)"]
    log = values.get("maillog_file", "")
    prefixes = re.split(r"[\s,]+", values.get("maillog_file_prefixes", "").strip())
    if log and not any(prefix and log.startswith(prefix) for prefix in prefixes):
        return [f"postfix check failed: maillog_file value '{log}' does not match any "
                "prefix in maillog_file_prefixes"]
    return []


def _without_params(text, names):
    """main.cf text without the lines (continuations included) that set names."""
    kept, skipping = [], False
    for line in _lines(text):
        if skipping and line[:1].isspace() and line.strip():
            continue
        name = line.partition("=")[0].strip()
        skipping = "=" in line and not line[:1].isspace() and name in names
        if not skipping:
            kept.append(line + "\n")
    return "".join(kept)


def _check_with_tty(config_dir):
    """``postfix check``, its messages captured: postfix(1) prints them on stderr
    only when stderr is a terminal (else they go to a syslog that may not run)."""
    try:
        main, sub = pty.openpty()
    except OSError:  # no pseudo-terminals here (a bare chroot): exit code only
        res = _run(["postfix", "-c", config_dir, "check"])
        return res["retcode"], (res["stderr"] or res["stdout"]).strip()
    try:
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            ["postfix", "-c", config_dir, "check"], stdin=subprocess.DEVNULL,
            stdout=sub, stderr=sub, close_fds=True)
    finally:
        os.close(sub)
    chunks = []
    try:
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main)
    code = proc.wait(timeout=60)
    return code, b"".join(chunks).decode(errors="replace").replace("\r", "").strip()


def precheck_main_cf(params, config_dir="/etc/postfix"):
    """
    Problems Postfix finds in the main.cf that ``params`` would give, checked
    while the SLS renders (before any file changes). Empty when main.cf would
    not change or Postfix is not installed yet (then the main_cf state checks).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.precheck_main_cf '{"relayhost": "[smtp.example.net]:587"}'
    """
    if not shutil.which("postconf"):
        return []
    text = render_main_cf(complete_params(params, config_dir))
    if read_file(os.path.join(config_dir, "main.cf")) == text:
        return []
    problems = check_main_cf(text, config_dir)
    if not problems:
        __context__[_CHECKED] = text  # install_main_cf needs not check it again
    return problems


def install_main_cf(params, config_dir="/etc/postfix"):
    """
    Check and install main.cf for the given params; return the changed params.

    Nothing is written when Postfix rejects the candidate.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.install_main_cf '{"relayhost": "[smtp.example.net]:587"}'
    """
    path = os.path.join(config_dir, "main.cf")
    text = render_main_cf(params)
    old = read_file(path)
    if old == text:
        return {}
    problems = [] if __context__.get(_CHECKED) == text else check_main_cf(text, config_dir)
    if problems:
        raise CommandExecutionError("; ".join(problems))
    backup = path + BACKUP_SUFFIX
    if old is not None and not old.startswith(HEADER) and not os.path.exists(backup):
        # Keep the pre-formula main.cf once, for clean.sls to restore.
        __utils__["postfix_files.write_atomic"](backup, old)
    __utils__["postfix_files.write_atomic"](path, text)
    return diff_params(old, params)


def restore_main_cf(config_dir="/etc/postfix", dist_main_cf=None, test=False):
    """
    Put back the main.cf from before the formula (clean.sls).

    The copy saved at the first apply wins; without one the distro's template
    is used, kept on loopback so removing the relay never opens port 25 to
    the network. Returns a description of what changed, or None.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.restore_main_cf
    """
    path = os.path.join(config_dir, "main.cf")
    current = read_file(path)
    if current is not None and not current.startswith(HEADER):
        return None
    backup = path + BACKUP_SUFFIX
    saved = read_file(backup)
    if saved is not None:
        text, origin = saved, backup
    else:
        template = read_file(dist_main_cf) if dist_main_cf else None
        text = (template or "") + "\n# Set by postfix_relay clean: local only.\n" \
            "inet_interfaces = loopback-only\n"
        origin = dist_main_cf or "Postfix defaults"
    if test:
        return f"main.cf would be restored from {origin}"
    problems = [] if __context__.get(_CHECKED) == text else check_main_cf(text, config_dir)
    if problems:
        raise CommandExecutionError("; ".join(problems))
    __utils__["postfix_files.write_atomic"](path, text)
    if saved is not None:
        os.unlink(backup)
    return f"main.cf restored from {origin}"


def missing_alias_databases(config_dir="/etc/postfix"):
    """
    The indexed alias databases (``alias_database``) whose compiled file is
    missing or older than its source: local delivery defers all mail while
    one is missing ("alias database unavailable").

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.missing_alias_databases
    """
    res = _run(["postconf", "-c", config_dir, "-h", "-x", "alias_database"])
    missing = []
    for table in re.split(r"[\s,]+", res["stdout"].strip()):
        map_type, _, path = table.partition(":")
        if os.path.exists(path) and __salt__["postmap.outdated_files"](path, map_type):
            missing.append(table)
    return missing


def newaliases(config_dir="/etc/postfix"):
    """
    Build the alias databases (``newaliases``).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.newaliases
    """
    res = _run(["newaliases", "-C", config_dir])
    if res["retcode"]:
        raise CommandExecutionError(f"newaliases failed: {res['stderr'].strip()}")
    return True


def _master_entries(config_dir):
    """Active master.cf entries as (service, type, fields) tuples."""
    text = read_file(os.path.join(config_dir, "master.cf")) or ""
    entries, current = [], None
    for line in _lines(text):
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace() and current:
            current.extend(line.split())
            continue
        current = line.split()
        entries.append(current)
    return entries


def smtp_chroot_dir(config_dir="/etc/postfix", default=""):
    """
    Where Postfix's smtp client (the relay transport) runs chrooted: the queue
    directory when master.cf says so for smtp/unix, else "". ``default`` when
    master.cf is not there yet (Postfix not installed).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.smtp_chroot_dir
    """
    if not os.path.exists(os.path.join(config_dir, "master.cf")):
        return default
    for fields in _master_entries(config_dir):
        if fields[:2] == ["smtp", "unix"] and len(fields) > 4:
            # "-" is the built-in default: no chroot
            return facts(config_dir)["queue_directory"] if fields[4] == "y" else ""
    return ""


def smtpd_listening(config_dir="/etc/postfix"):
    """
    True when master.cf runs an SMTP server on port 25 (``smtp inet ...``).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.smtpd_listening
    """
    for fields in _master_entries(config_dir):
        if len(fields) > 1 and fields[1] == "inet" and \
                fields[0].rpartition(":")[2] in ("smtp", "25"):
            return True
    return False


def set_smtpd_listener(enabled, chroot="y", config_dir="/etc/postfix"):
    """
    Turn the port-25 SMTP listener in master.cf on or off with ``postconf -M``.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.set_smtpd_listener False
    """
    if enabled:
        argv = ["postconf", "-c", config_dir, "-M",
                f"smtp/inet=smtp inet n - {chroot} - - smtpd"]
    else:
        argv = ["postconf", "-c", config_dir, "-M#", "smtp/inet"]
    res = _run(argv)
    if res["retcode"]:
        raise CommandExecutionError(f"postconf -M failed: {res['stderr'].strip()}")
    return True


def init_managed():
    """
    True when an init system runs and Salt's service module can drive it.

    Without one (containers, chroots, this CI: Salt's systemd module says
    "OFFLINE mode"), the formula drives Postfix with ``postfix start|reload``.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.init_managed
    """
    if os.path.isdir("/run/systemd/system"):  # sd_booted(): systemd is PID 1
        return True
    if shutil.which("systemctl"):  # systemd installed but not running: offline
        return False
    if "service.start" not in __salt__:
        return False
    offline = __salt__.get("service.offline")
    return not (offline and offline())


def enabled():
    """
    True when Postfix starts at boot; None where no init system is installed.

    Without a running init system, ``systemctl is-enabled`` still answers from
    the unit files (images and containers that boot later keep the setting).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.enabled
    """
    if init_managed():
        return bool(__salt__["service.enabled"]("postfix"))
    if not shutil.which("systemctl"):
        return None
    # Fast path, no spawn: the symlink `systemctl enable` makes (Debian's unit).
    if os.path.exists("/etc/systemd/system/multi-user.target.wants/postfix.service"):
        return True
    return _run(["systemctl", "is-enabled", "--quiet", "postfix"])["retcode"] == 0


def enable():
    """
    Enable Postfix at boot (offline too, through the unit files).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.enable
    """
    if init_managed():
        return bool(__salt__["service.enable"]("postfix"))
    res = _run(["systemctl", "enable", "--quiet", "postfix"])
    if res["retcode"]:
        raise CommandExecutionError(f"systemctl enable postfix failed: {res['stderr'].strip()}")
    return True


def _master_pid(queue_directory):
    pid_file = os.path.join(queue_directory, "pid", "master.pid")
    try:
        with open(pid_file, encoding="ascii") as handle:
            pid = int(handle.read().strip())
        with open(f"/proc/{pid}/comm", encoding="ascii") as handle:
            if handle.read().strip() == "master":
                return pid
    except (OSError, ValueError):
        pass
    return None


def status(config_dir="/etc/postfix"):
    """
    True when the Postfix master process runs (read from its pid file).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.status
    """
    if init_managed():
        return bool(__salt__["service.status"]("postfix"))
    return _master_pid(facts(config_dir)["queue_directory"]) is not None


def deferred_count(config_dir="/etc/postfix"):
    """
    Messages waiting in the deferred queue (files counted, no Postfix command).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.deferred_count
    """
    root = os.path.join(facts(config_dir)["queue_directory"], "deferred")
    return sum(len(files) for _, _, files in os.walk(root))


def flush(config_dir="/etc/postfix"):
    """
    Retry the deferred mail now (``postqueue -f``), as after fixing the relay
    settings; without it, deferred mail waits up to maximal_backoff_time.
    Returns how many messages were waiting.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.flush
    """
    waiting = deferred_count(config_dir)
    if waiting:
        res = _run(["postqueue", "-c", config_dir, "-f"])
        if res["retcode"]:
            raise CommandExecutionError(f"postqueue -f failed: {res['stderr'].strip()}")
    return waiting


def _postfix(action, config_dir):
    res = _run(["postfix", "-c", config_dir, action])
    if res["retcode"]:
        raise CommandExecutionError(
            f"postfix {action} failed: {(res['stderr'] or res['stdout']).strip()}")
    return True


def _prepare_chroot(config_dir, prestart):
    """Run the distro's pre-start helper (Debian copies resolv.conf etc. into
    the smtp chroot), as its init script would."""
    if prestart and os.path.exists(prestart[0]):
        if _runs_itself(prestart[0]):
            return
        res = _run(list(prestart), env={"MAIL_CONFIG": config_dir})
        if res["retcode"]:
            raise CommandExecutionError(f"{prestart[0]} failed: {res['stderr'].strip()}")


def _runs_itself(script):
    """Debian's Postfix 3.11 runs configure-instance.sh from `postfix start`
    itself and refuses to be called from outside."""
    try:
        with open(script, encoding="utf-8", errors="replace") as handle:
            return "internal script used by postfix" in handle.read()
    except OSError:
        return False


def _control(action, config_dir, prestart):
    """start/reload through the init system, or postfix(1) without one."""
    if init_managed():
        return __salt__[f"service.{action}"]("postfix")
    _prepare_chroot(config_dir, prestart)
    return _postfix(action, config_dir)


def start(config_dir="/etc/postfix", prestart=None):
    """
    Start Postfix through the init system, or with ``postfix start`` without one.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.start
    """
    return _control("start", config_dir, prestart)


def reload(config_dir="/etc/postfix", prestart=None):
    """
    Reload Postfix (re-reads main.cf and master.cf; the queue is kept).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.reload
    """
    return _control("reload", config_dir, prestart)


def stop(config_dir="/etc/postfix", timeout=30):
    """
    Stop Postfix and wait for the master process to exit. Queued mail stays queued.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.stop
    """
    if init_managed():
        return __salt__["service.stop"]("postfix")
    queue = facts(config_dir)["queue_directory"]
    if _master_pid(queue) is None:
        return True
    _postfix("stop", config_dir)
    deadline = time.monotonic() + timeout
    while _master_pid(queue) is not None:
        if time.monotonic() > deadline:
            raise CommandExecutionError("postfix stop: master did not exit in time")
        time.sleep(0.05)
    return True


def restart(config_dir="/etc/postfix", prestart=None):
    """
    Stop and start Postfix (needed when inet_interfaces changes).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_control.restart
    """
    if init_managed():
        return __salt__["service.restart"]("postfix")
    stop(config_dir)
    return start(config_dir, prestart)


def needs_restart(changes):
    """True when a change to these main.cf params needs a stop/start, not a reload."""
    return any(name in _RESTART_PARAMS for name in changes or {})
