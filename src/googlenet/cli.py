"""`googlenet` command line: one subcommand per module in googlenet/commands/.

Each commands/<name>.py has `register(subparsers)` that adds its parser and sets
`func(args) -> int`; those modules import torch lazily so `--help` stays quick.
User mistakes (UserError) end in one line on stderr and exit code 2 (1 for run errors).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import signal
import sys
import textwrap

# Order here is the order in `googlenet --help`.
COMMAND_MODULES = (
    "models",  # list-models, summary, import-torchvision
    "train",
    "evaluate",  # eval
    "predict",
    "export",
    "bench",
)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that descriptions and epilogs keep their line breaks:
    each line is wrapped on its own, and an indented line (an example command) is printed
    as written, so `examples:` lists show one whole, copyable command per line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if line.startswith(" "):
                lines.append(indent + line.rstrip())
            elif line.strip():
                lines.append(textwrap.fill(re.sub(r"\s+", " ", line).strip(), width,
                                           initial_indent=indent, subsequent_indent=indent))
            else:
                lines.append("")
        return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: a wrong flag or value says what and where to look, instead
    of a usage block of several lines above the message (subcommands inherit it)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    @property
    def commands(self) -> dict[str, "Parser"]:
        """The subcommands' parsers by name ({} for a parser without subcommands)."""
        return next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})

    def command_parser(self, command: str | None) -> "Parser":
        """The subcommand's parser (this one for no command)."""
        return self.commands.get(command, self) if command else self

    def unrecognized(self, extra: list[str]) -> None:
        """Error for arguments no option took, suggesting the closest flag of this parser."""
        import difflib

        flags = [f for a in self._actions for f in a.option_strings if f.startswith("--")]
        hints = [close[0] for arg in extra if arg.startswith("--")
                 for close in [difflib.get_close_matches(arg.split("=", 1)[0], flags, n=1, cutoff=0.6)] if close]
        self.error(f"unrecognized arguments: {' '.join(extra)}" + (f"; did you mean {', '.join(hints)}?" if hints else ""))


def build_parser() -> Parser:
    parser = Parser(
        prog="googlenet",
        formatter_class=HelpFormatter,
        description="GoogLeNet (Inception v1): build, train, evaluate, export and benchmark.",
        epilog="Run `googlenet COMMAND --help` for a command's options and examples.\n"
        "Quick start (about 10 minutes on a CPU, Fashion-MNIST):\n"
        "  googlenet train --model googlenet_cifar_fast --budget 10m --batch-size 32 --lr 0.05 --out runs/demo\n"
        "  googlenet predict runs/demo/model.safetensors IMAGE.png",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"googlenet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module_name = f"googlenet.commands.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:  # a command not built yet
                continue
            raise
        module.register(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
    return parser


def _attach_dashed_values(argv: list[str]) -> list[str]:
    """`--budget -5m` as `--budget=-5m`: argparse takes a value that starts with a dash and is not
    a plain number for an option and says only "expected one argument"; attached, it reaches
    the budget's own check, which says what a duration looks like."""
    out, rest = [], iter(argv)
    for arg in rest:
        value = next(rest, None) if arg == "--budget" else None
        if value is not None and value[:1] == "-" and value[1:2].isdigit():
            out.append(f"--budget={value}")
        else:
            out += [arg] if value is None else [arg, value]
    return out


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP to a command: unwinds like Ctrl-C, so its temporary files are removed
    and half-written outputs never replace good ones; the exit status names the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_unwind(command: str):
    """While a command runs, SIGTERM and SIGHUP raise Terminated (the default would end the
    process at once, leaving temporary folders behind). `train` handles them itself (it saves a
    checkpoint first); a SIGHUP that nohup set to be ignored stays ignored."""
    previous = {}
    if command != "train":
        for signum in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                if signal.getsignal(signum) == signal.SIG_DFL:
                    previous[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _check_command_name(parser: Parser, argv: list[str]) -> None:
    """An unknown command: argparse lists all eight; say which one was probably meant."""
    import difflib

    first = next((a for a in argv if not a.startswith("-")), None)
    commands = parser.commands
    if first is None or first in commands or any(a in ("-h", "--help", "--version") for a in argv[:argv.index(first)]):
        return
    close = difflib.get_close_matches(first, list(commands), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    parser.error(f"unknown command {first!r}{hint} (commands: {', '.join(commands)})")


def main(argv: list[str] | None = None) -> int:
    from .errors import UserError

    parser = build_parser()
    argv = _attach_dashed_values(sys.argv[1:] if argv is None else argv)
    _check_command_name(parser, argv)
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand's parser, with the flag probably meant
        parser.command_parser(getattr(args, "command", None)).unrecognized(extra)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _signals_unwind(args.command):
            return int(args.func(args) or 0)
    except UserError as e:
        # A run stopped on request (Ctrl-C, SIGTERM) is not an error: it says how to continue.
        label = "" if getattr(e, "requested", False) else "error: "
        try:
            print(f"googlenet {args.command}: {label}{e}", file=sys.stderr)
        except OSError:  # stderr has gone (a closed pipe or terminal): the exit code still tells
            pass
        return e.exit_code
    except KeyboardInterrupt as e:  # a training run's second Ctrl-C says what it cost (guard.StoppedAtOnce)
        with contextlib.suppress(OSError):
            print(f"googlenet {args.command}: {str(e) or 'interrupted'}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except BrokenPipeError:  # `googlenet ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
