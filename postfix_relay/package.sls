#!jinja|json
{#- The packages: Postfix, the SASL client plugins, the XOAUTH2 plugin
    when a relay uses oauth2.
    Built in Python: _modules/postfix_relay_states.py (package); see the states
    with `salt-call state.show_sls postfix_relay.package`. -#}
{%- if "postfix_relay_states.sls" not in salt %}{% include "postfix_relay/unsynced.jinja" %}{% endif %}
{{ salt["postfix_relay_states.sls"]("package", saltenv) | json(sort_keys=False) }}
