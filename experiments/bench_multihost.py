"""`memtrain train` as 2 processes x 4 CPU devices against 1 process x 8, in the same session.

  python experiments/bench_multihost.py [--steps 4] [--out multihost.md]

Three runs of the same config, one after another (never side by side, so they do not share the
cores), each in a fresh workdir with its own compile cache:
- 1 x 8, in-process collectives (a plain single-process run);
- 1 x 8 over gloo (a 1-process distributed job: the collectives of the 2-process run, in one);
- 2 x 4 over gloo (two "hosts" on this machine).
It prints and writes the wall time of each run, the mean step time after the first (compiling)
step split into rollout / reference log-probs / update, and the time each process spent in
device-to-host fetches (`sharding.to_host`: for 2 processes, cross-process gathers; the figure
includes waiting for the programs whose outputs it fetches). The model is the tests' tiny random
Llama with SmolLM2's tokenizer and the config is `tests/train/tiny_loop_config.py`, so the
figures measure the framework's multi-process overheads, not a model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments.common import cpu_model, write_results  # noqa: E402

CONFIG = os.path.join(ROOT, "tests", "train", "tiny_loop_config.py")
_FETCH = re.compile(r"process (\d+): ([\d.]+)s in (\d+) device-to-host fetches "
                    r"\((\d+) of them cross-process gathers\)")
SECTIONS = ("rollout", "logprobs", "update", "host_fetch")


def make_tiny_model(out: str) -> None:
  from memtrain_jax import models
  tokenizer = models.load_tokenizer(models.bundled_gguf_path())
  config = models.ModelConfig(family="llama", vocab_size=len(tokenizer), hidden_size=32,
                              intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                              head_dim=8, rope_theta=10000.0, tie_embeddings=True,
                              bos_token_id=tokenizer.bos_token_id, eos_token_ids=(2,))
  models.save_pretrained(config, models.init_params(config, seed=0, scale=0.05), tokenizer, out)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(name: str, model_dir: str, root: str, processes: int, devices: int, distributed: bool,
        steps: int) -> dict:
  workdir = os.path.join(root, name)
  port = free_port()
  procs, logs = [], []
  start = time.perf_counter()
  for i in range(processes):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_COMPILATION_CACHE_DIR=os.path.join(root, f"cache_{name}"))
    if distributed:
      env.update(MEMTRAIN_COORDINATOR=f"127.0.0.1:{port}", MEMTRAIN_NUM_PROCESSES=str(processes),
                 MEMTRAIN_PROCESS_ID=str(i))
    log = open(f"{workdir}.process{i}.log", "w+")
    logs.append(log)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "memtrain_jax.train", "--config", f"{CONFIG}:{model_dir}",
         "--workdir", workdir, "--config.rl.packing.micro_batch_size=8",
         f"--config.train.num_steps={steps}", "--config.checkpoint.every=0"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
  for i, p in enumerate(procs):
    if p.wait() != 0:
      logs[i].seek(0)
      raise SystemExit(f"{name}: process {i} failed:\n{logs[i].read()[-3000:]}")
  wall = time.perf_counter() - start
  fetches = []
  for log in logs:
    log.seek(0)
    match = _FETCH.search(log.read())
    fetches.append(tuple(float(g) for g in match.groups()[1:]))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  later = records[1:] or records
  mean = lambda key: sum(r.get(key, 0.0) for r in later) / len(later)
  return {"name": name, "processes": processes, "devices": devices, "wall": wall,
          "first_step": records[0]["time/step"], "step": mean("time/step"),
          **{s: mean(f"time/{s}") for s in SECTIONS}, "fetches": fetches,
          "rows": [r["rows/count"] for r in records]}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--out", default="multihost.md")
  args = parser.parse_args()
  load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
  root = tempfile.mkdtemp(prefix="bench_multihost_")
  model_dir = os.path.join(root, "tiny")
  make_tiny_model(model_dir)
  results = [run("1x8_in_process", model_dir, root, 1, 8, False, args.steps),
             run("1x8_gloo", model_dir, root, 1, 8, True, args.steps),
             run("2x4_gloo", model_dir, root, 2, 4, True, args.steps)]
  base = results[0]
  lines = [f"# Multi-process training: 2 processes x 4 CPU devices against 1 x 8",
           "",
           f"{datetime.date.today().isoformat()}; CPU {cpu_model()}, {os.cpu_count()} cores, load "
           f"average before the runs {load}; "
           f"`python experiments/bench_multihost.py --steps {args.steps}`. The tests' tiny random "
           "Llama (SmolLM2's tokenizer, 49,152-token vocabulary), `tests/train/tiny_loop_config.py` "
           "(2 documents x 2 rollouts + recall probes per step, KL on), mesh (1, 8, 1). Runs one "
           "after another, each with a cold compile cache; all processes share the machine's "
           "cores. Step times are means over the steps after the first (which compiles).",
           "",
           "| run | wall s | vs 1x8 | first step s | step s | rollout s | ref log-probs s | "
           "update s | fetch s per process (cross-process gathers / fetches) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    fetch = "; ".join(f"p{i}: {sec:.2f} ({int(g)}/{int(n)})" for i, (sec, n, g) in
                      enumerate(r["fetches"]))
    lines.append(f"| {r['name']} | {r['wall']:.1f} | {r['wall'] / base['wall']:.2f}x | "
                 f"{r['first_step']:.1f} | {r['step']:.2f} | {r['rollout']:.2f} | "
                 f"{r['logprobs']:.2f} | {r['update']:.2f} | {fetch} |")
  lines += ["", "Rows per step (the same in every run: the same rollouts): " +
            "; ".join(f"{r['name']} {r['rows']}" for r in results), ""]
  text = "\n".join(lines)
  print(text)
  print("wrote", write_results(args.out, text + "\n"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
