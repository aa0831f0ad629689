#!jinja|json
{#- Postfix enabled and running; reloaded or restarted for what the
    config SLS changed.
    Built in Python: _modules/postfix_relay_states.py (service); see the states
    with `salt-call state.show_sls postfix_relay.service`. -#}
{%- if "postfix_relay_states.sls" not in salt %}{{ raise("postfix_relay: the formula's modules are not synced to this minion yet: run `salt-call saltutil.sync_all` (or `salt '*' saltutil.sync_all`) once, or apply with `state.apply postfix_relay sync_mods=all`") }}{% endif %}
{{ salt["postfix_relay_states.sls"]("service", saltenv) | json(sort_keys=False) }}
