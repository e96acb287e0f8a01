"""Writes crates/ember-model/tests/data/tiny-gpt2-bin/: the tiny-gpt2 fixture's weights as
PyTorch's `pytorch_model.bin` (the zip format torch.save writes, which is what
`save_pretrained(..., safe_serialization=False)` produces) plus its config.json, so that
ember's .bin loader is tested on a file torch itself wrote.

    bash scripts/setup_hf_venv.sh   # once
    scripts/.venv-hf/bin/python scripts/make_gpt2_bin_fixture.py [FIXTURE_DIR]
"""
import hashlib
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

repo = Path(__file__).resolve().parent.parent
src = Path(sys.argv[1]) if len(sys.argv) > 1 else repo.parent / "shared" / "fixtures" / "tiny-gpt2"
out = repo / "crates" / "ember-model" / "tests" / "data" / "tiny-gpt2-bin"
out.mkdir(parents=True, exist_ok=True)

state = load_file(str(src / "model.safetensors"))
# transformers saves state_dict() order; the tensors and names are what matter.
torch.save(state, out / "pytorch_model.bin")
shutil.copy(src / "config.json", out / "config.json")

back = torch.load(out / "pytorch_model.bin", weights_only=True)
assert list(back) == list(state), "names differ"
for name, tensor in state.items():
    assert back[name].dtype == torch.float32 and torch.equal(back[name], tensor), name
data = (out / "pytorch_model.bin").read_bytes()
print(f"{out / 'pytorch_model.bin'}: {len(state)} tensors, {len(data)} bytes, "
      f"sha256 {hashlib.sha256(data).hexdigest()} (torch {torch.__version__})")
