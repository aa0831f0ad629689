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
    master.cf gives it one: its config, token file and CA bundle go there. #}
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

postfix-relay-config-xoauth2-ca:
  file.managed:
    - name: {{ s.xoauth2_paths.ca }}
    - source: {{ s.oauth2.ca_file }}
    - mode: "0644"
    - require:
      - file: postfix-relay-config-xoauth2-dir

postfix-relay-config-xoauth2-token:
  postfix_xoauth2.token_file:
    - name: {{ s.xoauth2_paths.token }}
    - data_from: postfix_relay_settings.oauth2_token_file
    - user: postfix
    - require:
      - file: postfix-relay-config-xoauth2-dir
{%- endif %}

postfix-relay-config-password-table:
{%- if s.sasl %}
  postmap.managed:
    - name: {{ s.tables.password }}
    {#- read when the state runs: the password stays out of Salt's state cache #}
    - entries_from: postfix_relay_settings.password_entries
    {%- if s.map_type %}
    - map_type: {{ s.map_type }}
    {%- endif %}
    - mode: "0600"
    - secret: true
    - config_dir: {{ conf }}
    {#- on a type change the live main.cf still reads the old compiled file:
        it goes in postfix-relay-config-password-table-other-types, after main.cf #}
    - prune_other_types: false
{%- else %}
  postmap.absent:
    - name: {{ s.tables.password }}
    - config_dir: {{ conf }}
{%- endif %}
    {#- one list: a second `require` key would replace this one #}
    - require:
      - pkg: postfix-relay-package-installed
{%- if s.sasl %}
      - file: postfix-relay-config-sasl-dir
{%- else %}
      {#- a table main.cf no longer names goes once main.cf has stopped naming it #}
      - postfix_control: postfix-relay-config-main-cf
{%- endif %}

{#- every sender becomes the host's address; a bounce keeps its null sender #}
postfix-relay-config-sender:
  postmap.managed:
    - name: {{ s.tables.sender }}
    - contents: {{ s.sender_rules | json }}
    - map_type: regexp
    - mode: "0644"
    - config_dir: {{ conf }}
    - require:
      - pkg: postfix-relay-package-installed

postfix-relay-config-reply-to:
{%- if s.reply_to %}
  postmap.managed:
    - name: {{ s.tables.reply_to }}
    - contents: {{ s.reply_to_rules | json }}
    - map_type: regexp
    - mode: "0644"
    - config_dir: {{ conf }}
{%- else %}
  postmap.absent:
    - name: {{ s.tables.reply_to }}
    - map_type: regexp
    - config_dir: {{ conf }}
{%- endif %}
    - require:
      - pkg: postfix-relay-package-installed
{%- if not s.reply_to %}
      - postfix_control: postfix-relay-config-main-cf
{%- endif %}

postfix-relay-config-recipients:
{%- if s.recipient_mode == "local" %}
  postmap.managed:
    - name: {{ s.tables.recipients }}
    - contents: {{ s.recipient_rules | json }}
    - map_type: regexp
    - mode: "0644"
    - config_dir: {{ conf }}
{%- else %}
  postmap.absent:
    - name: {{ s.tables.recipients }}
    - map_type: regexp
    - config_dir: {{ conf }}
{%- endif %}
    - require:
      - pkg: postfix-relay-package-installed
{%- if s.recipient_mode != "local" %}
      - postfix_control: postfix-relay-config-main-cf
{%- endif %}

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
{%- if s.sasl %}
      - postmap: postfix-relay-config-password-table
{%- endif %}
      - postmap: postfix-relay-config-sender
{%- if s.reply_to %}
      - postmap: postfix-relay-config-reply-to
{%- endif %}
{%- if s.recipient_mode == "local" %}
      - postmap: postfix-relay-config-recipients
{%- endif %}
{%- if s.sasl %}

{#- compiled files of an earlier map_type (old passwords), removed only once
    main.cf names the new type: until then Postfix reads them #}
postfix-relay-config-password-table-other-types:
  postmap.other_types_absent:
    - name: {{ s.tables.password }}
    {%- if s.map_type %}
    - map_type: {{ s.map_type }}
    {%- endif %}
    - config_dir: {{ conf }}
    - require:
      - postfix_control: postfix-relay-config-main-cf
{%- endif %}
