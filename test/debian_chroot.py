"""
Debian trees for tests: debootstrap from Debian's mirror, the pinned Salt in a
venv inside (pip from PyPI), the formula as a file root, and a way to run
commands in the tree as its own host (private mount and UTS namespaces with
/proc, /dev and /run of its own, chrooted; the network is the test host's,
downloads go out through the machine's).

debootstrap and pip run once per key (suite, architecture, packages, Salt pin,
preparation step): the pristine tree is kept in /var/cache/postfix_relay-tests
and each test session works on its own copy.
"""

import fcntl
import hashlib
import inspect
import json
import os
import pathlib
import shutil
import subprocess
import textwrap
import time

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ["postfix", "libsasl2-modules", "gcc", "libc6-dev", "ca-certificates",
                 "procps"]
DEFAULT_CACHE = "/var/cache/postfix_relay-tests"
TREE_FORMAT = 1  # bump when make_tree() changes what a tree holds
MAX_AGE_DAYS = 14


def with_network(argv):
    """argv run with this machine's network. Inside a test host (scripts/test-host)
    only a private loopback exists; downloads (debootstrap, pip, apt) go out
    through the machine's network namespace, which test-host hands on."""
    machine_net = os.environ.get("TEST_HOST_MACHINE_NET")
    return ["nsenter", f"--net={machine_net}", *argv] if machine_net else list(argv)


def salt_version():
    pins = (REPO / "requirements.txt").read_text().splitlines()
    return next(line.split("==")[1] for line in pins if line.startswith("salt=="))


def masterless_call(run, *args, timeout):
    """(retcode, the JSON return or None, the process) of the tree's salt-call
    --local, through run (a chroot's or a booted container's)."""
    res = run("/opt/salt/bin/salt-call", "--local", "--out=json", "--retcode-passthrough",
              *args, check=False, timeout=timeout)
    try:
        return res.returncode, json.loads(res.stdout)["local"], res
    except ValueError:
        return res.returncode, None, res


class Chroot:
    """A Debian tree run as its own host named hostname."""

    def __init__(self, root, hostname):
        self.root, self.hostname = root, hostname

    def run(self, *argv, input=None, check=True, timeout=600, env=None, network=False):
        """argv in the tree as its own host; with network, through this
        machine's network (downloads only: the tree's Postfix and relays live
        on the test host's loopback)."""
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
        unshare = ["unshare", "--mount", "--uts", "--propagation", "private",
                   "--fork", "sh", "-c", script, "sh", *argv]
        res = subprocess.run(with_network(unshare) if network else unshare,
                             input=input, capture_output=True, text=True, timeout=timeout)
        if check:
            assert res.returncode == 0, f"{argv}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        return res

    def path(self, inside):
        return self.root / inside.lstrip("/")

    def salt_call(self, *args, timeout=600):
        """(retcode, the JSON return or None, the process) of a masterless call."""
        return masterless_call(self.run, *args, timeout=timeout)

    def write_pillar(self, pillar):
        """The formula's pillar file (0600: it holds secrets)."""
        path = self.path("/srv/pillar/postfix_relay.sls")
        path.write_text(yaml.safe_dump(pillar))
        path.chmod(0o600)


def build(root, suite, hostname, python="python3", packages=(), prepare=None):
    """A fresh Debian tree at root for one test session: a copy of the cached
    pristine tree (debootstrap and Salt, built once per key), then this
    machine's resolver, the host name and the formula."""
    return session_copy(pristine(suite, python, packages, prepare), root, hostname)


def session_copy(tree, root, hostname):
    """A session's own copy of a cached pristine tree at root, with this
    machine's resolver, the host name and the formula."""
    # cp keeps device nodes, owners and hard links; --reflink shares blocks where it
    # can; one file system: never what a build left mounted in the tree (/proc)
    res = subprocess.run(["cp", "-a", "--one-file-system", "--reflink=auto", str(tree),
                          str(root)], capture_output=True, text=True)
    assert res.returncode == 0, f"copying {tree}: {res.stderr[-2000:]}"
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    with open(root / "etc/hosts", "a") as hosts:
        hosts.write(f"127.0.1.1 {hostname}.example.org {hostname}\n")
    install_formula(root)
    return Chroot(root, hostname)


def cache_dir():
    """Where pristine trees are kept, outside the checkout (set
    POSTFIX_RELAY_TEST_CACHE to move it; delete it to force a rebuild)."""
    return pathlib.Path(os.environ.get("POSTFIX_RELAY_TEST_CACHE", DEFAULT_CACHE))


def tree_key(suite, python, packages, prepare=None):
    """suite-arch-digest: the digest covers everything a tree is made from,
    so a changed package list, Salt pin or preparation step builds a new one."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                          text=True, check=True).stdout.strip()
    material = json.dumps({
        "format": TREE_FORMAT, "suite": suite, "arch": arch, "mirror": MIRROR,
        "python": python, "packages": sorted({*BASE_PACKAGES, *packages}),
        "requirements": hashlib.sha256((REPO / "requirements.txt").read_bytes()).hexdigest(),
        "prepare": inspect.getsource(prepare) if prepare else None,
    }, sort_keys=True)
    # The tree's kind (suite, arch, packages, preparation) names it apart from
    # its inputs' versions: prune() replaces only older trees of the same kind.
    kind = hashlib.sha256(json.dumps([python, sorted({*BASE_PACKAGES, *packages}),
                                      inspect.getsource(prepare) if prepare else None]
                                     ).encode()).hexdigest()[:8]
    return f"{suite}-{arch}-{kind}-{hashlib.sha256(material.encode()).hexdigest()[:16]}"


def pristine(suite, python="python3", packages=(), prepare=None, cache=None):
    """The cached tree for this key, built first if absent (one builder at a
    time per key; a half-built tree is never used), in cache (default:
    cache_dir())."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = tree_key(suite, python, packages, prepare)
    tree = cache / key
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tree.is_dir() or expired(tree):
            building = cache / f"{key}.building"
            shutil.rmtree(building, ignore_errors=True)
            make_tree(building, suite, python, packages, prepare)
            shutil.rmtree(tree, ignore_errors=True)
            building.rename(tree)
            prune(cache, key.rsplit("-", 1)[0], keep=key)
    return tree


def expired(tree):
    """A tree older than MAX_AGE_DAYS: Debian's mirror has moved on (unstable
    drops the package versions its package lists name)."""
    days = float(os.environ.get("POSTFIX_RELAY_TEST_CACHE_DAYS", MAX_AGE_DAYS))
    return time.time() - tree.stat().st_mtime > days * 86400


def prune(cache, kind, keep):
    """Trees of this kind (suite, arch, packages, preparation) made from older
    inputs: nothing will use them again. Trees of other kinds stay."""
    for old in cache.glob(f"{kind}-*"):
        if old.name != keep and old.is_dir() and not old.name.endswith(".building"):
            shutil.rmtree(old, ignore_errors=True)
            old.with_name(old.name + ".lock").unlink(missing_ok=True)


def make_tree(root, suite, python, packages, prepare):
    """debootstrap suite into root, then the pinned Salt in /opt/salt."""
    python_pkgs = [python, f"{python}-venv", f"{python}-dev"]
    res = subprocess.run(with_network(
        ["debootstrap", "--variant=minbase",
         f"--include={','.join(BASE_PACKAGES + python_pkgs + list(packages))}",
         suite, str(root), MIRROR]), capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    chroot = Chroot(root, suite)
    # This machine's CA bundle: PyPI may be reached through a TLS proxy it trusts.
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "tmp/host-ca.crt")
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    shutil.copy(REPO / "requirements.txt", root / "tmp/requirements.txt")
    chroot.run(python, "-m", "venv", "/opt/salt")
    chroot.run("/opt/salt/bin/pip", "install", "-q", "--disable-pip-version-check",
               "--no-cache-dir", "-c", "/tmp/requirements.txt", f"salt=={salt_version()}",
               env={name: "/tmp/host-ca.crt"  # pip 23 (bookworm) ignores SSL_CERT_FILE
                    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")},
               timeout=1200, network=True)
    for name in ("host-ca.crt", "requirements.txt"):
        (root / "tmp" / name).unlink()
    if prepare:
        prepare(chroot)
    os.utime(root)  # the tree's age, for expired(): nothing writes to its top after this


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
