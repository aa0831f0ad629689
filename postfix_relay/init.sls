# Postfix as a null client relaying through an authenticated smarthost.
include:
  - postfix_relay.package
  - postfix_relay.config
  - postfix_relay.service
{%- if salt["pillar.get"]("postfix_relay:beacon", None) not in (None, False) %}
  - postfix_relay.beacon
{%- endif %}
