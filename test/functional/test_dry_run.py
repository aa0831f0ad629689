"""
test=True is a dry run: nothing on the host changes, not even through a
command run while the SLS renders, and every state reports what the real run
would change (result None) or that nothing would (result True).

Postfix's own check (``postfix check``) runs ``post-install create-missing``
and ``postsuper``, which create and repair queue and data directories: the
formula's check must never let it reach the directories of a real layout.
Here the layout is a private copy with an empty queue_directory (Postfix
refuses to run without one) and no data_directory: any write creates them.
"""

import copy
import json
import os
import pathlib
import shutil
import subprocess
import time

import pytest

MASTER_CF = next(p for p in ("/etc/postfix/master.cf", "/usr/share/postfix/master.cf.dist")
                 if os.path.exists(p))


@pytest.fixture
def layout(tmp_path):
    """A Postfix config dir with an empty queue directory and no data directory."""
    conf = tmp_path / "conf"
    conf.mkdir()
    os.chmod(conf, 0o755)
    shutil.copy(MASTER_CF, conf / "master.cf")
    queue, data = tmp_path / "queue", tmp_path / "data"
    queue.mkdir()
    os.chmod(queue, 0o755)
    (conf / "main.cf").write_text(
        f"compatibility_level = 3.6\nqueue_directory = {queue}\ndata_directory = {data}\n")
    old = time.time() - 60
    os.utime(conf / "main.cf", (old, old))
    return {"conf": conf, "queue": queue, "data": data, "root": tmp_path}


def tree(root):
    """Every path under root with its mode and mtime."""
    found = {}
    for path in sorted(pathlib.Path(root).rglob("*")):
        st = path.lstat()
        found[str(path)] = (st.st_mode, st.st_uid, st.st_mtime_ns)
    return found


def params_for(layout, **extra):
    return {"relayhost": "[smtp.example.net]:587", "queue_directory": str(layout["queue"]),
            "data_directory": str(layout["data"]), **extra}


def test_precheck_creates_no_directory(loaders, layout):
    before = tree(layout["root"])
    problems = loaders.modules.postfix_maincf.precheck_main_cf(
        params_for(layout), str(layout["conf"]))
    assert problems == []
    assert not any(layout["queue"].iterdir()), "postfix check created queue directories"
    assert not layout["data"].exists(), "postfix check created the data directory"
    assert tree(layout["root"]) == before


def test_precheck_still_runs_postfix_check(loaders, layout):
    """postconf accepts mail_owner = root; only `postfix check` refuses it."""
    problems = loaders.modules.postfix_maincf.precheck_main_cf(
        params_for(layout, mail_owner="root"), str(layout["conf"]))
    assert any("postfix check failed" in p and "mail_owner" in p for p in problems), problems
    assert not any("overriding earlier entry" in p for p in problems), problems
    problems = loaders.modules.postfix_maincf.precheck_main_cf(
        params_for(layout, no_such_parameter="1"), str(layout["conf"]))
    assert problems == ["main_cf:no_such_parameter: Postfix does not know this parameter"]
    assert not any(layout["queue"].iterdir()) and not layout["data"].exists()


def test_precheck_refuses_a_missing_queue_directory(loaders, layout):
    """Postfix will not run without its queue directory: the check says so."""
    missing = layout["root"] / "nowhere"
    problems = loaders.modules.postfix_maincf.precheck_main_cf(
        params_for(layout, queue_directory=str(missing)), str(layout["conf"]))
    assert len(problems) == 1 and str(missing) in problems[0], problems
    assert not missing.exists()


def test_main_cf_state_under_test_writes_nothing(loaders, layout):
    before = tree(layout["root"])
    ret = loaders.states.postfix_control.main_cf(
        name=str(layout["conf"] / "main.cf"), params=params_for(layout),
        config_dir=str(layout["conf"]), test=True)
    assert ret.result is None, ret.comment
    assert "relayhost" in ret.changes
    assert tree(layout["root"]) == before
    maincf = loaders.modules.postfix_maincf
    text = maincf.render_main_cf(maincf.complete_params(params_for(layout),
                                                        str(layout["conf"])))
    (layout["conf"] / "main.cf").write_text(text)
    ret = loaders.states.postfix_control.main_cf(
        name=str(layout["conf"] / "main.cf"), params=params_for(layout),
        config_dir=str(layout["conf"]), test=True)
    assert (ret.result, ret.changes) == (True, {}), ret.comment



OAUTH2_PILLAR = {"postfix_relay": {
    "domain": "example.org", "recipient": "me@example.org",
    "relay": {"host": "smtp.office365.com", "port": 587, "username": "alerts@example.org",
              "oauth2": {"token_endpoint": "https://login.example.com/t/oauth2/v2.0/token",
                         "client_id": "app", "client_secret": "cs", "refresh_token": "rt"}}}}


@pytest.fixture
def oauth2_pillar(minion_opts, loaders, layout):
    """The pillar the minion compiles (state functions take no pillar= here),
    for this test only; the loaders start from it, as a new salt-call would."""
    pillar = copy.deepcopy(OAUTH2_PILLAR)
    pillar["postfix_relay"]["lookup"] = {"config_dir": str(layout["conf"])}
    root = pathlib.Path(minion_opts["pillar_roots"]["base"][0])
    top = (root / "top.sls").read_text()
    (root / "top.sls").write_text(top + "    - dry_run\n")
    (root / "dry_run.sls").write_text(json.dumps(pillar))
    loaders.reload_all()
    try:
        yield pillar
    finally:
        (root / "top.sls").write_text(top)
        (root / "dry_run.sls").unlink()
        loaders.reload_all()


def test_token_file_dry_run_reports_the_repairs_and_removals(loaders, layout, oauth2_pillar):
    """The real run gives the token file back to postfix (0600) and removes
    token files of relays no longer used: test=True reports exactly that."""
    tokens = layout["root"] / "sasl-xoauth2"
    tokens.mkdir(mode=0o700)
    token = tokens / "smtp.office365.com-587.json"

    def apply(**kwargs):
        return loaders.states.postfix_xoauth2.token_file(
            name=str(token), data_from="postfix_relay_settings.oauth2_token_file", **kwargs)

    assert apply().result is True
    os.chown(token, 0, 0)
    os.chmod(token, 0o644)
    (tokens / "old-relay.example-587.json").write_text('{"refresh_token": "x"}')
    before = tree(layout["root"])
    dry = apply(test=True)
    assert tree(layout["root"]) == before
    assert dry.result is None, dry.comment
    real = apply()
    assert real.result is True, real.comment
    assert dry.changes == real.changes == {
        "user": "postfix", "mode": "0600", "removed": ["old-relay.example-587.json"]}
    again = apply(test=True)
    assert (again.result, again.changes) == (True, {})


def master_pids():
    """Every Postfix master process on this host (whoever started it)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm", encoding="ascii") as handle:
                    if handle.read().strip() == "master":
                        pids.add(int(entry))
            except OSError:
                pass
    return pids


def test_running_dry_run_on_this_host_starts_nothing(loaders, layout):
    """Against this host's real Postfix (running or not, enabled or not)."""
    conf = str(layout["conf"])
    status = loaders.modules.postfix_service.status
    before, pids = status(conf), master_pids()
    ret = loaders.states.postfix_control.running(name="postfix", config_dir=conf, test=True)
    assert ret.result is (None if ret.changes else True), ret.comment
    assert ret.changes.get("running", False) is not before
    assert (status(conf), master_pids()) == (before, pids)


def test_smtpd_listener_dry_run(loaders, layout):
    master = layout["conf"] / "master.cf"
    on = loaders.modules.postfix_master.smtpd_listening(str(layout["conf"]))
    before = tree(layout["root"])
    for enabled in (True, False):
        ret = loaders.states.postfix_control.smtpd_listener(
            name=str(master), enabled=enabled, config_dir=str(layout["conf"]), test=True)
        assert ret.result is (True if enabled == on else None), ret.comment
        assert bool(ret.changes) is (enabled != on)
    assert tree(layout["root"]) == before


def test_main_cf_restored_dry_run(loaders, layout):
    conf, main_cf = layout["conf"], layout["conf"] / "main.cf"

    def restore():
        return loaders.states.postfix_control.main_cf_restored(
            name=str(main_cf), config_dir=str(conf), test=True)

    ret = restore()  # a main.cf the formula did not write: nothing to restore
    assert (ret.result, ret.changes) == (True, {}), ret.comment
    header = loaders.modules.postfix_maincf.render_main_cf({})
    main_cf.write_text(header + "relayhost = [smtp.example.net]:587\n")
    (conf / "main.cf.pre-postfix_relay").write_text("compatibility_level = 3.6\n")
    before = tree(layout["root"])
    ret = restore()
    assert ret.result is None and ret.changes, ret.comment
    assert tree(layout["root"]) == before


def test_aliases_built_dry_run(loaders, layout):
    conf, aliases = layout["conf"], layout["root"] / "aliases"
    aliases.write_text("postmaster: root\n")
    with open(conf / "main.cf", "a", encoding="utf-8") as handle:
        handle.write(f"alias_database = hash:{aliases}\nalias_maps = hash:{aliases}\n")
    old = time.time() - 60
    os.utime(conf / "main.cf", (old, old))

    def build():
        return loaders.states.postfix_control.aliases_built(
            name=str(conf / "main.cf"), config_dir=str(conf), test=True)

    before = tree(layout["root"])
    ret = build()
    assert ret.result is None and ret.changes == {"built": [f"hash:{aliases}"]}, ret.comment
    assert tree(layout["root"]) == before
    subprocess.run(["postalias", "-c", str(conf), f"hash:{aliases}"], check=True)
    ret = build()
    assert (ret.result, ret.changes) == (True, {}), ret.comment


def test_table_in_a_directory_not_created_yet_dry_run(loaders, layout):
    # A fresh host (or a password first added): the sasl directory is made by
    # a file.directory that only reports under test=True.
    path = layout["root"] / "sasl" / "passwd"
    before = tree(layout["root"])
    ret = loaders.states.postmap.managed(
        name=str(path), entries={"[smtp.example.net]:587": "user:S3cretPw"}, map_type="hash",
        secret=True, config_dir=str(layout["conf"]), test=True)
    assert ret.result is None, ret.comment
    assert ret.changes == {"created": True, "compiled": "rebuilt"}
    assert "S3cretPw" not in repr(ret.raw)
    assert tree(layout["root"]) == before
    # The real run still refuses to create the directory (file.directory's job).
    ret = loaders.states.postmap.managed(
        name=str(path), entries={"[smtp.example.net]:587": "user:S3cretPw"}, map_type="hash",
        secret=True, config_dir=str(layout["conf"]))
    assert ret.result is False and "does not exist" in ret.comment
    assert tree(layout["root"]) == before
