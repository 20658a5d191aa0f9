"""``framevet completion bash|zsh|fish``: shell completion generated from the parser."""

from __future__ import annotations

import argparse
from typing import Any

from framevet.cli.common import EXIT_CLEAN, show


def add_parser(sub: Any) -> None:
    c = sub.add_parser("completion", help="print a shell completion script "
                       "(bash: `source <(framevet completion bash)`)")
    c.add_argument("shell", choices=("bash", "zsh", "fish"))
    c.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    c.set_defaults(func=lambda args: run(args, sub))


def commands(sub: Any) -> dict[str, list[str]]:
    """Every command and its options, read from the parsers themselves (``sub``: the
    subparsers action every command was added to)."""
    return {name: sorted(o for a in p._actions for o in a.option_strings if o.startswith("--"))
            for name, p in sub.choices.items()}


def _bash(cmds: dict[str, list[str]]) -> str:
    cases = "".join(f"    {name}) opts=\"{' '.join(opts)}\";;\n" for name, opts in cmds.items())
    return f"""# framevet completion for bash (and zsh with bashcompinit)
_framevet() {{
  local cur=${{COMP_WORDS[COMP_CWORD]}} cmd=${{COMP_WORDS[1]}} opts
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "{' '.join(cmds)} --help --version" -- "$cur"))
    return
  fi
  case "$cmd" in
{cases}    *) opts="";;
  esac
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
  else
    COMPREPLY=($(compgen -f -- "$cur"))
  fi
}}
complete -o filenames -F _framevet framevet
"""


def _fish(cmds: dict[str, list[str]]) -> str:
    lines = ["# framevet completion for fish", "complete -c framevet -f"]
    lines += [f"complete -c framevet -n __fish_use_subcommand -a {name}" for name in cmds]
    for name, opts in cmds.items():
        lines += [f"complete -c framevet -n '__fish_seen_subcommand_from {name}' -l {o[2:]}"
                  for o in opts]
        lines.append(f"complete -c framevet -n '__fish_seen_subcommand_from {name}' -F")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, sub: Any) -> int:
    cmds = commands(sub)
    if args.shell == "fish":
        text = _fish(cmds)
    elif args.shell == "zsh":
        text = "autoload -U +X bashcompinit && bashcompinit\n" + _bash(cmds)
    else:
        text = _bash(cmds)
    show(text, args.output)
    return EXIT_CLEAN
