"""Readers that turn corpora into `{"title": str, "text": str}` records.

Every reader takes a `SkipLog` and skips bad input (counted by reason, with
its location) instead of raising, so one corrupt line of a multi-gigabyte dump
cannot stop a build. Paragraphs in `text` are separated by newlines.
"""

import gzip
import importlib.resources
import json
import os
import re
from typing import Iterable, Iterator

from memtrain_jax.data.skips import SkipLog

Record = dict

BUNDLED_CORPUS_FILE = 'wikitext-2-raw-test-trimmed.raw'

_WIKITEXT_TITLE_RE = re.compile(r'^ = (?!=)(.+?) = $')
_WIKITEXT_HEADING_RE = re.compile(r'^ (= )+.+?( =)+ $')


def detokenize_wikitext(text: str) -> str:
  """Undoes WikiText's space-separated tokenisation of one line."""
  text = text.replace(' @-@ ', '-').replace(' @,@ ', ',').replace(' @.@ ', '.')
  # Possessives and contractions: "Teddy 's" -> "Teddy's", "do n't".
  text = re.sub(r" (['’](?:s|re|ve|ll|d|m)\b)", r'\1', text)
  text = re.sub(r" n't\b", "n't", text)
  text = re.sub(r' ([.,;:!?%)\]}])', r'\1', text)
  text = re.sub(r'([(\[{$]) ', r'\1', text)
  # Straight double quotes come in pairs: glue each pair to its contents.
  text = re.sub(r'" ([^"]*?) "', r'"\1"', text)
  return re.sub(r'  +', ' ', text).strip()


def parse_wikitext(lines: Iterable[str], skips: SkipLog,
                   where: str = 'wikitext') -> Iterator[Record]:
  """Yields one record per ` = Title = ` article of a WikiText raw file."""
  title, paragraphs = None, []

  def flush():
    if title is None:
      return None
    text = '\n'.join(paragraphs)
    if not text.strip():
      skips.skip('empty_text', f'{where}:{title}')
      return None
    return {'title': title, 'text': text}

  for line in lines:
    line = line.rstrip('\r\n')
    match = _WIKITEXT_TITLE_RE.match(line)
    if match:
      record = flush()
      if record:
        yield record
      title, paragraphs = detokenize_wikitext(match.group(1)), []
    elif _WIKITEXT_HEADING_RE.match(line) or not line.strip():
      # Section headings are dropped: they are not prose and would become
      # one-line passages.
      continue
    elif title is not None:
      paragraphs.append(detokenize_wikitext(line))
  record = flush()
  if record:
    yield record


def read_wikitext(path: str, skips: SkipLog) -> Iterator[Record]:
  name = os.path.basename(path)

  def utf8_lines(f):
    for line_number, raw_line in enumerate(f, start=1):
      try:
        yield raw_line.decode('utf-8')
      except UnicodeDecodeError:
        skips.skip('non_utf8', f'{name}:{line_number}')

  with open(path, 'rb') as f:
    yield from parse_wikitext(utf8_lines(f), skips, where=name)


def load_bundled_corpus(skips: SkipLog | None = None) -> list[Record]:
  """Returns the whole WikiText-2 test articles shipped with the package."""
  skips = skips if skips is not None else SkipLog()
  resource = importlib.resources.files('memtrain_jax.data').joinpath(
      'corpus', BUNDLED_CORPUS_FILE)
  text = resource.read_text(encoding='utf-8')
  return list(parse_wikitext(text.splitlines(), skips, BUNDLED_CORPUS_FILE))


def _validated(raw, skips: SkipLog, where: str) -> Record | None:
  """Returns a clean record or None (counted) for one decoded JSON value."""
  if not isinstance(raw, dict):
    skips.skip('not_an_object', where)
    return None
  title, text = raw.get('title'), raw.get('text')
  if title is None or text is None:
    skips.skip('missing_field', where)
    return None
  if isinstance(title, bytes) or isinstance(text, bytes):
    try:
      title = title.decode('utf-8') if isinstance(title, bytes) else title
      text = text.decode('utf-8') if isinstance(text, bytes) else text
    except UnicodeDecodeError:
      skips.skip('non_utf8', where)
      return None
  if not isinstance(title, str) or not isinstance(text, str):
    skips.skip('wrong_field_type', where)
    return None
  if not text.strip():
    skips.skip('empty_text', where)
    return None
  return {'title': title.strip(), 'text': text}


def read_jsonl(path: str, skips: SkipLog) -> Iterator[Record]:
  """Reads `{"title", "text"}` lines (plain or .gz); bad lines are skipped."""
  opener = gzip.open if path.endswith('.gz') else open
  name = os.path.basename(path)
  with opener(path, 'rb') as f:
    for line_number, raw_line in enumerate(f, start=1):
      where = f'{name}:{line_number}'
      if not raw_line.strip():
        continue
      try:
        line = raw_line.decode('utf-8')
      except UnicodeDecodeError:
        skips.skip('non_utf8', where)
        continue
      try:
        value = json.loads(line)
      except json.JSONDecodeError:
        skips.skip('corrupt_json', where)
        continue
      record = _validated(value, skips, where)
      if record:
        yield record


def read_parquet(path: str, skips: SkipLog) -> Iterator[Record]:
  """Reads a Hugging Face parquet export with `title` and `text` columns."""
  try:
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('reading parquet needs pyarrow: pip install pyarrow') from e
  parquet = pq.ParquetFile(path)
  names = set(parquet.schema_arrow.names)
  if not {'title', 'text'} <= names:
    raise ValueError(f'{path}: needs columns title and text, has {sorted(names)}')
  row = 0
  for batch in parquet.iter_batches(columns=['title', 'text'], batch_size=1024):
    for value in batch.to_pylist():
      row += 1
      record = _validated(value, skips, f'{os.path.basename(path)}:row{row}')
      if record:
        yield record


def read_txt_dir(path: str, skips: SkipLog) -> Iterator[Record]:
  """Reads every `*.txt` under `path` (sorted); the title is the file stem."""
  for name in sorted(os.listdir(path)):
    if not name.endswith('.txt'):
      continue
    with open(os.path.join(path, name), 'rb') as f:
      data = f.read()
    try:
      text = data.decode('utf-8')
    except UnicodeDecodeError:
      skips.skip('non_utf8', name)
      continue
    record = _validated({'title': name[:-4], 'text': text}, skips, name)
    if record:
      yield record


def _hotpotqa_paragraphs(context) -> Iterator[tuple[str, list[str]]]:
  if isinstance(context, dict):  # Column layout of the HF `hotpot_qa` set.
    yield from zip(context.get('title', []), context.get('sentences', []))
  else:  # Original layout: [[title, [sentences...]], ...].
    for pair in context:
      yield pair[0], pair[1]


def read_hotpotqa(path: str, skips: SkipLog) -> Iterator[Record]:
  """Reads HotpotQA context paragraphs, one record per distinct title."""
  with open(path, encoding='utf-8') as f:
    questions = json.load(f)
  seen = set()
  for index, question in enumerate(questions):
    where = f'{os.path.basename(path)}:question{index}'
    context = question.get('context') if isinstance(question, dict) else None
    if context is None:
      skips.skip('missing_field', where)
      continue
    try:
      paragraphs = list(_hotpotqa_paragraphs(context))
    except (TypeError, IndexError, KeyError):
      skips.skip('malformed_context', where)
      continue
    for title, sentences in paragraphs:
      if title in seen:
        skips.skip('duplicate_title', f'{where}:{title}')
        continue
      seen.add(title)
      text = ''.join(s for s in sentences if isinstance(s, str))
      record = _validated({'title': title, 'text': text}, skips, where)
      if record:
        yield record


def read_tfds(name: str, split: str, data_dir: str | None,
              skips: SkipLog) -> Iterator[Record]:
  """Reads a TFDS text data set (e.g. `wikipedia/20230601.en`) without TF.

  Uses `tfds.data_source`, which reads array_record files with no TensorFlow.
  The data set must already be prepared in array_record format in `data_dir`
  (a local folder or a gs:// bucket); `as_dataset` would need TensorFlow.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'reading TFDS needs tensorflow-datasets: pip install '
        'tensorflow-datasets array_record') from e
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None)
  except Exception as e:  # TFDS raises many types; all mean "not readable".
    raise RuntimeError(
        f'cannot open TFDS data set {name!r} split {split!r} in '
        f'{data_dir or "the default data_dir"} with tfds.data_source: {e}. '
        'It must be prepared in array_record format (file_format='
        '"array_record"); tfrecord data sets need TensorFlow and '
        'tfds.load/as_dataset instead.') from e
  for index in range(len(source)):
    where = f'{name}/{split}:{index}'
    try:
      example = source[index]
    except Exception:  # A corrupt record must not stop the build.
      skips.skip('corrupt_record', where)
      continue
    record = _validated(dict(example), skips, where)
    if record:
      yield record


def read_source(source_cfg, skips: SkipLog) -> Iterator[Record]:
  """Dispatches on `source_cfg.kind`; stops after `max_articles` if set."""
  kind = source_cfg.kind
  if kind == 'bundled':
    records = iter(load_bundled_corpus(skips))
  elif kind == 'wikitext':
    records = read_wikitext(source_cfg.path, skips)
  elif kind == 'jsonl':
    records = read_jsonl(source_cfg.path, skips)
  elif kind == 'parquet':
    records = read_parquet(source_cfg.path, skips)
  elif kind == 'txt_dir':
    records = read_txt_dir(source_cfg.path, skips)
  elif kind == 'hotpotqa':
    records = read_hotpotqa(source_cfg.path, skips)
  elif kind == 'tfds':
    records = read_tfds(source_cfg.tfds_name, source_cfg.tfds_split,
                        source_cfg.tfds_data_dir, skips)
  else:
    raise ValueError(f'unknown source kind {kind!r}')
  limit = source_cfg.max_articles
  for count, record in enumerate(records):
    if limit and count >= limit:
      return
    yield record
