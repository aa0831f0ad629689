"""Apply postfix_relay masterless (salt-call --local), as `./run` does.

    ./run                 demo: local test relay, demo pillar, apply, cron-style mail
    ./run PILLAR.sls      apply for real with the given pillar file
    ./run --clean         undo the formula (postfix_relay.clean)
"""

import argparse
import json
import pathlib
import secrets
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
WORK = REPO / "build" / "masterless"
SALT_CALL = REPO / ".venv" / "bin" / "salt-call"


def write_config(pillar_text):
    """A masterless minion config whose file root holds only the formula.

    The file root is a directory of symlinks, not the checkout itself: Salt
    walks its whole file root, and .venv/ would cost every run ~0.4 s.
    """
    (WORK / "pillar").mkdir(parents=True, exist_ok=True)
    (WORK / "root").mkdir(parents=True, exist_ok=True)
    file_root = WORK / "file_root"
    file_root.mkdir(exist_ok=True)
    for name in ("postfix_relay", "_modules", "_states", "_utils", "_beacons"):
        link = file_root / name
        if not link.is_symlink():
            link.symlink_to(REPO / name)
    (WORK / "minion").write_text(
        "file_client: local\n"
        f"root_dir: {WORK / 'root'}\n"
        f"file_roots:\n  base:\n    - {file_root}\n"
        f"pillar_roots:\n  base:\n    - {WORK / 'pillar'}\n"
        "state_output: terse\n"
    )
    (WORK / "pillar" / "top.sls").write_text("base:\n  '*':\n    - postfix_relay\n")
    pillar = WORK / "pillar" / "postfix_relay.sls"
    pillar.touch(mode=0o600)
    pillar.chmod(0o600)  # it may hold the relay password
    pillar.write_text(pillar_text)


def salt_call(*args):
    cmd = [str(SALT_CALL), "--local", "-c", str(WORK), *args]
    return subprocess.run(cmd, check=False).returncode


def apply(sls, *extra):
    """Sync the formula's modules and states, then apply (retcode passed through)."""
    sync = subprocess.run([str(SALT_CALL), "--local", "-c", str(WORK), "saltutil.sync_all"],
                          stdout=subprocess.DEVNULL, check=False)
    if sync.returncode:
        return sync.returncode
    return salt_call("state.apply", sls, "--retcode-passthrough", *extra)


def start_relay(store, password):
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "test" / "relay.py"), "--port", "0", "--tls", "starttls",
         "--user", "demo", "--password", password, "--store", str(store),
         "--cert-dir", str(WORK / "relay-certs")],
        stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    if not line or line[0] != "ready":
        proc.kill()
        sys.exit("run: the demo relay did not start")
    fields = dict(item.split("=", 1) for item in line[1:])
    return proc, int(fields["port"])


def demo_pillar(port, password):
    return (
        "postfix_relay:\n"
        "  domain: example.org\n"
        "  recipient: admin@example.org\n"
        "  reply_to: admin@example.org\n"
        "  relay:\n"
        "    host: 127.0.0.1\n"
        f"    port: {port}\n"
        "    username: demo\n"
        f"    password: {json.dumps(password)}\n"
        "    tls: encrypt\n"
    )


def send_cron_style_mail(token):
    """Submit through sendmail exactly as cron does (headers, -i -oem flags)."""
    message = (
        "From: root (Cron Daemon)\n"
        "To: root\n"
        f"Subject: Cron <root@localhost> /usr/local/bin/backup ({token})\n"
        "\n"
        "backup finished: 42 files\n"
    )
    subprocess.run(["/usr/sbin/sendmail", "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
                   input=message, text=True, check=True)


def wait_for_record(store, token, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.exists():
            for line in store.read_text().splitlines():
                record = json.loads(line)
                if token in record.get("data", ""):
                    return record
        time.sleep(0.2)
    return None


def show(record):
    headers = record.get("headers", [])

    def values(name):
        return [v for k, v in headers if k.lower() == name.lower()] or ["(none)"]

    print("\nThe relay received:")
    print(f"  envelope from:  {record['mail_from']}")
    print(f"  envelope to:    {', '.join(record['rcpt_tos'])}")
    for name in ("From", "To", "Reply-To", "Subject"):
        print(f"  {name + ':':<15} {' | '.join(values(name))}")
    print(f"  authenticated:  {record.get('auth_mechanism')} as {record.get('auth_user')}")
    print(f"  over TLS:       {record.get('tls')} ({record.get('tls_version')})")


def demo():
    store = WORK / "relay.jsonl"
    store.unlink(missing_ok=True)
    password = secrets.token_urlsafe(12)
    relay, port = start_relay(store, password)
    try:
        write_config(demo_pillar(port, password))
        print(f"run: demo relay on 127.0.0.1:{port} (STARTTLS + AUTH); applying the formula")
        if apply("postfix_relay") != 0:
            return 1
        token = secrets.token_hex(6)
        send_cron_style_mail(token)
        record = wait_for_record(store, token)
        if record is None:
            print("run: the mail did not reach the relay within 60 s; "
                  "see `postqueue -p` and /var/log/postfix.log", file=sys.stderr)
            return 1
        show(record)
        print("\nUndo with: ./run --clean")
        return 0
    finally:
        relay.terminate()
        relay.wait(timeout=10)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pillar", nargs="?", help="pillar file with a postfix_relay key")
    parser.add_argument("--clean", action="store_true", help="apply postfix_relay.clean")
    parser.add_argument("--test", action="store_true", help="dry run (test=True)")
    args = parser.parse_args()
    extra = ["test=True"] if args.test else []
    if args.clean:
        if not (WORK / "minion").exists():
            write_config("")
        return apply("postfix_relay.clean", *extra)
    if args.pillar:
        write_config(pathlib.Path(args.pillar).read_text())
        return apply("postfix_relay", *extra)
    return demo()


if __name__ == "__main__":
    sys.exit(main())
