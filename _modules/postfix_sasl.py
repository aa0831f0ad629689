"""
Which SASL mechanism will Postfix's smtp client use with a relay?

Asked of libsasl2 itself (ctypes), set up the way Postfix's Cyrus client
(src/xsasl/xsasl_cyrus_client.c) sets it up: ``sasl_client_new("smtp",
<relay host>, no addresses, user/password callbacks, flags 0)``, security
properties with min_ssf = max_ssf = 0, maxbufsize 0 and the flags parsed
from ``smtp_sasl_security_options`` (or ``smtp_sasl_tls_security_options``
inside TLS), then ``sasl_client_start`` on the offered mechanisms that pass
``smtp_sasl_mechanism_filter``. The password callback answers "ask the
user" (SASL_INTERACT): a plugin that needs a password returns a prompt for
it, which ends the probe there. The choice does not depend on it, and no password,
real or dummy, reaches a plugin (sasl-xoauth2 would open it as a token file).

CLI Example:

.. code-block:: bash

    salt-call postfix_sasl.negotiate '["CRAM-MD5", "PLAIN", "LOGIN"]'
"""

import ctypes
import ctypes.util
import re
import threading

__virtualname__ = "postfix_sasl"

SASL_OK, SASL_CONTINUE, SASL_INTERACT, SASL_NOMECH = 0, 1, 2, -4
SASL_SEC_PROPS = 101
SASL_CB_LIST_END, SASL_CB_AUTHNAME, SASL_CB_PASS = 0, 0x4002, 0x4004
# smtp_sasl_security_options words and the libsasl2 flags Postfix maps them to.
SECURITY_FLAGS = {
    "noplaintext": 0x0001, "noactive": 0x0002, "nodictionary": 0x0004,
    "forward_secrecy": 0x0008, "noanonymous": 0x0010, "mutual_auth": 0x0040,
}
PLUGIN_HINT = ("install the Cyrus SASL client plugins (Debian/Ubuntu: libsasl2-modules; "
               "RedHat/Fedora: cyrus-sasl-plain, cyrus-sasl-md5; "
               "SUSE: cyrus-sasl-plain, cyrus-sasl-crammd5)")
# XOAUTH2 comes from its own plugin, which few distros ship.
XOAUTH2_HINT = ("install the XOAUTH2 client plugin sasl-xoauth2 (Debian: experimental, with "
                "Postfix 3.11 from unstable; Ubuntu: ppa:sasl-xoauth2/stable; Fedora and "
                "EPEL: sasl-xoauth2; elsewhere: github.com/tarickb/sasl-xoauth2)")

_LOCK = threading.Lock()
_LIB = None


class _Callback(ctypes.Structure):
    _fields_ = [("id", ctypes.c_ulong), ("proc", ctypes.c_void_p),
                ("context", ctypes.c_void_p)]


class _SecProps(ctypes.Structure):
    _fields_ = [("min_ssf", ctypes.c_uint), ("max_ssf", ctypes.c_uint),
                ("maxbufsize", ctypes.c_uint), ("security_flags", ctypes.c_uint),
                ("property_names", ctypes.c_void_p), ("property_values", ctypes.c_void_p)]


_GETSIMPLE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                              ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_uint))
_GETSECRET = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                              ctypes.POINTER(ctypes.c_void_p))
_DUMMY_USER = ctypes.c_char_p(b"postfix-relay-probe")


@_GETSIMPLE
def _get_user(_context, _id, result, length):
    result[0] = _DUMMY_USER.value
    if length:
        length[0] = len(_DUMMY_USER.value)
    return SASL_OK


@_GETSECRET
def _no_secret(_conn, _context, _id, psecret):
    psecret[0] = None
    return SASL_INTERACT


_CALLBACKS = (_Callback * 3)(
    _Callback(SASL_CB_AUTHNAME, ctypes.cast(_get_user, ctypes.c_void_p), None),
    _Callback(SASL_CB_PASS, ctypes.cast(_no_secret, ctypes.c_void_p), None),
    _Callback(SASL_CB_LIST_END, None, None),
)
_LIBC = ctypes.CDLL(None)
_LIBC.free.argtypes = [ctypes.c_void_p]


def __virtual__():
    if ctypes.util.find_library("sasl2") or _find_lib():
        return __virtualname__
    return (False, "libsasl2 is not installed")


def _find_lib():
    for name in ("libsasl2.so.2", "libsasl2.so.3", ctypes.util.find_library("sasl2")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _lib():
    """libsasl2, initialised once per process as Postfix's client does."""
    global _LIB  # pylint: disable=global-statement
    with _LOCK:
        if _LIB is None:
            lib = _find_lib()
            if lib is None:
                raise RuntimeError("libsasl2 is not installed (Debian: libsasl2-2)")
            lib.sasl_client_init.argtypes = [ctypes.c_void_p]
            lib.sasl_client_new.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                            ctypes.c_char_p, ctypes.c_void_p, ctypes.c_uint,
                                            ctypes.POINTER(ctypes.c_void_p)]
            lib.sasl_setprop.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            lib.sasl_client_start.argtypes = [
                ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p),
                ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_uint),
                ctypes.POINTER(ctypes.c_char_p)]
            lib.sasl_dispose.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
            lib.sasl_errstring.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p]
            lib.sasl_errstring.restype = ctypes.c_char_p
            status = lib.sasl_client_init(None)
            if status != SASL_OK:
                raise RuntimeError(f"sasl_client_init: {_errstring(lib, status)}")
            _LIB = lib
        return _LIB


def _errstring(lib, status):
    text = lib.sasl_errstring(status, None, None)
    return text.decode() if text else f"SASL error {status}"


def security_flags(options):
    """
    The libsasl2 flags for a ``smtp_sasl_security_options`` value.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_sasl.security_flags 'noanonymous, noplaintext'
    """
    flags = 0
    for word in re.split(r"[\s,]+", (options or "").strip().lower()):
        if word:
            if word not in SECURITY_FLAGS:
                raise ValueError(f"unknown SASL security option {word!r}")
            flags |= SECURITY_FLAGS[word]
    return flags


def _start(mechanisms, flags, host, service="smtp"):
    """(status, chosen mechanism) from sasl_client_start, Postfix's way."""
    lib = _lib()
    with _LOCK:
        conn = ctypes.c_void_p()
        status = lib.sasl_client_new(service.encode(), host.encode(), None, None,
                                     ctypes.cast(_CALLBACKS, ctypes.c_void_p), 0,
                                     ctypes.byref(conn))
        if status != SASL_OK:
            raise RuntimeError(f"sasl_client_new: {_errstring(lib, status)}")
        try:
            props = _SecProps(0, 0, 0, flags, None, None)
            lib.sasl_setprop(conn, SASL_SEC_PROPS, ctypes.byref(props))
            out, outlen, mech = ctypes.c_char_p(), ctypes.c_uint(), ctypes.c_char_p()
            prompts = ctypes.c_void_p()
            status = lib.sasl_client_start(conn, " ".join(mechanisms).encode(),
                                           ctypes.byref(prompts), ctypes.byref(out),
                                           ctypes.byref(outlen), ctypes.byref(mech))
            if prompts.value:  # the plugin's password prompt (malloc'd by it)
                _LIBC.free(prompts)
            chosen = mech.value.decode() if status in (SASL_OK, SASL_CONTINUE, SASL_INTERACT) \
                and mech.value else None
            return status, chosen, _errstring(lib, status)
        finally:
            lib.sasl_dispose(ctypes.byref(conn))


def plugins(mechanisms=("PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1",
                        "SCRAM-SHA-256", "GSSAPI", "XOAUTH2", "OAUTHBEARER", "ANONYMOUS")):
    """
    Of these mechanisms, the ones this host's libsasl2 has a client plugin for.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_sasl.plugins
    """
    return [m for m in mechanisms if _start([m], 0, "relay.invalid")[1] == m.upper()]


def xoauth2_hint():
    """
    Where to get the XOAUTH2 client plugin.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_sasl.xoauth2_hint
    """
    return XOAUTH2_HINT


def filter_mechanisms(offered, mechanism_filter):
    """
    Apply ``smtp_sasl_mechanism_filter`` (a list of names; matched without
    regard to case) to the offered mechanisms. Table-based filters
    (type:name) are not evaluated here.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_sasl.filter_mechanisms '["PLAIN","LOGIN"]' 'plain'
    """
    words = [w.lower() for w in re.split(r"[\s,]+", (mechanism_filter or "").strip()) if w]
    if not words:
        return list(offered)
    return [m for m in offered if m.lower() in words]


def negotiate(offered, mechanism_filter="", security_options="noanonymous", tls=True,
              tls_security_options=None, host="relay.invalid"):
    """
    The mechanism Postfix will use, decided by libsasl2 with Postfix's settings.

    Returns ``{"offered", "after_filter", "with_plugin",
    "allowed_by_security_options", "chosen", "reason"}``.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_sasl.negotiate '["PLAIN","LOGIN"]' security_options=noanonymous
    """
    offered = [m.upper() for m in offered]
    options = (tls_security_options if tls and tls_security_options is not None
               else security_options)
    flags = security_flags(options)
    result = {"offered": offered, "security_options": options,
              "after_filter": filter_mechanisms(offered, mechanism_filter)}
    result["with_plugin"] = [m for m in result["after_filter"]
                             if _start([m], 0, host)[1] == m]
    result["allowed_by_security_options"] = [m for m in result["with_plugin"]
                                             if _start([m], flags, host)[1] == m]
    status, chosen, text = _start(result["after_filter"], flags, host) \
        if result["after_filter"] else (SASL_NOMECH, None, "no mechanism")
    result["chosen"] = chosen
    result["reason"] = None if chosen else _why_none(result, options, text, mechanism_filter)
    return result


def _why_none(result, options, text, mechanism_filter):
    if not result["offered"]:
        return "the relay offers no AUTH mechanism"
    if not result["after_filter"]:
        return (f"the mechanism filter ({mechanism_filter}) removes every mechanism the "
                f"relay offers ({', '.join(result['offered'])})")
    if not result["with_plugin"]:
        hint = XOAUTH2_HINT if result["after_filter"] == ["XOAUTH2"] else PLUGIN_HINT
        return (f"no SASL client plugin on this host for {', '.join(result['after_filter'])}: "
                + hint)
    plain = {"PLAIN", "LOGIN"} & set(result["with_plugin"])
    if plain and "noplaintext" in options:
        return (f"the security options ({options}) forbid {', '.join(sorted(plain))}: "
                "noplaintext excludes plaintext mechanisms even inside TLS")
    return f"the security options ({options}) exclude every mechanism ({text})"
