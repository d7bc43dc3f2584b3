"""KEY=VALUE overrides anywhere after the subcommand, in command-line order."""

from __future__ import annotations

import pytest

from mammodino.cli import build_parser, parse_command_line


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def test_overrides_after_options_are_kept_in_order(parser):
    argv = ["pretrain", "--config", "tiny-cpu", "optim.base_lr=0.1", "--output-dir", "RUN",
            "crops.sampler=random", "optim.base_lr=0.2"]  # fmt: skip
    args = parse_command_line(parser, argv)
    assert str(args.output_dir) == "RUN" and args.config == "tiny-cpu"
    assert args.overrides == ["optim.base_lr=0.1", "crops.sampler=random", "optim.base_lr=0.2"]


def test_prepare_takes_overrides_after_its_options(parser):
    args = parse_command_line(
        parser, ["prepare", "SRC", "OUT", "--workers", "1", "prepare.cache_size=64"]
    )
    assert (args.src, args.out, args.workers) == ("SRC", "OUT", 1)
    assert args.overrides == ["prepare.cache_size=64"]


@pytest.mark.parametrize("extra", ["--bogus", "--output-dir2=x"])
def test_unknown_arguments_still_fail(parser, extra, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_command_line(parser, ["pretrain", "--output-dir", "RUN", extra])
    assert exit_info.value.code == 2 and extra in capsys.readouterr().err


def test_commands_without_overrides_reject_key_value(parser):
    with pytest.raises(SystemExit):
        parse_command_line(parser, ["inspect", "OUT", "a=1"])
