"""
Every SLS of the formula, rendered for several pillars, is checked as Salt
would see it: no key given twice in a state (YAML and Salt keep only the last
one, so a second ``- require:`` silently drops the first), no requisite
pointing at a state or SLS that is not in the rendered highstate, and every
requisite written in the SLS text still present in the compiled low data.

Rendering runs the formula's own checks (Postfix's included) against a
private config dir: nothing on the host is read or written.
"""

import copy
import json
import os
import shutil
import time

import pytest
import salt.state
import yaml

from helpers import REPO, load_module

MASTER_CF = next(p for p in ("/etc/postfix/master.cf", "/usr/share/postfix/master.cf.dist")
                 if os.path.exists(p))

REQUISITES = ("require", "watch", "onchanges", "onfail", "prereq", "use", "listen")
BASE = {"domain": "example.org", "recipient": "me@example.org"}
PASSWORD = {"host": "smtp.example.net", "port": 587, "username": "user", "password": "s3cret"}
OAUTH2 = {"host": "smtp.office365.com", "port": 587, "username": "alerts@example.org",
          "oauth2": {"token_endpoint": "https://login.example.com/t/oauth2/v2.0/token",
                     "client_id": "app", "client_secret": "cs", "refresh_token": "rt"}}
PILLARS = {
    "password": {**BASE, "relay": PASSWORD},
    "password-reply-to": {**BASE, "relay": PASSWORD, "reply_to": "help@example.org"},
    "oauth2": {**BASE, "relay": OAUTH2},
    "local-listen-none": {**BASE, "relay": PASSWORD, "recipient_mode": "local",
                          "listen": "none"},
    "no-sasl": {**BASE, "relay": {"host": "smtp.example.net", "port": 25}},
    "several-relays": {
        **BASE, "relay": PASSWORD, "sender_mode": "local", "queue_lifetime": "2d",
        "fallback_relays": [{**PASSWORD, "host": "backup.example.com", "username": "b"}],
        "sender_relays": {"@shop.example.org": {**PASSWORD, "host": "smtp.sendgrid.net"}}},
    "several-oauth2": {
        **BASE, "relay": OAUTH2,
        "fallback_relays": [{**OAUTH2, "host": "smtp.gmail.com"}]},
}
CASES = [(name, "postfix_relay") for name in PILLARS] + [("password", "postfix_relay.clean")]


class StrictLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    """A YAML loader that refuses a mapping key given twice."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


@pytest.fixture(scope="module")
def private_conf(tmp_path_factory):
    """Postfix config dir and queue of our own (the render runs Postfix's check)."""
    root = tmp_path_factory.mktemp("render")
    conf, queue = root / "conf", root / "queue"
    for path in (conf, queue):
        path.mkdir()
        os.chmod(path, 0o755)
    shutil.copy(MASTER_CF, conf / "master.cf")
    (conf / "main.cf").write_text(f"compatibility_level = 3.6\nqueue_directory = {queue}\n")
    old = time.time() - 60
    os.utime(conf / "main.cf", (old, old))
    return {"conf": str(conf), "queue": str(queue), "data": str(root / "data")}


def full_pillar(name, private_conf):
    pillar = copy.deepcopy(PILLARS[name])
    # queue and data directories of our own, whatever the check does with them
    pillar["main_cf"] = {"queue_directory": private_conf["queue"],
                         "data_directory": private_conf["data"]}
    pillar["lookup"] = {"config_dir": private_conf["conf"],
                        # installed here: the oauth2 package check passes
                        "xoauth2_package": "postfix"}
    return {"postfix_relay": pillar}


def render(opts, pillar, sls, keep=None, saltenv="base"):
    """(SLS texts as YAML saw them, high data, low chunks, errors); the State
    object, its requisites resolved, in ``keep["state"]`` when asked."""
    opts = copy.deepcopy(opts)
    opts["test"] = True
    texts = {}
    with salt.state.HighState(opts, pillar_override=pillar) as highstate:
        renderers = highstate.state.rend
        loaded = renderers._dict._dict  # pylint: disable=protected-access
        for kind in ("yaml", "json"):  # init.sls is YAML, the others print JSON
            renderers[kind]  # pylint: disable=pointless-statement  # loads it
            loaded[f"{kind}_seen.render"] = loaded[f"{kind}.render"]
            loaded[f"{kind}.render"] = capturing(renderers, kind, texts)
        highstate.push_active()
        try:
            high, errors = highstate.render_highstate({saltenv: [sls]})
        finally:
            highstate.pop_active()
        errors += highstate.state.verify_high(high)
        chunks, compile_errors = with_errors(highstate.state.compile_high_data(high))
        # Salt's own requisite resolution: a missing target or a cycle is an error
        chunks_ordered, order_errors = with_errors(highstate.state.order_chunks(chunks))
        if keep is not None:
            keep.update(state=highstate.state, chunks=chunks_ordered)
    return texts, high, chunks, errors + compile_errors + order_errors


def capturing(renderers, kind, texts):
    """A renderer that keeps each SLS text it is given, then renders it."""
    def capture(data, saltenv="base", sls="", **kwargs):
        text = data if isinstance(data, str) else data.read()
        texts[sls] = text
        return renderers[f"{kind}_seen"](text, saltenv=saltenv, sls=sls, **kwargs)
    return capture


def strict_load(text):
    """The SLS text as data, refusing a mapping key given twice (YAML or JSON)."""
    if text.startswith("#!"):  # the render pipe line, as Salt's renderers skip it
        text = text.split("\n", 1)[1] if "\n" in text else ""
    if text.lstrip().startswith("{"):
        return json.loads(text, object_pairs_hook=no_duplicate_keys)
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader)


def no_duplicate_keys(pairs):
    keys = [key for key, _ in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    assert not twice, f"duplicate key {twice}"
    return dict(pairs)


def with_errors(answer):
    """Salt 3008 answers (chunks, errors); 3006 and 3007 the chunks alone."""
    return answer if isinstance(answer, tuple) else (answer, [])


def state_args(texts):
    """{(sls, id, state module): [argument keys, in order]} from the SLS texts."""
    found = {}
    for sls, text in texts.items():
        data = strict_load(text) or {}
        for state_id, body in data.items():
            if state_id in ("include", "exclude", "extend"):
                continue
            for fun, args in body.items():
                keys = [key for arg in args or [] if isinstance(arg, dict) for key in arg]
                found[(sls, state_id, fun.split(".")[0])] = (keys, args)
    return found


def written_requisites(args):
    """{kind: count} of the requisites one state lists in the SLS text."""
    counts = {}
    for arg in args or []:
        for key, value in arg.items() if isinstance(arg, dict) else ():
            if key in REQUISITES:
                counts[key] = counts.get(key, 0) + len(value or [])
    return counts


def compiled_requisites(chunk):
    return {kind: len(chunk[kind]) for kind in REQUISITES if chunk.get(kind)}


def exists(target, chunks):
    (kind, ref), = target.items()
    if kind == "sls":
        return any(chunk["__sls__"] == ref for chunk in chunks)
    return any(chunk["state"] == kind and ref in (chunk["__id__"], chunk["name"])
               for chunk in chunks)


@pytest.mark.parametrize(("pillar_name", "sls"), CASES)
def test_rendered_sls_keeps_every_requisite(loaders, private_conf, pillar_name, sls):
    texts, _, chunks, errors = render(loaders.opts, full_pillar(pillar_name, private_conf), sls)
    assert errors == []
    assert texts and chunks
    args = state_args(texts)  # raises on a duplicate mapping key
    for (sls_name, state_id, _), (keys, _) in args.items():
        twice = sorted({key for key in keys if keys.count(key) > 1})
        assert not twice, f"{sls_name}: {state_id} gives {twice} more than once"
    for chunk in chunks:
        for kind in REQUISITES:
            for target in chunk.get(kind) or []:
                assert exists(target, chunks), \
                    f"{chunk['__id__']}: {kind} {target} is not in the rendered highstate"
        _, given = args[(chunk["__sls__"], chunk["__id__"], chunk["state"])]
        assert compiled_requisites(chunk) == written_requisites(given), \
            f"{chunk['__id__']}: requisites lost between the SLS text and the low data"


def test_oauth2_pillar_renders_the_xoauth2_states(loaders, private_conf):
    """The oauth2 case above checks the XOAUTH2 states, not a pillar fallback."""
    _, high, _, errors = render(loaders.opts, full_pillar("oauth2", private_conf),
                                "postfix_relay")
    assert errors == []
    assert "postfix-relay-config-xoauth2-token" in high


def test_old_type_files_go_only_after_main_cf(loaders, private_conf):
    """A map_type change: the password table keeps the old type's compiled
    file (the live main.cf still reads it); it is removed after main.cf."""
    pillar = full_pillar("password", private_conf)
    pillar["postfix_relay"]["password_map"] = {"type": "btree"}
    _, _, chunks, errors = render(loaders.opts, pillar, "postfix_relay")
    assert errors == []
    by_id = {c["__id__"]: c for c in chunks}
    table = by_id["postfix-relay-config-password-table"]
    assert table["fun"] == "managed" and table["prune_other_types"] is False
    prune = by_id["postfix-relay-config-password-table-other-types"]
    assert (prune["state"], prune["fun"], prune["name"]) == \
        ("postmap", "other_types_absent", table["name"])
    assert prune["map_type"] == "btree"
    assert {"postfix_control": "postfix-relay-config-main-cf"} in prune["require"]


def test_tables_main_cf_stops_naming_go_after_main_cf(loaders, private_conf):
    """No SASL, no Reply-To, every recipient rewritten: main.cf names neither
    the password table nor the Reply-To or recipient rules; they are removed
    only after main.cf has stopped naming them (before, Postfix would look them
    up and defer mail), and main.cf no longer waits for them."""
    _, _, chunks, errors = render(loaders.opts, full_pillar("no-sasl", private_conf),
                                  "postfix_relay")
    assert errors == []
    by_id = {c["__id__"]: c for c in chunks}
    main_cf = {"postfix_control": "postfix-relay-config-main-cf"}
    for table in ("password-table", "reply-to", "recipients"):
        chunk = by_id[f"postfix-relay-config-{table}"]
        assert chunk["fun"] == "absent", chunk
        assert main_cf in chunk["require"], chunk
        assert {"postmap": f"postfix-relay-config-{table}"} not in \
            by_id["postfix-relay-config-main-cf"]["require"]


def test_several_relays_render_their_tables_before_main_cf(loaders, private_conf):
    """Fallback and sender relays: the sender-relay and TLS policy tables are
    built before main.cf names them, and their old-type files go after it."""
    _, _, chunks, errors = render(loaders.opts, full_pillar("several-relays", private_conf),
                                  "postfix_relay")
    assert errors == []
    by_id = {c["__id__"]: c for c in chunks}
    main_cf = by_id["postfix-relay-config-main-cf"]
    for table in ("password-table", "sender", "sender-relays", "tls-policy"):
        chunk = by_id[f"postfix-relay-config-{table}"]
        assert chunk["fun"] == "managed", chunk
        assert {"postmap": f"postfix-relay-config-{table}"} in main_cf["require"]
    assert by_id["postfix-relay-config-sender-relays"]["entries"] == {
        "@shop.example.org": "[smtp.sendgrid.net]:587"}
    for table in ("password-table", "sender-relays", "tls-policy"):
        assert {"postfix_control": "postfix-relay-config-main-cf"} in \
            by_id[f"postfix-relay-config-{table}-other-types"]["require"]
    params = main_cf["params"]
    assert params["relayhost"] == "[smtp.example.net]:587, [backup.example.com]:587"
    assert params["maximal_queue_lifetime"] == params["bounce_queue_lifetime"] == "2d"


def test_each_oauth2_relay_gets_its_own_token_file(loaders, private_conf):
    """Two OAuth2 relays: two token files, each keeping the other when it
    prunes; no secret in the rendered state data."""
    _, _, chunks, errors = render(loaders.opts, full_pillar("several-oauth2", private_conf),
                                  "postfix_relay")
    assert errors == []
    tokens = [c for c in chunks if c["state"] == "postfix_xoauth2"]
    names = sorted(os.path.basename(c["name"]) for c in tokens)
    assert names == ["smtp.gmail.com-587.json", "smtp.office365.com-587.json"]
    for chunk in tokens:
        assert sorted(chunk["keep"]) == names
        assert chunk["data_key"] == os.path.basename(chunk["name"])
    assert "rt" not in {str(v) for c in chunks for v in c.values()}
    assert not any("cs" == v for c in chunks for v in c.values())


RENDERED = {}  # pillar name: the State and its ordered chunks (this module's pillars)


def tag_of(chunk):
    return f"{chunk['state']}_|-{chunk['__id__']}_|-{chunk['name']}_|-{chunk['fun']}"


def salt_decides(loaders, private_conf, pillar_name, changed_id, changes):
    """What Salt's own requisite check says for postfix-relay-service-running
    when every other state ran and only changed_id changed: its status
    ("change": mod_watch runs), the ``__reqs__`` and ``__running__`` that
    mod_watch then receives."""
    if pillar_name not in RENDERED:  # one render per pillar: Postfix checks each
        keep = {}
        _, _, _, errors = render(loaders.opts, full_pillar(pillar_name, private_conf),
                                 "postfix_relay", keep)
        assert errors == []
        RENDERED[pillar_name] = keep
    state, chunks = RENDERED[pillar_name]["state"], RENDERED[pillar_name]["chunks"]
    service, = (c for c in chunks if c["__id__"] == "postfix-relay-service-running")
    assert any(c["__id__"] == changed_id for c in chunks), changed_id
    running = {
        tag_of(c): {"result": True, "comment": "", "name": c["name"], "__id__": c["__id__"],
                    "__sls__": c["__sls__"], "__run_num__": number,
                    "changes": changes if c["__id__"] == changed_id else {}}
        for number, c in enumerate(chunks) if c is not service}
    if hasattr(state, "check_requisite"):  # Salt 3006, 3007
        status, reqs = state.check_requisite(service, running, chunks)
    else:
        status, reqs = state._check_requisites(service, running)  # pylint: disable=W0212
    return status, reqs, running


def config_ids(loaders, private_conf, pillar_name):
    salt_decides(loaders, private_conf, pillar_name, "postfix-relay-config-main-cf", {})
    return sorted(c["__id__"] for c in RENDERED[pillar_name]["chunks"]
                  if c["__sls__"] == "postfix_relay.config")


@pytest.mark.parametrize("pillar_name", ["oauth2", "password"])
def test_service_watches_every_config_state(loaders, private_conf, pillar_name):
    """A new config state needs no edit of service.sls to reload Postfix."""
    for state_id in config_ids(loaders, private_conf, pillar_name):
        status, _, _ = salt_decides(loaders, private_conf, pillar_name, state_id,
                                    {"changed": True})
        assert status == "change", f"{pillar_name}: {state_id} is not watched by the service"


@pytest.mark.parametrize(("state_id", "changes", "action"), [
    ("postfix-relay-config-smtpd-listener", {"smtpd_listener": {"old": True, "new": False}},
     "restart"),
    ("postfix-relay-config-main-cf", {"inet_interfaces": {"old": "all", "new": "loopback-only"}},
     "restart"),
    ("postfix-relay-config-main-cf", {"relayhost": {"old": None, "new": "[a.example]:587"}},
     "reload"),
    ("postfix-relay-config-password-table", {"compiled": "rebuilt"}, "reload"),
    ("postfix-relay-config-xoauth2-token", {"token_file": "written"}, "reload"),
    ("postfix-relay-config-mailname", {"diff": "New file"}, "reload"),
])
def test_service_restarts_or_reloads_for_what_changed(loaders, private_conf, state_id,
                                                      changes, action):
    """mod_watch's decision, fed as Salt feeds it for service.sls."""
    status, reqs, running = salt_decides(loaders, private_conf, "oauth2", state_id, changes)
    assert status == "change", f"{state_id} is not watched by the service"
    states = load_module("_states/postfix_control.py")
    states.__low__ = {"__reqs__": reqs}
    states.__running__ = running
    states.__salt__ = {"postfix_service.needs_restart":
                       loaders.modules.postfix_service.needs_restart}
    assert states._watched_action(states._watched_changes()) == action  # pylint: disable=W0212


def test_map_reads_the_formula_of_the_run_environment(loaders, private_conf, tmp_path):
    """Rendered in saltenv dev, the SLS use dev's osfamilymap.yaml, not base's."""
    dev = tmp_path / "dev"
    formula = dev / "postfix_relay"
    shutil.copytree(REPO / "postfix_relay", formula)
    for name in ("_modules", "_states", "_utils"):
        (dev / name).symlink_to(REPO / name)
    osfamilymap = formula / "osfamilymap.yaml"
    osfamilymap.write_text(osfamilymap.read_text().replace(
        "dist_main_cf: /usr/share/postfix/main.cf.debian", "dist_main_cf: /dev-env/main.cf"))
    assert "/dev-env/main.cf" in osfamilymap.read_text()
    opts = copy.deepcopy(loaders.opts)
    opts["file_roots"] = {**opts["file_roots"], "dev": [str(dev)]}
    _, high, _, errors = render(opts, full_pillar("password", private_conf),
                                "postfix_relay.clean", saltenv="dev")
    assert errors == []
    args = high["postfix-relay-clean-main-cf"]["postfix_control"]
    assert {"dist_main_cf": "/dev-env/main.cf"} in args


@pytest.mark.parametrize("test", [False, True])
@pytest.mark.parametrize(("state_id", "changes", "action"), [
    ("postfix-relay-config-main-cf", {"relayhost": {"old": None, "new": "[a.example]:587"}},
     "reload"),
    ("postfix-relay-config-smtpd-listener", {"smtpd_listener": {"old": True, "new": False}},
     "restart"),
])
def test_enabling_at_boot_keeps_the_reload(loaders, private_conf, state_id, changes, action,
                                          test):
    """Salt calls mod_watch only when the watching state itself reports no
    changes (State.call_chunk): when running enables Postfix at boot in the
    same run, it reloads (or restarts) for the watched change itself."""
    status, _, running = salt_decides(loaders, private_conf, "password", state_id, changes)
    assert status == "change"
    service, = (c for c in RENDERED["password"]["chunks"]
                if c["__id__"] == "postfix-relay-service-running")
    done = []

    def act(what):
        def run(*args, **kwargs):
            assert not test, f"{what} ran under test=True"
            done.append(what)
            return 0 if what == "flush" else True
        return run

    states = load_module("_states/postfix_control.py")
    states.__salt__ = {
        **{f"postfix_service.{what}": act(what) for what in
           ("enable", "reload", "restart", "start", "flush")},
        "postfix_service.status": lambda config_dir: True,
        "postfix_service.enabled": lambda: False,
        "postfix_service.deferred_count": lambda config_dir: 0,
        "postfix_service.needs_restart": loaders.modules.postfix_service.needs_restart}
    states.__opts__ = {"test": test}
    states.__low__ = dict(service)
    states.__running__ = running
    ret = states.running(name="postfix", config_dir=private_conf["conf"])
    assert ret["changes"] == {"enabled": True, action: True}, ret["comment"]
    assert ret["result"] is (None if test else True)
    assert done == ([] if test else ["enable", action, "flush"])


@pytest.mark.parametrize("pillar_name", ["password", "several-oauth2"])
def test_rendered_states_hold_no_secret(loaders, private_conf, pillar_name):
    """The states Salt renders (and caches on disk) carry no password, client
    secret or refresh token: their states read them when they run."""
    pillar = full_pillar(pillar_name, private_conf)
    secrets = []
    for index, relay in enumerate([pillar["postfix_relay"]["relay"],
                                   *pillar["postfix_relay"].get("fallback_relays", [])]):
        if "password" in relay:
            relay["password"] = f"Pw-{index}-9f8e7d6c"
        for key in ("client_secret", "refresh_token"):
            if key in relay.get("oauth2", {}):
                relay["oauth2"] = {**relay["oauth2"], key: f"{key}-{index}-5a4b3c2d"}
        secrets += [relay.get("password"), *(relay.get("oauth2") or {}).values()]
    secrets = [s for s in secrets if s and "-5a4b3c2d" in s or s and s.startswith("Pw-")]
    texts, high, _, errors = render(loaders.opts, pillar, "postfix_relay")
    assert errors == [] and secrets
    seen = json.dumps(high, default=str) + "".join(texts.values())
    assert [s for s in secrets if s in seen] == []


def test_an_unknown_sls_name_is_refused_naming_the_choices(loaders):
    with pytest.raises(Exception, match="no SLS postfix_relay.nope: one of package, config"):
        loaders.modules["postfix_relay_states.sls"]("nope")
