"""`python -m sft2grpo ...` is the same as the `sft2grpo` command (and what torchrun starts)."""

from .cli import main

raise SystemExit(main())
