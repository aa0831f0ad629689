"""
main.cf: render a params dict as the file, parse and diff it, check a candidate
with Postfix itself, install it (keeping the pre-formula file once) and restore
it (clean.sls).

Any Postfix command that reads a main.cf written less than ~2 s ago first sleeps
about 1.8 s (Postfix waits for files that may still be being written). main.cf is
replaced atomically by rename, so it is never half-written: its mtime is set two
seconds back so the commands that follow the write don't pay that sleep.

CLI Example:

.. code-block:: bash

    salt-call postfix_maincf.check_main_cf "$(cat /etc/postfix/main.cf)"
    salt-call postfix_maincf.precheck_main_cf '{"relayhost": "[smtp.example.net]:587"}'
"""

import os
import pty
import re
import shutil
import subprocess
import tempfile

from salt.exceptions import CommandExecutionError

__virtualname__ = "postfix_maincf"

HEADER = (
    "# Managed by Salt (postfix_relay formula). Local changes are overwritten;\n"
    "# set extra parameters in the pillar key postfix_relay:main_cf instead.\n"
)
_UNUSED = re.compile(r"unused parameter: ([a-z0-9_]+)=")
BACKUP_SUFFIX = ".pre-postfix_relay"
_CHECKED = "postfix_maincf.checked_main_cf"


def __virtual__():
    return __virtualname__


def complete_params(params, config_dir="/etc/postfix"):
    """params with the host's own compatibility_level first, unless set."""
    if "compatibility_level" in params:
        return dict(params)
    level = __salt__["postfix_facts.compatibility_level"](
        __salt__["postfix_facts.facts"](config_dir)["mail_version"])
    return {"compatibility_level": level, **params}


def render_main_cf(params):
    """Render a params dict as main.cf text (one ``name = value`` line each):
    compatibility_level first, then by name, so the text depends only on the
    values (SLS data may arrive in another order than Python built it)."""
    lines = [HEADER]
    names = sorted(params, key=lambda name: (name != "compatibility_level", name))
    lines.extend(f"{name} = {params[name]}".rstrip() + "\n" for name in names)
    return "".join(lines)


def parse_main_cf(text):
    """Parse main.cf text into a dict (continuation lines joined)."""
    params, name = {}, None
    for line in __utils__["postfix_text.lines"](text or ""):
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

        salt-call postfix_maincf.check_main_cf "$(cat /etc/postfix/main.cf)"
    """
    tmp = tempfile.mkdtemp(prefix="postfix_relay.check.")
    try:
        os.chmod(tmp, 0o755)
        _write_candidate(tmp, text)
        master = os.path.join(config_dir, "master.cf")
        if os.path.exists(master):
            shutil.copy(master, os.path.join(tmp, "master.cf"))
        problems = []
        res = __salt__["postfix_cmd.run"](["postconf", "-c", tmp, "-n"])
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
    res = __salt__["postfix_cmd.run"](["postconf", "-c", tmp, "-x", "-h"] + names)
    values = dict(zip(names, __utils__["postfix_text.lines"](res["stdout"])))
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
    for line in __utils__["postfix_text.lines"](text):
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
        res = __salt__["postfix_cmd.run"](["postfix", "-c", config_dir, "check"])
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

        salt-call postfix_maincf.precheck_main_cf '{"relayhost": "[smtp.example.net]:587"}'
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

        salt-call postfix_maincf.install_main_cf '{"relayhost": "[smtp.example.net]:587"}'
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

        salt-call postfix_maincf.restore_main_cf
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
