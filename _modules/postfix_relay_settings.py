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

import ipaddress
import json
import os
import re

from salt.exceptions import SaltInvocationError

__virtualname__ = "postfix_relay_settings"

PILLAR_ROOT = "postfix_relay"
TLS_LEVELS = ("none", "may", "encrypt", "verify", "secure")
STRONG_TLS = ("encrypt", "verify", "secure")
RECIPIENT_MODES = ("all", "local")
LISTEN_MODES = ("loopback", "none")
KNOWN_KEYS = {
    "domain", "hostname", "sender", "recipient", "recipient_mode", "reply_to",
    "listen", "relay", "main_cf", "log_file", "password_map",
}
KNOWN_RELAY_KEYS = {
    "host", "port", "mx", "username", "password", "tls", "ca_file", "mechanisms", "oauth2",
}
KNOWN_OAUTH2_KEYS = {"token_endpoint", "client_id", "client_secret", "refresh_token", "ca_file"}
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
_PARAM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_MECHANISM = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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


def relay_host(key, value):
    """Validate the relay host: a DNS name or an IP address, brackets allowed."""
    value = _text(key, value, required=True)
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return dns_name(key, bare)
    return f"ipv6:{ip}" if ip.version == 6 else str(ip)


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
        "client_id": _text(f"{key}:client_id", value.get("client_id"), required=True),
        "client_secret": _text(f"{key}:client_secret", value.get("client_secret")),
        "refresh_token": _text(f"{key}:refresh_token", value.get("refresh_token"),
                               required=True),
        "ca_file": ca_file,
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
                  "(lower-case letters, digits and '_', no '=' or spaces)")
        if name in FORBIDDEN_EXTRA:
            _fail(f"main_cf:{name}", f"is refused: {FORBIDDEN_EXTRA[name]}")
        params[name] = extra_value(f"main_cf:{name}", item)
    return params


def table_type(value, host):
    """The password table's type from pillar `password_map:type`, or None.

    None means Postfix's own `default_database_type`: main.cf then says
    `${default_database_type}:` and Postfix itself resolves it, so the value is
    right even when Postfix is not installed yet while the SLS renders.
    """
    if value is None:
        value = {}
    if not isinstance(value, dict) or set(value) - {"type"}:
        _fail("password_map", "must be a mapping with the single key type")
    supported = host.get("map_types") or []
    name = _text("password_map:type", value.get("type"))
    if name and supported and name not in supported:
        _fail("password_map:type", f"{name!r} is not supported by this Postfix "
              f"(postconf -m lists: {', '.join(supported)})")
    return name


def normalise(pillar, grains, host):
    """Validate the pillar and derive every value the formula writes.

    ``pillar`` is the ``postfix_relay`` pillar dict, ``grains`` needs ``fqdn``
    and ``host``; ``host`` holds what is known of this host: ``map_types``
    (empty while Postfix is not installed), ``ca_bundle``, ``config_dir``,
    ``has_syslog``.
    """
    if not isinstance(pillar, dict) or not pillar:
        _fail("", "is missing: set at least domain, recipient and relay:host "
                  "(see pillar.example)")
    unknown = sorted(set(pillar) - KNOWN_KEYS)
    if unknown:
        _fail(unknown[0], f"is not a known key (known: {', '.join(sorted(KNOWN_KEYS))})")
    relay = pillar.get("relay")
    if not isinstance(relay, dict):
        _fail("relay", "is required: a mapping with at least host")
    unknown = sorted(set(relay) - KNOWN_RELAY_KEYS)
    if unknown:
        _fail(f"relay:{unknown[0]}", "is not a known key "
              f"(known: {', '.join(sorted(KNOWN_RELAY_KEYS))})")

    domain = dns_name("domain", pillar.get("domain"), required=True)
    hostname = dns_name("hostname", pillar.get("hostname"))
    if hostname is None:
        fqdn = (grains.get("fqdn") or "").lower()
        short = (grains.get("host") or fqdn.split(".")[0] or "localhost").lower()
        hostname = fqdn if "." in fqdn else f"{short}.{domain}"
        hostname = dns_name("hostname (from the minion's fqdn grain)", hostname)
    sender = local_part("sender", pillar.get("sender")) or hostname.split(".")[0]
    recipient = address("recipient", pillar.get("recipient"), required=True)
    recipient_mode = choice("recipient_mode", pillar.get("recipient_mode"),
                            RECIPIENT_MODES, "all")
    reply_to = address("reply_to", pillar.get("reply_to"))
    listen = choice("listen", pillar.get("listen"), LISTEN_MODES, "loopback")

    rhost = relay_host("relay:host", relay.get("host"))
    rport = port("relay:port", relay.get("port"), 587)
    mx = relay.get("mx", False)
    if not isinstance(mx, bool):
        _fail("relay:mx", "must be true or false")
    username = _text("relay:username", relay.get("username"))
    password = _text("relay:password", relay.get("password"), allow_space=True)
    oauth2 = oauth2_settings("relay:oauth2", relay.get("oauth2"), host)
    if oauth2 and password is not None:
        _fail("relay:password", "give either relay:password or relay:oauth2, not both")
    if oauth2 and username is None:
        _fail("relay:username", "is required with relay:oauth2 (the mailbox that logs in)")
    if oauth2:
        password = f"{XOAUTH2_DIR}/{rhost}-{rport}.json"  # the token file is the "password"
    if (username is None) != (password is None):
        missing = "relay:password" if password is None else "relay:username"
        _fail(missing, "is required when "
              f"{'relay:username' if password is None else 'relay:password'} is set")
    if username is not None and ":" in username:
        _fail("relay:username", "must not contain ':' (it separates user and password)")
    sasl = password is not None
    tls = choice("relay:tls", relay.get("tls"), TLS_LEVELS,
                 "encrypt" if sasl or rport == 465 else "may")
    if sasl and tls not in STRONG_TLS:
        _fail("relay:tls", f"{tls!r} would let the password go out in clear: "
              "use encrypt, verify or secure with a password")
    if rport == 465 and tls not in STRONG_TLS:
        _fail("relay:tls", f"port 465 is implicit TLS: {tls!r} is not possible there, "
              "use encrypt, verify or secure")
    ca_file = absolute_path("relay:ca_file", relay.get("ca_file"), must_exist=True)
    if tls in ("verify", "secure") and ca_file is None:
        ca_file = host.get("ca_bundle")
    mechs = mechanisms("relay:mechanisms", relay.get("mechanisms"))
    if oauth2:
        if mechs not in ([], ["xoauth2"]):
            _fail("relay:mechanisms", "must be empty or [xoauth2] with relay:oauth2")
        mechs = ["xoauth2"]
    if mechs and not sasl:
        _fail("relay:mechanisms", "only applies with relay:username and relay:password")

    extra = extra_params(pillar.get("main_cf"))
    log_file = absolute_path("log_file", pillar.get("log_file"))
    if log_file is None and not host.get("has_syslog", True):
        # No syslog socket: without maillog_file Postfix would log nowhere.
        log_file = "/var/log/postfix.log"

    relayhost = f"{rhost}:{rport}" if mx else f"[{rhost}]:{rport}"
    config_dir = host.get("config_dir", "/etc/postfix")
    map_type = table_type(pillar.get("password_map"), host)
    tables = table_paths(config_dir)
    params = {
        "myhostname": hostname,
        "mydomain": domain,
        "myorigin": domain if recipient_mode == "all" else hostname,
        "mydestination": "",
        "relay_domains": "",
        "local_transport": "error:5.1.1 local delivery is disabled on this null client",
        "alias_maps": "",
        "alias_database": "",
        "inet_interfaces": "loopback-only",
        "mynetworks": "127.0.0.0/8 [::1]/128",
        "masquerade_domains": domain,
        "relayhost": relayhost,
        "always_add_missing_headers": "yes",
        "sender_canonical_maps": f"static:{sender}@{domain}",
        "recipient_canonical_maps": (f"static:{recipient}" if recipient_mode == "all"
                                     else f"regexp:{tables['recipients']}"),
        "smtp_tls_security_level": tls,
        "smtp_tls_loglevel": "1",
    }
    if rport == 465:
        params["smtp_tls_wrappermode"] = "yes"
    if ca_file:
        params["smtp_tls_CAfile"] = ca_file
    if sasl:
        params.update({
            "smtp_sasl_auth_enable": "yes",
            "smtp_sasl_password_maps":
                f"{map_type or '${default_database_type}'}:{tables['password']}",
            # PLAIN/LOGIN only inside TLS; never anonymous.
            "smtp_sasl_security_options": "noanonymous, noplaintext",
            "smtp_sasl_tls_security_options": "noanonymous",
        })
        if mechs:
            params["smtp_sasl_mechanism_filter"] = ", ".join(mechs)
    if reply_to:
        params["smtp_header_checks"] = f"regexp:{tables['reply_to']}"
    if log_file:
        params["maillog_file"] = log_file
    if sasl and extra.get("smtp_tls_security_level", tls) not in STRONG_TLS:
        _fail("main_cf:smtp_tls_security_level",
              "would let the password go out in clear: use encrypt, verify or secure")
    params.update(extra)

    return {
        "hostname": hostname,
        "domain": domain,
        "sender": f"{sender}@{domain}",
        "recipient": recipient,
        "recipient_mode": recipient_mode,
        "reply_to": reply_to,
        "listen": listen,
        "relayhost": relayhost,
        "sasl": sasl,
        "tables": tables,
        "sasl_dir": os.path.dirname(tables["password"]),
        "map_type": map_type,
        "password_entries": {relayhost: f"{username}:{password}"} if sasl else {},
        "reply_to_rules": reply_to_rules(reply_to) if reply_to else "",
        "recipient_rules": recipient_rules(hostname, recipient)
        if recipient_mode == "local" else "",
        "main_cf": params,
        "oauth2": oauth2,
        # the token file as Postfix's smtp process sees it (the table's "password")
        "oauth2_token_path": password if oauth2 else None,
        # where the plugin's files lie on this host: in smtp's chroot when it has one
        "xoauth2_paths": xoauth2_paths(host.get("smtp_chroot_dir", ""), password)
        if oauth2 else None,
        # the plugin's own config: no secrets (those go in the 0600 token file)
        # (the plugin does not load without a client_secret key: the real one,
        # if any, is in the token file, which overrides this). No syslog: its
        # failure line is the last trace line, which can be the token endpoint's
        # answer with a fresh access token (seen with 0.27); probe names causes.
        "xoauth2_conf": json.dumps({
            "client_id": oauth2["client_id"], "client_secret": "",
            "token_endpoint": oauth2["token_endpoint"],
            "log_to_syslog_on_failure": "no", "log_full_trace_on_failure": "no",
        }, indent=1) + "\n" if oauth2 else None,
        "extra_params": sorted(extra),
        "log_file": log_file,
    }


def table_paths(config_dir="/etc/postfix"):
    """
    The tables the formula manages, by role.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay_settings.table_paths
    """
    return {
        "password": f"{config_dir}/sasl/passwd",
        "reply_to": f"{config_dir}/reply_to_header",
        "recipients": f"{config_dir}/recipient_canonical",
    }


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
        map_types = __salt__["postfix_control.facts"](config_dir)["map_types"]
    except Exception:  # pylint: disable=broad-except
        map_types = []  # not installed yet: package.sls installs it first
    try:
        chroot = __salt__["postfix_control.smtp_chroot_dir"](
            config_dir, lookup.get("smtp_chroot_dir", ""))
    except Exception:  # pylint: disable=broad-except
        chroot = lookup.get("smtp_chroot_dir", "")
    return {
        "map_types": map_types,
        "smtp_chroot_dir": chroot,
        "config_dir": config_dir,
        "ca_bundle": lookup.get("ca_bundle"),
        "has_syslog": os.path.exists("/dev/log"),
    }


def _merge(base, over):
    """Recursive dict merge; lists and scalars in ``over`` replace."""
    merged = dict(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def lookup(saltenv="base"):
    """
    The formula's per-OS values: defaults.yaml < osfamilymap.yaml (by the
    os_family grain) < pillar ``postfix_relay:lookup``.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_relay_settings.lookup
    """
    key = f"postfix_relay_settings.lookup:{saltenv}"
    if key not in __context__:
        import salt.utils.yaml  # pylint: disable=import-outside-toplevel

        def load(name):
            text = __salt__["cp.get_file_str"](f"salt://postfix_relay/{name}", saltenv=saltenv)
            return salt.utils.yaml.safe_load(text or "") or {}

        merged = _merge(load("defaults.yaml").get("lookup", {}),
                        load("osfamilymap.yaml").get(__grains__.get("os_family"), {}))
        pillar_lookup = (__pillar__.get(PILLAR_ROOT) or {}).get("lookup") or {}
        if not isinstance(pillar_lookup, dict):
            _fail("lookup", "must be a mapping (see postfix_relay/osfamilymap.yaml)")
        __context__[key] = _merge(merged, pillar_lookup)
    return dict(__context__[key])


def redact(result):
    """The settings without the password (what a CLI call may show)."""
    shown = dict(result)
    if result.get("oauth2"):
        shown["oauth2"] = {k: ("********" if k in ("client_secret", "refresh_token") and v
                               else v) for k, v in result["oauth2"].items()}
    shown["password_entries"] = {
        key: value.split(":", 1)[0] + ":********"
        for key, value in result["password_entries"].items()
    }
    return shown


def _precheck(result, config_dir):
    """Postfix's own check of the resulting main.cf, its complaint pinned on
    the pillar key behind the parameter it names."""
    problems = __salt__["postfix_control.precheck_main_cf"](result["main_cf"], config_dir)
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
    result = normalise(pillar, __grains__, _host_facts(lookup or {}))
    if check:
        _precheck(result, (lookup or {}).get("config_dir", "/etc/postfix"))
    return result if show_secrets else redact(result)


def password_entries(saltenv="base"):
    """
    The password table's entries (``{relayhost: "user:password"}``, empty
    without SASL), for ``postmap.managed entries_from``: read from the pillar
    when the state runs, so the password is never part of the rendered state
    data that Salt caches on disk. The value holds the password: this is for
    states, not for the command line.
    """
    return get(lookup=lookup(saltenv), show_secrets=True)["password_entries"]


def oauth2_token_file(saltenv="base"):
    """
    What the XOAUTH2 token file starts with (refresh token, client, endpoint,
    the CA bundle as the plugin sees it), for ``postfix_xoauth2.token_file``:
    read when the state runs, so the secrets stay out of the rendered state
    data. Holds secrets: for states, not for the command line.
    """
    oauth2 = get(lookup=lookup(saltenv), show_secrets=True)["oauth2"] or {}
    data = {"refresh_token": oauth2.get("refresh_token"), "client_id": oauth2.get("client_id"),
            "token_endpoint": oauth2.get("token_endpoint"),
            "ca_bundle_file": XOAUTH2_CA}
    if oauth2.get("client_secret"):
        data["client_secret"] = oauth2["client_secret"]
    return data


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
    relay = (__pillar__.get(PILLAR_ROOT) or {}).get("relay") or {}
    if not isinstance(relay, dict) or not relay.get("oauth2"):
        return pkgs
    name = values.get("xoauth2_package")
    if not name:
        _fail("relay:oauth2", f"no XOAUTH2 plugin package is known for os_family "
              f"{__grains__.get('os_family')}: set postfix_relay:lookup:xoauth2_package")
    if __salt__["pkg.version"](name) or _offered(name):
        return pkgs + [name]
    hint = __salt__["postfix_sasl.xoauth2_hint"]() if "postfix_sasl.xoauth2_hint" in \
        __salt__ else "github.com/tarickb/sasl-xoauth2"
    _fail("relay:oauth2", f"needs the Cyrus SASL client plugin {name}, which this "
          f"host's package sources do not offer: {hint}; add a source that has it "
          "and update the package lists (or install it), then apply again")


def _offered(name):
    """The package sources have name (asked only when it is not installed)."""
    # from the package cache as it is (no refresh: rendering must stay quick)
    latest = __salt__["pkg.latest_version"](name, refresh=False)
    if isinstance(latest, dict):  # some Salt versions answer {name: version}
        latest = latest.get(name)
    return bool(latest)
