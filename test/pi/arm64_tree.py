"""
An arm64 Debian tree (a Raspberry Pi stand-in) on this amd64 machine: mmdebstrap
--architectures=arm64, run through qemu-user-static's binfmt_misc handler, the
pinned Salt in /opt/salt, the formula as a file root. Built on test/debian_chroot.py without
changing it; what it lacks for this (an architecture in build/tree_key/make_tree)
lives here. Downloads go through debian_chroot.with_network.

The pristine tree (its packages and Salt's venv, slow under emulation) is kept
in the same cache as the other trees, under its own name, so that
debian_chroot.prune() of a bookworm amd64 tree never takes it.
"""

import concurrent.futures
import hashlib
import inspect
import json
import os
import pathlib
import shutil
import subprocess

import debian_chroot
from debian_chroot import (BASE_PACKAGES, MIRROR, REPO, Chroot, salt_version, with_network)

ARCH = "arm64"
TREE_FORMAT = 2  # bump when make_tree() changes what a tree holds
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
    """debian_chroot.build() for arm64: an overlay on the cached pristine tree,
    the machine's resolver, the host name, the formula (chroot.close() ends it)."""
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
                             (make_tree, update_ca_certificates, install_salt, fetch_wheels,
                              arm64_sysroot, cross_wheel, debian_chroot.bootstrap))
        + STUB_CA_UPDATE,
        "packages_here": PACKAGES,
    }, sort_keys=True)
    return f"pi-{suite}-{ARCH}-{hashlib.sha256(material.encode()).hexdigest()[:16]}"


def pristine(suite, python="python3", packages=()):
    """The cached arm64 tree for this key, built first if absent or expired
    (one builder at a time; a half-built tree is never used)."""
    return debian_chroot.cached(tree_key(suite, python, packages), f"pi-{suite}-{ARCH}",
                                lambda root: make_tree(root, suite, python, packages))


# A Pi owner's tree needs no compiler here, nor Python's headers: the one C
# extension Salt needs (timelib) is cross-compiled on this machine (below),
# which also spares unpacking gcc and libc's headers under emulation.
PACKAGES = [name for name in BASE_PACKAGES if name not in ("gcc", "libc6-dev")]


def make_tree(root, suite, python, packages):
    """mmdebstrap --architectures=arm64 (dpkg and the maintainer scripts run
    under qemu) while this machine fetches Salt's wheels, then what is slow
    under emulation done natively: update-ca-certificates and Salt's venv."""
    wheels = root.with_name(root.name + "-wheels")  # mmdebstrap wants an empty target
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fetched = pool.submit(fetch_wheels, wheels, suite, python)
        debian_chroot.bootstrap(root, suite, [*PACKAGES, python, f"{python}-venv", *packages],
                                arch=ARCH, hooks=[STUB_CA_UPDATE])
        fetched.result()
    update_ca_certificates(root)
    install_salt(root, python, wheels)
    shutil.rmtree(wheels)
    os.utime(root)  # the tree's age, for expired()


# ca-certificates' postinst and trigger run update-ca-certificates, a shell
# script starting a few processes per certificate: under qemu, about a third
# of the tree's build. A stub stands in for it (a local diversion keeps the
# package's copy aside) until update_ca_certificates() runs it natively.
UPDATE_CA = "/usr/sbin/update-ca-certificates"
STUB_CA_UPDATE = (
    f'--essential-hook=chroot "$1" dpkg-divert --quiet --local --rename --add {UPDATE_CA}'
    f' && printf "#!/bin/sh\\nexit 0\\n" > "$1{UPDATE_CA}" && chmod 755 "$1{UPDATE_CA}"')


def update_ca_certificates(root):
    """The tree's update-ca-certificates (its own script, the package's copy
    back in place) run by this machine's shell and openssl on the tree's
    files, bind-mounted where the script reads and writes them: what the
    postinst and its trigger would have left (hooks: the tree's, none)."""
    (root / UPDATE_CA.lstrip("/")).unlink()
    Chroot(root, "pi").run("dpkg-divert", "--quiet", "--local", "--rename", "--remove", UPDATE_CA)
    binds = "".join(f"mount --bind {root}{path} {path}\n" for path in (
        "/etc/ca-certificates.conf", "/etc/ca-certificates", "/etc/ssl/certs",
        "/usr/share/ca-certificates", "/usr/local/share/ca-certificates"))
    run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"set -e\n{binds}exec sh {root}{UPDATE_CA}"])


def install_salt(root, python, wheels):
    """/opt/salt made by this machine's python3 (Debian 12's, the tree's
    version: the same venv and .pyc files) with the tree's /opt bind-mounted
    on /opt, so that paths and script lines are the tree's; pip takes the
    arm64 wheels (_PYTHON_HOST_PLATFORM: the platform it installs for).
    Under qemu, venv and pip took about a minute."""
    version = os.readlink(root / "usr/bin" / python)
    assert os.readlink(f"/usr/bin/{python}") == version, (
        f"this machine's /usr/bin/{python} is not the tree's {version}")
    shutil.copy(REPO / "requirements.txt", wheels / "requirements.txt")
    script = (f"set -e\nmount --bind {root}/opt /opt\n/usr/bin/{python} -m venv /opt/salt\n"
              "exec /opt/salt/bin/pip install -q --disable-pip-version-check --no-cache-dir "
              f"--no-index --find-links {wheels} -c {wheels}/requirements.txt "
              f"salt=={salt_version()}")
    env = {"PATH": os.environ["PATH"], "HOME": "/root", "LANG": "C.UTF-8",
           "PIP_CONFIG_FILE": os.devnull, "_PYTHON_HOST_PLATFORM": "linux-aarch64"}
    run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=env)


def pip(*args, timeout=900):
    """The machine's pip (the repository's venv), with its network."""
    res = subprocess.run(with_network([str(REPO / ".venv/bin/pip"), *args]),
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"pip {args[:3]}: {res.stderr[-3000:]}"
    return res


def fetch_wheels(wheels, suite, python):
    """Every distribution pinned Salt needs, as arm64/pure wheels in wheels,
    all made here, natively, while the tree is made: this machine's wheels
    first (resolved, downloaded and built by its pip for its Python, 3.11 as
    the tree's: they go to the amd64 trees' wheelhouse too), then the arm64
    ones of those that are not pure: from PyPI, or cross-compiled from the
    sdist when this machine's came from one (tagged linux_x86_64)."""
    native = wheels / "native"
    pip("wheel", "-q", "-w", str(native), "-c", str(REPO / "requirements.txt"),
        f"salt=={salt_version()}")
    debian_chroot.keep_wheels(native.glob("*.whl"))
    binary = []
    for wheel in native.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        if wheel.name.endswith("-none-any.whl"):
            wheel.rename(wheels / wheel.name)
        elif wheel.name.endswith("-linux_x86_64.whl"):  # built here from its sdist
            cross_wheel(f"{name}=={version}", wheels, arm64_sysroot(wheels / "sysroot", suite,
                                                                   python))
        else:
            binary.append(f"{name}=={version}")
    pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
        "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
        *[arg for tag in ARM64_TAGS for arg in ("--platform", tag)], "-d", str(wheels), *binary)
    shutil.rmtree(native)
    shutil.rmtree(wheels / "sysroot", ignore_errors=True)


def arm64_sysroot(root, suite, python):
    """What a C extension's arm64 build needs from the tree (libc's
    development files, the Python headers and sysconfig), unpacked in root
    from the tree's mirror by this machine's apt, before the tree is there."""
    if root.is_dir():
        return root
    state = root.with_name("apt")
    for path in ("lists/partial", "cache", "debs"):
        (state / path).mkdir(parents=True)
    (state / "status").touch()
    (state / "sources.list").write_text(f"deb {MIRROR} {suite} main\n")
    options = {"Dir::State::Lists": state / "lists", "Dir::Cache": state / "cache",
               "Dir::State::status": state / "status",
               "Dir::Etc::SourceList": state / "sources.list",
               "Dir::Etc::SourceParts": "/nonexistent", "APT::Architecture": ARCH,
               "APT::Architectures": ARCH, "APT::Sandbox::User": "root"}
    apt = ["apt-get", "-q", *[arg for name, value in options.items()
                              for arg in ("-o", f"{name}={value}")]]
    run(with_network([*apt, "update"]))
    version = os.readlink(f"/usr/bin/{python}")  # the tree's: install_salt() checks
    run(with_network([*apt, "download", "libc6-dev", "libc6", "linux-libc-dev", "libcrypt-dev",
                      "libcrypt1", f"lib{version}-dev", f"lib{version}-minimal"]),
        cwd=state / "debs")
    for deb in (state / "debs").iterdir():
        run(["dpkg-deb", "--extract", str(deb), str(root)])
    shutil.rmtree(state)
    return root


def cross_wheel(pin, wheels, sysroot):
    """pin's arm64 wheel, compiled here by aarch64-linux-gnu-gcc: its
    setup.py run by this machine's python3 (3.11, as the tree's) reading the
    arm64 sysconfig (compiler, flags, extension suffix, platform tag) and
    pyconfig.h in sysroot. Minutes faster than gcc under emulation."""
    work = wheels / "cross"
    # --no-binary for it alone: its build requirements (Cython) come as
    # wheels, not built from source (minutes) on a machine without pip's cache
    pip("download", "-q", "--no-deps", f"--no-binary={pin.split('==')[0]}", "-d", str(work), pin)
    shutil.unpack_archive(next(work.iterdir()), work)
    source = next(path for path in work.iterdir() if path.is_dir())
    subprocess.run(["python3", "-m", "venv", str(work / "venv")], check=True)
    # its build requirements (setuptools, Cython, wheel) run here: native ones
    run(with_network([str(work / "venv/bin/pip"), "install", "-q", "--disable-pip-version-check",
                      "setuptools", "Cython", "wheel"]))
    data = "_sysconfigdata__aarch64-linux-gnu"
    version = subprocess.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    shutil.copy(sysroot / f"usr/lib/python{version}/{data}.py", work)
    env = {**os.environ, "_PYTHON_SYSCONFIGDATA_NAME": data, "PYTHONPATH": str(work),
           "_PYTHON_HOST_PLATFORM": "linux-aarch64",
           # the system root: arm64 libc and Python headers, crt files, libc
           # to link with (CFLAGS go to the link too)
           "CFLAGS": f"--sysroot={sysroot} -I{sysroot}/usr/include/python{version}"}
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
