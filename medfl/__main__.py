"""``python -m medfl``: the project's command line.

    python -m medfl jobs [JOB]                 the jobs (JOB: its settings, values and descriptions)
    python -m medfl export JOB DIR             write the job folder DIR/JOB from its recipe (--all: every job)
    python -m medfl run JOB --env sim|poc|prod run a job (see `python -m medfl run --help`)
    python -m medfl site-policy DIR            allow medfl's classes at a site (a startup kit or simulator workspace)
    python -m medfl version                    print the installed medfl version
    python -m medfl export-byoc JOB DIR        write JOB with the medfl files it needs in app*/custom (medfl/byoc.py)

`nvflare simulator jobs/<job> ...` and `nvflare job submit -j jobs/<job>` run the same committed job folders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medfl import __version__
from medfl.byoc import add_command as add_export_byoc
from medfl.common.errors import DataError


def _add_recipe_commands(commands) -> None:
    from medfl.recipes import JOBS
    from medfl.recipes.base import TRACKERS
    from medfl.recipes.commands import ENVS, list_jobs

    job_list = "jobs:\n" + list_jobs()
    jobs = commands.add_parser("jobs", help="list the jobs, or one job's settings with their descriptions")
    jobs.add_argument("job", nargs="?", choices=sorted(JOBS), metavar="JOB", help="a job: show its settings")

    export = commands.add_parser("export", help="write job folders from the recipes (the committed jobs/ too)",
                                 epilog=job_list, formatter_class=argparse.RawDescriptionHelpFormatter)
    export.add_argument("job", nargs="?", choices=sorted(JOBS), metavar="JOB")
    export.add_argument("folder", type=Path, help="the folder that receives <job>/ (e.g. jobs)")
    export.add_argument("--all", action="store_true", help="export every job")

    run = commands.add_parser("run", help="run a job in the simulator, a local POC or a deployment",
                              epilog=job_list + "\n\n`python -m medfl jobs JOB` lists a job's settings for --set.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("job", choices=sorted(JOBS), metavar="JOB")
    run.add_argument("--env", choices=ENVS, required=True,
                     help="sim: NVFlare's simulator; poc: a POC provisioned on this machine; prod: a deployment")
    run.add_argument("--rounds", type=int, help="training rounds (num_rounds)")
    run.add_argument("--data-root", help="the folder replacing DATASET_ROOT in the job's paths (default: each "
                                         "site's DATASET_ROOT environment variable)")
    run.add_argument("--workspace", help="sim: the simulator's workspace root; poc: the POC workspace")
    run.add_argument("--startup-kit", help="prod: the admin's startup kit folder")
    run.add_argument("--clients", help="comma-separated client names (default: the job's sites)")
    run.add_argument("--tracking", choices=TRACKERS, default="tensorboard", help="where the clients' metrics go")
    run.add_argument("--cross-site", action="store_true", help="end with the cross-site matrix (cross_site.*)")
    run.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                     help="any workflow or client setting, a JSON value (e.g. num_threads=1 'network={...}')")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medfl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    policy = commands.add_parser("site-policy", help="add medfl. to a site's class_allow_list (local/resources.json)")
    policy.add_argument("site_dir", type=Path, help="a site's startup kit folder, or a simulator workspace")
    commands.add_parser("version", help="print the installed medfl version")
    _add_recipe_commands(commands)
    add_export_byoc(commands)
    args = parser.parse_args(argv)
    if hasattr(args, "handler"):
        return args.handler(args)
    try:
        return _dispatch(parser, args)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _dispatch(parser: argparse.ArgumentParser, args) -> int:
    from medfl.recipes import JOBS
    from medfl.recipes import commands as recipe_commands

    if args.command == "version":
        print(__version__)
    elif args.command == "site-policy":
        from medfl.site import allow_medfl

        print(f"medfl {__version__} classes allowed in {allow_medfl(args.site_dir)}")
    elif args.command == "jobs":
        print(recipe_commands.describe_job(args.job) if args.job else recipe_commands.list_jobs())
    elif args.command == "export":
        if bool(args.all) == bool(args.job):
            parser.error("export: give one JOB or --all")
        for folder in recipe_commands.export_jobs(sorted(JOBS) if args.all else [args.job], args.folder):
            print(f"exported {folder}")
    elif args.command == "run":
        clients = [c.strip() for c in args.clients.split(",") if c.strip()] if args.clients else None
        result = recipe_commands.run_job(args.job, args.env, rounds=args.rounds, data_root=args.data_root,
                                         workspace=args.workspace, startup_kit=args.startup_kit, clients=clients,
                                         tracking=args.tracking, cross_site=args.cross_site,
                                         settings=recipe_commands.parse_settings(args.set))
        print(f"results: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
