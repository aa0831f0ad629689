{%- from "postfix_relay/map.jinja" import postfix_relay with context %}

include:
  - postfix_relay.config

postfix-relay-service-running:
  postfix_control.running:
    - name: postfix
    - enable: true
    - config_dir: {{ postfix_relay.lookup.config_dir }}
    - prestart: {{ postfix_relay.lookup.prestart | json }}
    {#- every state of the config SLS: mod_watch reads what changed and
        restarts for the listener or inet_interfaces, reloads otherwise (a new
        token or CA: deferred mail is retried; a new plugin config: smtp
        processes load it again) #}
    - watch:
      - sls: postfix_relay.config
