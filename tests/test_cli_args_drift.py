"""Each finetune option is defined once: `FinetuneArgs` (help, default, choices) and the command cannot drift.

The command reads its help and defaults from the dataclass and builds its choices from the library's
vocabularies; these tests check the result as Click sees it, in both directions, and show that the
check fails on a drifted copy (a field added to the dataclass only, a default, help text or choice
changed on one side). Also: every command's ``--format`` takes the same ``text|json``.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from enum import Enum
from typing import Any

import pytest
import typer

from hf_sparseout.training.args import FinetuneArgs, help_for
from hf_sparseout_cli import finetune_cmd
from hf_sparseout_cli.main import app
from hf_sparseout_cli.options import DEPRECATED_FORMATS, OutputFormat

COMMANDS = typer.main.get_command(app).commands


def _choices(annotation: Any) -> tuple[str, ...] | None:
    """The values an option annotated ``annotation`` accepts when it is an Enum (under Annotated/Optional/list)."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return tuple(member.value for member in annotation)
    return None


def _field_default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def drift(command: Any = None, args_type: type = FinetuneArgs) -> list[str]:
    """Every disagreement between ``args_type``'s fields and ``command``'s options (the finetune command's default)."""
    command = command or COMMANDS["finetune"]
    fields = {f.name: f for f in dataclasses.fields(args_type)}
    params = {prm.name: prm for prm in command.params}
    hints = typing.get_type_hints(finetune_cmd.finetune, include_extras=True)
    problems = [f"FinetuneArgs.{name} has no help metadata" for name, f in fields.items() if not f.metadata.get("help")]
    problems += [
        f"FinetuneArgs.{name} has no command-line option"
        for name in sorted(fields.keys() - params.keys() - finetune_cmd.NOT_OPTIONS.keys())
    ]
    problems += [
        f"option {params[name].opts[0]} has no FinetuneArgs field"
        for name in sorted(params.keys() - fields.keys() - finetune_cmd.CLI_ONLY.keys())
    ]
    for name in sorted(fields.keys() & params.keys()):
        field, prm = fields[name], params[name]
        if prm.opts != [f"--{name.replace('_', '-')}"]:
            problems.append(f"{name}: option {prm.opts} is not --{name.replace('_', '-')}")
        if field.metadata.get("help") and prm.help != field.metadata["help"]:
            problems.append(f"{name}: help {prm.help!r} != FinetuneArgs' {field.metadata['help']!r}")
        default = prm.default.value if isinstance(prm.default, Enum) else prm.default
        wanted = _field_default(field)
        if name not in finetune_cmd.DEFAULT_MAPPED and (default != wanted or type(default) is not type(wanted)):
            problems.append(f"{name}: default {default!r} != FinetuneArgs' {wanted!r}")
        choices, wanted_choices = _choices(hints.get(name)), field.metadata.get("choices")
        if choices != (tuple(wanted_choices) if wanted_choices is not None else None):
            problems.append(f"{name}: choices {choices} != FinetuneArgs' {wanted_choices}")
    return problems


def _with_param(option: str, changes: dict[str, Any]) -> Any:
    """A copy of the finetune command with ``option``'s attributes changed (or, with ``remove``, the option gone)."""
    command = copy.copy(COMMANDS["finetune"])
    params = []
    for prm in command.params:
        if prm.name == option:
            if changes.get("remove"):
                continue
            prm = copy.copy(prm)
            for key, value in changes.items():
                setattr(prm, key, value)
        params.append(prm)
    command.params = params
    return command


# ---- the real command agrees with FinetuneArgs ----


def test_every_field_has_help_and_every_option_is_a_field():
    assert drift() == []


def test_exclusion_lists_name_real_options_and_fields():
    fields = {f.name for f in dataclasses.fields(FinetuneArgs)}
    params = {prm.name for prm in COMMANDS["finetune"].params}
    assert set(finetune_cmd.CLI_ONLY) <= params - fields, "a CLI-only entry that is not an option, or is a field"
    assert set(finetune_cmd.NOT_OPTIONS) <= fields - params, "a NOT_OPTIONS entry that is not a field, or has one"
    assert set(finetune_cmd.DEFAULT_MAPPED) <= fields & params


def test_command_line_defaults_make_the_default_args():
    """With no option given, the command builds ``FinetuneArgs()`` (DEFAULT_MAPPED entries mapped included)."""
    ctx = COMMANDS["finetune"].make_context("finetune", [])
    assert finetune_cmd.args_from_params(ctx.params) == FinetuneArgs()


def test_help_for_reads_the_field_metadata():
    assert help_for("batch_size") == "Per-device batch size."
    with pytest.raises(KeyError, match="no_such_option"):
        help_for("no_such_option")


def test_shared_sparseout_options_have_the_same_help_in_inspect():
    """inspect's --p/--q/--targets/... are the same Annotated types, so the same FinetuneArgs help."""
    inspect_params = {prm.name: prm for prm in COMMANDS["inspect"].params}
    for name in ("p", "q", "targets", "exclude", "attention", "insert", "gradient"):
        assert inspect_params[name].help == help_for(name), name


# ---- the check fails on drift ----


def test_a_field_added_to_the_dataclass_only_is_reported():
    extended = dataclasses.make_dataclass(
        "Extended",
        [("new_option", int, dataclasses.field(default=0, metadata={"help": "Something new."}))],
        bases=(FinetuneArgs,),
    )
    assert drift(args_type=extended) == ["FinetuneArgs.new_option has no command-line option"]


def test_a_field_without_help_is_reported():
    @dataclasses.dataclass
    class NoHelp(FinetuneArgs):
        seed: int = 42

    assert drift(args_type=NoHelp) == ["FinetuneArgs.seed has no help metadata"]


def test_dataclass_side_default_help_or_choices_changes_are_reported():
    @dataclasses.dataclass
    class Drifted(FinetuneArgs):
        batch_size: int = dataclasses.field(default=16, metadata={"help": "Per-device batch size."})
        seed: int = dataclasses.field(default=42, metadata={"help": "Seed."})
        lr_scheduler: str = dataclasses.field(
            default="linear", metadata={"help": "Learning-rate schedule.", "choices": ("linear", "cosine", "step")}
        )

    problems = drift(args_type=Drifted)
    assert len(problems) == 3, problems
    assert [p.split(":")[0] for p in problems] == ["batch_size", "lr_scheduler", "seed"]


@pytest.mark.parametrize(
    ("name", "changes", "expect"),
    [
        ("seed", {"remove": True}, "FinetuneArgs.seed has no command-line option"),
        ("seed", {"default": 0}, "seed: default 0 != FinetuneArgs' 42"),
        ("learning_rate", {"default": "5e-4"}, "learning_rate: default '5e-4' != FinetuneArgs' 0.0005"),
        ("seed", {"help": "Seed."}, "seed: help 'Seed.' != FinetuneArgs'"),
        ("seed", {"name": "random_seed"}, "option --seed has no FinetuneArgs field"),
        ("seed", {"opts": ["--rng-seed"]}, "seed: option ['--rng-seed'] is not --seed"),
    ],
)
def test_command_side_changes_are_reported(name, changes, expect):
    problems = drift(_with_param(name, changes))
    assert any(expect in p for p in problems), problems


# ---- one --format vocabulary ----


def _format_commands() -> dict[str, Any]:
    """Every command's ``--format`` option, checked to be the parameter ``fmt`` (read from each callback)."""
    found = {}
    for name, command in COMMANDS.items():
        for prm in command.params:
            if "--format" in prm.opts:
                assert prm.name == "fmt", f"{name}: --format must be the parameter fmt"
                found[name] = prm
    return found


def test_every_format_option_has_the_same_vocabulary():
    callbacks = {info.name: info.callback for info in app.registered_commands}
    formats = _format_commands()
    assert set(formats) == {"finetune", "sweep", "inspect", "env", "push"}
    for name, prm in formats.items():
        choices = _choices(typing.get_type_hints(callbacks[name], include_extras=True)["fmt"])
        deprecated = tuple(c for c in choices if c in DEPRECATED_FORMATS)
        assert tuple(c for c in choices if c not in deprecated) == tuple(f.value for f in OutputFormat), name
        assert deprecated == (("table",) if name == "inspect" else ()), name
        assert prm.default is OutputFormat.text or prm.default.value == "text", name


_REQUIRED = {"inspect": ["some-model"], "push": ["some-dir", "--repo-id", "me/x"]}


@pytest.mark.parametrize("name", ["finetune", "sweep", "inspect", "env", "push"])
def test_every_format_option_parses_text_and_json_in_any_case(name):
    command = COMMANDS[name]
    for given, parsed in [("text", "text"), ("json", "json"), ("JSON", "json"), ("Text", "text")]:
        ctx = command.make_context(name, [*_REQUIRED.get(name, []), "--format", given])
        assert ctx.params["fmt"].value == parsed, (name, given)
    with pytest.raises(Exception, match="xml"):
        command.make_context(name, [*_REQUIRED.get(name, []), "--format", "xml"])
    if name == "inspect":  # the deprecated alias stays accepted (and is reported by the command)
        assert command.make_context(name, ["m", "--format", "table"]).params["fmt"].value == "table"
