"""The DropBP paper's headline numbers (NeurIPS 2024), shown beside ours for reference. Nothing here is measured."""
from __future__ import annotations

PAPER_THROUGHPUT = {
    "a100": {"drop_rate": 0.875, "throughput_increase": 0.79,
             "setting": "one NVIDIA A100, Llama2-7B, LoRA, bf16, seq 512 (paper, Table/Fig. throughput)"},
    "gaudi2": {"drop_rate": 0.875, "throughput_increase": 1.17,
               "setting": "one Intel Gaudi2, Llama-3-8B, LoRA, bf16, seq 512 packed, lazy mode (paper)"},
}
PAPER_MEMORY = {"drop_rate": 0.875, "max_seq_len_ratio": 6.2,
                "setting": "Llama2-70B, QLoRA, one A100 80GB: longest trainable sequence vs baseline (paper)"}
PAPER_CONVERGENCE = {"training_time_reduction": 0.44, "time_to_target_speedup": 1.5,
                     "setting": "fine-tuning to the baseline's accuracy: -44% training time (paper)"}
