"""`optimum-cli projclust ...`: the CLI's subcommands in Optimum's command namespace.

optimum-cli imports this module at every start (through
optimum/commands/register/register_projclust.py), so it imports only argparse-level code.
"""

from __future__ import annotations

import functools

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from projclust_onnx.cli import main as cli


def _subcommand(name: str) -> type[BaseOptimumCLICommand]:
    help_text, add_arguments, run = cli.COMMANDS[name]

    class Subcommand(BaseOptimumCLICommand):
        @staticmethod
        def parse_args(parser) -> None:
            add_arguments(parser)
            # One line for a usage error in this subcommand's arguments, as projclust-onnx prints it.
            parser.error = functools.partial(cli.usage_error, f"optimum-cli projclust {name}", parser.prog)

        def run(self) -> None:
            prog = f"optimum-cli projclust {name}"
            code = cli.run_guarded(run, self.args, prog=prog, title=prog)
            if code:
                raise SystemExit(code)

    Subcommand.__name__ = Subcommand.__qualname__ = f"ProjClust{name.title()}Command"
    return Subcommand


class ProjClustCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="projclust", help="compress word embeddings by projective clustering")
    SUBCOMMANDS = tuple(
        CommandInfo(name=name, help=help_text, subcommand_class=_subcommand(name))
        for name, (help_text, _, _) in cli.COMMANDS.items()
    )
