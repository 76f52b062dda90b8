"""experiments/bench_rollout.py: re-running some sections keeps every other section's provenance."""

from experiments import bench_rollout

OLD = """# Rollout benchmark

CPU: x. Total wall time 626 s.

Re-run of sections (1), (2) on 2026-11-30 (cpu): load 1; the other sections are from the runs described above.

Re-run of sections (4) on 2026-11-30 (cpu): load 2; the other sections are from the runs described above.

## (1) one
old 1
## (2) two
old 2
## (3) three
old 3
## (4) four
old 4
## Raw log

```
first log
```
"""


def test_a_partial_re_run_replaces_its_sections_and_keeps_the_other_notes():
  new = bench_rollout.merge_sections(OLD, "Re-run of sections (3), (4) on 2026-12-01 (cpu): new.",
                                     {"3": ["## (3) three", "new 3"], "4": ["## (4) four", "new 4"]},
                                     ["second log"])
  # The (1), (2) note still describes sections that are left; the (4) note's section was redone.
  assert "Re-run of sections (1), (2) on 2026-11-30" in new
  assert "Re-run of sections (4) on 2026-11-30" not in new
  assert new.index("Re-run of sections (1), (2)") < new.index("Re-run of sections (3), (4)")
  assert "old 1" in new and "old 2" in new and "new 3" in new and "new 4" in new
  assert "old 3" not in new and "old 4" not in new
  assert new.index("first log") < new.index("second log") < new.rindex("```")
