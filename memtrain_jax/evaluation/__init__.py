"""Evaluation harness (`memtrain eval`): the paper's long-text QA (Table 1) and search QA (Table 2).

- `config`: the eval config schema `eval_config()` and `validate_eval_config`;
- `longqa`: RULER-HotpotQA cells, memory agent and full-context baseline;
- `searchqa`: MEM1 multi-objective search cells;
- `cells`: finished cells on disk (resumable runs);
- `report`: results.json, Markdown tables in the paper's layouts, the accuracy-vs-length plot;
- `runner`: plans and runs the cells; `cli`: the command.
"""
