{%- from "postfix_relay/map.jinja" import postfix_relay with context %}
{#- Validates the whole pillar while rendering: a bad value stops the run here,
    before any state has changed the host. #}
{%- set s = salt["postfix_relay_settings.get"](lookup=postfix_relay.lookup, show_secrets=True, check=True) %}
{%- set conf = postfix_relay.lookup.config_dir %}

include:
  - postfix_relay.package

{%- if s.sasl %}

postfix-relay-config-sasl-dir:
  file.directory:
    - name: {{ s.sasl_dir }}
    - user: root
    - mode: "0755"
    - require:
      - pkg: postfix-relay-package-installed
{%- endif %}

{%- if s.oauth2 %}

{#- XOAUTH2: the plugin runs in Postfix's smtp process, inside its chroot when
    master.cf gives it one: its config, token files and CA bundles go there. #}
postfix-relay-config-xoauth2-dir:
  file.directory:
    - name: {{ s.xoauth2_paths.dir }}
    - user: postfix
    - group: postfix
    - mode: "0700"
    - makedirs: true
    - require:
      - pkg: postfix-relay-package-installed

{#- read when the plugin loads (before smtp enters its chroot) #}
postfix-relay-config-xoauth2-conf:
  file.managed:
    - name: {{ s.xoauth2_paths.conf }}
    - contents: {{ s.xoauth2_conf | json }}
    - mode: "0644"
    - require:
      - pkg: postfix-relay-package-installed
{%- if s.xoauth2_paths.conf_chroot %}

{#- and inside the chroot, for a plugin that reads it there #}
postfix-relay-config-xoauth2-conf-chroot:
  file.managed:
    - name: {{ s.xoauth2_paths.conf_chroot }}
    - contents: {{ s.xoauth2_conf | json }}
    - mode: "0644"
    - require:
      - file: postfix-relay-config-xoauth2-dir
{%- endif %}
{%- for r in s.oauth2_relays %}
{#- the primary keeps the IDs of one-relay releases #}
{%- set sfx = "" if loop.first else "-" ~ loop.index %}

postfix-relay-config-xoauth2-ca{{ sfx }}:
  file.managed:
    - name: {{ r.ca }}
    - source: {{ r.ca_source }}
    - mode: "0644"
    - require:
      - file: postfix-relay-config-xoauth2-dir

{#- one token file per relay; pruning keeps every configured relay's file #}
postfix-relay-config-xoauth2-token{{ sfx }}:
  postfix_xoauth2.token_file:
    - name: {{ r.token }}
    - data_from: postfix_relay_settings.oauth2_token_files
    - data_key: {{ r.name | json }}
    - keep: {{ s.oauth2_relays | map(attribute="name") | list | json }}
    - user: postfix
    - require:
      - file: postfix-relay-config-xoauth2-dir
{%- endfor %}
{%- endif %}
{#- no relay uses oauth2 (any more): the plugin's files and every token file
    (each holds a refresh token) go, once main.cf no longer names them #}
{%- for path in s.xoauth2_leftovers %}

postfix-relay-config-xoauth2-absent-{{ loop.index }}:
  file.absent:
    - name: {{ path }}
    - require:
      - postfix_control: postfix-relay-config-main-cf
{%- endfor %}
{#- Every table main.cf may name (settings: tables as data): present ones are
    built before main.cf names them; absent ones go once main.cf stops naming
    them (Postfix would otherwise defer mail looking them up). #}
{%- for t in s.tables %}

postfix-relay-config-{{ t.state_id }}:
{%- if t.present %}
  postmap.managed:
    - name: {{ t.path }}
  {%- if t.entries_from %}
    {#- read when the state runs: secrets stay out of Salt's state cache #}
    - entries_from: {{ t.entries_from }}
  {%- elif t.contents is not none %}
    - contents: {{ t.contents | json }}
  {%- else %}
    - entries: {{ t.entries | json }}
  {%- endif %}
  {%- if t.map_type %}
    - map_type: {{ t.map_type }}
  {%- endif %}
    - mode: "{{ t.mode }}"
  {%- if t.secret %}
    - secret: true
  {%- endif %}
    - config_dir: {{ conf }}
  {%- if t.indexed %}
    {#- on a type change the live main.cf still reads the old compiled file:
        it goes in ...-other-types, after main.cf #}
    - prune_other_types: false
  {%- endif %}
    {#- one list: a second `require` key would replace this one #}
    - require:
      - pkg: postfix-relay-package-installed
  {%- if t.id == "password" %}
      - file: postfix-relay-config-sasl-dir
  {%- endif %}
{%- else %}
  postmap.absent:
    - name: {{ t.path }}
  {%- if not t.indexed %}
    - map_type: {{ t.map_type }}
  {%- endif %}
    - config_dir: {{ conf }}
    - require:
      - pkg: postfix-relay-package-installed
      - postfix_control: postfix-relay-config-main-cf
{%- endif %}
{%- endfor %}

{%- if postfix_relay.lookup.mailname_file %}

postfix-relay-config-mailname:
  file.managed:
    - name: {{ postfix_relay.lookup.mailname_file }}
    - contents: {{ s.domain }}
    - mode: "0644"
{%- endif %}

postfix-relay-config-smtpd-listener:
  postfix_control.smtpd_listener:
    - name: {{ conf }}/master.cf
    - enabled: {{ s.listen == "loopback" }}
    - chroot: {{ postfix_relay.lookup.smtpd_chroot | json }}
    - config_dir: {{ conf }}
    - require:
      - pkg: postfix-relay-package-installed

postfix-relay-config-main-cf:
  postfix_control.main_cf:
    - name: {{ conf }}/main.cf
    - params: {{ s.main_cf | json }}
    - config_dir: {{ conf }}
    - require:
      - pkg: postfix-relay-package-installed
      # tables first: main.cf never names a table that does not exist yet
      # (tables it stops naming are removed after it)
{%- for t in s.tables if t.present %}
      - postmap: postfix-relay-config-{{ t.state_id }}
{%- endfor %}
{%- for t in s.tables if t.present and t.indexed %}

{#- compiled files of an earlier map_type (old passwords), removed only once
    main.cf names the new type: until then Postfix reads them #}
postfix-relay-config-{{ t.state_id }}-other-types:
  postmap.other_types_absent:
    - name: {{ t.path }}
    {%- if t.map_type %}
    - map_type: {{ t.map_type }}
    {%- endif %}
    - config_dir: {{ conf }}
    - require:
      - postfix_control: postfix-relay-config-main-cf
{%- endfor %}
