{%- from "postfix_relay/map.jinja" import postfix_relay with context %}

postfix-relay-package-installed:
  pkg.installed:
    {#- the XOAUTH2 plugin too when relay:oauth2 is set (refused here when
        the host's package sources lack it) #}
    - pkgs: {{ salt["postfix_relay_settings.packages"](postfix_relay.lookup) | json }}
