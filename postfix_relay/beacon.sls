{#- The postfix_relay beacon on this minion, from pillar postfix_relay:beacon
    (validated by postfix_relay_settings.beacon_settings: a bad value stops
    the render naming the key). Saved to minion.d/beacons.conf, so it survives
    a minion restart. Without the key it removes the beacon and the files it
    wrote (its state, the metrics textfile: node_exporter would export the
    last condition forever). Beacons run in a running salt-minion daemon:
    under salt-call --local, or with no daemon answering (a masterless host:
    file_client local, salt-call without --local), there is none to tell, so
    with the key this says so instead of failing. -#}
{%- set b = salt["postfix_relay_settings.beacon_settings"](
      salt["pillar.get"]("postfix_relay:beacon", None),
      salt["pillar.get"]("postfix_relay:metrics_textfile", None)) %}
{%- set daemon = not opts.get("local") and salt["postfix_watch.minion_daemon"]() %}

{%- if b and not daemon %}

postfix-relay-beacon-needs-minion:
  test.show_notification:
    - text: >-
        postfix_relay beacon not installed: beacons run in a running salt-minion
        daemon, and none answers here ({{ "salt-call --local" if opts.get("local")
        else "no salt-minion running" }}); start salt-minion (masterless:
        file_client local in its config) and apply again
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
{%- else %}
{%- if daemon %}

postfix-relay-beacon:
  beacon.absent:
    - name: postfix_relay
    - save: true
{%- endif %}
{#- (not the files of a beacon still running: salt-call --local beside a minion) #}
{%- if daemon or not salt["postfix_watch.minion_daemon"]() %}
{%- for path in salt["postfix_watch.leftovers"](after_beacon=True) %}

postfix-relay-beacon-leftover-{{ loop.index }}:
  file.absent:
    - name: {{ path | json }}
{%- if daemon %}
    - require:
      - beacon: postfix-relay-beacon
{%- endif %}
{%- endfor %}
{%- endif %}
{%- endif %}
