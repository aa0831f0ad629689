{#- Undoes init.sls in reverse: Postfix back to the main.cf from before the
    formula (or the distro's), secrets and managed tables removed. Postfix stays
    installed and running, delivering locally. -#}
{%- from "postfix_relay/map.jinja" import postfix_relay with context %}
{%- set conf = postfix_relay.lookup.config_dir %}
{#- Table paths only: clean works even when the pillar is gone or invalid. #}
{%- set tables = salt["postfix_relay_settings.clean_tables"](conf) %}

postfix-relay-clean-main-cf:
  postfix_control.main_cf_restored:
    - name: {{ conf }}/main.cf
    - config_dir: {{ conf }}
    - dist_main_cf: {{ postfix_relay.lookup.dist_main_cf | json }}

postfix-relay-clean-smtpd-listener:
  postfix_control.smtpd_listener:
    - name: {{ conf }}/master.cf
    - enabled: true
    - chroot: {{ postfix_relay.lookup.smtpd_chroot | json }}
    - config_dir: {{ conf }}

{%- for t in tables %}

postfix-relay-clean-{{ t.state_id }}:
  postmap.absent:
    - name: {{ t.path }}
    - config_dir: {{ conf }}
    - require:
      - postfix_control: postfix-relay-clean-main-cf
{%- endfor %}

postfix-relay-clean-aliases:
  postfix_control.aliases_built:
    - name: {{ conf }}/main.cf
    - config_dir: {{ conf }}
    - require:
      - postfix_control: postfix-relay-clean-main-cf

{#- XOAUTH2 token files (refresh tokens) and the plugin's config #}
{%- set chroot = salt["postfix_master.smtp_chroot_dir"](conf, postfix_relay.lookup.smtp_chroot_dir) %}
{%- for path in salt["postfix_relay_settings.xoauth2_leftovers"](chroot) %}

postfix-relay-clean-xoauth2-{{ loop.index }}:
  file.absent:
    - name: {{ path }}
    - require:
      - postfix_control: postfix-relay-clean-main-cf
{%- endfor %}

postfix-relay-clean-service:
  postfix_control.running:
    - name: postfix
    - enable: true
    - config_dir: {{ conf }}
    - prestart: {{ postfix_relay.lookup.prestart | json }}
    - watch:
      - postfix_control: postfix-relay-clean-main-cf
      - postfix_control: postfix-relay-clean-smtpd-listener
{#- the OAuth2 keep-alive job, its plan and its last outcomes #}
{%- set ka = salt["postfix_xoauth2.keepalive_paths"]() %}
{%- for path in [salt["postfix_xoauth2.keepalive_job"]().path, ka.plan, ka.status] %}

postfix-relay-clean-oauth2-keepalive-{{ loop.index }}:
  file.absent:
    - name: {{ path }}
{%- endfor %}
{%- set beacon_daemon = not opts.get("local") and salt["postfix_watch.minion_daemon"]() %}
{%- if beacon_daemon %}

{#- the beacon, where a minion daemon runs it #}
postfix-relay-clean-beacon:
  beacon.absent:
    - name: postfix_relay
    - save: true
{%- endif %}
{#- the beacon's state and metrics textfile (node_exporter would export them on) #}
{%- for path in salt["postfix_watch.leftovers"]() %}

postfix-relay-clean-beacon-leftover-{{ loop.index }}:
  file.absent:
    - name: {{ path | json }}
{%- if beacon_daemon %}
    - require:
      - beacon: postfix-relay-clean-beacon
{%- endif %}
{%- endfor %}
