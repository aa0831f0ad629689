# Suite "local_mode": only local recipients (root, cron users) rewritten.
postfix_relay:
  domain: example.org
  hostname: kitchen.example.org
  recipient: admin@example.org
  recipient_mode: local
  relay:
    host: 127.0.0.1
    port: 2525
    username: kitchen
    password: kitchen-only-pw-4471
    mechanisms: [plain, login]
