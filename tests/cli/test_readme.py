"""Every `slfaas ...` command in the README's code blocks parses with today's CLI (the
quick-start block also runs against a live server: tests/integration/test_readme_quickstart.py)."""
from __future__ import annotations

from tests.cli._util import README, code_block_commands, parse_only, quickstart_commands, slfaas_argv


def test_readme_commands_parse() -> None:
    commands = code_block_commands(README.read_text())
    assert len(commands) >= 15
    for line in commands:
        for part in line.split(" ; "):
            argv = slfaas_argv(part)
            assert argv, part
            ctx = parse_only(argv)  # raises on an unknown command or option, a bad value, a missing argument
            assert ctx.command_path.split()[1] == argv[0], part


def test_quickstart_is_there_and_covers_the_workflow() -> None:
    commands = quickstart_commands(README.read_text())
    verbs = [slfaas_argv(c)[0] for c in commands]
    for verb in ("server", "models", "deploy", "invoke", "list", "logs", "node", "delete"):
        assert verb in verbs
