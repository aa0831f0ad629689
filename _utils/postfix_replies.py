"""
Relay replies named (Salt ``__utils__``): a refusal of the sender the relay
account may not send as (send-as), with the provider and the fix. Pure
functions of the reply text: a reply may echo addresses, never a password,
and nothing here sees one.

The texts are the providers' own, as users reported them:

- Microsoft 365: ``550 5.7.60 SMTP; Client does not have permissions to send
  as this sender`` (after DATA), ``554 5.2.252 SendAsDenied; <login> not
  allowed to send as <sender>; STOREDRV.Submission.Exception:...``, older
  ``554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException...``;
  Exchange on premises ``550 5.7.1 Client does not have permissions to send
  as this sender``.
- outlook.com (From must be the login): the same SendAsDenied reply, naming
  an outlook.com/hotmail/live login.
- Amazon SES: ``554 Message rejected: Email address is not verified. The
  following identities failed the check in region <REGION>: <addresses>``.
- SendGrid: ``550 The from address does not match a verified Sender
  Identity. Mail cannot be sent until this error is resolved. ...``.
- Postfix relays (ISPs, self-hosted) with reject_sender_login_mismatch:
  ``553 5.7.1 <pi@example.org>: Sender address rejected: not owned by user
  relayuser``.
- Zoho: ``553 Sender is not allowed to relay emails``.
"""

import re

# outlook.com logins, matched as whole domain names: live.contoso.com is a
# company's domain (Microsoft 365), live.com / live.co.uk are consumer ones.
_CONSUMER = re.compile(r"^(?:outlook|hotmail|live)\.(?:[a-z]{2,3}|(?:co|com)\.[a-z]{2})$"
                       r"|^msn\.com$")

# (provider, pattern), first match wins; SendAsDenied is told apart below
# (Microsoft 365 or outlook.com, by the login the reply names).
SEND_AS = [
    ("Microsoft 365", re.compile(r"\b[45]\.7\.60\b.*permissions to send as", re.I | re.S)),
    ("Microsoft (SendAsDenied)", re.compile(r"SendAsDenied", re.I)),
    ("Microsoft Exchange", re.compile(r"Client does not have permissions to send as", re.I)),
    ("Amazon SES", re.compile(r"Email address is not verified\.\s+The following identities "
                              r"failed the check", re.I)),
    ("SendGrid", re.compile(r"does not match a verified Sender Identity", re.I)),
    ("Postfix (reject_sender_login_mismatch)",
     re.compile(r"Sender address rejected: not owned by user", re.I)),
    ("Zoho", re.compile(r"Sender is not allowed to relay emails", re.I)),
]
_OWNER = re.compile(r"not owned by user (?P<login>\S+)", re.I)
# Postfix's log: "host h[a] said: 550 5.7.60 text (in reply to end of DATA command)"
_SAID = re.compile(r"said:\s*(?P<rest>.*)$", re.S)
_CODE = re.compile(r"^(?P<code>[245]\d\d)[ -](?:(?P<dsn>[245]\.\d{1,3}\.\d{1,3})\s)?")
_STAGE = re.compile(r"\(in reply to (?P<stage>.+?) command\)\s*$")
_DENIED = re.compile(r"SendAsDenied;\s*(?P<login>\S+@\S+) not allowed to send as "
                     r"(?P<sender>\S+?);", re.I)
_REGION = re.compile(r"failed the check in region (?P<region>[A-Za-z0-9-]+)")
STAGES = {"MAIL FROM": "MAIL", "RCPT TO": "RCPT", "end of DATA": "DATA", "DATA": "DATA"}


def parts(reply):
    """
    A relay's reply as the log or the session gives it, split into
    ``{"code", "dsn", "text", "stage"}`` (stage: MAIL, RCPT, DATA or None;
    code None when the text holds no SMTP reply).
    """
    text = (reply or "").strip()
    stage = _STAGE.search(text)
    if stage:
        text = text[:stage.start()].rstrip()
    said = _SAID.search(text)
    if said:
        text = said.group("rest")
    code = _CODE.match(text)
    return {"code": int(code.group("code")) if code else None,
            "dsn": code.group("dsn") if code else None, "text": text,
            "stage": STAGES.get(stage.group("stage")) if stage else None}


def short(text, limit=240):
    """The reply without Microsoft's hex diagnostics, cut at ``limit``."""
    text = re.split(r"\s*\[BeginDiagnosticData\]|\s+0\.35250:", text, maxsplit=1)[0]
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def _provider(reply):
    """(provider, match) of the first send-as pattern the reply matches."""
    for provider, pattern in SEND_AS:
        if pattern.search(reply):
            return provider, pattern
    return None, None


def _microsoft(reply, relay_host):
    """Microsoft 365 or outlook.com, and the login the reply names."""
    denied = _DENIED.search(reply)
    login = denied.group("login") if denied else None
    domain = (login or "").rpartition("@")[2].lower()
    consumer = bool(_CONSUMER.match(domain)) or \
        (relay_host or "").lower().startswith("smtp-mail.outlook.com")
    return ("outlook.com" if consumer else "Microsoft 365"), login


def _provider_fix(provider, sender, login, region):
    """What the provider's side needs, in its words."""
    return {
        "Microsoft 365": f"Exchange Online: Add-RecipientPermission {sender} -AccessRights "
                         f"SendAs -Trustee {login or '<the relay account>'}",
        "Microsoft Exchange": f"Exchange: grant the relay account Send As on {sender}",
        "outlook.com": "outlook.com accounts send only as their own address"
                       + (f": make the rewritten sender {login} (sender: "
                          f"{login.partition('@')[0]}, domain: {login.partition('@')[2]})"
                          if login else ""),
        "Amazon SES": f"verify {sender} or its domain in SES"
                      + (f" in region {region}" if region else "")
                      + " (identities are per region)",
        "SendGrid": f"verify {sender} as a Single Sender or authenticate its domain in "
                    "SendGrid (Settings > Sender Authentication)",
        "Postfix (reject_sender_login_mismatch)":
            f"the relay's smtpd_sender_login_maps must list {sender} for the login "
            f"{login or '<the relay account>'} (ask the relay's admin), or send as an "
            "address that login owns",
        "Zoho": f"add {sender} as a From address of the Zoho account (Mail Settings > "
                "Send Mail As) or as an alias of it, or send as the account's own address",
    }[provider]


def _fix(provider, sender, relay_key, extra):
    """The formula's fix: another sender, or the right account / rights."""
    if relay_key and relay_key.startswith("sender_relays:"):
        ours = (f"give {relay_key} the account of {sender} ({relay_key}:username and "
                f"password), or grant that account send-as rights for {sender}")
    else:
        ours = ("set postfix_relay:sender (and domain) to an address the account may send "
                f"as, or grant the account send-as rights for {sender}")
    return f"{ours}; {extra}"


def classify(reply, sender=None, relay_key=None, relay_host=None):
    """
    Name a relay's refusal (``reply``: the relay's text, or Postfix's log
    field ``host ... said: ...``): for a send-as refusal ``{"kind":
    "send_as", "provider", "code", "dsn", "stage", "temporary", "reply",
    "cause", "fix"}``; None for any other reply (the caller keeps its own
    wording). ``sender``: the envelope sender that was refused;
    ``relay_key``: the pillar key of the relay (a sender relay's fix names
    its account); ``relay_host``: tells outlook.com from Microsoft 365.

    Example (from a module):

    .. code-block:: python

        __utils__["postfix_replies.classify"]("550 5.7.60 SMTP; Client does not ...",
                                              sender="pi@example.org")
    """
    split = parts(reply)
    provider, _ = _provider(split["text"])
    if provider is None:
        return None
    login = None
    if provider.startswith("Microsoft (") or provider == "Microsoft 365":
        provider, login = _microsoft(split["text"], relay_host)
    owner = _OWNER.search(split["text"])
    login = login or (owner and owner.group("login"))
    region = _REGION.search(split["text"])
    shown = f"<{sender}>" if sender else "the sender"
    said = short(split["text"])
    temporary = split["code"] is not None and split["code"] < 500
    cause = (f"{provider} refuses the sender {shown}: the relay account may not send as "
             f"it ({said})" + (" - a temporary refusal: Postfix keeps the mail queued and "
                               "retries" if temporary else ""))
    return {"kind": "send_as", "provider": provider, "code": split["code"],
            "dsn": split["dsn"], "stage": split["stage"], "temporary": temporary,
            "reply": said, "cause": cause,
            "fix": _fix(provider, shown, relay_key,
                        _provider_fix(provider, sender or "<the sender>", login,
                                      region and region.group("region")))}
