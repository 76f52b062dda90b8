"""Proxy-task data: masked long documents built from Wikipedia (paper §2)."""

from memtrain_jax.data.assembly import AssemblyError
from memtrain_jax.data.chunking import Chunk
from memtrain_jax.data.chunking import chunk_document
from memtrain_jax.data.config import default_data_config
from memtrain_jax.data.config import paper_data_config
from memtrain_jax.data.config import validate_data_config
from memtrain_jax.data.entities import Entity
from memtrain_jax.data.entities import RuleEntityExtractor
from memtrain_jax.data.entities import make_extractor
from memtrain_jax.data.masking import MASK
from memtrain_jax.data.masking import TARGET
from memtrain_jax.data.masking import is_visible
from memtrain_jax.data.masking import mask_entity
from memtrain_jax.data.masking import mask_recall_target
from memtrain_jax.data.passages import Passage
from memtrain_jax.data.passages import segment_articles
from memtrain_jax.data.pipeline import build_dataset
from memtrain_jax.data.pipeline import iter_documents
from memtrain_jax.data.retrieval import PassageIndex
from memtrain_jax.data.skips import SkipLog
from memtrain_jax.data.sources import load_bundled_corpus
from memtrain_jax.data.sources import read_source
from memtrain_jax.data.stream import DocumentStream
from memtrain_jax.data.tokens import RegexTokenizer
from memtrain_jax.data.tokens import TokenCounter
from memtrain_jax.data.tokens import load_data_tokenizer
