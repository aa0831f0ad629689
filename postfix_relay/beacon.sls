{#- The postfix_relay beacon on this minion, from pillar postfix_relay:beacon
    (validated by postfix_relay_settings.beacon_settings: a bad value stops
    the render naming the key). Saved to minion.d/beacons.conf, so it survives
    a minion restart. Without the key it removes the beacon (deleting the
    key and applying postfix_relay is how an admin turns it off).
    Beacons run in a running salt-minion: under salt-call --local there is
    none to tell, so with the key this says so instead of failing, and
    without it there is nothing to do. -#}
{%- set b = salt["postfix_relay_settings.beacon_settings"](
      salt["pillar.get"]("postfix_relay:beacon", None),
      salt["pillar.get"]("postfix_relay:metrics_textfile", None)) %}

{%- if opts.get("local") and b %}

postfix-relay-beacon-needs-minion:
  test.show_notification:
    - text: >-
        postfix_relay beacon not {{ "installed" if b else "removed" }}: beacons run
        in a running salt-minion, not under salt-call --local (apply with
        salt '<minion>' state.apply or salt-call without --local)
{%- elif b %}

postfix-relay-beacon:
  beacon.present:
    - name: postfix_relay
    - save: true
    - interval: {{ b.interval }}
    - deferred_max: {{ b.deferred_max }}
    - age_max: {{ b.age_max }}
{%- if b.metrics_textfile %}
    - metrics_textfile: {{ b.metrics_textfile | json }}
{%- endif %}
{%- elif not opts.get("local") %}

postfix-relay-beacon:
  beacon.absent:
    - name: postfix_relay
    - save: true
{%- endif %}
