"""Training: one pure function per method from a record to a (prompt, completion) pair, training
sets beyond one method (mixtures, two stages, length-matched and right/wrong sets), fine-tuning
with TRL's SFTTrainer (LoRA or full, under accelerate for several processes), padding-free
attention, the memory and time estimate, and loss curves."""
