"""Training: full fine-tuning and sparse fine-tuning on head masks (finetune), and masked-LM pre-training of the tiny encoder (pretrain)."""
