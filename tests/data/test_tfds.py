"""TFDS reader on a real array_record data set built offline, without TF."""

import pytest

from memtrain_jax.data import sources
from memtrain_jax.data.config import default_data_config
from memtrain_jax.data.skips import SkipLog

tfds = pytest.importorskip('tensorflow_datasets')
pytest.importorskip('array_record')


class MemtrainTinyWiki(tfds.core.GeneratorBasedBuilder):
  """Same features as TFDS `wikipedia` (title, text), four articles."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'title': tfds.features.Text(),
            'text': tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    yield 0, {'title': 'Ada Lovelace', 'text': 'Ada wrote notes. She died.'}
    yield 1, {'title': 'Broken', 'text': b'caf\xe9 bytes'}
    yield 2, {'title': 'Empty', 'text': ''}
    yield 3, {'title': 'Alan Turing', 'text': 'Alan Turing was born in 1912.'}


@pytest.fixture(scope='module')
def tiny_wiki_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  MemtrainTinyWiki(data_dir=data_dir,
                   file_format='array_record').download_and_prepare()
  return data_dir


def test_read_tfds_array_record_without_tensorflow(tiny_wiki_dir):
  skips = SkipLog()
  records = list(sources.read_tfds('memtrain_tiny_wiki', 'train',
                                   tiny_wiki_dir, skips))
  assert sorted(r['title'] for r in records) == ['Ada Lovelace', 'Alan Turing']
  assert skips.counts == {'non_utf8': 1, 'empty_text': 1}


def test_read_source_tfds_config(tiny_wiki_dir):
  cfg = default_data_config().source
  cfg.kind = 'tfds'
  cfg.tfds_name = 'memtrain_tiny_wiki'
  cfg.tfds_data_dir = tiny_wiki_dir
  cfg.max_articles = 1
  assert len(list(sources.read_source(cfg, SkipLog()))) == 1


def test_read_tfds_missing_dataset_explains(tmp_path):
  with pytest.raises(RuntimeError, match='array_record'):
    list(sources.read_tfds('memtrain_tiny_wiki', 'train', str(tmp_path),
                           SkipLog()))
