{#- Keeps XOAUTH2 refresh tokens alive (issue 15): a provider revokes one left
    unused (Microsoft after 90 days: AADSTS700082; Google after 7 days for an
    app in "Testing"). A daily cron.d job runs `salt-call --local
    postfix_xoauth2.keepalive`, which refreshes, as the plugin would, each
    token file not refreshed for its relay's oauth2:keepalive_days. cron, not
    a Salt schedule: a host driven by salt-call --local has no salt-minion to
    run one. The relays to keep alive are saved in the minion's cachedir (no
    secrets) for a minion whose pillar lives on the master. Both go when no
    relay uses oauth2 (or every relay has keepalive_days: false). -#}
{%- from "postfix_relay/map.jinja" import postfix_relay with context %}
{%- set s = salt["postfix_relay_settings.get"](lookup=postfix_relay.lookup) %}
{%- set plan = salt["postfix_xoauth2.keepalive_plan"](s) %}
{%- set job = salt["postfix_xoauth2.keepalive_job"]() %}
{%- set paths = salt["postfix_xoauth2.keepalive_paths"]() %}
{%- if plan %}

postfix-relay-oauth2-keepalive-relays:
  file.managed:
    - name: {{ paths.plan }}
    - contents: {{ plan | json | json }}
    - mode: "0600"
    - makedirs: true
    - dir_mode: "0700"

postfix-relay-oauth2-keepalive-job:
  file.managed:
    - name: {{ job.path }}
    - contents: {{ job.contents | json }}
    - user: root
    - group: root
    - mode: "0644"
    {#- /etc/cron.d is there once cron is installed; until then it waits there #}
    - makedirs: true
    - require:
      - file: postfix-relay-oauth2-keepalive-relays
{%- if not job.cron_daemon %}

postfix-relay-oauth2-keepalive-needs-cron:
  test.show_notification:
    - text: >-
        no cron daemon found on this host: {{ job.path }} runs only once one
        is installed (Debian: apt-get install cron); until then run
        `{{ job.command }}` from time to time
{%- endif %}
{%- else %}

postfix-relay-oauth2-keepalive-job:
  file.absent:
    - name: {{ job.path }}

postfix-relay-oauth2-keepalive-relays:
  file.absent:
    - name: {{ paths.plan }}
{%- endif %}
