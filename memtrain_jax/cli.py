"""The `memtrain` command: one entry point, a subcommand per job.

  memtrain train --config configs/default.py --workdir runs/default [--config.rl.kl_coef=0 ...]
  memtrain eval --config configs/eval/cpu_chain.py --workdir runs/eval [--config.models=...]
  memtrain data build --config ... --out DIR
  memtrain serve-retrieval --corpus corpus.jsonl --port 8000
  memtrain chat [--model PATH] [--message TEXT]
  memtrain compile --config configs/paper/memtrain_qwen3_4b.py --target v5p-16 [--out FILE]
"""

from __future__ import annotations

import importlib
import sys

_COMMANDS = {
    "train": ("memtrain_jax.train", "main"),
    "eval": ("memtrain_jax.evaluation.cli", "main"),
    "data": ("memtrain_jax.data.cli", "main"),
    "serve-retrieval": ("memtrain_jax.retrieval.server", "main"),
    "chat": ("memtrain_jax.chat", "main"),
    "compile": ("memtrain_jax.aot", "main"),  # memtrain compile --config C --target v5p-16 [--out F]
}


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in _COMMANDS:
    print(__doc__.strip())
    if argv and argv[0] not in ("-h", "--help"):
      print(f"\nunknown command {argv[0]!r}; choose one of {', '.join(_COMMANDS)}")
      return 2
    return 0
  module_name, fn = _COMMANDS[argv[0]]
  module = importlib.import_module(module_name)
  return int(getattr(module, fn)(argv[1:]) or 0)


if __name__ == "__main__":
  sys.exit(main())
