"""`memtrain data build --config FILE --out DIR [--set key=value ...]`.

FILE is a Python file with `get_config()` returning a ConfigDict, or a JSON
file (e.g. the `config.json` of an earlier build); without it the CPU-sized
`default_data_config()` is used. `--set` overrides one dotted key, e.g.
`--set source.kind=jsonl --set source.path=wiki.jsonl`.
"""

import argparse
import ast
import importlib.util
import json
import sys

import ml_collections

from memtrain_jax.data.config import default_data_config
from memtrain_jax.data.pipeline import build_dataset
from memtrain_jax.data.stats import stats_markdown


def load_config(path: str | None) -> ml_collections.ConfigDict:
  """Reads a config from a .py (get_config) or .json file, or the default."""
  if not path:
    return default_data_config()
  if path.endswith('.json'):
    cfg = default_data_config()
    with open(path, encoding='utf-8') as f:
      cfg.update(json.load(f))
    return cfg
  spec = importlib.util.spec_from_file_location('data_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  # A model/training config may hold the data config under `data`.
  return cfg.data if 'data' in cfg and 'source' in cfg.data else cfg


def apply_override(cfg: ml_collections.ConfigDict, assignment: str) -> None:
  key, sep, raw = assignment.partition('=')
  if not sep:
    raise ValueError(f'--set needs key=value, got {assignment!r}')
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw  # A bare string such as a path.
  node = cfg
  *parents, leaf = key.split('.')
  for parent in parents:
    node = node[parent]
  if leaf not in node:
    raise KeyError(f'unknown config key {key!r}')
  node[leaf] = value


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog='memtrain data')
  commands = parser.add_subparsers(dest='command', required=True)
  build = commands.add_parser('build', help='build the masked data set')
  build.add_argument('--config', default=None)
  build.add_argument('--out', required=True)
  build.add_argument('--set', action='append', default=[], dest='overrides')
  args = parser.parse_args(argv)
  try:
    cfg = load_config(args.config)
    for assignment in args.overrides:
      apply_override(cfg, assignment)
    report = build_dataset(cfg, args.out)
  except (OSError, ValueError, KeyError, ImportError, RuntimeError) as e:
    print(f'memtrain data build: error: {e}', file=sys.stderr)
    return 2
  print(stats_markdown(report), end='')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
