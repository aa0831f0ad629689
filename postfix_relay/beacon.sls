#!jinja|json
{#- The postfix_relay beacon from pillar postfix_relay:beacon; removed,
    with the files it wrote, when the key goes.
    Built in Python: _modules/postfix_relay_states.py (beacon); see the states
    with `salt-call state.show_sls postfix_relay.beacon`. -#}
{%- if "postfix_relay_states.sls" not in salt %}{% include "postfix_relay/unsynced.jinja" %}{% endif %}
{{ salt["postfix_relay_states.sls"]("beacon", saltenv) | json(sort_keys=False) }}
