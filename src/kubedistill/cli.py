"""``kubedistill <command> key=value ...``: the CLI over the public API (LightlyTrain-style arguments)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence

from kubedistill.errors import ConfigError, KubedistillError

USAGE = """\
usage: kubedistill <command> [key=value ...]

commands:
  train      distill a teacher into a student without labels
             kubedistill train out=out/exp data=my_images model=torchvision/resnet18 method=distillation
             dotted keys set nested arguments: method_args.teacher=dinov2/vits14 optim_args.lr=0.5
             transform_args.image_size=[160,160]
  describe   print every default of a method as JSON: kubedistill describe method=distillation

Values are parsed as YAML: 0.5 is a number, [160,160] a list, true/false booleans, null None.
Exit status: 0 success, 1 failure (the message says what to do), 2 invalid arguments.
"""

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _train(args: dict) -> int:
    from kubedistill.api import train

    result = train(**args)
    print(json.dumps({"out": str(result.out), "exported": str(result.exported), "steps": result.steps}))
    return EXIT_OK


def _describe(args: dict) -> int:
    from kubedistill.api import describe

    unknown = set(args) - {"method"}
    if unknown:
        raise ConfigError([f"unknown key {k!r} for describe; valid keys: method" for k in sorted(unknown)])
    print(json.dumps(describe(**args), indent=2))
    return EXIT_OK


COMMANDS: dict[str, Callable[[dict], int]] = {"train": _train, "describe": _describe}


def main(argv: Sequence[str] | None = None) -> int:
    from kubedistill.config import parse_key_values

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return EXIT_OK if argv else EXIT_USAGE
    command, tokens = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"kubedistill: unknown command {command!r}; valid: {', '.join(COMMANDS)}\n\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return COMMANDS[command](parse_key_values(tokens))
    except ConfigError as e:
        print(f"kubedistill {command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KubedistillError as e:
        logging.getLogger("kubedistill").debug("failure", exc_info=True)
        print(f"kubedistill {command}: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"kubedistill {command}: interrupted", file=sys.stderr)
        return 130
