"""Running a training script in child processes from a test (one process, or torchrun's gloo group), with a timeout
that holds.

`subprocess.run(..., capture_output=True, timeout=...)` does not: on timeout it kills torchrun but then waits for the
pipes, which torchrun's workers still hold open, so a stuck worker stalls the whole suite (a CI run lost 90 minutes
so). Here every child starts its own process group, writes to a file instead of a pipe, and on timeout the whole
group is killed and the test fails with the output's tail.
"""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

# One thread per process, waiting passively: two ranks with several spinning OpenMP threads each on a 2-core machine
# can take minutes per step.
ENV = dict(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")


def torchrun(nproc: int) -> list[str]:
    """The command prefix that starts `nproc` local ranks on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(port)]


def run(command: list[str], cwd: str | Path, log: str | Path, timeout: float = 300, env: dict | None = None) -> None:
    """Run `command` in `cwd` with its output in `log`; raise with the log's tail if it fails or runs past
    `timeout` seconds (then its whole process group, torchrun's workers included, is killed first)."""
    env = dict(os.environ, **ENV, **(env or {}))
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    if code != 0:
        tail = Path(log).read_text()[-3000:]
        reason = f"ran past {timeout} s" if code is None else f"exited with {code}"
        raise AssertionError(f"{' '.join(map(str, command))} {reason}; the end of its output:\n{tail}")
