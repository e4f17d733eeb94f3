"""The ``lotts`` command: generate, demo, bench, compare, env (one module per subcommand).

Every problem a user can fix (a missing model or verifier weights, an unreadable prompt file, an
out-of-range option, an output directory of another run) is a
:class:`~lotts.errors.LoTTSUserError`; :func:`main` prints it as one message and exits 2
(``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import Optional

from lotts.cli import bench, compare, demo, env, generate
from lotts.cli.console import quiet_libraries
from lotts.errors import LoTTSUserError

DESCRIPTION = ("LoTTS, localized test-time scaling for diffusers pipelines: generate, demo, "
               "bench, compare, env.")
# name -> module with HELP, add_arguments(parser) and run(args) -> exit code
SUBCOMMANDS = {"generate": generate, "demo": demo, "bench": bench, "compare": compare, "env": env}


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, but never wrapping inside a hyphenated word (``world-clean-a``)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true",
                        help="no progress bar or status lines (warnings and errors still print)")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = argparse.ArgumentParser(prog="lotts", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        sub = commands.add_parser(name, parents=[common], help=module.HELP,
                                  formatter_class=HelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return int(args.handler(args) or 0)
    except LoTTSUserError as error:
        if args.debug:
            raise
        print(f"lotts {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"lotts {args.command}: interrupted; rerun the same command to resume",
              file=sys.stderr)
        return 130
