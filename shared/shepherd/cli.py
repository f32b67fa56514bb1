"""`shepherd`: the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .jobs import ConfigError
from .service import DEFAULT_STATE


def _replay(args: argparse.Namespace) -> int:
    from .replay import load_scenario, replay

    try:
        scenario = load_scenario(args.scenario)
    except (OSError, ValueError, KeyError) as e:
        print(f"shepherd: cannot load scenario {args.scenario!r}: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(replay(scenario, args.state).log_text)
    return 0


def _dev(args: argparse.Namespace) -> int:
    from .devserver import serve

    if not args.jobs:
        print("shepherd: dev needs --jobs FILE (or SHEPHERD_JOBS)", file=sys.stderr)
        return 2
    os.environ["SHEPHERD_JOBS"] = args.jobs
    os.environ["SHEPHERD_STATE"] = args.state
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("werkzeug", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return serve(args.host, args.port)
    except ConfigError as e:
        print(f"shepherd: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"shepherd: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1


def _package(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .devserver import functions_source
    from .package import build

    try:
        names = build(Path(args.out), Path(args.jobs), functions_source())
    except ConfigError as e:
        print(f"shepherd: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(names)} files")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shepherd", description=__doc__)
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state",
        default=os.environ.get("SHEPHERD_STATE") or DEFAULT_STATE,
        help="the SQLite store (default: $SHEPHERD_STATE or %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    replay = commands.add_parser(
        "replay",
        parents=[state],
        help="replay a scripted invocation in virtual time, print its log",
    )
    replay.add_argument("scenario", help='"seed", or a scenario TOML file')
    replay.set_defaults(run=_replay)

    dev = commands.add_parser(
        "dev", parents=[state], help="serve the four functions on one port (the local stack)"
    )
    dev.add_argument("--jobs", default=os.environ.get("SHEPHERD_JOBS"), help="the job file")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)
    dev.set_defaults(run=_dev)

    package = commands.add_parser("package", help="build the functions' source archive")
    package.add_argument("--jobs", required=True, help="the job file the deployment runs")
    package.add_argument("--out", default="dist/functions.zip")
    package.set_defaults(run=_package)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
