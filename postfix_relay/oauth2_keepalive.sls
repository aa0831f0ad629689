#!jinja|json
{#- The daily job keeping XOAUTH2 refresh tokens alive (removed when
    no relay uses oauth2).
    Built in Python: _modules/postfix_relay_states.py (oauth2_keepalive); see the states
    with `salt-call state.show_sls postfix_relay.oauth2_keepalive`. -#}
{%- if "postfix_relay_states.sls" not in salt %}{% include "postfix_relay/unsynced.jinja" %}{% endif %}
{{ salt["postfix_relay_states.sls"]("oauth2_keepalive", saltenv) | json(sort_keys=False) }}
