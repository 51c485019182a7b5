"""What the ``daemon`` and ``trainer`` command lines share: options given before or after the subcommand, and no
prefix abbreviation.

argparse reads an option placed before the subcommand with the top parser and one placed after it with the
subcommand's parser, which knows nothing of the top's options; and by default it takes any unambiguous prefix of
an option (``scan --engine X`` was read as ``--engine-version X``). ``finish_parser`` turns abbreviation off in
every parser, shows each option's default in its help, and adds the shared options to every leaf subcommand,
with ``SUPPRESS`` defaults so that an option given before the subcommand is not overwritten by the
subcommand's default.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Any

SharedOptions = Callable[[argparse.ArgumentParser, Any], None]  # (parser, default) → adds the shared options


class HelpWithDefaults(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; each option's default after its help, unless it has none or the help
    already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        none = default is None or default is False or default == argparse.SUPPRESS  # 0 is a default to show
        if none or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def finish_parser(parser: argparse.ArgumentParser, shared: SharedOptions) -> argparse.ArgumentParser:
    """``parser`` with abbreviation off everywhere, defaults in every help and ``shared`` added to each leaf
    subcommand."""
    parser.allow_abbrev = False
    parser.formatter_class = HelpWithDefaults
    for sub, is_leaf in _subparsers(parser):
        sub.allow_abbrev = False
        sub.formatter_class = HelpWithDefaults
        if is_leaf:
            shared(sub, argparse.SUPPRESS)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[argparse.ArgumentParser, bool]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                children = list(_subparsers(sub))
                yield sub, not children
                yield from children
