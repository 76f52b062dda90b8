"""MemTrain on Qwen3-4B-Instruct-2507 with the paper's hyper-parameters (§4.1).

Command (download the model once, e.g. `huggingface-cli download Qwen/Qwen3-4B-Instruct-2507
--local-dir ~/models/Qwen3-4B-Instruct-2507`; build the 30k-document set with
`memtrain data build` and the paper data config):
  memtrain train --config configs/paper/memtrain_qwen3_4b.py --workdir gs://bucket/memtrain_4b \
    --config.model.path=~/models/Qwen3-4B-Instruct-2507

Hardware: 8 accelerators with >= 80 GB each: 8x H100 80GB, or a TPU v5p-16 slice (8 chips);
the mesh fills all devices along 'fsdp'. On a bigger slice set --config.mesh.shape="(1,-1,4)"
to add tensor parallelism (Qwen3-4B has 32 query / 8 KV heads). Wall-clock: NOT FOUND in the paper.

Expected result: 300 steps of joint end-to-end + recall GRPO. Evaluated as the paper does
(RULER-HotpotQA, memory agent with 5000-token chunks), the checkpoint reaches an average of
56.15 (vs 21.97 for the base model), and 70.31 after MemAgent post-training (vs 65.14 for
MemAgent alone) (paper Table 1).
"""

from memtrain_jax import config_lib
from memtrain_jax.data.config import paper_data_config


def get_config():
  cfg = config_lib.base_config()
  cfg.model.path = "~/models/Qwen3-4B-Instruct-2507"  # a local HF directory; override it
  # f32 master weights, bf16 matmuls: an AdamW update of lr=1e-6 is below bf16's resolution, so
  # bf16 weights would not move at all.
  cfg.model.param_dtype = "float32"
  cfg.model.compute_dtype = "bfloat16"
  cfg.model.scan_layers = True
  cfg.model.remat = True
  cfg.mesh.shape = (1, -1, 1)

  cfg.data = paper_data_config()  # 5120-token chunks, <= 8 chunks, 24k-40k-token documents

  # 8192 = 1024 instruction + 5120 chunk + 1024 memory + 1024 response (paper §4.1).
  cfg.agent.prompt_max_tokens = 1024
  cfg.agent.memory_max_tokens = 1024
  cfg.agent.answer_max_tokens = 1024
  cfg.agent.recall_max_tokens = 1024

  # Micro-batch planning: one decode step of a 4B model reads its 8 GB of bf16 weights (~2.5 ms at
  # an H100's 3.3 TB/s), about what prefilling ~250 prompt tokens costs (8 GFLOP each) at
  # ~800 bf16 TFLOP/s.
  cfg.sampling.decode_step_tokens = 256

  cfg.objectives.end_to_end.num_rollouts = 8  # G1
  cfg.objectives.recall.num_samples = 8  # G2
  cfg.objectives.recall.lam = 0.5

  cfg.rl.kl_coef = 1e-3
  cfg.rl.kl_estimator = "k3"
  # [inherited] MemAgent's ppo_mini_batch_size 8 out of a 32-document batch: 4 updates per step.
  cfg.rl.num_mini_batches = 4
  cfg.rl.packing.seq_len = 8192
  cfg.rl.packing.micro_batch_size = 8  # one 8192-token line per device on an 8-way fsdp mesh
  cfg.rl.packing.num_micro_batches_multiple = 4
  cfg.rl.packing.logprob_chunk_size = 1024  # 1024 x 151936 f32 logits = 0.6 GB per chunk

  cfg.optim.lr = 1e-6
  cfg.optim.warmup_steps = 20  # [inherited] MemAgent

  cfg.train.num_steps = 300
  cfg.train.batch_documents = 32
  cfg.train.dump_rollouts_every = 10
  cfg.checkpoint.every = 25
  cfg.checkpoint.keep = 3
  return cfg
