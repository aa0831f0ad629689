{#-
  Reactor SLS: passes a postfix_relay beacon event on to a webhook, so the
  admin hears that a host's mail stopped through a channel that is not mail.

  Master config (e.g. /etc/salt/master.d/postfix_relay_alert.conf), with this
  file copied to /srv/reactor/:

    reactor:
      - 'salt/beacon/*/postfix_relay/*':
        - /srv/reactor/postfix_relay_alert.sls
    postfix_relay_alert_url: https://hooks.example.org/services/T000/B000/XXXX

  runner.http.query, not local.http.query: the runner runs on the master
  itself, so the alert leaves even when the host whose mail is stuck has
  lost its network or its minion is busy, and only the master needs to
  reach the webhook. The body is JSON with a one-line `text` (what Slack,
  Mattermost and Rocket.Chat incoming webhooks show) and the event's
  fields: minion, condition (deferred, age, credentials, tls, unreachable,
  oauth2, recovered; with recovered, which one cleared), cause, fix, relay,
  deferred count, oldest age in seconds, the relay's reply. Only these
  fields are copied; the beacon never puts a secret in them.
-#}
{%- set url = opts.get('postfix_relay_alert_url') %}
{%- if url and data.get('condition') %}
{#- Only these fields are passed on, each when the event has it. #}
{%- set alert = {'minion': data.get('id')} %}
{%- for key in ('condition', 'recovered', 'cause', 'fix', 'relay', 'deferred', 'oldest_age',
                'reply') %}
{%-   if data.get(key) is not none %}{% do alert.update({key: data[key]}) %}{% endif %}
{%- endfor %}
{%- set summary = [alert.minion ~ ': postfix_relay ' ~ alert.condition
                   ~ ' (' ~ alert.get('deferred', '?') ~ ' deferred)'] %}
{%- if alert.cause %}{% do summary.append(alert.cause) %}{% endif %}
{%- if alert.fix and alert.condition != 'recovered' %}
{%-   do summary.append('fix: ' ~ alert.fix) %}
{%- endif %}
{%- do alert.update({'text': summary | join(' - ')}) %}
postfix-relay-alert-webhook:
  runner.http.query:
    - args:
      - url: {{ url | json }}
      - method: POST
      - header_dict: {"Content-Type": "application/json"}
      - data: {{ alert | json | json }}
      - status: true
{%- endif %}
