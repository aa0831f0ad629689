"""
probe's XOAUTH2 check for one relay (sasl-xoauth2): the token file as
Postfix's smtp process sees it, a refresh as the plugin would do it, then
AUTH XOAUTH2 with the fresh access token. Tokens never leave this module.

.. code-block:: bash

    salt-call postfix_probe_oauth2.plugin_fix
"""

import os
import smtplib

__virtualname__ = "postfix_probe_oauth2"


def __virtual__():
    return __virtualname__


def _diag(result, cause, fix):
    result.setdefault("diagnosis", []).append({"cause": cause, "fix": fix})


def _conf():
    """The plugin's config file (read when the plugin loads)."""
    return __salt__["postfix_relay_settings.xoauth2_paths"]()["conf"]


def plugin_fix():
    """
    How to get the XOAUTH2 plugin loaded: install it, and it needs its
    config file to load.

    CLI Example:

    .. code-block:: bash

        salt-call postfix_probe_oauth2.plugin_fix
    """
    if os.path.exists(_conf()):
        return __salt__["postfix_sasl.xoauth2_hint"]()
    return (f"{__salt__['postfix_sasl.xoauth2_hint']()}; if it is installed: it does not load "
            f"without {_conf()} (apply postfix_relay with relay:oauth2 to write it)")


def check(result, conf, smtp, username, token_path, trusted,  # noqa: PLR0913
          config_dir="/etc/postfix"):
    """XOAUTH2: the table's "password" is the token file's path as smtp sees
    it. Check the file, refresh as the plugin would, then AUTH (only where
    Postfix would send it: ``trusted``). Fills ``result``; False when the
    token was not sent because the session is not ``trusted``."""
    chroot = __salt__["postfix_master.smtp_chroot_dir"](config_dir)
    owner = conf.get("mail_owner") or "postfix"
    oauth = {"token_file": token_path, "chroot": chroot or None}
    result["oauth2"] = oauth
    problems = __salt__["postfix_xoauth2.file_problems"](token_path, chroot, owner)
    for problem in problems:
        _diag(result, problem["cause"], problem["fix"])
    if any(problem["kind"] == "missing" for problem in problems):
        return
    try:
        info, access = __salt__["postfix_xoauth2.refresh"](token_path, chroot, _conf())
    except (OSError, ValueError) as exc:  # unreadable, or not JSON: the plugin fails too
        _diag(result, f"the XOAUTH2 token file {token_path} cannot be read ({type(exc).__name__})",
              "re-apply postfix_relay with relay:oauth2:refresh_token (it rewrites the file)")
        return
    oauth.update(info)
    if not info["refresh_token_accepted"]:
        _diag(result, *_refresh_failure(info))
        return
    if not trusted:
        return False
    checked = _try_xoauth2(smtp, username, access)
    result["credentials"].update(checked=True, **checked)
    if not checked["accepted"]:
        _diag(result, *_rejected(checked, username))
    return True


def _refresh_failure(info):
    """(cause, fix) for a refresh that failed."""
    error, code, endpoint = info["error"], info["error_code"], info["token_endpoint"]
    if code == "invalid_grant" and _died_of_silence(error):
        return _died_of_silence(error)
    if code == "invalid_grant":
        return (f"the token endpoint rejects the refresh token ({error}): revoked, expired "
                "or issued to another client; Postfix keeps the mail queued",
                "get a new refresh token for relay:username (e.g. sasl-xoauth2-tool "
                "get-token), set relay:oauth2:refresh_token and re-apply")
    if code in ("invalid_client", "unauthorized_client"):
        return (f"the token endpoint rejects the client ({error})",
                "check relay:oauth2:client_id and client_secret against the app registration")
    if info["answered"]:
        return (f"the token endpoint {endpoint} refuses the refresh ({error})",
                "check relay:oauth2 against the provider's app registration")
    if code == "ca_missing":
        return (error, "re-apply postfix_relay (it copies relay:oauth2:ca_file, or the "
                "system CAs, into smtp's chroot)")
    if code == "untrusted":
        return (error, "set relay:oauth2:ca_file to the CA that signed the token endpoint's "
                "certificate and re-apply")
    return (f"{error}: {endpoint}", "check relay:oauth2:token_endpoint and that this host "
            "reaches it over HTTPS (DNS, proxy, firewall)")


def _died_of_silence(error):
    """(cause, fix) for the providers' words for a refresh token that expired
    (Microsoft's AADSTS700082: unused for 90 days; Google's "Token has been
    expired or revoked"), else None."""
    text = (error or "").lower()
    new_token = ("get a new refresh token for relay:username (e.g. sasl-xoauth2-tool "
                 "get-token), set relay:oauth2:refresh_token and re-apply")
    if "aadsts700082" in text:
        return (f"the token endpoint rejects the refresh token ({error}): Microsoft "
                "revoked it because it was not used for 90 days; Postfix keeps the mail "
                "queued", f"{new_token}; keep relay:oauth2:keepalive_days on (default "
                "14): the daily keep-alive then uses the token long before 90 days")
    if "token has been expired or revoked" in text:
        return (f"the token endpoint rejects the refresh token ({error}): Google revoked "
                "it (consent withdrawn or password changed), it was not used for 6 months, "
                "or the app's OAuth consent screen is in \"Testing\" (such tokens expire 7 "
                "days after they are issued, used or not); Postfix keeps the mail queued",
                f"{new_token}; publish the app (\"In production\") so its tokens do not "
                "expire after 7 days, and keep relay:oauth2:keepalive_days on (default 14) "
                "so the token is used long before 6 months")
    return None


def _try_xoauth2(smtp, username, access):
    """AUTH XOAUTH2 with a fresh access token; the reply, never the token."""
    def response(challenge=None):
        # a challenge is the relay's error JSON: answer empty to get its reply
        return "" if challenge is not None else f"user={username}\1auth=Bearer {access}\1\1"
    try:
        code, reply = smtp.auth("XOAUTH2", response, initial_response_ok=True)
    except smtplib.SMTPAuthenticationError as exc:
        code, reply = exc.smtp_code, exc.smtp_error
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    return {"accepted": 200 <= code < 300, "code": code, "reply": text.replace(access, "****")}


def _rejected(checked, username):
    """(cause, fix) for a relay that refuses a token the endpoint just issued."""
    said = f"{checked['code']} {checked['reply']}"
    if "5.7.139" in said:
        return (f"the relay has SMTP AUTH turned off for {username} or its tenant ({said})",
                "Microsoft 365: turn Authenticated SMTP on for the mailbox (Set-CASMailbox "
                f"{username} -SmtpClientAuthenticationDisabled $false) or the tenant")
    if "5.7.3" in said:
        return (f"the relay refuses the token for {username} ({said})",
                "the token must be for relay:username, and the app must hold the SMTP "
                "permission (Microsoft: https://outlook.office.com/SMTP.Send; Google: "
                "https://mail.google.com/); then get a new refresh token")
    return (f"the relay rejects the XOAUTH2 login ({said})",
            "check relay:username and the app's SMTP permission; get a new refresh token")
