"""``make schedule`` / ``python -m pipelines.schedule``: upload the compiled pipeline as a new version and
(re)create the nightly recurring run: one run at a time, no catch-up of missed runs.

    KFP_ENDPOINT=... python -m pipelines.schedule --cron "0 0 2 * * *" --params-file nightly.yaml

The KFP API cannot update a recurring run: an existing one of the same name is deleted and created again
(the output says so). Cron has 6 fields, seconds first. Each scheduled run's time and recurring run are recorded
on its MLflow run (tags kfp.scheduled_time, kfp.recurring_run_id). Multi-user KFP: --namespace, and the token as
for submit. Exit status: 0 scheduled, 2 bad arguments, 6 the endpoint cannot be reached, refuses the token, or
runs a KFP older than 2.14.
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
    parser.add_argument("--namespace", help="multi-user KFP: the profile's namespace (default: this pod's)")
    parser.add_argument("--package", default=str(COMPILED))
    args = parser.parse_args(argv)
    try:
        kfp_client.validate_cron(args.cron)
        arguments = kfp_client.parse_arguments(args.param, args.params_file)
        connection = kfp_client.connect(args.endpoint, namespace=args.namespace)
        result = kfp_client.schedule(connection.client, args.package, pipeline_name=args.pipeline_name,
                                     experiment=args.experiment, job_name=args.name, cron=args.cron,
                                     arguments=arguments, namespace=connection.namespace)  # fmt: skip
    except ConfigError as e:
        print(f"schedule: {e}", file=sys.stderr)
        return kfp_client.EXIT_USAGE
    except kfp_client.EndpointError as e:
        print(f"schedule: {e}", file=sys.stderr)
        return kfp_client.EXIT_UNREACHABLE
    except Exception as e:  # an API call failed half-way: say which, without a traceback
        if kfp_client.api_failure(e) is None:
            raise
        print(f"schedule: the KFP API failed ({kfp_client.api_failure(e)}); run it again", file=sys.stderr)
        return kfp_client.EXIT_UNREACHABLE
    print(f"recurring run {args.name!r} ({result.recurring_run_id}): {args.cron!r}, pipeline {args.pipeline_name} "
          f"version {result.version_id}, experiment {args.experiment}"
          + (f"; replaced {result.replaced}" if result.replaced else ""))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
