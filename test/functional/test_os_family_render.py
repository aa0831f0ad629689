"""
What a user of each OS family gets: the formula's own values (the os_family
grain set, postfix_relay_settings.lookup and .packages through Salt's loaders,
as map.jinja and package.sls call them) against what that OS really calls its
packages and paths. On this Debian machine the Debian values are also checked
against the files and the defaults of the Postfix installed here.
"""

import os
import subprocess

import pytest

from helpers import NEEDS_SALT_3008_LOADERS, salt_major

pytestmark = pytest.mark.skipif(salt_major() < 3008, reason=NEEDS_SALT_3008_LOADERS)

# What each OS ships, from its own packaging: the Postfix package, the one
# holding the Cyrus SASL PLAIN/LOGIN client plugins, Postfix's config dir and
# the system CA bundle.
OS = {
    "Debian": ("postfix", "libsasl2-modules", "/etc/postfix",
               "/etc/ssl/certs/ca-certificates.crt"),
    "RedHat": ("postfix", "cyrus-sasl-plain", "/etc/postfix",
               "/etc/pki/tls/certs/ca-bundle.crt"),
    "Suse": ("postfix", "cyrus-sasl-plain", "/etc/postfix", "/etc/ssl/ca-bundle.pem"),
    "Alpine": ("postfix", "cyrus-sasl-login", "/etc/postfix",
               "/etc/ssl/certs/ca-certificates.crt"),
    "Arch": ("postfix", "libsasl", "/etc/postfix", "/etc/ssl/certs/ca-certificates.crt"),
    "FreeBSD": ("postfix-sasl", "cyrus-sasl", "/usr/local/etc/postfix",
                "/usr/local/share/certs/ca-root-nss.crt"),
}


@pytest.fixture
def family_render(loaders, monkeypatch):
    """lookup and the packages package.sls installs (its pkgs: are
    postfix_relay_settings.packages(lookup)) on a host of that os_family."""
    def render(family):
        monkeypatch.setitem(loaders.grains, "os_family", family)
        loaders.context.clear()  # lookup is cached per run
        module = loaders.modules.postfix_relay_settings
        lookup = module.lookup()
        return lookup, module.packages(lookup)
    return render


@pytest.mark.parametrize("family", sorted(OS))
def test_family_gets_its_own_packages_and_paths(family_render, family):
    postfix, sasl_plugins, config_dir, ca_bundle = OS[family]
    lookup, pkgs = family_render(family)
    assert postfix in pkgs and sasl_plugins in pkgs, pkgs
    assert lookup["config_dir"] == config_dir
    assert lookup["ca_bundle"] == ca_bundle


def postconf_default(name):
    return subprocess.run(["postconf", "-d", "-h", name], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_debian_values_match_the_postfix_installed_here(family_render):
    lookup, pkgs = family_render("Debian")
    for package in pkgs:
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                                capture_output=True, text=True).stdout
        assert status == "install ok installed", package
    assert lookup["config_dir"] == postconf_default("config_directory")
    assert lookup["smtp_chroot_dir"] == postconf_default("queue_directory")
    for path in (lookup["ca_bundle"], lookup["dist_main_cf"], lookup["prestart"][0]):
        assert os.path.isfile(path), path
    assert os.access(lookup["prestart"][0], os.X_OK)
