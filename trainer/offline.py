"""``python -m trainer.offline`` (or ``accelerate launch -m trainer.offline``): train a
LoRA adapter on an exported DPO JSONL file without the web app.

The implementation is trainer/training/offline.py; this module is the stable entry point.
"""

from trainer.training.offline import main

if __name__ == "__main__":
    main()
