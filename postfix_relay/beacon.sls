#!jinja|json
{#- The postfix_relay beacon from pillar postfix_relay:beacon; removed,
    with the files it wrote, when the key goes.
    Built in Python: _modules/postfix_relay_states.py (beacon); see the states
    with `salt-call state.show_sls postfix_relay.beacon`. -#}
{%- if "postfix_relay_states.sls" not in salt %}{{ raise("postfix_relay: the formula's modules are not synced to this minion yet: run `salt-call saltutil.sync_all` (or `salt '*' saltutil.sync_all`) once, or apply with `state.apply postfix_relay sync_mods=all`") }}{% endif %}
{{ salt["postfix_relay_states.sls"]("beacon", saltenv) | json(sort_keys=False) }}
