#!jinja|json
{#- Undoes init.sls: Postfix back to the main.cf from before the formula
    (or the distro's), secrets, tables, keep-alive and beacon removed. Postfix
    stays installed and running, delivering locally.
    Built in Python: _modules/postfix_relay_states.py (clean); see the states
    with `salt-call state.show_sls postfix_relay.clean`. -#}
{%- if "postfix_relay_states.sls" not in salt %}{{ raise("postfix_relay: the formula's modules are not synced to this minion yet: run `salt-call saltutil.sync_all` (or `salt '*' saltutil.sync_all`) once, or apply with `state.apply postfix_relay sync_mods=all`") }}{% endif %}
{{ salt["postfix_relay_states.sls"]("clean", saltenv) | json(sort_keys=False) }}
