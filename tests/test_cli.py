import pytest

from whisper_sv.cli import STAGES, build_parser, main


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name, _ in STAGES:
        assert name in out


def test_unbuilt_stage_names_its_issue(capsys, monkeypatch):
    import whisper_sv.cli as cli

    # Every planned stage is built now; a made-up one checks that the stub still names its issue.
    monkeypatch.setattr(cli, "STAGES", STAGES + (("later", "whisper_sv.not_built_yet"),))
    monkeypatch.setitem(cli.PLANNED, "later", ("a stage still to come", "a later issue (not filed yet)"))
    built = set(build_parser()._subparsers._group_actions[0].choices)
    assert built == {name for name, _ in STAGES} | {"later"}
    assert main(["later", "configs/tiny.json", "--trials", "3"]) == 2
    assert "not filed yet" in capsys.readouterr().err


def test_app_refuses_a_host_it_cannot_listen_on_in_one_line(capsys):
    """Gradio would load both models and then say "Cannot find empty port" (issue 13, item 13)."""
    assert main(["app", "--host", "999.1.1.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--host '999.1.1.1' is not an address of this machine" in err
