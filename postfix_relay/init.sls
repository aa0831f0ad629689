#!yaml
# Postfix as a null client relaying through an authenticated smarthost.
include:
  - postfix_relay.package
  - postfix_relay.config
  # the daily OAuth2 token keep-alive (removed when no relay uses oauth2)
  - postfix_relay.oauth2_keepalive
  - postfix_relay.service
  # the beacon from pillar postfix_relay:beacon; removed when the key goes
  - postfix_relay.beacon
