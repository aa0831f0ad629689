"""
An arm64 Debian tree (a Raspberry Pi stand-in) on this amd64 machine: debootstrap
--arch=arm64, run through qemu-user-static's binfmt_misc handler, the pinned Salt
in /opt/salt, the formula as a file root. Built on test/debian_chroot.py without
changing it; what it lacks for this (an architecture in build/tree_key/make_tree)
lives here. Downloads go through debian_chroot.with_network.

The pristine tree (debootstrap and Salt's venv, both slow under emulation) is kept
in the same cache as the other trees, under its own name, so that
debian_chroot.prune() of a bookworm amd64 tree never takes it.
"""

import fcntl
import hashlib
import inspect
import json
import os
import pathlib
import shutil
import subprocess

import debian_chroot
from debian_chroot import (BASE_PACKAGES, MIRROR, REPO, Chroot, cache_dir, expired,
                           salt_version, with_network)

ARCH = "arm64"
TREE_FORMAT = 1  # bump when make_tree() changes what a tree holds
BINFMT = pathlib.Path("/proc/sys/fs/binfmt_misc")
# The e_machine of an aarch64 ELF file (EM_AARCH64), at byte 18, little-endian.
EM_AARCH64 = 183


def binfmt_problem():
    """None when this machine runs arm64 binaries through qemu, else what to do.
    The handler is the kernel's (global); a test host mounts its own /proc, so
    binfmt_misc is mounted here (in this mount namespace) to read it."""
    if not (BINFMT / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
                       capture_output=True)
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        return ("no binfmt_misc handler for arm64: apt-get install qemu-user-static "
                "binfmt-support, mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc, "
                "update-binfmts --enable qemu-aarch64")
    lines = entry.read_text().splitlines()
    if lines[0] != "enabled":
        return "binfmt handler qemu-aarch64 is disabled: update-binfmts --enable qemu-aarch64"
    # F: the interpreter is opened at registration, so it works inside a chroot
    # that has no qemu binary of its own.
    flags = next((line.split()[1] for line in lines if line.startswith("flags:")), "")
    if "F" not in flags:
        return (f"binfmt handler qemu-aarch64 lacks the F flag ({flags!r}): "
                "use Debian's qemu-user-static")
    return None


def build(root, suite, hostname, python="python3", packages=()):
    """debian_chroot.build() for arm64: a copy of the cached pristine tree, the
    machine's resolver, the host name, the formula."""
    return debian_chroot.session_copy(pristine(suite, python, packages), root, hostname)


def tree_key(suite, python, packages):
    """pi-suite-arm64-digest: debian_chroot.tree_key() with the target
    architecture (not the machine's) and this module's build steps."""
    material = json.dumps({
        "format": TREE_FORMAT, "base_format": debian_chroot.TREE_FORMAT, "suite": suite,
        "arch": ARCH, "mirror": MIRROR, "python": python,
        "packages": sorted({*BASE_PACKAGES, *packages}),
        "requirements": hashlib.sha256((REPO / "requirements.txt").read_bytes()).hexdigest(),
        "make_tree": "".join(inspect.getsource(step) for step in
                             (make_tree, install_salt, fetch_wheels, cross_wheel)),
        "packages_here": PACKAGES,
    }, sort_keys=True)
    return f"pi-{suite}-{ARCH}-{hashlib.sha256(material.encode()).hexdigest()[:16]}"


def pristine(suite, python="python3", packages=()):
    """The cached arm64 tree for this key, built first if absent or expired
    (one builder at a time; a half-built tree is never used)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = tree_key(suite, python, packages)
    tree = cache / key
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tree.is_dir() or expired(tree):
            building = cache / f"{key}.building"
            shutil.rmtree(building, ignore_errors=True)
            make_tree(building, suite, python, packages)
            shutil.rmtree(tree, ignore_errors=True)
            building.rename(tree)
            prune(cache, suite, keep=key)
    return tree


def prune(cache, suite, keep):
    """arm64 trees of this suite made from older inputs."""
    for old in cache.glob(f"pi-{suite}-{ARCH}-*"):
        if old.name != keep and old.is_dir() and not old.name.endswith(".building"):
            shutil.rmtree(old, ignore_errors=True)
            old.with_name(old.name + ".lock").unlink(missing_ok=True)


# A Pi owner's tree needs no compiler here: the one C extension Salt needs
# (timelib) is cross-compiled on this machine (below), which also spares
# unpacking gcc under emulation (about half of debootstrap's time).
PACKAGES = [name for name in BASE_PACKAGES if name not in ("gcc", "libc6-dev")]


def make_tree(root, suite, python, packages):
    """debootstrap --arch=arm64 (its second stage runs under qemu), then Salt.
    lib<python>-dev: the arm64 pyconfig.h the cross-compiled extension needs."""
    python_pkgs = [python, f"{python}-venv", f"lib{python}-dev"]
    res = subprocess.run(with_network(
        ["debootstrap", f"--arch={ARCH}", "--variant=minbase",
         f"--include={','.join(PACKAGES + python_pkgs + list(packages))}",
         suite, str(root), MIRROR]), capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    install_salt(Chroot(root, suite), python)
    os.utime(root)  # the tree's age, for expired()


def install_salt(chroot, python):
    """The pinned Salt in /opt/salt. Under emulation pip is slow at everything
    (resolving, building, compiling .pyc), so the machine does those natively:
    wheels for arm64 fetched here, pure sdists (salt) built here, C sdists
    (timelib) cross-compiled here, .pyc compiled here; the tree's pip only
    unpacks wheels."""
    wheels = chroot.path("/tmp/wheels")
    wheels.mkdir()
    fetch_wheels(wheels, chroot.root)
    shutil.copy(REPO / "requirements.txt", wheels / "requirements.txt")
    chroot.run(python, "-m", "venv", "/opt/salt")
    chroot.run("/opt/salt/bin/pip", "install", "-q", "--disable-pip-version-check",
               "--no-index", "--find-links", "/tmp/wheels", "--no-compile",
               "-c", "/tmp/wheels/requirements.txt", f"salt=={salt_version()}", timeout=3600)
    shutil.rmtree(wheels)
    # The machine's python3 is Debian 12's 3.11 too: the same .pyc format.
    site = chroot.path("/opt/salt/lib")
    subprocess.run(["python3", "-m", "compileall", "-q", "-j0", "-s", str(chroot.root),
                    "-p", "/", str(site)], check=True, capture_output=True)


def pip(*args, timeout=900):
    """The machine's pip (the repository's venv), with its network."""
    res = subprocess.run(with_network([str(REPO / ".venv/bin/pip"), *args]),
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"pip {args[:3]}: {res.stderr[-3000:]}"
    return res


def fetch_wheels(wheels, tree):
    """Every distribution pinned Salt needs, as arm64/pure wheels in wheels
    (resolved here, natively): pure sdists built here, C sdists cross-compiled
    against tree's Python."""
    report = wheels / "report.json"
    pip("install", "-q", "--dry-run", "--ignore-installed", "--report", str(report),
        "-c", str(REPO / "requirements.txt"), f"salt=={salt_version()}")
    items = json.loads(report.read_text())["install"]
    report.unlink()
    binary, sdists = [], []
    for item in items:
        pin = f"{item['metadata']['name']}=={item['metadata']['version']}"
        (binary if item["download_info"]["url"].endswith(".whl") else sdists).append(pin)
    for pin in sdists:
        pip("wheel", "-q", "--no-deps", "-w", str(wheels), pin)
        name = pin.split("==")[0].replace("-", "_").lower() + "-"
        for built in wheels.glob("*.whl"):
            if built.name.lower().startswith(name) and not built.name.endswith("-none-any.whl"):
                built.unlink()  # a C extension built for this machine
                cross_wheel(pin, wheels, tree)
    pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
        "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
        *[arg for tag in ARM64_TAGS for arg in ("--platform", tag)], "-d", str(wheels), *binary)


def cross_wheel(pin, wheels, tree):
    """pin's arm64 wheel, compiled here by aarch64-linux-gnu-gcc: its setup.py
    run by this machine's python3 (3.11, as the tree's) reading the tree's
    sysconfig (compiler, flags, extension suffix, platform tag) and its
    pyconfig.h. Minutes faster than gcc under emulation."""
    work = wheels / "cross"
    pip("download", "-q", "--no-deps", "--no-binary=:all:", "-d", str(work), pin)
    shutil.unpack_archive(next(work.glob("*.tar.gz")), work)
    source = next(path for path in work.iterdir() if path.is_dir())
    subprocess.run(["python3", "-m", "venv", str(work / "venv")], check=True)
    # its build requirements (setuptools, Cython, wheel) run here: native ones
    run(with_network([str(work / "venv/bin/pip"), "install", "-q", "--disable-pip-version-check",
                      "setuptools", "Cython", "wheel"]))
    data = "_sysconfigdata__aarch64-linux-gnu"
    version = subprocess.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    shutil.copy(tree / f"usr/lib/python{version}/{data}.py", work)
    env = {**os.environ, "_PYTHON_SYSCONFIGDATA_NAME": data, "PYTHONPATH": str(work),
           "_PYTHON_HOST_PLATFORM": "linux-aarch64",
           # the tree as the system root (its arm64 libc and Python headers,
           # crt files); CFLAGS go to the link too
           "CFLAGS": f"--sysroot={tree} -I{tree}/usr/include/python{version}"}
    run([str(work / "venv/bin/python"), "setup.py", "-q", "bdist_wheel", "-d", str(wheels)],
        cwd=source, env=env)
    shutil.rmtree(work)


def run(argv, **kwargs):
    res = subprocess.run(argv, capture_output=True, text=True, timeout=900, **kwargs)
    assert res.returncode == 0, f"{argv[:3]}: {res.stdout[-2000:]}{res.stderr[-3000:]}"
    return res


# manylinux tags Debian 12's glibc (2.36) and arm64 accept: pip matches them one by one.
ARM64_TAGS = ["linux_aarch64", "manylinux2014_aarch64"] + [
    f"manylinux_2_{minor}_aarch64" for minor in range(17, 37)]
