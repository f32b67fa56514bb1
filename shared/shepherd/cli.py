"""`shepherd`: the command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .replay import load_scenario, replay

DEFAULT_STATE = ".shepherd/state.db"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shepherd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    replay_cmd = commands.add_parser(
        "replay", help="replay a scripted invocation in virtual time and print its debug log"
    )
    replay_cmd.add_argument("scenario", help='"seed", or a scenario TOML file')
    replay_cmd.add_argument(
        "--state",
        default=os.environ.get("SHEPHERD_STATE", DEFAULT_STATE),
        help="the SQLite store (default: $SHEPHERD_STATE or %(default)s)",
    )
    args = parser.parse_args(argv)

    try:
        scenario = load_scenario(args.scenario)
    except (OSError, ValueError, KeyError) as e:
        print(f"shepherd: cannot load scenario {args.scenario!r}: {e}", file=sys.stderr)
        return 2
    result = replay(scenario, args.state)
    sys.stdout.write(result.log_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
