"""onnxruntime-genai on the same LLM weights, in its own interpreter.

Its model builder reads a Hugging Face Qwen2 folder, which we write from our
checkpoint's ``language_model.*``; ``-p int4 -e cpu`` gives MatMulNBits for
every projection and the LM head, ``GroupQueryAttention`` and an in-place KV
buffer. The decode loop runs in ``python`` (a venv with ``onnxruntime-genai``;
building also needs torch, transformers and ``onnx_ir`` there).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ..runtime.errors import UserError


def genai_decode(python: str, folder: Path, threads: int, prompt: list[int], new: int) -> dict:
    """TTFT and decode tokens/s of a greedy onnxruntime-genai run in ``python``."""
    script = Path(__file__).with_name("genai_steps.py")  # by path: genai's venv lacks us
    args = [python, str(script), str(folder), str(threads), str(new), json.dumps(prompt)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise UserError(f"onnxruntime-genai ({python}) failed: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def genai_int4_model(python: str, checkpoint: Path, workdir: Path) -> Path:
    """The onnxruntime-genai int4 CPU model of ``checkpoint``'s LLM, built once in ``workdir``."""
    out = workdir / f"{checkpoint.name}-genai-int4"
    if (out / "genai_config.json").is_file():
        return out
    hf_folder = workdir / f"{checkpoint.name}-hf-qwen2"
    if not (hf_folder / "config.json").is_file():
        from .peers import qwen2_from_checkpoint

        print(f"writing the Qwen2 LLM of {checkpoint} to {hf_folder} ...", flush=True)
        qwen2_from_checkpoint(checkpoint, "sdpa").save_pretrained(hf_folder)
    print(f"building the onnxruntime-genai int4 model in {out} ...", flush=True)
    build = [python, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder)]
    partial = workdir / f"{out.name}.partial"  # renamed once complete: never half a model
    build += ["-o", str(partial), "-p", "int4", "-e", "cpu", "-c", str(workdir / "genai-cache")]
    done = subprocess.run(build, capture_output=True, text=True)
    if done.returncode or not (partial / "genai_config.json").is_file():
        raise UserError(
            f"the onnxruntime-genai builder ({python}) failed; it needs onnxruntime-genai, "
            f"onnx_ir, torch and transformers there: {done.stderr.strip()[-400:]}"
        )
    partial.rename(out)
    return out
