# Suite "default": every recipient to the one mailbox, SMTP on loopback, SASL
# over STARTTLS. The relay is the test host's own loopback: nothing is delivered
# in these suites, the checks are about the configuration Postfix runs with.
postfix_relay:
  domain: example.org
  hostname: kitchen.example.org
  recipient: admin@example.org
  reply_to: admin@example.org
  relay:
    host: 127.0.0.1
    port: 2525
    username: kitchen
    password: kitchen-only-pw-4471
    tls: encrypt
