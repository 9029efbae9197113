"""hf_starcoder_ft: fine-tune StarCoder-family (GPTBigCode) code models on instruction data.

Build data from git commits (`hf-starcoder-ft commits`), tokenize and pack it (`hf-starcoder-ft prepare`),
train with `accelerate launch train.py --config configs/...yaml`, and move weights between Megatron-LM and
Hugging Face formats (`hf-starcoder-ft convert ...`).
"""

__version__ = "0.1.0"
