"""``python -m medfl``: the project's command line.

    python -m medfl site-policy DIR     allow medfl's classes at a site (DIR: a startup kit or simulator workspace)
    python -m medfl version             print the installed medfl version
    python -m medfl export-byoc JOB DIR write JOB with the medfl files it needs in app*/custom (medfl/byoc.py)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medfl import __version__
from medfl.byoc import add_command as add_export_byoc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medfl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    policy = commands.add_parser("site-policy", help="add medfl. to a site's class_allow_list (local/resources.json)")
    policy.add_argument("site_dir", type=Path, help="a site's startup kit folder, or a simulator workspace")
    commands.add_parser("version", help="print the installed medfl version")
    add_export_byoc(commands)
    args = parser.parse_args(argv)
    if hasattr(args, "handler"):
        return args.handler(args)
    if args.command == "version":
        print(__version__)
    elif args.command == "site-policy":
        from medfl.site import allow_medfl

        print(f"medfl {__version__} classes allowed in {allow_medfl(args.site_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
