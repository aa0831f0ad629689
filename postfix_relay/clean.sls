#!jinja|json
{#- Undoes init.sls: Postfix back to the main.cf from before the formula
    (or the distro's), secrets, tables, keep-alive and beacon removed. Postfix
    stays installed and running, delivering locally.
    Built in Python: _modules/postfix_relay_states.py (clean); see the states
    with `salt-call state.show_sls postfix_relay.clean`. -#}
{%- if "postfix_relay_states.sls" not in salt %}{% include "postfix_relay/unsynced.jinja" %}{% endif %}
{{ salt["postfix_relay_states.sls"]("clean", saltenv) | json(sort_keys=False) }}
