"""
Debian trees for tests: debootstrap from Debian's mirror, the pinned Salt in a
venv inside (pip from PyPI), the formula as a file root, and a way to run
commands in the tree as its own host (private mount and UTS namespaces with
/proc, /dev and /run of its own, chrooted; the network is the machine's).
"""

import json
import pathlib
import shutil
import subprocess
import textwrap

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ["postfix", "libsasl2-modules", "gcc", "libc6-dev", "ca-certificates",
                 "procps"]


def salt_version():
    pins = (REPO / "requirements.txt").read_text().splitlines()
    return next(line.split("==")[1] for line in pins if line.startswith("salt=="))


class Chroot:
    """A Debian tree run as its own host named hostname."""

    def __init__(self, root, hostname):
        self.root, self.hostname = root, hostname

    def run(self, *argv, input=None, check=True, timeout=600, env=None):
        script = textwrap.dedent(f"""\
            set -e
            mount --rbind /dev {self.root}/dev
            mount -t proc proc {self.root}/proc
            mount -t tmpfs tmpfs {self.root}/run
            hostname {self.hostname}
            exec chroot {self.root} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
                HOME=/root LANG=C.UTF-8 {' '.join(f'{k}={v}' for k, v in (env or {}).items())} \
                "$@"
            """)
        res = subprocess.run(["unshare", "--mount", "--uts", "--propagation", "private",
                              "--fork", "sh", "-c", script, "sh", *argv],
                             input=input, capture_output=True, text=True, timeout=timeout)
        if check:
            assert res.returncode == 0, f"{argv}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        return res

    def path(self, inside):
        return self.root / inside.lstrip("/")

    def salt_call(self, *args, timeout=600):
        """(retcode, the JSON return or None, the process) of a masterless call."""
        res = self.run("/opt/salt/bin/salt-call", "--local", "--out=json",
                       "--retcode-passthrough", *args, check=False, timeout=timeout)
        try:
            return res.returncode, json.loads(res.stdout)["local"], res
        except ValueError:
            return res.returncode, None, res

    def write_pillar(self, pillar):
        """The formula's pillar file (0600: it holds secrets)."""
        path = self.path("/srv/pillar/postfix_relay.sls")
        path.write_text(yaml.safe_dump(pillar))
        path.chmod(0o600)


def build(root, suite, hostname, python="python3", packages=()):
    """debootstrap suite into root, then the pinned Salt in /opt/salt."""
    python_pkgs = [python, f"{python}-venv", f"{python}-dev"]
    res = subprocess.run(
        ["debootstrap", "--variant=minbase",
         f"--include={','.join(BASE_PACKAGES + python_pkgs + list(packages))}",
         suite, str(root), MIRROR], capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    chroot = Chroot(root, hostname)
    # This machine's CA bundle: PyPI may be reached through a TLS proxy it trusts.
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "tmp/host-ca.crt")
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    shutil.copy(REPO / "requirements.txt", root / "tmp/requirements.txt")
    chroot.run(python, "-m", "venv", "/opt/salt")
    chroot.run("/opt/salt/bin/pip", "install", "-q", "--disable-pip-version-check",
               "-c", "/tmp/requirements.txt", f"salt=={salt_version()}",
               env={"SSL_CERT_FILE": "/tmp/host-ca.crt"}, timeout=1200)
    with open(root / "etc/hosts", "a") as hosts:
        hosts.write(f"127.0.1.1 {hostname}.example.org {hostname}\n")
    install_formula(root)
    return chroot


def install_formula(root):
    """The formula as a file root inside the tree (copied: the machine's
    symlinks would not resolve there), and a masterless minion config."""
    for name in ("postfix_relay", "_modules", "_states", "_utils"):
        shutil.copytree(REPO / name, root / "srv/salt" / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (root / "srv/pillar").mkdir(parents=True)
    (root / "srv/pillar/top.sls").write_text("base:\n  '*':\n    - postfix_relay\n")
    (root / "etc/salt").mkdir(parents=True, exist_ok=True)
    (root / "etc/salt/minion").write_text(
        "file_client: local\nenable_fqdns_grains: false\n"
        "file_roots:\n  base:\n    - /srv/salt\npillar_roots:\n  base:\n    - /srv/pillar\n")
