#!jinja|json
{#- The daily job keeping XOAUTH2 refresh tokens alive (removed when
    no relay uses oauth2).
    Built in Python: _modules/postfix_relay_states.py (oauth2_keepalive); see the states
    with `salt-call state.show_sls postfix_relay.oauth2_keepalive`. -#}
{%- if "postfix_relay_states.sls" not in salt %}{{ raise("postfix_relay: the formula's modules are not synced to this minion yet: run `salt-call saltutil.sync_all` (or `salt '*' saltutil.sync_all`) once, or apply with `state.apply postfix_relay sync_mods=all`") }}{% endif %}
{{ salt["postfix_relay_states.sls"]("oauth2_keepalive", saltenv) | json(sort_keys=False) }}
