"""`memtrain train` as one process of a local multi-process job, optionally logging its writes.

  python tests/multihost/launch_train.py [--log_writes FILE] -- --config ... --workdir ...

With --log_writes, a Python audit hook appends every path this process opens for writing, creates,
renames or removes (one JSON line each) to FILE, so a test can check which files a process other
than 0 touched. Writes done in C++ (tensorstore's checkpoint shards) do not pass through the hook;
they are the checkpoint shards every process is meant to write.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

_WRITE_EVENTS = {"os.mkdir": 0, "os.rename": 1, "os.replace": 1, "os.remove": 0, "os.rmdir": 0,
                 "os.truncate": 0, "shutil.copyfile": 1, "shutil.rmtree": 0, "os.symlink": 1}


def _install_write_log(log_path: str) -> None:
  log_file = open(log_path, "a", buffering=1)

  def hook(event, args):
    path = None
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
      mode, flags = args[1], args[2]
      writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
          isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
      path = args[0] if writing else None
    elif event in _WRITE_EVENTS and args:
      path = args[_WRITE_EVENTS[event]]
    if path is not None and not isinstance(path, int):
      path = os.fsdecode(os.fspath(path))
      if os.path.abspath(path) != os.path.abspath(log_path):
        log_file.write(json.dumps({"event": event, "path": os.path.abspath(path)}) + "\n")

  sys.addaudithook(hook)


def main() -> int:
  argv = sys.argv[1:]
  if argv[:1] == ["--log_writes"]:
    _install_write_log(argv[1])
    argv = argv[2:]
  if argv[:1] == ["--"]:
    argv = argv[1:]
  from memtrain_jax import train
  return train.main(argv)


if __name__ == "__main__":
  sys.exit(main())
