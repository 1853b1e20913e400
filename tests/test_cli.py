"""The ``hlwq`` command line: eval --json against an independent transformers computation,
generate, help text on every command and option, clear errors."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from hlwq_models.cli import build_parser, main, read_tokens
from test_model_utils import EVAL_BIN, FIXTURE, _one_thread, needs_fixture  # noqa: F401


# Under pytest on CPU, TRITON_INTERPRET=1 makes impl="auto" pick the (slow) interpreter.
IMPL = ["--impl", "auto" if torch.cuda.is_available() else "reference"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sample.bin"
    path.write_bytes(EVAL_BIN.read_bytes()[:3 * 64 + 50] if EVAL_BIN.is_file() else b"")
    return path


@needs_fixture
def test_eval_json_matches_transformers(capsys, small_data):
    from transformers import AutoModelForCausalLM

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    assert main(["eval", str(FIXTURE), "--data", str(small_data), "--seq-len", "64", "--windows", "3", "--json",
                 "--dtype", "float32", "--device", dev, "--no-progress", *IMPL]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tokens"] == 3 * 64 and res["windows"] == 3 and res["bytes"] == 3 * 64
    assert res["ppl"] == pytest.approx(math.exp(res["nll_per_token"]))
    assert res["bits_per_byte"] == pytest.approx(res["nll_per_token"] / math.log(2))
    # Independent: transformers' logits on the same windows (byte tokenizer: token == byte).
    data = list(small_data.read_bytes())
    hf = AutoModelForCausalLM.from_pretrained(str(FIXTURE), dtype=torch.float32).eval()
    nll = 0.0
    with torch.no_grad():
        for i in range(3):
            w = torch.tensor(data[i * 64: i * 64 + 65])[None]
            nll += torch.nn.functional.cross_entropy(hf(w[:, :-1]).logits[0], w[0, 1:], reduction="sum").item()
    assert res["nll_per_token"] == pytest.approx(nll / 192, rel=1e-4)


@needs_fixture
def test_eval_text_output_and_window_cap(capsys, small_data):
    assert main(["eval", str(FIXTURE), "--data", str(small_data), "--seq-len", "100", "--windows", "9",
                 "--device", "cpu", "--no-progress", *IMPL]) == 0
    out = capsys.readouterr()
    assert "2 windows x 100 tokens" in out.out and "bits/byte" in out.out
    assert "only 2 windows" in out.err


@needs_fixture
def test_generate_streams_text(capsys):
    assert main(["generate", str(FIXTURE), "--prompt", "import os", "--max-new-tokens", "12", "--device", "cpu",
                 "--ignore-eos", *IMPL]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("import os") and len(out.out.encode()) >= len("import os") + 12
    assert "tok/s" in out.err


@needs_fixture
def test_generate_batch_sampling(capsys):
    assert main(["generate", str(FIXTURE), "--prompt", "def f(", "--prompt", "class A", "--max-new-tokens", "6",
                 "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "1", "--device", "cpu", *IMPL]) == 0
    lines = capsys.readouterr().out
    assert "def f(" in lines and "class A" in lines


def test_every_command_and_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) >= {"eval", "generate"}
    helps = {c.dest: c.help for c in sub._choices_actions}
    for name, p in sub.choices.items():
        assert helps.get(name), f"command {name} has no help"
        for action in p._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["eval", str(tmp_path / "nope"), "--data", str(tmp_path / "x")])
    (tmp_path / "m").mkdir()
    with pytest.raises(SystemExit, match="no config.json"):
        main(["generate", str(tmp_path / "m"), "--prompt", "x"])
    with pytest.raises(SystemExit):  # --prompt is required
        main(["generate", str(tmp_path / "m")])
    capsys.readouterr()


def test_bits_per_byte_counts_bytes_of_split_characters():
    """A window edge inside a multi-byte character must not change the byte count."""
    from hlwq_models.cli import evaluate

    class ByteTok:
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    class Uniform(torch.nn.Module):  # every token equally likely: nll = ln(V) per token
        config = type("C", (), {"vocab_size": 256})()
        device = torch.device("cpu")

        def hidden_states(self, x):
            return torch.zeros(*x.shape, 1)

        def lm_logits(self, h):
            return torch.zeros(*h.shape[:-1], 256)

    data = list("aé€b".encode()) * 8  # 1-, 2- and 3-byte characters, cut by 5-token windows
    res = evaluate(Uniform(), data, seq_len=5, tokenizer=ByteTok(), progress=False)
    assert res["tokens"] == res["bytes"] == 5 * ((len(data) - 1) // 5)
    assert res["bits_per_byte"] == pytest.approx(8.0)


def test_read_tokens_bytes_as_text():
    class ByteTok:
        def encode(self, s, add_special_tokens=False):
            return list(s.encode())

    assert read_tokens(ByteTok(), "héllo\0".encode()) == list("héllo\0".encode())
    assert read_tokens(ByteTok(), b"a\xffb") == list("a\ufffdb".encode())  # not UTF-8: replaced, warned
