"""A real vLLM server (the CPU build, in its own venv) for the tests of the served-model engine.

``.ci/run`` makes the venv and sets ``KAD_VLLM_PYTHON`` to its interpreter (and
``KAD_REQUIRE_VLLM=1``, so that a server which does not come up fails the tests
instead of skipping them).  :class:`VllmServer` starts
``vllm.entrypoints.openai.api_server`` on 127.0.0.1 with a tiny model built from a
config, waits for ``/health`` and stops it again, also when a test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import torch
from decoding_helpers import make_tokenizer
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

PYTHON = os.environ.get("KAD_VLLM_PYTHON")
REQUIRED = os.environ.get("KAD_REQUIRE_VLLM") == "1"
STARTUP_S = 420  # vLLM's CPU start-up took ~45 s idle, ~2 min on 2 busy cores
MAX_LOGPROBS = 50
SERVED_NAME = "tiny-base"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_models(directory: Path) -> tuple[Path, torch.nn.Module]:
    """A tiny Qwen2 base model saved to ``directory`` (head_dim 64: vLLM's CPU attention
    rejects 16) with its tokenizer, and a local Llama aligned model of the same vocabulary."""
    config = Qwen2Config(
        hidden_size=128, num_hidden_layers=2, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1,
        eos_token_id=0, bos_token_id=None, pad_token_id=None, tie_word_embeddings=False, max_position_embeddings=512,
    )  # fmt: skip
    make_tokenizer().save_pretrained(directory)
    config.save_pretrained(directory)  # a Qwen2 model's tokenizer loads as Qwen2Tokenizer, one token more
    vocab = len(AutoTokenizer.from_pretrained(directory))  # what the server and the tests load
    config.vocab_size = vocab
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(config)
    torch.manual_seed(1)
    aligned = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, eos_token_id=0, bos_token_id=None, pad_token_id=None, tie_word_embeddings=False,
    ))  # fmt: skip
    with torch.no_grad():  # peaked distributions, so that rules keep and defer tokens
        base.lm_head.weight.mul_(12.0)
        aligned.lm_head.weight.mul_(12.0)
    base.save_pretrained(directory)
    return directory, aligned.eval()


class VllmServer:
    """vLLM serving ``model_dir`` as ``served_name`` on a free loopback port, run by
    ``python`` (default ``$KAD_VLLM_PYTHON``; without it the calling test is skipped,
    or fails under ``KAD_REQUIRE_VLLM=1``)."""

    def __init__(
        self,
        model_dir: Path,
        log: Path,
        *,
        served_name: str = SERVED_NAME,
        dtype: str = "float32",
        max_model_len: int = 512,
        kv_cache_gib: int = 1,
        python: str | None = PYTHON,
    ):
        if python is None:
            message = "needs vLLM's CPU build: KAD_VLLM_PYTHON=<its venv's python> (bash .ci/run makes one)"
            if REQUIRED:
                raise RuntimeError(message)
            pytest.skip(message)
        self.python, self.model_dir, self.log_path = python, model_dir, log
        self.options = ["--served-model-name", served_name, "--dtype", dtype, "--max-model-len", str(max_model_len),
                        "--max-logprobs", str(MAX_LOGPROBS)]  # fmt: skip
        self.kv_cache_gib = kv_cache_gib
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None

    def start(self) -> VllmServer:
        command = [
            self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
            "--host", "127.0.0.1", "--port", str(self.port), *self.options,
        ]  # fmt: skip
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(self.kv_cache_gib), HF_HUB_OFFLINE="1",
                   VLLM_NO_USAGE_STATS="1")  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"vLLM did not answer /health within {STARTUP_S} s; see {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server's whole process group (its engine runs in a child process)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
