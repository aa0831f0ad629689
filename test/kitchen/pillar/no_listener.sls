# Suite "no_listener": no SMTP listener at all, implicit TLS (port 465), no Reply-To.
postfix_relay:
  domain: example.org
  hostname: kitchen.example.org
  sender: kitchen-box
  recipient: admin@example.org
  listen: none
  relay:
    host: 127.0.0.1
    port: 465
    username: kitchen
    password: kitchen-only-pw-4471
