"""`models.gguf_file.GGUFFile` against `gguf.GGUFReader`: the same fields and tensor bytes."""

import numpy as np
import pytest

from memtrain_jax.models.gguf_file import ArrayValue, GGUFFile

gguf = pytest.importorskip("gguf")


def _assert_same_as_gguf_reader(path):
  ours, ref = GGUFFile(path), gguf.GGUFReader(path)
  ref_fields = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}
  assert list(ours.fields) == list(ref_fields)
  for key, field in ref_fields.items():
    value = ours.fields[key]
    if field.types[0] == gguf.GGUFValueType.ARRAY:
      assert isinstance(value, ArrayValue), key
      assert (value.element_type, len(value)) == (field.types[-1].value, len(field.data)), key
    else:
      assert value == field.contents() and type(value) is type(field.contents()), key
  assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
  for got, want in zip(ours.tensors, ref.tensors):
    assert got.tensor_type == want.tensor_type, got.name
    want_bytes = np.ascontiguousarray(want.data).view(np.uint8)
    assert got.data.dtype == np.uint8 and got.data.shape == want_bytes.shape, got.name
    np.testing.assert_array_equal(got.data, want_bytes, err_msg=got.name)
    assert got.shape == tuple(int(d) for d in reversed(want.shape)), got.name
  return ours


def _write(path, alignment=None):
  writer = gguf.GGUFWriter(str(path), "llama")
  if alignment is not None:
    writer.add_custom_alignment(alignment)
  writer.add_uint8("t.u8", 7)
  writer.add_int8("t.i8", -7)
  writer.add_uint16("t.u16", 65000)
  writer.add_int16("t.i16", -3000)
  writer.add_uint32("t.u32", 4_000_000_000)
  writer.add_int32("t.i32", -2_000_000_000)
  writer.add_float32("t.f32", 0.5)
  writer.add_uint64("t.u64", 2**40)
  writer.add_int64("t.i64", -(2**40))
  writer.add_float64("t.f64", 1e-300)
  writer.add_bool("t.bool", True)
  writer.add_string("t.str", "mémoire ✓")
  writer.add_array("t.ints", [1, 2, 3])
  writer.add_array("t.strs", ["a", "", "long " * 50, "é"])
  writer.add_array("t.empty", [])
  rng = np.random.default_rng(0)
  writer.add_tensor("w_f32", rng.standard_normal((3, 5)).astype(np.float32))
  writer.add_tensor("w_f16", rng.standard_normal((2, 4, 8)).astype(np.float16))
  q8 = gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32),
                            gguf.GGMLQuantizationType.Q8_0)
  writer.add_tensor("w_q8", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


@pytest.mark.parametrize("alignment", [None, 64])
def test_every_value_type_and_tensor_kind_reads_as_gguf_reads_it(tmp_path, alignment):
  ours = _assert_same_as_gguf_reader(_write(tmp_path / "t.gguf", alignment))
  assert ours.fields["t.str"] == "mémoire ✓" and len(ours.fields["t.strs"]) == 4
  q8 = {t.name: t for t in ours.tensors}["w_q8"]
  assert q8.shape == (4, 64) and q8.data.shape == (4, 2 * 34)  # two blocks of 34 bytes a row


@pytest.mark.real_model
def test_the_bundled_smollm2_reads_as_gguf_reads_it(bundled_model_path):
  ours = _assert_same_as_gguf_reader(bundled_model_path)
  assert len(ours.fields["tokenizer.ggml.tokens"]) == 49152


def test_bad_files_are_refused_naming_the_file(tmp_path):
  junk = tmp_path / "junk.gguf"
  junk.write_bytes(b"not a model at all")
  with pytest.raises(ValueError, match=r"junk\.gguf: not a GGUF file"):
    GGUFFile(str(junk))
  whole = open(_write(tmp_path / "t.gguf"), "rb").read()
  for cut, problem in ((200, "truncated or corrupt GGUF header"), (len(whole) - 40, "runs past")):
    short = tmp_path / f"short{cut}.gguf"
    short.write_bytes(whole[:cut])
    with pytest.raises(ValueError, match=rf"short{cut}\.gguf: .*{problem}"):
      GGUFFile(str(short))
  # The first key's value type (after magic, version, two counts and the key) made unknown.
  key_length = int.from_bytes(whole[24:32], "little")
  bad_type = bytearray(whole)
  bad_type[32 + key_length:36 + key_length] = (99).to_bytes(4, "little")
  (tmp_path / "bad_type.gguf").write_bytes(bytes(bad_type))
  with pytest.raises(ValueError, match=r"bad_type\.gguf: .*unknown metadata value type 99"):
    GGUFFile(str(tmp_path / "bad_type.gguf"))
