"""gradscope with a transformers Trainer: one callback, then ``gradscope analyze``.

A small BERT (random init, so nothing is downloaded) learns a toy task: is token 7 in the sequence?
Training uses gradient accumulation and clipping; gradscope records the pre-clip gradient norms once
per optimizer step, so its global norm is the number the Trainer logs as ``grad_norm``.

    pip install transformers accelerate        # or, in a gradscope checkout: pip install -e '.[hf]'
    python examples/hf_trainer.py --out runs/hf
    gradscope analyze runs/hf/gradscope
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import gradscope  # noqa: E402
from gradscope.integrations.hf import GradScopeCallback  # noqa: E402


class ContainsToken(torch.utils.data.Dataset):
    """Random token sequences, labelled 1 when token 7 occurs."""

    def __init__(self, n: int, vocab: int = 100, length: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, vocab, (n, length), generator=g)
        self.labels = (self.ids == 7).any(1).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "labels": self.labels[i]}


class GradNormLog(TrainerCallback):
    """Keeps the Trainer's own logged grad_norm, to set beside gradscope's."""

    def __init__(self) -> None:
        self.by_step: dict[int, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "grad_norm" in logs:
            self.by_step[state.global_step] = float(logs["grad_norm"])


def main() -> None:
    parser = argparse.ArgumentParser(description="gradscope + transformers Trainer")
    parser.add_argument("--out", type=Path, default=Path("runs/hf"))
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, num_labels=2)
    model = BertForSequenceClassification(config)
    training = TrainingArguments(
        output_dir=str(args.out), max_steps=args.steps, per_device_train_batch_size=16,
        gradient_accumulation_steps=2, max_grad_norm=1.0, learning_rate=1e-3, logging_steps=1,
        report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    scope_cb, trainer_log = GradScopeCallback(overwrite=True), GradNormLog()
    trainer = Trainer(model=model, args=training, train_dataset=ContainsToken(2000),
                      callbacks=[scope_cb, trainer_log])
    trainer.train()

    run = gradscope.load_run(scope_cb.log_dir)
    print(f"\nrun at {scope_cb.log_dir}: {run.num_steps} optimizer steps, {len(run.rows_of('param'))} params")
    print("step  trainer grad_norm  gradscope grad_norm (both pre-clip)")
    for step, ours in zip(run.steps[:5].tolist(), run.scalars["grad_norm"][:5].tolist(), strict=True):
        print(f"{step:4d}  {trainer_log.by_step[step + 1]:17.6f}  {ours:19.6f}")

    subprocess.run([sys.executable, "-m", "gradscope.cli", "analyze", str(scope_cb.log_dir)], check=False)


if __name__ == "__main__":
    main()
