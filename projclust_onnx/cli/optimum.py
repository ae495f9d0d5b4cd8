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
            parser.description = help_text
            add_arguments(parser)
            # One line for a usage error in this subcommand's arguments, as projclust-onnx prints it.
            parser.error = functools.partial(cli.usage_error, f"optimum-cli projclust {name}", parser.prog)
            # Unknown flags would reach optimum-cli's root parser, whose error is two lines: keep them here.
            parse_known = parser.parse_known_args

            def parse_known_args(args=None, namespace=None):
                namespace, unknown = parse_known(args, namespace)
                namespace.projclust_unknown = unknown
                return namespace, []

            parser.parse_known_args = parse_known_args

        def run(self) -> None:
            prog = f"optimum-cli projclust {name}"
            if getattr(self.args, "projclust_unknown", None):
                cli.usage_error(prog, prog, f"unrecognized arguments: {' '.join(self.args.projclust_unknown)}")
            code = cli.run_guarded(run, self.args, prog=prog, title=prog)
            if code:
                raise SystemExit(code)

    Subcommand.__name__ = Subcommand.__qualname__ = f"ProjClust{name.title()}Command"
    return Subcommand


class ProjClustCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="projclust", help="compress word embeddings by projective clustering")

    @staticmethod
    def parse_args(parser) -> None:
        parser.description = cli.__doc__.splitlines()[0]
    SUBCOMMANDS = tuple(
        CommandInfo(name=name, help=help_text, subcommand_class=_subcommand(name))
        for name, (help_text, _, _) in cli.COMMANDS.items()
    )
