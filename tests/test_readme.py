"""README.md's commands work as written: every ```bash block, in order, in one temporary folder.

The installs (`pip install ...`) and the test suite itself (`pytest`) are left out: this test runs inside
the installed package's test suite. Everything else runs with its relative paths as written, on the
`crisis_landmark/tiny` dataset (CLOSP_DATA_DIR), with flags appended per binary to keep the runs short
(absl takes the last value of a flag, so an appended flag wins). `closp-search serve` is started, asked
one query over HTTP and stopped.
"""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO

README = Path(REPO) / "README.md"

SHRINK = {
  "closp-train": [
    "--config.data.name=crisis_landmark/tiny",
    "--config.data.batch_size=16",
    "--config.data.eval_batch_size=64",
    "--config.train.steps=4",
    "--config.eval.every_steps=2",
    "--config.checkpoint.every_steps=2",
    "--config.checkpoint.async_save=False",
  ],
  "closp-search index": ["--data", "crisis_landmark/tiny"],
}


def readme_commands() -> list[str]:
  """The shell commands of README.md's ```bash blocks, continuation lines joined, comments dropped,
  the installs and the test run removed from `&&` chains."""
  text = README.read_text()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    joined = re.sub(r"\\\n\s*", " ", block)
    for line in joined.splitlines():
      line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
      if not line:
        continue
      parts = [p.strip() for p in line.split("&&")]
      parts = [p for p in parts if not p.startswith(("pip ", "pytest"))]
      if parts:
        commands.append(" && ".join(parts))
  return commands


def _shrunk(command: str) -> str:
  words = shlex.split(command)
  for key, extra in SHRINK.items():
    if " ".join(words[: len(key.split())]) == key:
      return command + " " + " ".join(shlex.quote(e) for e in extra)
  return command


def test_the_readme_has_runnable_commands_only():
  """Every command of a bash block is one of the project's binaries (or a shell builtin we know)."""
  commands = readme_commands()
  assert len(commands) >= 8
  for c in commands:
    first = shlex.split(c)[0]
    assert first.startswith("closp-") or first in ("python", "tensorboard"), c
    assert "[" not in c and "<" not in c, f"a placeholder in a runnable block: {c}"


def _serve(command: str, cwd: Path, env: dict) -> str:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  command += f" --port {port}"
  proc = subprocess.Popen(
    command,
    shell=True,
    cwd=cwd,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    start_new_session=True,
  )
  try:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
      try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/search?q=flooded%20area&k=3", timeout=10) as r:
          return r.read().decode()
      except OSError:
        if proc.poll() is not None:
          raise AssertionError(f"{command} exited: {proc.stdout.read()[-3000:]}") from None
        time.sleep(0.5)
    raise AssertionError(f"{command} did not answer within 300 s")
  finally:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.mark.slow
def test_every_readme_command_runs_in_order(tmp_path, tiny_data_dir):
  env = dict(
    os.environ, CLOSP_DATA_DIR=tiny_data_dir, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
  )
  ran = []
  for command in readme_commands():
    if " serve" in command:
      body = _serve(command, tmp_path, env)
      assert '"results"' in body
      ran.append(command)
      continue
    if command.startswith("tensorboard"):
      continue  # a viewer; the summaries it would show are checked in tests/test_train.py
    full = _shrunk(command)
    proc = subprocess.run(full, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (
      f"README command failed ({proc.returncode}): {full}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    ran.append(command)
  assert any(c.startswith("closp-train") for c in ran) and any("closp-export" in c for c in ran)
