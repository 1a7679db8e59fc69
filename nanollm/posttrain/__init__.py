"""Post-training: GRPO, PPO and DPO trainers built from step.py and run_state.py, verifiable tasks and rewards."""
