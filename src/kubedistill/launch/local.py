"""The ``local`` launcher: torchrun on this machine, one agent per "node", all on 127.0.0.1.

It runs the same command a PyTorchJob's pods run (``torchrun ... -m kubedistill train key=value ...``), with
static rendezvous on a free loopback port, so a pipeline run on a laptop exercises the real multi-process,
multi-node code path (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from kubedistill.config import to_key_values
from kubedistill.errors import ConfigError
from kubedistill.launch import LaunchError, LaunchRequest
from kubedistill.launch.signals import sigterm_raises

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 60
STOP_GRACE_S = 15.0
# Variables of an enclosing launch that must not leak into the agents (they would join the wrong group).
_LAUNCH_ENV_PREFIXES = ("PET_", "TORCHELASTIC_")
_LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


class _TerminatedError(BaseException):
    """SIGTERM arrived while the job ran (KFP's Terminate, a pod being stopped). A BaseException,
    like KeyboardInterrupt: no `except Exception` may swallow it."""


class LocalLauncher:
    """torchrun agents on this machine. ``run`` returns when every agent exited 0; LaunchError otherwise."""

    name = "local"

    def __init__(self, *, python: str = sys.executable, output=None):
        self.python = python
        self.output = output or sys.stdout

    def commands(self, request: LaunchRequest, port: int) -> list[list[str]]:
        """One torchrun command per node (static rendezvous on 127.0.0.1:port)."""
        tokens = to_key_values(request.train_args)
        return [
            [
                self.python, "-m", "torch.distributed.run",
                f"--nnodes={request.nodes}", f"--node-rank={rank}", f"--nproc-per-node={request.procs_per_node}",
                "--master-addr=127.0.0.1", f"--master-port={port}",
                "-m", "kubedistill", "train", *tokens,
            ]  # fmt: skip
            for rank in range(request.nodes)
        ]

    def environment(self, request: LaunchRequest) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not (k.startswith(_LAUNCH_ENV_PREFIXES) or k in _LAUNCH_ENV)
        }
        processes = request.nodes * request.procs_per_node
        # Without this every process starts one thread per core: N processes oversubscribe the machine N-fold.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        env.update(request.env)
        return env

    def run(self, request: LaunchRequest) -> None:
        problems = request.problems()
        if problems:
            raise ConfigError(problems)
        port = _free_port()
        commands = self.commands(request, port)
        logger.info(
            "launching %s: %d node(s) x %d process(es) with torchrun on 127.0.0.1:%d", request.name, request.nodes,
            request.procs_per_node, port,
        )  # fmt: skip
        agents = [_Agent(rank, command, self.environment(request), self.output) for rank, command in enumerate(commands)]
        try:
            with sigterm_raises(_TerminatedError):
                _wait_all(agents, request.name)
        except _TerminatedError:
            _stop(agents)
            raise LaunchError(f"{request.name}: stopped by SIGTERM; the training processes were terminated") from None
        finally:
            _stop(agents)


class _Agent:
    """One torchrun agent whose output is copied line by line to ``output`` (prefixed by its node for node > 0)."""

    def __init__(self, rank: int, command: Sequence[str], env: dict[str, str], output):
        self.rank = rank
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.process = subprocess.Popen(
            list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self._reader = threading.Thread(target=self._copy, args=(output,), daemon=True)
        self._reader.start()

    def _copy(self, output) -> None:
        prefix = f"[node {self.rank}] " if self.rank else ""
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.tail.append(line.rstrip("\n"))
            output.write(prefix + line)
            output.flush()

    def finished_output(self) -> str:
        self._reader.join(timeout=5)
        return "\n".join(self.tail)


def _wait_all(agents: list[_Agent], name: str) -> None:
    while True:
        codes = [agent.process.poll() for agent in agents]
        failed = [(agent, code) for agent, code in zip(agents, codes, strict=True) if code not in (None, 0)]
        if failed:
            agent, code = failed[0]
            _stop(agents)
            log = agent.finished_output()
            cause = root_cause(log)
            raise LaunchError(
                f"{name}: node {agent.rank} exited with status {code}"
                + (f": {cause}" if cause else "")
                + f"\nThe last lines of its log:\n{log}"
            )
        if all(code == 0 for code in codes):
            for agent in agents:
                agent.finished_output()
            return
        time.sleep(0.2)


# "SomeError: message" lines of a Python traceback, and the indented lines a multi-line message continues with.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception)): (.*)$")
# How the CLI reports a failure it understands (bad arguments, missing data, ...): `kubedistill train: ...`.
_CLI_ERROR = re.compile(r"^kubedistill \w+: ")
# What torchrun adds after the real failure: not the cause.
_LAUNCHER_ERRORS = ("ChildFailedError", "SignalException")


def root_cause(log: str) -> str | None:
    """Why a training process failed, from its ``log``: the CLI's own error line (``kubedistill train: ...``)
    or else the last exception it printed, with the indented lines that continue it; None when neither is there."""
    lines = log.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION_LINE.match(lines[index].strip())
        if _CLI_ERROR.match(lines[index]) or (match and match.group(1) not in _LAUNCHER_ERRORS):
            following = []
            for line in lines[index + 1 :]:
                if not line.startswith((" ", "\t")) or _EXCEPTION_LINE.match(line.strip()):
                    break
                following.append(line.strip())
            return " ".join([lines[index].strip(), *following])
    return None


def _stop(agents: list[_Agent]) -> None:
    """SIGTERM every agent still running (torchrun passes it to its workers), SIGKILL after a grace period."""
    running = [agent.process for agent in agents if agent.process.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
