{%- from "postfix_relay/map.jinja" import postfix_relay with context %}

include:
  - postfix_relay.config

postfix-relay-service-running:
  postfix_control.running:
    - name: postfix
    - enable: true
    - config_dir: {{ postfix_relay.lookup.config_dir }}
    - prestart: {{ postfix_relay.lookup.prestart | json }}
    - watch:
      - postfix_control: postfix-relay-config-main-cf
      - postfix_control: postfix-relay-config-smtpd-listener
      - postmap: postfix-relay-config-password-table
      - postmap: postfix-relay-config-reply-to
      - postmap: postfix-relay-config-recipients
{%- if salt["pillar.get"]("postfix_relay:relay:oauth2") %}
      {#- a new refresh token or CA: send what waited for it; a new plugin
          config: smtp processes reload it (the plugin reads it when loaded) #}
      - postfix_xoauth2: postfix-relay-config-xoauth2-token
      - file: postfix-relay-config-xoauth2-ca
      - file: postfix-relay-config-xoauth2-conf
{%- endif %}
