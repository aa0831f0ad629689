{#-
  Reactor SLS: passes a postfix_relay beacon event on to a webhook, so the
  admin hears that a host's mail stopped through a channel that is not mail.

  Master config (e.g. /etc/salt/master.d/postfix_relay_alert.conf), with this
  file copied to /srv/reactor/ and the formula's runner synced to the master
  (`salt-run saltutil.sync_runners`):

    reactor:
      - 'salt/beacon/*/postfix_relay/*':
        - /srv/reactor/postfix_relay_alert.sls
    postfix_relay_alert_url: https://hooks.example.org/services/T000/B000/XXXX

  runner.postfix_relay_alert.post (_runners/postfix_relay_alert.py) runs on
  the master itself, so the alert leaves even when the host whose mail is
  stuck has lost its network or its minion is busy, and only the master
  needs to reach the webhook. The runner reads the URL (and the optional
  postfix_relay_alert_headers) from the master's config: a runner's arguments
  are published on the master's event bus and kept in its job cache, and a
  chat webhook's URL is its secret. Only the alert is an argument: the
  event's fields minion, condition (deferred, age, credentials, tls,
  unreachable, oauth2, recovered; with recovered, which one cleared), cause,
  fix, relay, deferred count, oldest age in seconds, the relay's reply. The
  runner POSTs them as JSON with a one-line `text` (what Slack, Mattermost and
  Rocket.Chat incoming webhooks show). The beacon never puts a secret in them.
-#}
{#- Without a URL the runner could only fail: no job at all. #}
{%- if opts.get('postfix_relay_alert_url') and data.get('condition') %}
{#- Only these fields are passed on, each when the event has it. #}
{%- set alert = {'minion': data.get('id')} %}
{%- for key in ('condition', 'recovered', 'cause', 'fix', 'relay', 'deferred', 'oldest_age',
                'reply') %}
{%-   if data.get(key) is not none %}{% do alert.update({key: data[key]}) %}{% endif %}
{%- endfor %}
postfix-relay-alert-webhook:
  runner.postfix_relay_alert.post:
    - args:
      - alert: {{ alert | json }}
{%- endif %}
