"""
The sasl-xoauth2 plugin's token file: written when the pillar's values change,
left alone when only the plugin refreshed it.

.. code-block:: yaml

    /var/spool/postfix/etc/sasl-xoauth2/smtp.office365.com-587.json:
      postfix_xoauth2.token_file:
        - data_from: postfix_relay_settings.oauth2_token_file
        - user: postfix
"""

__virtualname__ = "postfix_xoauth2"


def __virtual__():
    if "postfix_xoauth2.token_current" in __salt__:
        return __virtualname__
    return (False, "the postfix_xoauth2 execution module is not available")


def _data(data_from, data_key=None):
    """The token file's starting content from data_from (its entry data_key
    when given), asked for this run's environment when the function takes a
    saltenv."""
    data = __utils__["salt_calls.call_with_saltenv"](__salt__[data_from], __env__)
    if data_key is not None:
        if not isinstance(data, dict) or data_key not in data:
            raise ValueError(f"{data_from} has no entry {data_key!r}")
        data = data[data_key]
    if not isinstance(data, dict):
        raise ValueError(f"{data_from} did not return a mapping")
    return data


def _pending(name, user, current, prune, keep):
    """The changes the real run would make, found without changing anything."""
    mod = __salt__
    if current:
        changes = mod["postfix_xoauth2.private_changes"](name, user)
    else:
        changes = {"token_file": "written from the pillar (values not shown)"}
    stale = mod["postfix_xoauth2.stale_tokens"](name, keep) if prune else []
    if stale:
        changes["removed"] = stale
    return changes


def token_file(name, data_from, user="postfix", prune=True, keep=None,  # noqa: PLR0913
               data_key=None):
    """
    name
        Path of the token file (on this host; the plugin sees it inside
        Postfix's chroot).
    data_from
        Execution function returning the file's starting content (refresh
        token, client, endpoint): read when the state runs, never shown;
        given the run's ``saltenv`` when it takes one.
    user
        Owner: the user Postfix's smtp process runs as (it rewrites the file).
    prune
        Remove the other token files in the directory (relays no longer used:
        each still holds a refresh token).
    keep
        File names prune leaves: the token files of the other relays.
    data_key
        With a data_from that returns one mapping per token file: this
        file's key in it.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    try:
        data = _data(data_from, data_key)
        current = __salt__["postfix_xoauth2.token_current"](name, data)
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=f"token file not checked: {exc}")
        return ret
    if __opts__["test"]:
        try:
            ret["changes"] = _pending(name, user, current, prune, keep)
        except Exception as exc:  # pylint: disable=broad-except
            ret.update(result=False, comment=f"token file not checked: {exc}")
            return ret
        ret["result"] = None if ret["changes"] else True
        ret["comment"] = ("Token file would be written" if not current else
                          f"Token file is current; would change: {', '.join(ret['changes'])}"
                          if ret["changes"] else
                          "Token file is current (the plugin refreshes it itself)")
        return ret
    try:
        if current:
            ret["changes"] = __salt__["postfix_xoauth2.ensure_private"](name, user)
            ret["comment"] = "Token file is current (the plugin refreshes it itself)"
        else:
            __salt__["postfix_xoauth2.write_token"](name, data, user)
            ret["changes"] = {"token_file": "written from the pillar (values not shown)"}
            ret["comment"] = "Token file written"
        if prune:
            removed = __salt__["postfix_xoauth2.prune"](name, keep)
            if removed:
                ret["changes"]["removed"] = removed
    except Exception as exc:  # pylint: disable=broad-except
        ret.update(result=False, comment=f"token file not written: {exc}")
    return ret
