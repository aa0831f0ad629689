"""
Debian trees for tests: mmdebstrap from Debian's mirror, the pinned Salt in a
venv inside (wheels from PyPI, built once per Python and kept), the formula as
a file root, and a way to run commands in the tree as its own host (private
mount and UTS namespaces with /proc, /dev and /run of its own, chrooted; the
network is the test host's, downloads go out through the machine's).

mmdebstrap and pip run once per key (suite, architecture, packages, Salt pin,
preparation step): the pristine tree is kept in /var/cache/postfix_relay-tests
and each test session works on an overlay of it (its writes kept apart).
"""

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import pathlib
import shutil
import subprocess
import textwrap
import threading
import time

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ["postfix", "libsasl2-modules", "gcc", "libc6-dev", "ca-certificates",
                 "procps"]
DEFAULT_CACHE = "/var/cache/postfix_relay-tests"
TREE_FORMAT = 3  # bump when make_tree() changes what a tree holds
MAX_AGE_DAYS = 14


def with_network(argv):
    """argv run with this machine's network. Inside a test host (scripts/test-host)
    only a private loopback exists; downloads (mmdebstrap, pip, apt) go out
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

    def close(self):
        """A session's tree (session_copy()) gone; the cached tree stays."""
        release(self.root)

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
    """A fresh Debian tree at root for one test session: an overlay on the
    cached pristine tree (mmdebstrap and Salt, built once per key), then this
    machine's resolver, the host name and the formula. chroot.close() ends it."""
    return session_copy(pristine(suite, python, packages, prepare), root, hostname)


def session_copy(tree, root, hostname):
    """A session's own tree at root: an overlay whose lower layer is the cached
    tree and whose writes land beside root (root.layers), with this machine's
    resolver, the host name and the formula. Instant, where a copy took 10-40 s
    per gigabyte; the cached tree stays as it was (close() checks it)."""
    layers = root.with_name(root.name + ".layers")
    for path in (root, layers / "upper", layers / "work"):
        path.mkdir(parents=True)
    # Held while the session runs: pristine() and prune() never replace or
    # remove a tree that a session has as its lower layer.
    use = os.open(tree.with_name(tree.name + ".use"), os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(use, fcntl.LOCK_SH)
    # A rebuild that began after pristine() returned (it saw the tree unused)
    # holds the key's lock until the new tree is in place: mount that one.
    with open(tree.with_name(tree.name + ".lock"), "a") as key_lock:
        fcntl.flock(key_lock, fcntl.LOCK_SH)
    (layers / "lower").write_text(f"{tree}\n{fingerprint(tree)}\n")
    res = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                          f"lowerdir={tree},upperdir={layers / 'upper'},workdir={layers / 'work'}",
                          str(root)], capture_output=True, text=True)
    assert res.returncode == 0, f"overlay on {tree}: {res.stderr}"
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    with open(root / "etc/hosts", "a") as hosts:
        hosts.write(f"127.0.1.1 {hostname}.example.org {hostname}\n")
    install_formula(root)
    IN_USE[root] = use
    return Chroot(root, hostname)


# The lock on each session's lower tree (its .use file), by the session's root.
IN_USE = {}


def release(root):
    """The session's overlay at root unmounted and its writes removed; fails
    if the cached tree under it changed meanwhile (a session's writes must
    land in its upper layer only)."""
    layers = root.with_name(root.name + ".layers")
    if not layers.is_dir():
        return  # released already
    res = subprocess.run(["umount", str(root)], capture_output=True, text=True)
    if res.returncode != 0:  # busy: a process of the session still runs in it
        res = subprocess.run(["umount", "--lazy", str(root)], capture_output=True, text=True)
    assert res.returncode == 0, f"umount {root}: {res.stderr}"
    tree, before = (layers / "lower").read_text().split()
    shutil.rmtree(layers)
    root.rmdir()
    use = IN_USE.pop(root, None)
    if use is not None:
        os.close(use)
    assert fingerprint(pathlib.Path(tree)) == before, f"the cached tree {tree} was changed"


def fingerprint(tree):
    """A digest of every path in tree with its mtime, ctime (mode, owner,
    links) and size: any write into the tree changes it."""
    digest = hashlib.sha256()
    for top, dirs, files in os.walk(tree):
        dirs.sort()
        for name in sorted(dirs + files):
            st = os.lstat(os.path.join(top, name))
            digest.update(f"{top}/{name} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_size}\n"
                          .encode(errors="surrogateescape"))
    return digest.hexdigest()


def in_use(tree):
    """A session has tree as its overlay's lower layer."""
    with open(tree.with_name(tree.name + ".use"), "a") as use:
        try:
            fcntl.flock(use, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


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
    # The tree's kind (suite, arch, packages, which preparation) names it apart
    # from its inputs' versions, the preparation's code included: prune()
    # replaces the older trees of the same kind.
    kind = hashlib.sha256(json.dumps([python, sorted({*BASE_PACKAGES, *packages}),
                                      prepare.__name__ if prepare else None]
                                     ).encode()).hexdigest()[:8]
    return f"{suite}-{arch}-{kind}-{hashlib.sha256(material.encode()).hexdigest()[:16]}"


def pristine(suite, python="python3", packages=(), prepare=None, cache=None):
    """The cached tree for this key, built first if absent (one builder at a
    time per key; a half-built tree is never used), in cache (default:
    cache_dir())."""
    key = tree_key(suite, python, packages, prepare)
    return cached(key, key.rsplit("-", 1)[0],
                  lambda root: make_tree(root, suite, python, packages, prepare), cache)


def cached(key, kind, make, cache=None):
    """The tree named key in cache (default: cache_dir()), made by make(root)
    first if absent, or expired and no session runs on it; one builder at a
    time per key, a half-built tree never used, then older trees of its kind
    pruned."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tree = cache / key
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # an expired tree that a session runs on is used once more, not removed under it
        if not tree.is_dir() or (expired(tree) and not in_use(tree)):
            building = cache / f"{key}.building"
            shutil.rmtree(building, ignore_errors=True)
            make(building)
            shutil.rmtree(tree, ignore_errors=True)
            building.rename(tree)
            prune(cache, kind, keep=key)
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
        # not a tree being built (.building) or its wheels (.building-wheels)
        if (old.name != keep and old.is_dir() and ".building" not in old.name
                and not in_use(old)):
            shutil.rmtree(old, ignore_errors=True)
            for lock in (".lock", ".use"):
                old.with_name(old.name + lock).unlink(missing_ok=True)


def make_tree(root, suite, python, packages, prepare):
    """mmdebstrap suite into root, then the pinned Salt in /opt/salt."""
    bootstrap(root, suite, BASE_PACKAGES + [python, f"{python}-venv", f"{python}-dev"]
              + list(packages))
    chroot = Chroot(root, suite)
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    chroot.run(python, "-m", "venv", "/opt/salt")
    install_salt(chroot)
    drop_archives(root)
    if prepare:
        prepare(chroot)  # what it downloads stays: the tests install it offline
    os.utime(root)  # the tree's age, for expired(): nothing writes to its top after this


def drop_archives(root):
    """apt's downloaded packages: installed already, no test reads them (the
    packages a test installs offline are fetched after, by prepare)."""
    for deb in root.glob("var/cache/apt/archives/*.deb"):
        deb.unlink()


# mmdebstrap's own hook: /bin, /sbin and /lib as symlinks into /usr, as
# debootstrap makes them (without it bookworm gets usrmerge and Perl).
MERGED_USR = "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"


def bootstrap(root, suite, packages, arch=None, hooks=()):
    """mmdebstrap suite into root: --variant=minbase and packages, as
    debootstrap made them (same packages, merged /usr, apt's package lists
    kept, every package marked manually installed). apt downloads in parallel
    and dpkg installs in a few runs: half debootstrap's CPU time for an amd64
    tree. arch: a foreign architecture (run through binfmt_misc)."""
    argv = ["mmdebstrap", "--mode=root", "--variant=minbase", f"--include={','.join(packages)}",
            # kept as debootstrap leaves them: apt's lists, systemd's machine-id
            # (emptied, a booted tree would count as a first boot), dpkg's log
            "--skip=cleanup/apt/lists", "--skip=cleanup/reproducible", MERGED_USR, *hooks,
            # as debootstrap: a mirror's Release past its Valid-Until (unstable's,
            # on a mirror snapshot) is used; the option is for this run only
            '--aptopt=Acquire::Check-Valid-Until "false"',
            '--customize-hook=rm -f "$1/etc/apt/apt.conf.d/99mmdebstrap"'
            ' "$1/var/lib/apt/extended_states"']
    if arch:
        # binfmt_misc is checked by the suite (arm64_tree.binfmt_problem), not arch-test
        argv += [f"--architectures={arch}", "--skip=check/qemu"]
    res = subprocess.run(with_network([*argv, suite, str(root), MIRROR]), capture_output=True,
                         text=True, timeout=1800)
    assert res.returncode == 0, f"mmdebstrap {suite}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"


def install_salt(chroot):
    """The pinned Salt in the tree's /opt/salt, installed offline from wheels:
    those earlier trees kept (wheelhouse()), and what this tree's Python still
    lacks built by its pip, once, and kept for the next tree (timelib's C build
    and Salt's sdist were most of a tree's pip time)."""
    have = chroot.path("/tmp/wheels/have")
    chroot.path("/tmp/wheels/new").mkdir(parents=True)
    shutil.copy(REPO / "requirements.txt", chroot.path("/tmp/wheels/requirements.txt"))
    pins = ["-c", "/tmp/wheels/requirements.txt", f"salt=={salt_version()}"]
    offline = [*TREE_PIP, "install", "--no-index", "--find-links", "/tmp/wheels/have",
               "--find-links", "/tmp/wheels/new", *pins]
    copy_wheels(have)
    if chroot.run(*offline, check=False, timeout=1200).returncode != 0:
        # one tree per Python version builds what is missing, the others wait for it
        tag = chroot.run("/opt/salt/bin/python3", "-c",
                         "import sys; print(sys.implementation.cache_tag)").stdout.strip()
        house = wheelhouse()
        with locked(house.with_name(f"{house.name}-{tag}.lock")):
            shutil.rmtree(have)
            copy_wheels(have)  # with what another tree kept meanwhile
            if chroot.run(*offline, "--dry-run", check=False, timeout=1200).returncode != 0:
                build_wheels(chroot, pins)
        chroot.run(*offline, timeout=1200)  # outside the lock: trees install at once
    shutil.rmtree(chroot.path("/tmp/wheels"))


TREE_PIP = ["/opt/salt/bin/pip", "--disable-pip-version-check", "-q"]


def build_wheels(chroot, pins):
    """The wheels the tree's Python lacks, by its pip (from PyPI, with the
    ones in /tmp/wheels/have), into /tmp/wheels/new and wheelhouse()."""
    # This machine's CA bundle: PyPI may be reached through a TLS proxy it trusts.
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", chroot.path("/tmp/host-ca.crt"))
    chroot.run(*TREE_PIP, "wheel", "--no-cache-dir", "--find-links", "/tmp/wheels/have",
               "-w", "/tmp/wheels/new", *pins, timeout=1200, network=True,
               env={name: "/tmp/host-ca.crt"  # pip 23 (bookworm) ignores SSL_CERT_FILE
                    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")})
    chroot.path("/tmp/host-ca.crt").unlink()
    keep_wheels(chroot.path("/tmp/wheels/new").glob("*.whl"))


def wheelhouse():
    """Wheels of the pinned Salt and its dependencies, for every tree's
    Python and architecture (pip takes those that fit), kept beside the
    trees; one per requirements.txt. Those of other requirements (another
    branch or checkout may use them now) go once as old as an expired tree;
    their lock files stay."""
    digest = hashlib.sha256((REPO / "requirements.txt").read_bytes()).hexdigest()[:12]
    house = cache_dir() / f"wheels-{digest}"
    if not house.is_dir():
        house.mkdir(parents=True, exist_ok=True)
        for old in cache_dir().glob("wheels-*"):
            if old.is_dir() and old != house and expired(old):
                shutil.rmtree(old, ignore_errors=True)
    os.utime(house)  # in use: young
    return house


def keep_wheels(wheels):
    """Each wheel into wheelhouse() under its own name, whole or not at all
    (other trees read it meanwhile)."""
    house = wheelhouse()
    for wheel in wheels:
        if not (house / wheel.name).exists():
            part = house / f".{wheel.name}.{os.getpid()}-{threading.get_ident()}"
            shutil.copy(wheel, part)
            part.rename(house / wheel.name)


def copy_wheels(to):
    """wheelhouse()'s wheels into the directory to (not those being written)."""
    shutil.copytree(wheelhouse(), to, ignore=shutil.ignore_patterns(".*"))


@contextlib.contextmanager
def locked(path):
    """An exclusive lock on path (created), held for the with block."""
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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
