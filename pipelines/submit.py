"""``make submit`` / ``python -m pipelines.submit``: run the compiled pipeline on a KFP server from CI, wait for
it, and exit 0 only when the run SUCCEEDED.

    KFP_ENDPOINT=https://kubeflow.example.com/pipeline KFP_TOKEN=... python -m pipelines.submit \\
        --param dataset_uri=gs://bucket/images --param probe_train_uri=gs://bucket/probe/train \\
        --param probe_val_uri=gs://bucket/probe/val --param output_root=gs://bucket/runs --timeout 7200

Exit status: 0 SUCCEEDED, 3 FAILED (or SKIPPED), 4 CANCELED, 5 not finished within --timeout, 6 the endpoint
cannot be reached (at the start, or for --retry-for seconds while the run goes on), refuses the token, or runs a
KFP older than 2.14; 2 bad arguments. The run's UI link is printed first.

Multi-user KFP: --namespace is the profile's namespace (inside a cluster, the pod's own); the token is KFP_TOKEN,
else the pod's projected KFP token (/var/run/secrets/kubeflow/pipelines/token, or $KF_PIPELINES_SA_TOKEN_PATH).
"""

import argparse
import sys
from datetime import datetime, timezone

from kubedistill.errors import ConfigError
from kubedistill.pipeline import kfp_client
from pipelines.distillation_pipeline import COMPILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", help=f"the KFP API (default ${kfp_client.ENDPOINT_ENV})")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a pipeline argument")
    parser.add_argument("--params-file", help="pipeline arguments as YAML (--param wins)")
    parser.add_argument("--experiment", default="kubedistill-ci")
    parser.add_argument("--run-name", default=f"kubedistill-ci-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait for the end (default 6 h)")
    parser.add_argument("--poll", type=float, default=15.0, help="seconds between status checks")
    parser.add_argument("--cancel-on-timeout", action="store_true", help="terminate the run when --timeout passes")
    parser.add_argument("--retry-for", type=float, default=900.0,
                        help="seconds to keep retrying a failing status check before exit 6 (default 900)")
    parser.add_argument("--namespace", help="multi-user KFP: the profile's namespace (default: this pod's)")
    parser.add_argument("--package", default=str(COMPILED), help="the compiled pipeline (default: the committed one)")
    args = parser.parse_args(argv)
    try:
        arguments = kfp_client.parse_arguments(args.param, args.params_file)
        connection = kfp_client.connect(args.endpoint, namespace=args.namespace)
    except ConfigError as e:
        print(f"submit: {e}", file=sys.stderr)
        return kfp_client.EXIT_USAGE
    except kfp_client.EndpointError as e:
        print(f"submit: {e}", file=sys.stderr)
        return kfp_client.EXIT_UNREACHABLE
    outcome = kfp_client.submit(connection.client, args.package, arguments=arguments, run_name=args.run_name,
                                experiment=args.experiment, timeout_s=args.timeout, poll_s=args.poll,
                                cancel_on_timeout=args.cancel_on_timeout, namespace=connection.namespace,
                                retry_for_s=args.retry_for)  # fmt: skip
    return kfp_client.main_exit(outcome)


if __name__ == "__main__":
    sys.exit(main())
