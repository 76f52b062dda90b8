"""Run paths as `etils.epath.Path`: local directories and `gs://` (or other fsspec) URLs alike.

A workdir such as `gs://bucket/run` must stay a URL: `os.path.abspath` would turn it into the local
directory `./gs:/bucket/run`. Local paths are made absolute (and `~` expanded) so that every
process of a multi-host job and every later resume name the same place.
"""

from __future__ import annotations

import os
import pathlib

from etils import epath


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` names a file on this machine's filesystem (not a `scheme://` URL)."""
  return "://" not in os.fspath(path)


def as_path(path: epath.PathLike) -> epath.Path:
  """`path` as an epath.Path: local paths absolute with `~` expanded, URLs unchanged."""
  if is_local(path):
    return epath.Path(pathlib.Path(os.fspath(path)).expanduser().absolute())
  return epath.Path(os.fspath(path))
