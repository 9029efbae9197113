"""Entry point for `accelerate launch train.py --config configs/<recipe>.yaml [--key value ...]`.

    accelerate launch --config_file launch/zero3_cpu_2proc.yaml train.py --config configs/tiny_cpu.yaml \
        --init_from_config tiny --tokenizer tokenizer.json --train_data train.jsonl --valid_data valid.jsonl \
        --output_dir runs/tiny
    python train.py --config configs/tiny_cpu.yaml ...   # one device, no launcher

All the work is in `hf_starcoder_ft.train.main`; this file only makes the command users expect.
"""

import sys

from hf_starcoder_ft.train import main

if __name__ == "__main__":
    sys.exit(main())
