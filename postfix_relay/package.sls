{%- from "postfix_relay/map.jinja" import postfix_relay with context %}

postfix-relay-package-installed:
  pkg.installed:
    - pkgs: {{ postfix_relay.lookup.packages | json }}
