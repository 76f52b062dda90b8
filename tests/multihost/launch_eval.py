"""`memtrain eval` as one process of a local multi-process job, optionally logging its writes.

  python tests/multihost/launch_eval.py [--log_writes FILE] [--results FILE] -- \
      --config ... --workdir ...

--log_writes: a Python audit hook appends every path this process opens for writing, creates,
renames or removes (one JSON line each) to FILE (as tests/multihost/launch_train.py does), so a
test can check that a process other than 0 wrote nothing in the workdir.
--results: writes the results dict that `run_eval` returned on this process to FILE (keep it
outside the workdir), so a test can check that every process returns the same report.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.multihost.launch_train import _install_write_log  # noqa: E402


def main() -> int:
  argv = sys.argv[1:]
  results_path = None
  while argv[:1] in (["--log_writes"], ["--results"]):
    if argv[0] == "--log_writes":
      _install_write_log(argv[1])
    else:
      results_path = argv[1]
    argv = argv[2:]
  if argv[:1] == ["--"]:
    argv = argv[1:]
  from memtrain_jax.evaluation import cli, runner
  returned = []
  run_eval = runner.run_eval
  runner.run_eval = lambda *args, **kwargs: returned.append(run_eval(*args, **kwargs))
  code = cli.main(argv)
  if results_path is not None and returned:
    with open(results_path, "w", encoding="utf-8") as f:
      json.dump(returned[0], f, indent=2, ensure_ascii=False)
  return code


if __name__ == "__main__":
  sys.exit(main())
