"""Train RS-M-CLIP (CLIP + self-distillation): `accelerate launch train.py --config examples/train_rs_m_clip.yaml`.

Every option is documented by `python train.py --help`; see docs/training.md.
"""

from modeling_rsmclip.training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
