#!jinja|json
{#- Postfix enabled and running; reloaded or restarted for what the
    config SLS changed.
    Built in Python: _modules/postfix_relay_states.py (service); see the states
    with `salt-call state.show_sls postfix_relay.service`. -#}
{%- if "postfix_relay_states.sls" not in salt %}{% include "postfix_relay/unsynced.jinja" %}{% endif %}
{{ salt["postfix_relay_states.sls"]("service", saltenv) | json(sort_keys=False) }}
