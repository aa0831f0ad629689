#!jinja|json
{#- Postfix's files from the pillar: tables, master.cf, main.cf, the
    XOAUTH2 plugin's files. The whole pillar is validated first: a bad value
    stops the run here, naming its key, before any state changes the host.
    Built in Python: _modules/postfix_relay_states.py (config); see the states
    with `salt-call state.show_sls postfix_relay.config`. -#}
{%- if "postfix_relay_states.sls" not in salt %}{% include "postfix_relay/unsynced.jinja" %}{% endif %}
{{ salt["postfix_relay_states.sls"]("config", saltenv) | json(sort_keys=False) }}
