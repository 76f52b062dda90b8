"""Builds the proxy-task data set on the bundled WikiText articles and on the
50 HotpotQA paragraph sets; writes experiments/results/data.md.

Usage: python experiments/bench_data.py [--documents 40] [--hotpotqa PATH]
"""

import argparse
import os
import platform
import sys
import tempfile

from memtrain_jax.data.config import default_data_config
from memtrain_jax.data.entities import make_extractor
from memtrain_jax.data.pipeline import build_dataset
from memtrain_jax.data.stats import stats_markdown
from memtrain_jax.data.tokens import load_data_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_HOTPOTQA = os.path.join(ROOT, '..', 'shared', 'data',
                                'hotpotqa_dev_gold_q000-049.json')


def run(name, cfg, extractor):
  with tempfile.TemporaryDirectory() as out_dir:
    report = build_dataset(cfg, out_dir, load_data_tokenizer(''), extractor)
  print(f'{name}: {report["documents"]} documents, '
        f'{report["documents_per_second"]} documents/s', file=sys.stderr)
  return stats_markdown(report, heading=name), report


def main(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument('--documents', type=int, default=40)
  parser.add_argument('--hotpotqa', default=DEFAULT_HOTPOTQA)
  parser.add_argument('--out', default=os.path.join(ROOT, 'experiments',
                                                   'results', 'data.md'))
  args = parser.parse_args(argv)
  cfg = default_data_config()
  cfg.num_documents = args.documents
  spacy_or_rules = make_extractor('auto', cfg.entities.spacy_models)
  rules = make_extractor('rules')
  runs = [('WikiText-2 (bundled), ' + spacy_or_rules.name, cfg, spacy_or_rules),
          ('WikiText-2 (bundled), rules', cfg, rules)]
  if os.path.exists(args.hotpotqa):
    hotpot = default_data_config()
    hotpot.num_documents = args.documents
    hotpot.source.kind = 'hotpotqa'
    hotpot.source.path = args.hotpotqa
    runs.append(('HotpotQA dev q000-049 paragraphs, ' + spacy_or_rules.name,
                 hotpot, spacy_or_rules))
  sections, rows = [], []
  for name, run_cfg, extractor in runs:
    markdown, report = run(name, run_cfg, extractor)
    sections.append(markdown)
    rows.append(f'| {name} | {report["passages"]} | {report["documents"]} | '
                f'{report["tokens"]["mean"]} | {report["seconds"]} | '
                f'{report["documents_per_second"]} |')
  c = cfg
  lines = [
      '# Proxy-task data build: statistics and throughput', '',
      'Produced by `python experiments/bench_data.py` on '
      f'{platform.processor() or platform.machine()}, Python '
      f'{platform.python_version()}, single process, 2 shared CPU cores.',
      f'CPU-sized config (`default_data_config()`): n1={c.retrieval.num_related}'
      f' related (BM25, bm25s), N={c.assembly.num_passages} passages, '
      f'{c.assembly.min_tokens}-{c.assembly.max_tokens} tokens, chunk '
      f'{c.chunking.chunk_size} tokens, <= {c.chunking.max_chunks} chunks, '
      f'built-in RegexTokenizer, passages {c.passages.min_words}-'
      f'{c.passages.max_words} words. Paper scale: n1=29, N=150, 24k-40k '
      'tokens, 5120-token chunks, <= 8 chunks (`paper_data_config()`).',
      'Seconds include reading, segmentation and BM25 indexing.', '',
      '| run | passages | documents | mean tokens | seconds | documents/s |',
      '|---|---|---|---|---|---|', *rows, '', *sections]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines))
  print(f'wrote {args.out}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
