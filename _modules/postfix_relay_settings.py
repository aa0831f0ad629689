"""
Pillar validation and normalisation for the ``postfix_relay`` formula.

Everything the formula writes is decided here, in Python, before any state
runs: the SLS files call :py:func:`get` while they render, so a bad pillar
fails the run with one message naming the key, and nothing on the host has
changed yet. The templates only print what this module returns.

CLI Example:

.. code-block:: bash

    salt-call postfix_relay_settings.get
"""

import copy
import hashlib
import ipaddress
import json
import os
import re
import shutil
import tempfile
import unicodedata

from salt.exceptions import SaltInvocationError

__virtualname__ = "postfix_relay_settings"

PILLAR_ROOT = "postfix_relay"
TLS_LEVELS = ("none", "may", "encrypt", "dane", "dane-only", "fingerprint", "verify", "secure")
# Levels at which Postfix never talks to the relay without TLS (dane is not
# one: without DNSSEC-validated TLSA records it is may).
SASL_TLS = ("encrypt", "dane-only", "fingerprint", "verify", "secure")
# smtp_tls_fingerprint_digest values and their digest sizes
DIGEST_BYTES = {"md5": 16, "sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48,
                "sha512": 64}
RECIPIENT_MODES = ("all", "local")
SENDER_MODES = ("all", "local")
VERIFYING_LEVELS = ("verify", "secure")  # levels that check the CA (smtp_tls_CAfile)
DANE_LEVELS = ("dane", "dane-only")
LISTEN_MODES = ("loopback", "none")
KNOWN_KEYS = {
    "domain", "hostname", "sender", "recipient", "recipient_mode", "reply_to",
    "listen", "relay", "main_cf", "log_file", "password_map",
    "fallback_relays", "sender_relays", "sender_mode", "queue_lifetime",
    "beacon", "metrics_textfile",
}
KNOWN_BEACON_KEYS = {"interval", "deferred_max", "age_max"}
# What several relays are made of in main.cf: a main_cf override would undo
# them (a replaced TLS policy table sends a fallback's password unchecked).
RELAY_PARAMS = ("relayhost", "smtp_fallback_relay", "sender_dependent_relayhost_maps",
                "smtp_sender_dependent_authentication", "smtp_tls_policy_maps",
                "smtp_sasl_password_maps", "smtp_tls_wrappermode",
                "smtp_sasl_mechanism_filter")
KNOWN_RELAY_KEYS = {
    "host", "port", "mx", "username", "password", "tls", "ca_file", "mechanisms", "oauth2",
    "fingerprints",
}
KNOWN_OAUTH2_KEYS = {"token_endpoint", "client_id", "client_secret", "refresh_token", "ca_file",
                     "keepalive_days"}
# Table types that store "key value" lines as postmap builds them (pattern
# tables such as regexp or pcre, and proxy:/static: lookups, cannot).
PASSWORD_TABLE_TYPES = ("hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash")
XOAUTH2_DIR = "/etc/sasl-xoauth2"  # as Postfix's smtp process sees it (in its chroot)
XOAUTH2_CA = f"{XOAUTH2_DIR}/ca.pem"
XOAUTH2_CONF = "/etc/sasl-xoauth2.conf"  # read by the plugin when it loads
# Parameters whose override from `main_cf` would leak the password or send it
# in clear; refused instead of silently weakening the setup.
FORBIDDEN_EXTRA = {
    "debug_peer_list": "it logs the SASL password in clear",
    "debug_peer_level": "it only serves debug_peer_list, which logs the SASL password",
}

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
# RFC 5322 atext without `$` (Postfix macro expansion) and `{}` (Postfix list
# grouping): safe to print inside a main.cf value or a table.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#%&'*+/=?^_`|~-]+(\.[A-Za-z0-9!#%&'*+/=?^_`|~-]+)*$")
_PARAM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # smtp_tls_CAfile has capitals
_MECHANISM = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FINGERPRINT = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})*$|^([0-9A-Fa-f]{2})+$")


def __virtual__():
    return __virtualname__


class PillarError(SaltInvocationError):
    """A pillar value the formula refuses; the message names the key."""


def _fail(key, problem):
    raise PillarError(f"pillar {PILLAR_ROOT}:{key}: {problem}")


def _text(key, value, required=False, allow_space=False):
    """Return value as a clean string, refusing anything that could inject lines."""
    if value is None or value == "":
        if required:
            _fail(key, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        _fail(key, f"must be a string, not {type(value).__name__}")
    value = str(value)
    if _CONTROL.search(value):
        _fail(key, "contains a newline or control character")
    if value != value.strip():
        _fail(key, "has leading or trailing whitespace")
    if not allow_space and re.search(r"\s", value):
        _fail(key, "contains whitespace")
    return value


def dns_name(key, value, required=False):
    """Validate a host or domain name and return it in lower case."""
    value = _text(key, value, required=required)
    if value is None:
        return None
    name = value.lower().rstrip(".")
    if len(name) > 253 or not _DNS_NAME.match(name):
        _fail(key, f"{value!r} is not a valid host or domain name")
    return name


def address(key, value, required=False):
    """Validate an e-mail address (local@domain) and return it normalised."""
    value = _text(key, value, required=required)
    if value is None:
        return None
    local, sep, domain = value.rpartition("@")
    if not sep or not local:
        _fail(key, f"{value!r} is not an e-mail address (expected local-part@domain)")
    if len(local) > 64 or not _LOCAL_PART.match(local):
        _fail(key, f"{value!r}: the local part may hold letters, digits and "
                   "!#%&'*+/=?^_`|~.- only (no '$', '{', '}', spaces or quotes)")
    return f"{local}@{dns_name(key, domain)}"


def local_part(key, value):
    """Validate the local part of the rewritten sender."""
    value = _text(key, value)
    if value is not None and (len(value) > 64 or not _LOCAL_PART.match(value)):
        _fail(key, f"{value!r} is not a valid local part (letters, digits and "
                   "!#%&'*+/=?^_`|~.- only)")
    return value


def choice(key, value, choices, default):
    """Validate one of a fixed set of words."""
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value.lower() not in choices:
        _fail(key, f"{value!r} is not one of: {', '.join(choices)}")
    return value.lower()


def port(key, value, default):
    """Validate a TCP port number."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        _fail(key, "must be a port number between 1 and 65535")
    try:
        number = int(str(value).strip())
    except ValueError:
        _fail(key, f"{value!r} is not a port number")
    if not 1 <= number <= 65535:
        _fail(key, f"{number} is out of range (1-65535)")
    return number


def _strict_text(key, value, required=False, allow_space=False):
    """Like _text, for values YAML may silently turn into numbers, booleans or
    dates (``0123`` -> 123, ``12:30`` -> 750): only a string is taken."""
    if value is not None and value != "" and not isinstance(value, str):
        # the value is not shown: it may be a password
        _fail(key, f"must be a string, not {type(value).__name__} (YAML changes unquoted "
                   "numbers, times and yes/no): quote it in the pillar")
    return _text(key, value, required=required, allow_space=allow_space)


def _idna(key, name):
    """
    A Unicode host name in the ASCII form Postfix looks up: what ICU's UTS #46
    ToASCII (non-transitional, default options) gives in Postfix's
    midna_domain_to_ascii(): mapping and NFC, then per label the hyphen and
    combining-mark checks and punycode. No IDNA2008 code point table: ICU
    takes symbols such as emoji, so Postfix does.
    """
    import idna  # pylint: disable=import-outside-toplevel

    try:
        mapped = idna.uts46_remap(name, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        _fail(key, f"{name!r} has no IDNA (ASCII) form: {exc}")
    labels = []
    for label in mapped.split("."):
        if (label[2:4] == "--" and not label.startswith("xn--")) or label.startswith("-") \
                or label.endswith("-"):
            _fail(key, f"{name!r} has no IDNA (ASCII) form: label {label!r} has a "
                       "hyphen at its start, end or third and fourth place")
        if label and unicodedata.category(label[0]).startswith("M"):
            _fail(key, f"{name!r} has no IDNA (ASCII) form: label {label!r} starts "
                       "with a combining mark")
        labels.append(label if label.isascii() else "xn--" + label.encode("punycode").decode())
    return ".".join(labels)


def postfix_hostname(key, value):
    """Validate a host name as Postfix's valid_hostname() does (letters,
    digits, '-' and '_'; labels of 1-63; at most 255; not all-numeric), after
    IDNA for a Unicode name; one trailing dot is dropped. Returned in lower case."""
    name = value[:-1] if value.endswith(".") else value
    if not name.isascii():
        name = _idna(key, name)
    bad = re.search(r"[^A-Za-z0-9_.-]", name)
    if bad:
        _fail(key, f"{value!r}: {bad.group()!r} is not allowed in a host name "
                   "(letters, digits, '-', '_' and '.')")
    labels = name.split(".")
    if "" in labels:
        _fail(key, f"{value!r} has an empty label ('..' or a leading dot)")
    if any(label.startswith("-") or label.endswith("-") for label in labels):
        _fail(key, f"{value!r}: a label starts or ends with a hyphen")
    if any(len(label) > 63 for label in labels):
        _fail(key, f"{value!r}: a label is longer than 63 characters")
    if len(name) > 255:
        _fail(key, f"{value!r} is longer than 255 characters")
    if re.fullmatch(r"[0-9.]+", name):
        _fail(key, f"{value!r} is all-numeric: Postfix takes neither as a host name "
                   "nor as an IPv4 address (four decimal parts, like 192.0.2.1)")
    return name.lower()


def _ip_literal(key, text, ipv6_only=False):
    """The address in ``text`` as Postfix writes it inside brackets, or None
    when ``text`` is not an address."""
    if "%" in text and ":" in text:
        _fail(key, f"{text!r}: an IPv6 zone id (%...) is not accepted by Postfix's smtp "
                   "client; use a global or unique-local address or a host name")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        if re.fullmatch(r"[0-9]+(\.[0-9]+){3}", text):
            if re.search(r"(^|\.)0[0-9]", text):
                # glibc reads 010 as octal (8) where Postfix's own check reads 10
                _fail(key, f"{text!r}: an IPv4 part with a leading zero is ambiguous "
                           "(octal for the resolver); write it without leading zeros")
            _fail(key, f"{text!r} is not an IPv4 address: each part is 0 to 255")
        if ipv6_only:
            _fail(key, f"{text!r} after 'ipv6:' is not an IPv6 address")
        return None
    if ipv6_only and ip.version != 6:
        _fail(key, f"{text!r} after 'ipv6:' is not an IPv6 address")
    written = str(ip)
    dotted = re.search(r"([0-9]+)\.[0-9.]+$", written)
    if dotted and int(dotted.group(1)) == 0 and written[dotted.start():] != "0.0.0.0":
        # valid_ipv4_hostaddr(): "Allow 0.0.0.0 but not 0.1.2.3"
        _fail(key, f"{text!r}: Postfix refuses an IPv4 address starting with 0 "
                   "(other than 0.0.0.0)")
    return f"ipv6:{written}" if ip.version == 6 else written


def relay_host(key, value):
    """
    Validate the relay host as Postfix's smtp client reads a relayhost
    (host_port(), valid_hostname(), valid_hostaddr()): a host name (Unicode
    names become IDNA), an IPv4 address, an IPv6 address with or without
    Postfix's ``ipv6:`` prefix; brackets allowed. Returns ``(host, is_address)``,
    host as written inside brackets in main.cf.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay_settings.relay_host relay:host '[ipv6:2001:db8::1]'
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # refused below with the reason (all-numeric)
    value = _strict_text(key, value, required=True)
    if re.fullmatch(r"\[.*\]:[0-9]+", value):
        _fail(key, f"{value!r}: give the port in relay:port, not in relay:host")
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if bare[:5].lower() == "ipv6:":
        return _ip_literal(key, bare[5:], ipv6_only=True), True
    address = _ip_literal(key, bare)
    if address:
        return address, True
    if re.fullmatch(r"[^:]+:[0-9]+", bare):
        _fail(key, f"{value!r}: give the port in relay:port, not in relay:host")
    return postfix_hostname(key, bare), False


def absolute_path(key, value, must_exist=False):
    """Validate an absolute file path without whitespace or control characters."""
    value = _text(key, value)
    if value is None:
        return None
    if not os.path.isabs(value) or "," in value:
        _fail(key, f"{value!r} must be an absolute path without commas")
    if must_exist and not os.path.isfile(value):
        _fail(key, f"{value} does not exist on this host")
    return value


def mechanisms(key, value):
    """Validate the SASL mechanism filter (a list of mechanism names)."""
    if value is None or value == []:
        return []
    if isinstance(value, str):
        value = [part for part in re.split(r"[\s,]+", value) if part]
    if not isinstance(value, list):
        _fail(key, "must be a list of SASL mechanism names")
    names = []
    for index, item in enumerate(value):
        name = _text(f"{key}:{index}", item, required=True).lower()
        if not _MECHANISM.match(name):
            _fail(f"{key}:{index}", f"{item!r} is not a SASL mechanism name")
        names.append(name)
    return names


def oauth2_settings(key, value, host):
    """Validate relay:oauth2 (XOAUTH2 through the sasl-xoauth2 plugin)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        _fail(key, "must be a mapping with token_endpoint, client_id and refresh_token")
    unknown = sorted(set(value) - KNOWN_OAUTH2_KEYS)
    if unknown:
        _fail(f"{key}:{unknown[0]}", "is not a known key "
              f"(known: {', '.join(sorted(KNOWN_OAUTH2_KEYS))})")
    endpoint = _text(f"{key}:token_endpoint", value.get("token_endpoint"), required=True)
    if not re.match(r"^https://[^/\s]+(/\S*)?$", endpoint):
        _fail(f"{key}:token_endpoint", f"{endpoint!r} is not an https:// URL")
    ca_file = absolute_path(f"{key}:ca_file", value.get("ca_file"), must_exist=True) \
        or host.get("ca_bundle")
    if not ca_file:
        _fail(f"{key}:ca_file", "is required here: no CA bundle is known for this OS "
              "(the plugin checks the token endpoint's certificate with it)")
    return {
        "token_endpoint": endpoint,
        "client_id": _strict_text(f"{key}:client_id", value.get("client_id"), required=True),
        "client_secret": _strict_text(f"{key}:client_secret", value.get("client_secret")),
        "refresh_token": _strict_text(f"{key}:refresh_token", value.get("refresh_token"),
                                      required=True),
        "ca_file": ca_file,
        "keepalive_days": _count(f"{key}:keepalive_days", value.get("keepalive_days"), 14,
                                 allow_off=True),
    }


def xoauth2_paths(chroot="", token_path=None):
    """
    The XOAUTH2 plugin's files on this host, for smtp chrooted in ``chroot``
    ("" when not): its directory, CA bundle, token file (``token_path`` as
    smtp sees it), its config, and the config's copy in the chroot (None
    without one).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay_settings.xoauth2_paths /var/spool/postfix
    """
    return {"dir": chroot + XOAUTH2_DIR, "ca": chroot + XOAUTH2_CA,
            "token": chroot + token_path if token_path else None,
            "conf": XOAUTH2_CONF, "conf_chroot": chroot + XOAUTH2_CONF if chroot else None}


def xoauth2_leftovers(chroot=""):
    """
    Every XOAUTH2 directory and config the formula may have written, for
    smtp chrooted in ``chroot`` and not (clean removes them all).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay_settings.xoauth2_leftovers /var/spool/postfix
    """
    found = set()
    for root in {chroot, ""}:
        paths = xoauth2_paths(root)
        found.update(p for p in (paths["dir"], paths["conf"], paths["conf_chroot"]) if p)
    return sorted(found)


def extra_value(key, value):
    """Render one `main_cf` value the way main.cf spells it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(extra_value(f"{key}:{i}", v) for i, v in enumerate(value))
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        _fail(key, f"must be a string, number, boolean or list, not {type(value).__name__}")
    if _CONTROL.search(value):
        _fail(key, "contains a newline or control character")
    return value.strip()


def extra_params(value):
    """Validate the `main_cf` dict of extra parameters."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail("main_cf", "must be a mapping of main.cf parameter names to values")
    params = {}
    for name, item in value.items():
        if not isinstance(name, str) or not _PARAM_NAME.match(name):
            _fail(f"main_cf:{name}", "is not a main.cf parameter name "
                  "(letters, digits and '_', no '=' or spaces)")
        if name in FORBIDDEN_EXTRA:
            _fail(f"main_cf:{name}", f"is refused: {FORBIDDEN_EXTRA[name]}")
        params[name] = extra_value(f"main_cf:{name}", item)
    return params


def table_type(value, params, extra, host):
    """
    The password table's type as the applied main.cf yields it, and whether
    main.cf must name it literally: ``password_map:type``, else the resulting
    main.cf's ``default_database_type`` (pillar ``main_cf``; resolved by
    Postfix when it refers to other parameters), else Postfix's own default
    (``postconf -d``; None while Postfix is not installed), which main.cf
    names as ``${default_database_type}``.
    """
    if value is None:
        value = {}
    if not isinstance(value, dict) or set(value) - {"type"}:
        _fail("password_map", "must be a mapping with the single key type")
    key, name = "password_map:type", _text("password_map:type", value.get("type"))
    if name is None and "default_database_type" in extra:
        key, name = "main_cf:default_database_type", extra["default_database_type"]
        if "$" in name:
            if not host.get("expand"):
                _fail(key, f"{name!r} refers to other parameters, which needs Postfix "
                      "installed to resolve: write the table type itself (for example "
                      "lmdb) or set password_map:type")
            name = host["expand"](params, "default_database_type")
        if not name:
            _fail(key, "is empty: give a table type that postconf -m lists")
    supported = host.get("map_types") or []
    if name and supported and name not in supported:
        _fail(key, f"{name!r} is not supported by this Postfix "
              f"(postconf -m lists: {', '.join(supported)})")
    if name and name not in PASSWORD_TABLE_TYPES:
        _fail(key, f"{name!r} cannot hold the password table's \"key user:password\" "
              f"lines: use one of {', '.join(PASSWORD_TABLE_TYPES)}")
    if name:
        return name, True
    default = host.get("default_database_type") or None
    if default and "$" in default:  # a build whose default depends on other values
        default = host["expand"](params, "default_database_type") if host.get("expand") \
            else None
    return default, False


def tls_level(key, value, sasl, rport):
    """The TLS level; with a password only levels that never send in clear."""
    level = choice(key, value, TLS_LEVELS, "encrypt" if sasl or rport == 465 else "may")
    if sasl and level == "dane":
        _fail(key, "'dane' falls back to 'may' (TLS optional, the password in clear) "
              "when the relay has no DNSSEC-validated TLSA records: use dane-only, "
              f"or one of {', '.join(SASL_TLS)}, with a password")
    if sasl and level not in SASL_TLS:
        _fail(key, f"{level!r} would let the password go out in clear: "
              f"use one of {', '.join(SASL_TLS)} with a password")
    if rport == 465 and level not in SASL_TLS:
        _fail(key, f"port 465 is implicit TLS: {level!r} is not possible there, "
              f"use one of {', '.join(SASL_TLS)}")
    return level


def fingerprints(key, value, level, extra):
    """<relay>:fingerprints for tls fingerprint: the certificate or public-key
    digests Postfix accepts, checked against the digest in use."""
    tls_key = key.rsplit(":", 1)[0] + ":tls"
    if level != "fingerprint":
        if value not in (None, []):
            _fail(key, f"only applies with {tls_key} fingerprint")
        return None, None
    digest = extra.get("smtp_tls_fingerprint_digest", "sha256").lower()
    if digest not in DIGEST_BYTES:
        _fail("main_cf:smtp_tls_fingerprint_digest", f"{digest!r} is not a digest the "
              f"formula checks fingerprints for ({', '.join(DIGEST_BYTES)})")
    if value in (None, [], ""):
        _fail(key, f"is required with {tls_key} fingerprint: the relay certificate's "
              f"{digest} fingerprints (openssl x509 -noout -fingerprint -{digest})")
    if not isinstance(value, list):
        _fail(key, "must be a list of fingerprints")
    found = []
    for index, item in enumerate(value):
        text = _strict_text(f"{key}:{index}", item, required=True)
        if not _FINGERPRINT.match(text):
            _fail(f"{key}:{index}", f"{text!r} is not hexadecimal byte pairs "
                  "(AB:CD:... or ABCD...)")
        pairs = re.findall(r"[0-9A-Fa-f]{2}", text)
        if len(pairs) != DIGEST_BYTES[digest]:
            _fail(f"{key}:{index}", f"has {len(pairs)} bytes; a {digest} fingerprint has "
                  f"{DIGEST_BYTES[digest]} bytes")
        found.append(":".join(pairs).lower())
    return digest, found


# ---------------------------------------------------------------------------
# The Relay value: one per relay (the primary, each fallback, each sender
# relay), built by the small validators below and used for main.cf, the
# password table, the TLS policy table, the token files and by probe.


def _relay_mapping(key, value):
    """The relay's mapping at ``key``, holding only known keys."""
    if not isinstance(value, dict) or not value:
        _fail(key, "must be a mapping with at least host")
    unknown = sorted(set(value) - KNOWN_RELAY_KEYS)
    if unknown:
        _fail(f"{key}:{unknown[0]}", "is not a known key "
              f"(known: {', '.join(sorted(KNOWN_RELAY_KEYS))})")
    return value


def _destination(key, relay):
    """Where the relay is: host (as one connects to it), port, the next hop
    as main.cf writes it (brackets: no MX lookup) and whether the port is
    implicit TLS."""
    rhost, is_address = relay_host(f"{key}:host", relay.get("host"))
    rport = port(f"{key}:port", relay.get("port"), 587)
    mx = relay.get("mx", False)
    if not isinstance(mx, bool):
        _fail(f"{key}:mx", "must be true or false")
    if mx and not is_address and str(relay.get("host")).startswith("["):
        _fail(f"{key}:mx", f"true asks for the host's MX records, but brackets around "
              f"{key}:host mean no MX lookup: drop one of them")
    # An address has no MX records: Postfix connects to it directly with or
    # without brackets, and brackets are the only way to write an IPv6 one.
    mx = mx and not is_address
    return {"host": rhost[5:] if rhost.startswith("ipv6:") else rhost, "port": rport,
            "mx": mx, "nexthop": f"{rhost}:{rport}" if mx else f"[{rhost}]:{rport}",
            "wrappermode": rport == 465, "token_name": f"{rhost}-{rport}"}


def _credentials(key, relay, host, token_name):
    """username, the table's "password" (with oauth2: the token file's path
    as smtp sees it), oauth2 and whether SASL is on for this relay."""
    username = _strict_text(f"{key}:username", relay.get("username"))
    password = _strict_text(f"{key}:password", relay.get("password"), allow_space=True)
    oauth2 = oauth2_settings(f"{key}:oauth2", relay.get("oauth2"), host)
    if oauth2 and password is not None:
        _fail(f"{key}:password", f"give either {key}:password or {key}:oauth2, not both")
    if oauth2 and username is None:
        _fail(f"{key}:username", f"is required with {key}:oauth2 (the mailbox that logs in)")
    token_path = f"{XOAUTH2_DIR}/{token_name}.json" if oauth2 else None
    password = token_path or password  # with oauth2 the token file is the "password"
    if (username is None) != (password is None):
        given, missing = ("username", "password") if password is None else \
            ("password", "username")
        _fail(f"{key}:{missing}", f"is required when {key}:{given} is set")
    if username is not None and ":" in username:
        _fail(f"{key}:username", "must not contain ':' (it separates user and password)")
    return {"username": username, "password": password, "oauth2": oauth2,
            "sasl": password is not None, "token_path": token_path}


def _security(key, relay, creds, rport, host, extra):
    """TLS level, certificate checks and SASL mechanisms of one relay."""
    level = tls_level(f"{key}:tls", relay.get("tls"), creds["sasl"], rport)
    digest, fprs = fingerprints(f"{key}:fingerprints", relay.get("fingerprints"), level,
                                extra)
    ca_file = absolute_path(f"{key}:ca_file", relay.get("ca_file"), must_exist=True)
    if level in VERIFYING_LEVELS and ca_file is None:
        ca_file = host.get("ca_bundle")
    mechs = mechanisms(f"{key}:mechanisms", relay.get("mechanisms"))
    if creds["oauth2"]:
        if mechs not in ([], ["xoauth2"]):
            _fail(f"{key}:mechanisms", f"must be empty or [xoauth2] with {key}:oauth2")
        mechs = ["xoauth2"]
    if mechs and not creds["sasl"]:
        _fail(f"{key}:mechanisms", f"only applies with {key}:username and {key}:password")
    return {"tls": level, "digest": digest, "fingerprints": fprs, "ca_file": ca_file,
            "mechanisms": mechs}


def relay_value(key, value, host, extra, role="primary", sender=None):
    """
    One relay as a value: ``key`` (its pillar key, named in every error),
    ``role`` (primary, fallback, sender), ``sender`` (the sender pattern of a
    sender relay), destination, credentials, TLS and mechanisms, and
    ``password_key`` (its password-table key: the next hop, or the sender
    pattern for a sender relay, looked up first by Postfix).
    """
    relay = _relay_mapping(key, value)
    dest = _destination(key, relay)
    token_name = dest.pop("token_name")
    if sender:  # one account per sender: its own token file beside the relay's
        token_name += "-" + re.sub(r"[^a-z0-9.@_-]", "_", sender)
    creds = _credentials(key, relay, host, token_name)
    return {"key": key, "role": role, "sender": sender, **dest, **creds,
            **_security(key, relay, creds, dest["port"], host, extra),
            "password_key": sender or dest["nexthop"]}


def sender_pattern(key, value):
    """A sender_relays key as Postfix's sender-dependent lookups match it:
    an address (billing@example.org) or a whole domain (@shop.example.org)."""
    text = _strict_text(key, value, required=True)
    if text.startswith("@"):
        return "@" + dns_name(key, text[1:], required=True)
    if "@" not in text:
        _fail(key, f"{text!r} is neither an address (billing@example.org) nor a domain "
              "written @shop.example.org")
    local, _, domain = address(key, text, required=True).rpartition("@")
    return f"{local.lower()}@{domain}"  # lookups fold the key to lower case


def _fallbacks(value, host, extra):
    """fallback_relays: a list of relay mappings, tried in order."""
    if value in (None, []):
        return []
    if not isinstance(value, list):
        _fail("fallback_relays", "must be a list of relays (each a mapping like relay:)")
    return [relay_value(f"fallback_relays:{index}", item, host, extra, "fallback")
            for index, item in enumerate(value)]


def _sender_relays(value, host, extra, sender_mode):
    """sender_relays: {sender pattern: relay mapping}."""
    if value in (None, {}):
        return []
    if not isinstance(value, dict):
        _fail("sender_relays", "must be a mapping of senders (billing@example.org or "
              "@shop.example.org) to relays")
    if sender_mode != "local":
        _fail("sender_relays", "needs sender_mode: local (with sender_mode all every "
              "sender is rewritten to <sender>@<domain> before Postfix picks the relay: "
              "only that one address could match, and relay: is for it)")
    found, seen = [], {}
    for written, item in value.items():
        key = f"sender_relays:{written}"
        pattern = sender_pattern(key, written)
        if pattern in seen:
            _fail(key, f"is the same sender as sender_relays:{seen[pattern]} "
                  "(senders are matched without regard to case)")
        seen[pattern] = written
        found.append(relay_value(key, item, host, extra, "sender", sender=pattern))
    return found


def _no_duplicates(relays):
    """The primary and the fallbacks are distinct next hops; a sender relay
    without an account is not one Postfix would log in to with another's."""
    seen = {}
    for relay in relays:
        if relay["role"] == "sender":
            continue
        other = seen.setdefault(relay["nexthop"], relay)
        if other is not relay:
            _fail(f"{relay['key']}:host", f"{relay['nexthop']} is already {other['key']}: "
                  "list each relay once")
    domains = {r["sender"]: r for r in relays if r["role"] == "sender" and r["sasl"]}
    for relay in relays:
        if relay["role"] != "sender" or relay["sasl"]:
            continue
        other = seen.get(relay["nexthop"])
        # Postfix looks a sender up as the address, then @domain, then the
        # relay's host and next hop: the first entry found is the account used
        broader = domains.get("@" + relay["sender"].rpartition("@")[2])
        if broader and broader is not relay:
            other = broader
        elif not (other and other["sasl"]):
            continue
        _fail(f"{relay['key']}:username", f"is missing: Postfix would log in to "
              f"{relay['nexthop']} with {other['key']}'s account for this sender; give "
              "it its own username and password")


def _tls_mode(relay):
    return "implicit TLS" if relay["wrappermode"] else "STARTTLS (or plain SMTP)"


def _one_mechanism_filter(sasl):
    """Postfix filters SASL mechanisms once for all relays: relays that give
    mechanisms give the same, the others take them; OAuth2 (filter xoauth2)
    and password relays cannot be mixed."""
    oauth = [r for r in sasl if r["oauth2"]]
    plain = [r for r in sasl if not r["oauth2"]]
    if oauth and plain:
        odd = (plain if sasl[0]["oauth2"] else oauth)[0]
        _fail(f"{odd['key']}:{'password' if odd in plain else 'oauth2'}",
              f"{sasl[0]['key']} logs in with {'oauth2' if oauth[0] is sasl[0] else 'a password'}"
              ": Postfix filters SASL mechanisms once for all relays, so oauth2 relays "
              "and password relays cannot be mixed")
    given = [r for r in sasl if r["mechanisms"]]
    for relay in given[1:]:
        if relay["mechanisms"] != given[0]["mechanisms"]:
            _fail(f"{relay['key']}:mechanisms", f"{relay['mechanisms']} differs from "
                  f"{given[0]['key']}:mechanisms {given[0]['mechanisms']}: Postfix filters "
                  "SASL mechanisms once for all relays; give the same or leave it out")
    for relay in sasl:
        relay["mechanisms"] = given[0]["mechanisms"] if given else []


def _one_transport(relays):
    """What Postfix's one smtp transport sets for every relay alike: implicit
    TLS or not, the SASL mechanism filter, the CA file that verifies."""
    first = relays[0]
    for relay in relays[1:]:
        if relay["wrappermode"] != first["wrappermode"]:
            _fail(f"{relay['key']}:port", f"{relay['port']} is {_tls_mode(relay)}, but "
                  f"{first['key']}:port {first['port']} is {_tls_mode(first)}: Postfix's "
                  "smtp client talks to all relays one way (smtp_tls_wrappermode), so "
                  "port 465 cannot be mixed with STARTTLS ports; use each provider's "
                  "587 (STARTTLS) throughout, or 465 throughout")
    _one_mechanism_filter([r for r in relays if r["sasl"]])
    verifying = [r for r in relays if r["tls"] in VERIFYING_LEVELS]
    for relay in verifying[1:]:
        if relay["ca_file"] != verifying[0]["ca_file"]:
            _fail(f"{relay['key']}:ca_file", f"{relay['ca_file']} differs from "
                  f"{verifying[0]['key']}'s {verifying[0]['ca_file']}: Postfix verifies "
                  "every relay with one CA file (smtp_tls_CAfile); give all the same")


def _relay_overrides(relays, extra):
    """With several relays, main_cf may not replace what they are made of."""
    if len(relays) < 2:
        return
    for name in RELAY_PARAMS:
        if name in extra:
            _fail(f"main_cf:{name}", "is made by the formula for fallback_relays and "
                  "sender_relays (an override would undo a relay's TLS level, account or "
                  "route): leave it out")


def _sender_relays_reachable(relays, host, ident):
    """Refuse sender relays that cannot work as the pillar says: on Postfix
    before 3.5 smtp_fallback_relay would take a sender relay's mail, with its
    account, to the fallbacks; a pattern matching the rewritten sender would
    take the host's own mail (root, cron) away from the primary."""
    senders = [r for r in relays if r["role"] == "sender"]
    if not senders:
        return
    if len(relays) - len(senders) > 1 and not _relayhost_lists(host):
        _fail("sender_relays", f"cannot be combined with fallback_relays on Postfix "
              f"{host.get('mail_version')} (before 3.5): smtp_fallback_relay would send a "
              "sender relay's mail, and its account, to the fallbacks")
    local, domain = ident["sender"].rsplit("@", 1)
    for relay in senders:
        if relay["sender"] in (ident["sender"].lower(), f"@{domain}"):
            _fail(relay["key"], f"matches {local}@{domain}, the address every host-local "
                  "sender (root, cron) is rewritten to: that mail would leave through this "
                  "relay instead of relay:; use the applications' own addresses or "
                  "domain, or another sender/domain for the host's own mail")


def relay_list(pillar, host, extra, ident):
    """Every relay, the primary first, then fallbacks, then sender relays."""
    relays = [relay_value("relay", pillar.get("relay"), host, extra)]
    relays += _fallbacks(pillar.get("fallback_relays"), host, extra)
    relays += _sender_relays(pillar.get("sender_relays"), host, extra, ident["sender_mode"])
    _no_duplicates(relays)
    _one_transport(relays)
    _relay_overrides(relays, extra)
    _sender_relays_reachable(relays, host, ident)
    return relays


def _tls_policy(relay):
    """The relay's line in the TLS policy table (smtp_tls_policy_maps)."""
    if relay["fingerprints"]:
        return f"fingerprint match={'|'.join(relay['fingerprints'])}"
    return relay["tls"]


def tls_policy_entries(relays):
    """{next hop: policy} for every relay; one next hop, one policy."""
    entries = {}
    for relay in relays:
        policy = _tls_policy(relay)
        if entries.setdefault(relay["nexthop"], (policy, relay))[0] != policy:
            other = entries[relay["nexthop"]][1]
            field = "fingerprints" if other["tls"] == relay["tls"] else "tls"
            _fail(f"{relay['key']}:{field}", f"differs from {other['key']}:{field}, the "
                  f"same relay {relay['nexthop']}: one relay, one TLS policy")
    return {hop: policy for hop, (policy, _) in entries.items()}


def _relayhost_lists(host):
    """Postfix 3.5 and later take a list in relayhost (tried in order)."""
    version = host.get("mail_version") or ""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    return not parts or parts >= [3, 5]  # not installed yet: Debian/RHEL have newer


# ---------------------------------------------------------------------------
# main.cf


def _relay_params(relays, host, specs):
    """relayhost (and the fallbacks), sender relays and per-relay TLS."""
    hops = [r["nexthop"] for r in relays if r["role"] != "sender"]
    senders = [r for r in relays if r["role"] == "sender"]
    if len(hops) > 1 and not _relayhost_lists(host):
        params = {"relayhost": hops[0], "smtp_fallback_relay": ", ".join(hops[1:])}
    else:
        params = {"relayhost": ", ".join(hops)}
    if senders:
        params["sender_dependent_relayhost_maps"] = specs["sender_relays"]
        params["smtp_sender_dependent_authentication"] = "yes"
    if len(relays) > 1:
        params["smtp_tls_policy_maps"] = specs["tls_policy"]
    return params


def _tls_params(relays, extra):
    """main.cf's TLS parameters: the primary's level, the one transport's mode."""
    rel = relays[0]
    params = {"smtp_tls_security_level": rel["tls"], "smtp_tls_loglevel": "1"}
    if rel["wrappermode"]:
        params["smtp_tls_wrappermode"] = "yes"
    # the CA the verifying relays are checked with (one for all of them)
    verifying = [r for r in relays if r["tls"] in VERIFYING_LEVELS] or relays
    ca_file = next((r["ca_file"] for r in verifying if r["ca_file"]), None)
    if ca_file:
        params["smtp_tls_CAfile"] = ca_file
    pinned = [r for r in relays if r["fingerprints"]]
    if pinned:  # the digest they were checked for (Postfix < 3.6 defaults to md5)
        params["smtp_tls_fingerprint_digest"] = pinned[0]["digest"]
    if rel["fingerprints"]:
        params["smtp_tls_fingerprint_cert_match"] = ", ".join(rel["fingerprints"])
    if any(r["tls"] in DANE_LEVELS for r in relays):
        # without DNSSEC lookups dane-only defers every message, dane is may
        if extra.get("smtp_dns_support_level", "dnssec").lower() != "dnssec":
            levels = sorted({r["tls"] for r in relays if r["tls"] in DANE_LEVELS})
            _fail("main_cf:smtp_dns_support_level", f"must be dnssec (or left out) with "
                  f"relay TLS level {' / '.join(levels)}: DANE needs DNSSEC-validated lookups")
        params["smtp_dns_support_level"] = "dnssec"
    level = extra.get("smtp_tls_security_level", rel["tls"]).lower()  # as Postfix reads it
    if rel["sasl"] and level not in SASL_TLS:
        _fail("main_cf:smtp_tls_security_level", f"{level!r} would let the password go "
              f"out in clear: use one of {', '.join(SASL_TLS)}")
    return params


def _sasl_params(relays, password_spec):
    """main.cf's SASL parameters (none when no relay has credentials)."""
    sasl = [r for r in relays if r["sasl"]]
    if not sasl:
        return {}
    params = {
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": password_spec,
        # PLAIN/LOGIN only inside TLS; never anonymous.
        "smtp_sasl_security_options": "noanonymous, noplaintext",
        "smtp_sasl_tls_security_options": "noanonymous",
    }
    if sasl[0]["mechanisms"]:
        params["smtp_sasl_mechanism_filter"] = ", ".join(sasl[0]["mechanisms"])
    return params


def queue_lifetime(key, value):
    """How long Postfix keeps trying (maximal_queue_lifetime and
    bounce_queue_lifetime): a number of days, or Postfix's time units."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        _fail(key, "must be a time such as 5d, 12h or 3600s")
    text = str(value).strip().lower()
    if not re.fullmatch(r"[0-9]+[smhdw]?", text):
        _fail(key, f"{value!r} is not a time (a number with s, m, h, d or w; "
              "days without a unit)")
    return text if text[-1].isalpha() else f"{text}d"


def _count(key, value, default, minimum=0, allow_off=False):
    """A whole number (YAML int or digits); ``false`` is 0 where allowed."""
    if value is None or value == "":
        return default
    if value is False and allow_off:
        return 0
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", str(value).strip()):
        _fail(key, f"{value!r} is not a whole number")
    number = int(str(value).strip())
    if number < minimum and not (allow_off and number == 0):
        _fail(key, f"{number} is below the minimum {minimum}")
    return number


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(key, value, default):
    """A duration: seconds, or a number with s, m, h, d or w."""
    if value is None or value == "":
        return default
    text = str(value).strip().lower()
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+[smhdw]?", text):
        _fail(key, f"{value!r} is not a duration (seconds, or a number with s, m, h, d "
              "or w)")
    unit = text[-1] if text[-1].isalpha() else "s"
    return int(text.rstrip("smhdw")) * _SECONDS[unit]


def beacon_settings(value, metrics_textfile=None):
    """
    ``beacon``: the minion's postfix_relay beacon (interval in seconds, the
    deferred count and oldest-message age that raise an event); None without
    the key. ``metrics_textfile``: a node_exporter textfile (``*.prom``) the
    beacon rewrites each interval.
    """
    textfile = absolute_path("metrics_textfile", metrics_textfile)
    if textfile and not textfile.endswith(".prom"):
        _fail("metrics_textfile", f"{textfile} must end in .prom (node_exporter's "
              "textfile collector reads only those)")
    if value is None or value is False:
        if textfile:
            _fail("metrics_textfile", "is written by the beacon: set beacon too "
                  "(beacon: {} takes the defaults)")
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        _fail("beacon", "must be a mapping (interval, deferred_max, age_max) or true")
    unknown = sorted(set(value) - KNOWN_BEACON_KEYS)
    if unknown:
        _fail(f"beacon:{unknown[0]}", "is not a known key "
              f"(known: {', '.join(sorted(KNOWN_BEACON_KEYS))})")
    return {"interval": _count("beacon:interval", value.get("interval"), 60, minimum=10),
            "deferred_max": _count("beacon:deferred_max", value.get("deferred_max"), 10),
            "age_max": seconds("beacon:age_max", value.get("age_max"), 3600),
            "metrics_textfile": textfile}


def _identity(pillar, grains):
    """Domain, host name, sender, recipient and the other addressing values."""
    domain = dns_name("domain", pillar.get("domain"), required=True)
    hostname = dns_name("hostname", pillar.get("hostname"))
    if hostname is None:
        fqdn = (grains.get("fqdn") or "").lower()
        short = (grains.get("host") or fqdn.split(".")[0] or "localhost").lower()
        hostname = fqdn if "." in fqdn else f"{short}.{domain}"
        hostname = dns_name("hostname (from the minion's fqdn grain)", hostname)
    local = local_part("sender", pillar.get("sender")) or hostname.split(".")[0]
    return {
        "domain": domain, "hostname": hostname, "sender": f"{local}@{domain}",
        "recipient": address("recipient", pillar.get("recipient"), required=True),
        "recipient_mode": choice("recipient_mode", pillar.get("recipient_mode"),
                                 RECIPIENT_MODES, "all"),
        "sender_mode": choice("sender_mode", pillar.get("sender_mode"), SENDER_MODES, "all"),
        "reply_to": address("reply_to", pillar.get("reply_to")),
        "listen": choice("listen", pillar.get("listen"), LISTEN_MODES, "loopback"),
        "queue_lifetime": queue_lifetime("queue_lifetime", pillar.get("queue_lifetime")),
        "beacon": beacon_settings(pillar.get("beacon"), pillar.get("metrics_textfile")),
    }


def _check_keys(pillar):
    """Refuse a missing pillar and unknown keys."""
    if not isinstance(pillar, dict) or not pillar:
        _fail("", "is missing: set at least domain, recipient and relay:host "
                  "(see pillar.example)")
    unknown = sorted(set(pillar) - KNOWN_KEYS)
    if unknown:
        _fail(unknown[0], f"is not a known key (known: {', '.join(sorted(KNOWN_KEYS))})")
    if not isinstance(pillar.get("relay"), dict):
        _fail("relay", "is required: a mapping with at least host")


def _base_params(ident, tables):
    """The null client's main.cf parameters, before relays, TLS, SASL and extras."""
    domain, hostname = ident["domain"], ident["hostname"]
    # local modes tell host-local addresses apart by their domain: myorigin
    local = "local" in (ident["recipient_mode"], ident["sender_mode"])
    params = {
        "myhostname": hostname,
        "mydomain": domain,
        "myorigin": hostname if local else domain,
        "mydestination": "",
        "relay_domains": "",
        "local_transport": "error:5.1.1 local delivery is disabled on this null client",
        "alias_maps": "",
        "alias_database": "",
        "inet_interfaces": "loopback-only",
        "mynetworks": "127.0.0.0/8 [::1]/128",
        # local modes pass other addresses unchanged: masquerading would turn
        # an application's orders@shop.<domain> into orders@<domain>
        "masquerade_domains": "" if local else domain,
        "always_add_missing_headers": "yes",
        "sender_canonical_maps": tables["sender"]["spec"],
        "recipient_canonical_maps": (f"static:{ident['recipient']}"
                                     if ident["recipient_mode"] == "all"
                                     else tables["recipients"]["spec"]),
    }
    if ident["reply_to"]:
        params["smtp_header_checks"] = tables["reply_to"]["spec"]
    if ident["queue_lifetime"]:
        params["maximal_queue_lifetime"] = ident["queue_lifetime"]
        params["bounce_queue_lifetime"] = ident["queue_lifetime"]
    return params


def _log_file(pillar, host):
    log_file = absolute_path("log_file", pillar.get("log_file"))
    if log_file is None and not host.get("has_syslog", True):
        # No syslog socket: without maillog_file Postfix would log nowhere.
        log_file = "/var/log/postfix.log"
    return log_file


def normalise(pillar, grains, host):
    """Validate the pillar and derive every value the formula writes.

    ``pillar`` is the ``postfix_relay`` pillar dict, ``grains`` needs ``fqdn``
    and ``host``; ``host`` holds what is known of this host: ``map_types``,
    ``default_database_type`` and ``mail_version`` (empty while Postfix is
    not installed), ``ca_bundle``, ``config_dir``, ``has_syslog``, and
    ``expand`` (a function that asks Postfix for a parameter's value in a
    candidate main.cf).
    """
    _check_keys(pillar)
    ident = _identity(pillar, grains)
    extra = extra_params(pillar.get("main_cf"))
    relays = relay_list(pillar, host, extra, ident)
    log_file = _log_file(pillar, host)
    # the type first needs main.cf without the tables it types
    params = {**_tls_params(relays, extra), **({"maillog_file": log_file} if log_file
                                                else {}), **extra}
    map_type, literal = table_type(pillar.get("password_map"), params, extra, host)
    tables = table_list(host.get("config_dir", "/etc/postfix"), ident, relays,
                        (map_type, literal))
    specs = {t["id"]: t["spec"] for t in tables}
    params = {**_base_params(ident, {t["id"]: t for t in tables}),
              **_relay_params(relays, host, specs), **params}
    params.update({k: v for k, v in _sasl_params(relays, specs["password"]).items()
                   if k not in extra})
    return _result(ident, relays, tables, params, map_type, host, extra, log_file)


def _oauth2_values(relays, host):
    """The XOAUTH2 plugin's files: one token file per oauth2 relay."""
    oauth = [r for r in relays if r["oauth2"]]
    chroot = host.get("smtp_chroot_dir", "")
    if not oauth:
        # the last oauth2 relay gone: its token files (refresh tokens) go too
        return {"oauth2": None, "oauth2_token_path": None, "xoauth2_paths": None,
                "xoauth2_conf": None, "oauth2_relays": [],
                "xoauth2_leftovers": xoauth2_leftovers(chroot)}
    first = oauth[0]["oauth2"]
    return {
        "oauth2": first,
        # the token file as Postfix's smtp process sees it (the table's "password")
        "oauth2_token_path": oauth[0]["token_path"],
        # where the plugin's files lie on this host: in smtp's chroot when it has one
        "xoauth2_paths": xoauth2_paths(chroot, oauth[0]["token_path"]),
        # the plugin's own config: no secrets (those go in the 0600 token files,
        # which also carry each relay's client and endpoint). The plugin does
        # not load without a client_secret key. No syslog: its failure line is
        # the last trace line, which can be the token endpoint's answer with a
        # fresh access token (seen with 0.27); probe names causes.
        "xoauth2_conf": json.dumps({
            "client_id": first["client_id"], "client_secret": "",
            "token_endpoint": first["token_endpoint"],
            "log_to_syslog_on_failure": "no", "log_full_trace_on_failure": "no",
        }, indent=1) + "\n",
        "xoauth2_leftovers": [],
        "oauth2_relays": [{"key": r["key"], "token": chroot + r["token_path"],
                           "name": os.path.basename(r["token_path"]),
                           "ca": chroot + token_ca(r),
                           "ca_source": r["oauth2"]["ca_file"]} for r in oauth],
    }


def token_ca(relay):
    """The CA bundle (as smtp sees it) the plugin checks a relay's token
    endpoint with: the primary's where earlier releases put it, any other
    beside its token file (relays may use different providers)."""
    if relay["role"] == "primary":
        return XOAUTH2_CA
    return relay["token_path"][:-len(".json")] + ".ca.pem"


def _result(ident, relays, tables, params, map_type, host, extra, log_file):  # noqa: PLR0913
    """The settings the SLS files print."""
    primary = relays[0]
    return {
        **ident,
        "relayhost": params.get("relayhost", primary["nexthop"]),
        "relays": relays,
        "sasl": any(r["sasl"] for r in relays),
        "tls": primary["tls"],
        "tables": tables,
        "table_paths": {t["id"]: t["path"] for t in tables},
        "sasl_dir": os.path.dirname(table_paths(host.get("config_dir", "/etc/postfix"))
                                    ["password"]),
        "map_type": map_type,
        "password_entries": {r["password_key"]: f"{r['username']}:{r['password']}"
                             for r in relays if r["sasl"]},
        "main_cf": params,
        **_oauth2_values(relays, host),
        "extra_params": sorted(extra),
        "log_file": log_file,
    }


# ---------------------------------------------------------------------------
# Tables as data: the SLS files loop over this list.


def table_paths(config_dir="/etc/postfix"):
    """
    The tables the formula manages, by role (names of the formula's own: an
    admin's sender_canonical or tls_policy stays theirs).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay_settings.table_paths
    """
    return {
        "password": f"{config_dir}/sasl/passwd",
        "reply_to": f"{config_dir}/reply_to_header",
        "recipients": f"{config_dir}/recipient_canonical",
        "sender": f"{config_dir}/postfix_relay_sender",
        "sender_relays": f"{config_dir}/postfix_relay_sender_relays",
        "tls_policy": f"{config_dir}/postfix_relay_tls_policy",
    }


# state IDs as earlier releases named them (an upgrade keeps them)
STATE_IDS = {"password": "password-table", "sender": "sender", "reply_to": "reply-to",
             "recipients": "recipients", "sender_relays": "sender-relays",
             "tls_policy": "tls-policy"}


def clean_tables(config_dir="/etc/postfix"):
    """
    Every table the formula may have written, with the state ID clean.sls
    gives its removal (as config.sls names the table's state).

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay_settings.clean_tables
    """
    return [{"state_id": STATE_IDS[role], "path": path}
            for role, path in sorted(table_paths(config_dir).items())]


def _table(role, path, present, map_type=None, literal=True, **content):
    """One table: where, which type, and what it holds (``entries``,
    ``contents`` or ``entries_from``) when present. ``indexed``: compiled by
    postmap (a type change leaves other types' files to remove after main.cf)."""
    spec_type = map_type if literal else "${default_database_type}"
    return {"id": role, "state_id": STATE_IDS[role], "path": path,
            "present": bool(present), "map_type": map_type,
            "indexed": map_type != "regexp", "spec": f"{spec_type}:{path}",
            "mode": content.pop("mode", "0644"), "secret": content.pop("secret", False),
            "entries_from": None, "contents": None, "entries": None, **content}


def table_list(config_dir, ident, relays, password_type):
    """
    Every table the formula manages, present or absent, with its contents:
    the password table (entries read when the state runs, never rendered),
    the sender, Reply-To and recipient rules, the sender relays and the TLS
    policy of several relays.
    """
    paths = table_paths(config_dir)
    map_type, literal = password_type
    senders = {r["sender"]: r["nexthop"] for r in relays if r["role"] == "sender"}
    return [
        _table("password", paths["password"], any(r["sasl"] for r in relays), map_type,
               literal, mode="0600", secret=True,
               entries_from="postfix_relay_settings.password_entries"),
        _table("sender", paths["sender"], True, "regexp",
               contents=sender_rules(ident["sender"], ident["sender_mode"],
                                     ident["hostname"])),
        _table("reply_to", paths["reply_to"], ident["reply_to"], "regexp",
               contents=reply_to_rules(ident["reply_to"]) if ident["reply_to"] else ""),
        _table("recipients", paths["recipients"], ident["recipient_mode"] == "local",
               "regexp", contents=recipient_rules(ident["hostname"], ident["recipient"])),
        _table("sender_relays", paths["sender_relays"], senders, map_type, literal,
               entries=senders),
        _table("tls_policy", paths["tls_policy"], len(relays) > 1, map_type, literal,
               entries=tls_policy_entries(relays) if len(relays) > 1 else {}),
    ]


def sender_rules(sender, mode="all", hostname=None):
    """sender_canonical regexp: every sender (mode all) or every host-local
    sender (mode local: domainless ones, qualified with myorigin = the host
    name, and @localhost) becomes ``sender``, except the null sender of
    bounces and Postfix's double-bounce.

    `static:` would rewrite the null sender too (cleanup looks it up as an
    address): a bounce would then carry the host's address, a relay that
    refused the message refuses the bounce as well, and it bounces again, in
    a loop (hundreds a second, seen in test_edge_cases.py). The null sender
    reaches the lookup empty or as ``""@domain``; double-bounce@ is Postfix's own.
    """
    if mode == "local":
        host = re.escape(hostname)
        return ("# Managed by postfix_relay: host-local senders become the host's "
                "address;\n# other senders keep theirs (sender_mode local).\n"
                'if !/^(""|double-bounce)@/\n'
                f"/@({host}|localhost|localhost\\.localdomain)$/ {sender}\n"
                "endif\n")
    return ("# Managed by postfix_relay: every sender becomes the host's address,\n"
            "# but a bounce keeps its null sender (no bounce loops).\n"
            f'!/^$|^""(@.*)?$|^double-bounce@/ {sender}\n')


def reply_to_rules(reply_to):
    """smtp_header_checks rules that give every message exactly one Reply-To.

    They run in the SMTP client on the primary header only (never on MIME
    parts), after cleanup has added any missing Date:, so keying the PREPEND on
    Date: (exactly one per message) adds one Reply-To; an existing one is
    dropped so there are never two.
    """
    return ("# Managed by postfix_relay: one Reply-To per message.\n"
            "/^Reply-To:/ IGNORE\n"
            f"/^Date:/ PREPEND Reply-To: {reply_to}\n")


def recipient_rules(hostname, recipient):
    """recipient_canonical regexp for `local` mode: host-local addresses only.

    Domainless recipients (root, a cron user) are qualified with myorigin,
    which `local` mode sets to the host name, so they are told apart from real
    addresses, which pass unchanged.
    """
    host = re.escape(hostname)
    return ("# Managed by postfix_relay: local recipients go to the mailbox.\n"
            f"/@({host}|localhost|localhost\\.localdomain)$/ {recipient}\n")


def _host_facts(lookup):
    """What the settings need to know of this host; Postfix may be absent yet."""
    config_dir = lookup.get("config_dir", "/etc/postfix")
    try:
        facts = __salt__["postfix_facts.facts"](config_dir)
    except Exception:  # pylint: disable=broad-except
        facts = {}  # not installed yet: package.sls installs it first
    try:
        chroot = __salt__["postfix_master.smtp_chroot_dir"](
            config_dir, lookup.get("smtp_chroot_dir", ""))
    except Exception:  # pylint: disable=broad-except
        chroot = lookup.get("smtp_chroot_dir", "")
    return {
        "map_types": facts.get("map_types") or [],
        "default_database_type": facts.get("default_database_type"),
        "mail_version": facts.get("mail_version"),
        "smtp_chroot_dir": chroot,
        "config_dir": config_dir,
        "ca_bundle": lookup.get("ca_bundle"),
        "has_syslog": os.path.exists("/dev/log"),
        "expand": (lambda params, name: expand_param(params, name, config_dir))
        if facts else None,
    }


def expand_param(params, name, config_dir="/etc/postfix"):
    """
    The value Postfix gives parameter ``name`` in the main.cf that ``params``
    make (``postconf -x``), read from a candidate in a private directory.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay_settings.expand_param \
            '{"default_database_type": "lmdb"}' default_database_type
    """
    text = __salt__["postfix_maincf.render_main_cf"](
        __salt__["postfix_maincf.complete_params"](params, config_dir))
    tmp = tempfile.mkdtemp(prefix="postfix_relay.expand.")
    try:
        __utils__["postfix_files.write_atomic"](os.path.join(tmp, "main.cf"), text)
        res = __salt__["postfix_cmd.run"](["postconf", "-c", tmp, "-x", "-h", name])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if res["retcode"]:
        _fail(f"main_cf:{name}", f"postconf cannot resolve it: {res['stderr'].strip()}")
    return res["stdout"].strip()


def _merge(base, over):
    """Recursive dict merge; lists and scalars in ``over`` replace."""
    merged = dict(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _saltenv(saltenv=None):
    """The Salt environment to read from: the one given, else the state's
    (``__env__``, inside a state run), else the run's (``saltenv`` option),
    else base."""
    return (saltenv or globals().get("__env__") or (__opts__ or {}).get("saltenv")
            or "base")


def lookup(saltenv=None):
    """
    The formula's per-OS values: defaults.yaml < osfamilymap.yaml (by the
    os_family grain) < pillar ``postfix_relay:lookup``, read from ``saltenv``
    (default: the run's environment), cached per environment.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay_settings.lookup
        salt-call postfix_relay_settings.lookup saltenv=dev
    """
    saltenv = _saltenv(saltenv)
    # cached for the run: the three SLS files that import map.jinja merge once;
    # keyed by everything the merge reads (older Salt keeps __context__ longer)
    pillar_lookup = (__pillar__.get(PILLAR_ROOT) or {}).get("lookup") or {}
    key = "postfix_relay_settings.lookup:" + json.dumps(
        [saltenv, __grains__.get("os_family"), pillar_lookup], sort_keys=True, default=str)
    if key not in __context__:
        import salt.utils.yaml  # pylint: disable=import-outside-toplevel

        def load(name):
            text = __salt__["cp.get_file_str"](f"salt://postfix_relay/{name}", saltenv=saltenv)
            return salt.utils.yaml.safe_load(text or "") or {}

        merged = _merge(load("defaults.yaml").get("lookup", {}),
                        load("osfamilymap.yaml").get(__grains__.get("os_family"), {}))
        if not isinstance(pillar_lookup, dict):
            _fail("lookup", "must be a mapping (see postfix_relay/osfamilymap.yaml)")
        __context__[key] = _merge(merged, pillar_lookup)
    return dict(__context__[key])


def _masked_oauth2(oauth2):
    return oauth2 and {k: ("********" if k in ("client_secret", "refresh_token") and v
                           else v) for k, v in oauth2.items()}


def redact(result):
    """The settings without the passwords and refresh tokens (what a CLI call
    may show)."""
    shown = dict(result)
    shown["oauth2"] = _masked_oauth2(result.get("oauth2"))
    shown["relays"] = [{**relay, "oauth2": _masked_oauth2(relay["oauth2"]),
                        "password": relay["password"] and (relay["token_path"]
                                                           or "********")}
                       for relay in result.get("relays", [])]
    shown["password_entries"] = {
        key: value.split(":", 1)[0] + ":********"
        for key, value in result["password_entries"].items()
    }
    return shown


def _precheck(result, config_dir):
    """Postfix's own check of the resulting main.cf, its complaint pinned on
    the pillar key behind the parameter it names."""
    problems = __salt__["postfix_maincf.precheck_main_cf"](result["main_cf"], config_dir)
    for problem in problems:
        named = [n for n in result["extra_params"] if re.search(rf"\b{n}\b", problem)]
        key = f"main_cf:{named[0]}" if named else "main_cf"
        _fail(key, f"Postfix refuses the resulting main.cf: {problem}")


def get(pillar=None, lookup=None, show_secrets=False, check=False):
    """
    Validate the ``postfix_relay`` pillar and return the normalised settings.

    Raises an error naming the pillar key when a value is refused. ``lookup``
    is the formula's os_family map (config_dir, ca_bundle). The password is
    masked unless ``show_secrets`` is true (only the SLS asks for it, while
    rendering on the minion; it never reaches a job return). With ``check``,
    Postfix itself checks the main.cf these settings give (``postconf``,
    ``postfix check``) and a complaint fails here too, naming the key.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay_settings.get check=True
    """
    if pillar is None:
        pillar = __pillar__.get(PILLAR_ROOT)
    if isinstance(pillar, dict):
        pillar = {k: v for k, v in pillar.items() if k != "lookup"}
    result = _normalised(pillar, lookup or {})
    if check:
        _precheck(result, (lookup or {}).get("config_dir", "/etc/postfix"))
    return result if show_secrets else redact(result)


def _normalised(pillar, lookup):
    """normalise() once per run for the same pillar, lookup and grains: the
    SLS files and the states' entries_from all ask (in memory only)."""
    grains = {k: __grains__.get(k) for k in ("fqdn", "host")}
    try:
        key = "postfix_relay_settings.normalised:" + hashlib.sha256(json.dumps(
            [pillar, lookup, grains], sort_keys=True, default=str).encode()).hexdigest()
    except TypeError:  # keys of mixed types: refused by normalise, not cached
        return normalise(pillar, grains, _host_facts(lookup))
    if key not in __context__:
        __context__[key] = normalise(pillar, grains, _host_facts(lookup))
    return copy.deepcopy(__context__[key])


def password_entries(saltenv=None):
    """
    The password table's entries (``{relayhost: "user:password"}``, empty
    without SASL), for ``postmap.managed entries_from``: read from the pillar
    when the state runs, so the password is never part of the rendered state
    data that Salt caches on disk. The value holds the password: this is for
    states, not for the command line. ``saltenv``: as for :py:func:`lookup`.
    """
    return get(lookup=lookup(saltenv), show_secrets=True)["password_entries"]


def oauth2_token_files(saltenv=None):
    """
    What each XOAUTH2 token file starts with, by file name (refresh token,
    client, endpoint, the CA bundle as the plugin sees it), for
    ``postfix_xoauth2.token_file`` (``data_key``: the file's name): read when
    the state runs, so the secrets stay out of the rendered state data. Holds
    secrets: for states, not for the command line. ``saltenv``: as for
    :py:func:`lookup`.
    """
    relays = get(lookup=lookup(saltenv), show_secrets=True)["relays"]
    return {os.path.basename(r["token_path"]): _token_data(r) for r in relays if r["oauth2"]}


def _token_data(relay):
    oauth2 = relay["oauth2"]
    data = {"refresh_token": oauth2["refresh_token"], "client_id": oauth2["client_id"],
            "token_endpoint": oauth2["token_endpoint"], "ca_bundle_file": token_ca(relay)}
    if oauth2.get("client_secret"):
        data["client_secret"] = oauth2["client_secret"]
    return data


def oauth2_token_file(saltenv=None):
    """
    The primary relay's token file data (see :py:func:`oauth2_token_files`);
    kept for states written for one relay. Holds secrets.
    """
    relays = get(lookup=lookup(saltenv), show_secrets=True)["relays"]
    oauth = [r for r in relays if r["oauth2"]]
    return _token_data(oauth[0]) if oauth else {
        "refresh_token": None, "client_id": None, "token_endpoint": None,
        "ca_bundle_file": XOAUTH2_CA}


def packages(values=None):
    """
    The packages to install: the os_family's, plus the XOAUTH2 plugin when
    relay:oauth2 is set; refused, before anything changes, when this host's
    package sources don't offer the plugin.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay_settings.packages
    """
    values = values or lookup()
    pkgs = list(values.get("packages") or [])
    key = _first_oauth2(__pillar__.get(PILLAR_ROOT) or {})
    if key is None:
        return pkgs
    name = values.get("xoauth2_package")
    if not name:
        _fail(key, f"no XOAUTH2 plugin package is known for os_family "
              f"{__grains__.get('os_family')}: set postfix_relay:lookup:xoauth2_package")
    if __salt__["pkg.version"](name) or _offered(name):
        return pkgs + [name]
    hint = __salt__["postfix_sasl.xoauth2_hint"]() if "postfix_sasl.xoauth2_hint" in \
        __salt__ else "github.com/tarickb/sasl-xoauth2"
    _fail(key, f"needs the Cyrus SASL client plugin {name}, which this "
          f"host's package sources do not offer: {hint}; add a source that has it "
          "and update the package lists (or install it), then apply again")


def _first_oauth2(pillar):
    """The pillar key of the first relay with oauth2 (None: no relay has it)."""
    if not isinstance(pillar, dict):
        return None
    found = [("relay", pillar.get("relay"))]
    fallbacks, senders = pillar.get("fallback_relays"), pillar.get("sender_relays")
    if isinstance(fallbacks, list):
        found += [(f"fallback_relays:{i}", r) for i, r in enumerate(fallbacks)]
    if isinstance(senders, dict):
        found += [(f"sender_relays:{k}", r) for k, r in senders.items()]
    return next((f"{key}:oauth2" for key, relay in found
                 if isinstance(relay, dict) and relay.get("oauth2")), None)


def _offered(name):
    """The package sources have name (asked only when it is not installed)."""
    # from the package cache as it is (no refresh: rendering must stay quick)
    latest = __salt__["pkg.latest_version"](name, refresh=False)
    if isinstance(latest, dict):  # some Salt versions answer {name: version}
        latest = latest.get(name)
    return bool(latest)
