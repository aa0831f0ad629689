"""
Posts a postfix_relay beacon alert to a webhook, from the master. The
example reactor (examples/reactor/postfix_relay_alert.sls) calls it with the
alert's fields only; the webhook's URL (and any headers) come from the
master's configuration, so they never become a job argument: a runner's
arguments travel on the master's event bus (``salt/run/<jid>/new``) and into
its job cache, and a Slack or Mattermost URL is itself the secret.

Master configuration (e.g. /etc/salt/master.d/postfix_relay_alert.conf):

.. code-block:: yaml

    postfix_relay_alert_url: https://hooks.example.org/services/T000/B000/XXXX
    # optional, e.g. for an endpoint that wants a token in a header
    postfix_relay_alert_headers:
      Authorization: Bearer XXXX

.. code-block:: bash

    salt-run saltutil.sync_runners
    salt-run postfix_relay_alert.post '{"minion": "pi1", "condition": "deferred"}'
"""

import contextlib
import json
import logging
import urllib.parse

import salt.utils.http

__virtualname__ = "postfix_relay_alert"

URL_KEY = "postfix_relay_alert_url"
HEADERS_KEY = "postfix_relay_alert_headers"
# The loggers that may print the URL at debug level: Salt's http.query
# ("Requesting URL ...") and urllib3 (the request line, with the path).
URL_LOGGERS = ("salt.utils.http", "urllib3.connectionpool")


def __virtual__():
    return __virtualname__


def summary(alert):
    """The one line chat webhooks show: '<minion>: postfix_relay <condition>
    (<n> deferred) - <cause> - fix: <fix>' (no fix once recovered)."""
    parts = [f"{alert.get('minion')}: postfix_relay {alert.get('condition')} "
             f"({alert.get('deferred', '?')} deferred)"]
    if alert.get("cause"):
        parts.append(str(alert["cause"]))
    if alert.get("fix") and alert.get("condition") != "recovered":
        parts.append(f"fix: {alert['fix']}")
    return " - ".join(parts)


class _HideURL(logging.Filter):
    """Drops log records that would show the webhook URL or its path."""

    def __init__(self, url):
        super().__init__()
        path = urllib.parse.urlsplit(url).path
        self.secrets = [s for s in (url, path if len(path) > 1 else None) if s]

    def filter(self, record):
        message = record.getMessage()
        return not any(secret in message for secret in self.secrets)


@contextlib.contextmanager
def _url_kept_out_of_logs(url):
    hide = _HideURL(url)
    loggers = [logging.getLogger(name) for name in URL_LOGGERS]
    for logger in loggers:
        logger.addFilter(hide)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(hide)


def _scrub(text, url):
    """An error text with the URL (and its path) replaced by the config key."""
    path = urllib.parse.urlsplit(url).path
    for secret in (url, path if len(path) > 1 else None):
        if secret:
            text = text.replace(secret, f"<{URL_KEY}>")
    return text


def post(alert, timeout=10):
    """
    POST the alert as JSON (its fields plus a one-line ``text``) to the URL in
    the master's ``postfix_relay_alert_url``, with ``Content-Type:
    application/json`` and any ``postfix_relay_alert_headers``. Returns
    ``{"result": True, "status": <HTTP status>}``, or ``result: False`` and
    a comment (never the URL) when the webhook cannot be reached or answers
    an error; the job's retcode is then 1.

    CLI Example:

    .. code-block:: bash

        salt-run postfix_relay_alert.post '{"minion": "pi1", "condition": "deferred"}'
    """
    url = __opts__.get(URL_KEY)
    if not url:
        return _failed(f"{URL_KEY} is not set in the master's configuration")
    if not isinstance(alert, dict):
        return _failed("alert must be a mapping of the beacon event's fields")
    body = {**alert, "text": alert.get("text") or summary(alert)}
    headers = {"Content-Type": "application/json", **(__opts__.get(HEADERS_KEY) or {})}
    # http.query takes its timeouts from opts (Salt's default: an hour)
    opts = {**__opts__, "http_connect_timeout": timeout, "http_request_timeout": timeout}
    with _url_kept_out_of_logs(url):
        res = salt.utils.http.query(url, method="POST", data=json.dumps(body),
                                    header_dict=headers, status=True, opts=opts,
                                    raise_error=False)
    status = res.get("status")
    if res.get("error") or not (isinstance(status, int) and 200 <= status < 300):
        reason = _scrub(str(res.get("error") or ""), url)
        if not status:
            return _failed(f"the webhook in {URL_KEY} could not be reached: {reason}")
        return _failed(f"the webhook in {URL_KEY} answered HTTP {status}: {reason}".rstrip(": "))
    return {"result": True, "status": status}


def _failed(comment):
    __context__["retcode"] = 1
    return {"result": False, "comment": comment}
