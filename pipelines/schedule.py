"""``make schedule`` / ``python -m pipelines.schedule``: upload the compiled pipeline as a new version and
(re)create the nightly recurring run: one run at a time, no catch-up of missed runs.

    KFP_ENDPOINT=... python -m pipelines.schedule --cron "0 0 2 * * *" --params-file nightly.yaml

The KFP API cannot update a recurring run: an existing one of the same name is deleted and created again
(the output says so). Cron has 6 fields, seconds first. Each scheduled run's time is recorded on its MLflow run
(tag kfp.scheduled_time).
"""

import argparse
import sys

from kubedistill.errors import ConfigError
from kubedistill.pipeline import kfp_client
from pipelines.distillation_pipeline import COMPILED, PIPELINE_NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", help=f"the KFP API (default ${kfp_client.ENDPOINT_ENV})")
    parser.add_argument("--cron", default="0 0 2 * * *", help="6 fields, seconds first (default: 02:00:00 daily)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a pipeline argument")
    parser.add_argument("--params-file", help="pipeline arguments as YAML (--param wins)")
    parser.add_argument("--pipeline-name", default=PIPELINE_NAME)
    parser.add_argument("--experiment", default="kubedistill-nightly")
    parser.add_argument("--name", default="kubedistill-nightly", help="the recurring run's name")
    parser.add_argument("--package", default=str(COMPILED))
    args = parser.parse_args(argv)
    try:
        kfp_client.validate_cron(args.cron)
        arguments = kfp_client.parse_arguments(args.param, args.params_file)
        client = kfp_client.connect(args.endpoint)
        result = kfp_client.schedule(client, args.package, pipeline_name=args.pipeline_name, experiment=args.experiment,
                                     job_name=args.name, cron=args.cron, arguments=arguments)  # fmt: skip
    except ConfigError as e:
        print(f"schedule: {e}", file=sys.stderr)
        return kfp_client.EXIT_USAGE
    except kfp_client.EndpointError as e:
        print(f"schedule: {e}", file=sys.stderr)
        return kfp_client.EXIT_UNREACHABLE
    print(f"recurring run {args.name!r} ({result.recurring_run_id}): {args.cron!r}, pipeline {args.pipeline_name} "
          f"version {result.version_id}, experiment {args.experiment}"
          + (f"; replaced {result.replaced}" if result.replaced else ""))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
